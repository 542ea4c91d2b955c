"""The update phase with and without shared-prefix packing, same samples, same run.

    python benchmarks/bench_update.py model.dtype=float32               # demo and cpu-spo-tree, 2 rounds
    python benchmarks/bench_update.py --config cpu-spo-tree --collect-iterations 4 model.dtype=float32
    python benchmarks/bench_update.py --config smoke --rounds 1 sampling.max_new_tokens=16

What it does
------------
1. For each preset (``--config``, repeatable; default ``demo`` and ``cpu-spo-tree``) plus
   ``section.key=value`` overrides, one subprocess builds ``spo.train.loop.Trainer`` and
   collects the samples of the first ``--collect-iterations`` iterations (default 1) with
   the algorithm's own ``collect`` (real sampling, scoring, advantages; no update in
   between), then pickles them. Several iterations give SPO-tree, whose untrained policy
   leaves few edges with a nonzero advantage per iteration, a batch of typical size.
2. ``--rounds`` times, two subprocesses each build the Trainer again (same seed, so the
   same starting weights) with ``algorithm.packing`` true and false, in alternating order
   (ABBA), and time ``Trainer.update`` on those samples: the whole update phase
   (old/reference log-probs when the preset needs them, forward, backward, optimizer
   steps). Peak memory is the process's peak resident set during the update alone
   (Linux: ``/proc/self/clear_refs`` resets VmHWM just before it), next to its resident
   set just before.
3. Prints per preset the packed/unpacked ratios of the median times and of the peak
   resident memory, with the load average before and after (the CPU may be shared), and
   writes everything as JSON to ``--output``.

Each measurement runs in its own process so that neither variant inherits the other's
allocator state; the first update of a process also allocates AdamW's state (in both).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tests/conftest.py: a shared 2-core CPU


def _trainer(config: str, overrides: list[str], folder: Path):
    from spo.config import load_config
    from spo.presets import resolve_preset
    from spo.train.loop import Trainer

    cfg = load_config(resolve_preset(config), [*overrides, "progress=false"])
    return Trainer(cfg, folder), cfg


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def collect(config: str, overrides: list[str], out: Path, iterations: int = 1) -> dict[str, Any]:
    """The samples of `config`'s first `iterations` iterations, pickled to `out`."""
    from spo.train.progress import Progress

    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = _trainer(config, overrides, Path(tmp) / "run")
        t0 = time.perf_counter()
        for it in range(iterations):
            samples += trainer.algorithm.collect(it, Progress(enabled=False, quiet=True)).samples
        seconds = time.perf_counter() - t0
    out.write_bytes(pickle.dumps(samples))
    prompt = [len(s.prompt_ids) for s in samples]
    response = [len(s.response_ids) for s in samples]
    return {"samples": len(samples), "collect_s": seconds,
            "prompt_tokens_mean": sum(prompt) / max(len(prompt), 1),
            "response_tokens_mean": sum(response) / max(len(response), 1),
            "row_tokens": sum(prompt) + sum(response)}


