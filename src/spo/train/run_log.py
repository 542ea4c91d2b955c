"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard events, episode logs.

metrics.jsonl has one JSON object per iteration (and one per evaluation, with
"kind": "eval"). Resuming from a checkpoint first drops lines past that checkpoint's
iteration, so a resumed run's file reads as if it had never stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

EPISODES_DIR = "episodes"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(v: Any) -> Any:
    # JSON has no NaN/inf; write null so every line stays valid JSON.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLog:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
                self._tb = None

    def truncate_after(self, iteration: int) -> None:
        """Keep only metric lines of iterations <= `iteration` (used when resuming)."""
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration
        ]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record.get("iteration", 0)
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and k != "iteration":
                    self._tb.add_scalar(prefix + k, v, step)
            self._tb.flush()

    def write_episodes(self, iteration: int, episodes: Iterable[dict[str, Any]]) -> Path:
        folder = self.run_dir / EPISODES_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"iter_{iteration:06d}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as f:
            for ep in episodes:
                f.write(json.dumps(ep, default=_json_default) + "\n")
        tmp.replace(path)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """Lines of metrics.jsonl of one kind ("train" or "eval"), or all of them (kind=None)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows if kind is None else [r for r in rows if r.get("kind", "train") == kind]
