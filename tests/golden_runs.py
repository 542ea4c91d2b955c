"""Reference runs that pin the trainer's behaviour: fp32 smoke runs of GRPO, SPO-chain and
SPO-tree, recorded as JSON in tests/golden/ (metrics without wall-clock times, and every
episode-log line). `tests/test_golden_runs.py` re-runs them and compares.

Regenerate ONLY on purpose, when a change is meant to alter what training does (a new
metric, a different sampling rule), and say so in the commit message:

    python tests/golden_runs.py            # rewrites tests/golden/*.json

Floats are compared to a relative 1e-5 (CPUs with other vector units round differently);
token ids, masks, counts and strings exactly.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

GOLDEN_DIR = Path(__file__).parent / "golden"
PRESETS = ["smoke", "smoke-spo-chain", "smoke-spo-tree"]
# 3 iterations; SPO-tree keeps at most 8 fresh edges per tree so that its replay buffer is used
OVERRIDES = {"smoke": [], "smoke-spo-chain": [], "smoke-spo-tree": ["algorithm.max_edges_per_prompt=8"]}
UNTIMED = ("time_", "seconds_cumulative")  # wall-clock values differ from run to run


def text_reward(self, problem, text, truncated):
    """A random model is never right: this deterministic reward of the response text (about
    one response in five scores 1) gives the estimators something to tell apart."""
    return 1.0 if zlib.crc32(text.encode()) % 5 == 0 else 0.0


def run_preset(preset: str, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """Train `preset` into `out` (with `extra` overrides that must not change the result);
    return its metrics (times dropped) and episode logs."""
    from unittest import mock

    from spo.cli import main
    from spo.tasks.registry import Task

    args = ["train", "--config", preset, "--output-dir", str(out), "model.dtype=float32", "iterations=3",
            *OVERRIDES[preset], *extra]
    with mock.patch.object(Task, "reward", text_reward):
        assert main(args) == 0
    metrics = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        metrics.append({k: v for k, v in row.items() if not k.startswith(UNTIMED)})
    episodes = {p.name: [json.loads(x) for x in p.read_text().splitlines()]
                for p in sorted((out / "episodes").glob("iter_*.jsonl"))}
    return {"preset": preset, "metrics": metrics, "episodes": episodes}


def main() -> int:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for preset in PRESETS:
        with tempfile.TemporaryDirectory() as tmp:
            record = run_preset(preset, Path(tmp) / "run")
        path = GOLDEN_DIR / f"{preset}.json"
        path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