def update(config: str, overrides: list[str], samples_file: Path, packing: bool, updates: int) -> dict[str, Any]:
    """Time `updates` update phases on the pickled samples, packed or not."""
    import torch

    from spo.optimize.packing import pack_rows
    from spo.train.progress import Progress

    samples = pickle.loads(samples_file.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        trainer, cfg = _trainer(config, [*overrides, f"algorithm.packing={str(packing).lower()}"], Path(tmp) / "run")
        progress = Progress(enabled=False, quiet=True)
        rows = []
        for k in range(updates):
            rss_before = _status_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
            t0 = time.perf_counter()
            trainer.update(samples, k, progress)
            rows.append({"seconds": time.perf_counter() - t0, "rss_before_mb": rss_before / 1024,
                         "peak_rss_mb": _status_kb("VmHWM") / 1024})
    packed = len(pack_rows([s.prompt_ids + s.response_ids for s in samples]))
    return {"packing": packing, "updates": rows, "threads": torch.get_num_threads(),
            "dtype": str(next(trainer.model.parameters()).dtype), "packed_tokens_whole_batch": packed}


def _child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"bench_update: child {args[:4]} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(config: str, overrides: list[str], rounds: int, updates: int, collect_iterations: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        samples_file = Path(tmp) / "samples.pkl"
        result: dict[str, Any] = {"config": config, "overrides": overrides, "load_before": os.getloadavg()}
        result["collect"] = _child(["--part", "collect", "--config", config, "--samples", str(samples_file),
                                    "--collect-iterations", str(collect_iterations), *overrides])
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for r in range(rounds):
            for packing in ((True, False) if r % 2 == 0 else (False, True)):  # ABBA
                runs[packing].append(_child(["--part", "update", "--config", config, "--samples", str(samples_file),
                                             "--packing", str(packing).lower(), "--updates", str(updates),
                                             *overrides]))
        result["load_after"] = os.getloadavg()
    for packing, name in ((True, "packed"), (False, "unpacked")):
        rows = [u for run in runs[packing] for u in run["updates"]]
        result[name] = {"seconds": [u["seconds"] for u in rows], "median_s": statistics.median(u["seconds"] for u in rows),
                        "peak_rss_mb": max(u["peak_rss_mb"] for u in rows),
                        "peak_above_start_mb": max(u["peak_rss_mb"] - u["rss_before_mb"] for u in rows),
                        "runs": runs[packing]}
    result["time_ratio"] = result["packed"]["median_s"] / result["unpacked"]["median_s"]
    result["peak_rss_ratio"] = result["packed"]["peak_rss_mb"] / result["unpacked"]["peak_rss_mb"]
    result["dtype"] = runs[True][0]["dtype"]
    result["threads"] = runs[True][0]["threads"]
    result["packed_tokens_whole_batch"] = runs[True][0]["packed_tokens_whole_batch"]
    return result


def report(results: list[dict[str, Any]]) -> str:
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"python {platform.python_version()}",
             f"{'preset':<16}{'samples':>8}{'row tok':>9}{'trie tok':>9}{'unpacked s':>12}{'packed s':>10}"
             f"{'time':>7}{'unpk MB':>9}{'pk MB':>8}{'peak':>7}{'load':>14}  dtype"]
    for r in results:
        c = r["collect"]
        lines.append(
            f"{r['config']:<16}{c['samples']:>8}{c['row_tokens']:>9}{r['packed_tokens_whole_batch']:>9}"
            f"{r['unpacked']['median_s']:>12.2f}{r['packed']['median_s']:>10.2f}{r['time_ratio']:>6.2f}x"
            f"{r['unpacked']['peak_rss_mb']:>9.0f}{r['packed']['peak_rss_mb']:>8.0f}{r['peak_rss_ratio']:>6.2f}x"
            f"{r['load_before'][0]:>7.1f}->{r['load_after'][0]:<5.1f}  {r['dtype']}")
        lines.append(f"{'':<16}  peak above the pre-update RSS: unpacked {r['unpacked']['peak_above_start_mb']:.0f} MB, "
                     f"packed {r['packed']['peak_above_start_mb']:.0f} MB; seconds unpacked "
                     f"{[round(s, 2) for s in r['unpacked']['seconds']]}, packed "
                     f"{[round(s, 2) for s in r['packed']['seconds']]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", help="preset (repeatable); default: demo and cpu-spo-tree")
    p.add_argument("--rounds", type=int, default=2, help="packed/unpacked process pairs per preset (ABBA order)")
    p.add_argument("--updates", type=int, default=1, help="update phases timed per process")
    p.add_argument("--collect-iterations", type=int, default=1, help="iterations whose samples make the batch")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--part", choices=["collect", "update"], help=argparse.SUPPRESS)
    p.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--packing", choices=["true", "false"], help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="section.key=value for every preset")
    args = p.parse_args(argv)
    if args.part == "collect":
        print(json.dumps(collect(args.config[0], args.overrides, args.samples, args.collect_iterations)))
        return 0
    if args.part == "update":
        print(json.dumps(update(args.config[0], args.overrides, args.samples, args.packing == "true", args.updates)))
        return 0
    results = [bench(c, args.overrides, args.rounds, args.updates, args.collect_iterations)
               for c in args.config or ["demo", "cpu-spo-tree"]]
    print(report(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
