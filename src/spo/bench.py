"""`spo bench`: several estimators on the same task, model, seeds and budget, compared.

A bench preset has two sections:

    bench:                 # BenchOptions below
      methods: {grpo: [algorithm.estimator=grpo], spo_chain: [algorithm.estimator=spo_chain, ...]}
      seeds: [0, 1, 2]
      target_accuracy: 0.5
    run:                   # one RunConfig shared by every method (see docs/config.md)
      model: ...

Every (method, seed) run is an ordinary run folder under OUT/runs/<method>/seed<k>, made
from `run` + the method's overrides + `seed=k`, so all methods see the same prompts in
the same order (prompt order depends only on the seed), the same sampling settings,
learning rate and evaluation protocol. A finished run is not repeated when the bench is
run again (so an interrupted bench picks up where it stopped); an unfinished one starts
over. Then OUT/results.md, OUT/results.json and three plots (accuracy against
iterations, generated tokens and training seconds) are written.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo.config import (
    ConfigError,
    RunConfig,
    from_dict,
    apply_overrides,
    build_config,
    load_yaml,
    to_dict,
)
from spo.evaluate.compare import MethodSummary, learning_curve, markdown_table, summarize_method
from spo.train.loop import Trainer
from spo.train.run_log import read_metrics

log = logging.getLogger("spo.bench")

DONE_FILE = "bench_done.json"


@dataclass
class BenchOptions:
    methods: dict[str, list[str]] = field(default_factory=lambda: {
        "grpo": ["algorithm.estimator=grpo"],
        "rloo": ["algorithm.estimator=rloo"],
        "spo_chain": ["algorithm.estimator=spo_chain"],
        "spo_tree": ["algorithm.estimator=spo_tree"],
    })
    """Method label -> overrides (`section.key=value`) applied to the shared `run` config."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One run per method and seed; the seed sets the prompt order, sampling and initial state."""
    target_accuracy: float = 0.5
    """Held-out accuracy whose first crossing the table reports the cost of (tokens, samples, seconds)."""
    metric: str = "accuracy"
    """Which evaluation metric the curves and the table use (`accuracy`, `pass@k`, `maj@k`)."""


@dataclass
class BenchConfig:
    bench: BenchOptions
    run: dict[str, Any]  # validated per method by build_config


def load_bench_config(path: str | Path, overrides: list[str] = ()) -> BenchConfig:
    """Read a bench preset; overrides are `bench.x=...` or `run.section.key=...`."""
    data = apply_overrides(load_yaml(path), list(overrides))
    unknown = set(data) - {"bench", "run"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; a bench preset has `bench` and `run`")
    cfg = BenchConfig(from_dict(BenchOptions, data.get("bench") or {}, prefix="bench."), data.get("run") or {})
    b = cfg.bench
    if not b.methods:
        raise ConfigError("bench.methods: at least one method")
    if not b.seeds or len(set(b.seeds)) != len(b.seeds):
        raise ConfigError(f"bench.seeds: a non-empty list of distinct seeds, got {b.seeds}")
    if not 0 < b.target_accuracy <= 1:
        raise ConfigError(f"bench.target_accuracy: must be in (0, 1], got {b.target_accuracy}")
    for method in b.methods:
        run_config(cfg, method, b.seeds[0])  # every method's config must be valid before anything runs
    return cfg


def run_config(cfg: BenchConfig, method: str, seed: int) -> RunConfig:
    """The shared run config + the method's overrides + the seed."""
    try:
        rc = build_config(cfg.run, [*cfg.bench.methods[method], f"seed={seed}"])
    except ConfigError as err:
        raise ConfigError(f"bench method {method!r}: {err}") from None
    rc.progress = False
    if not (rc.eval.at_start and rc.eval.at_end and rc.eval.every > 0):
        raise ConfigError("run.eval: a bench needs at_start, at_end and every > 0 for its learning curves")
    return rc


def budget_description(rc: RunConfig) -> str:
    parts = [f"at most {rc.iterations} iterations"]
    if rc.max_tokens is not None:
        parts.append(f"{rc.max_tokens:,} generated tokens")
    if rc.max_train_seconds is not None:
        parts.append(f"{rc.max_train_seconds:g} training seconds")
    return ", ".join(parts) + " per run (a run stops at the first limit reached)"


def _run_one(rc: RunConfig, run_dir: Path) -> None:
    if (run_dir / DONE_FILE).is_file():
        log.info("%s: finished earlier, not repeated", run_dir)
        return
    if run_dir.exists():  # an interrupted run starts over, so every curve comes from one process
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    Trainer(rc, run_dir).train()
    (run_dir / DONE_FILE).write_text(json.dumps({"wall_seconds": time.perf_counter() - t0}))


def run_bench(cfg: BenchConfig, out: Path, *, only_report: bool = False) -> list[MethodSummary]:
    """Train every (method, seed) not done yet, then write the table and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"bench": to_dict(cfg.bench), "run": cfg.run}, indent=2))
    b = cfg.bench
    if not only_report:
        for seed in b.seeds:  # seed-major: a partial bench already compares every method
            for method in b.methods:
                log.info("bench: %s, seed %d", method, seed)
                print(f"[bench] {method} seed {seed}", flush=True)
                _run_one(run_config(cfg, method, seed), out / "runs" / method / f"seed{seed}")
    return write_report(cfg, out)


def write_report(cfg: BenchConfig, out: Path) -> list[MethodSummary]:
    b = cfg.bench
    curves: dict[str, list] = {}
    for method in b.methods:
        runs = [out / "runs" / method / f"seed{s}" for s in b.seeds]
        curves[method] = [learning_curve(read_metrics(r, kind=None), b.metric)
                          for r in runs if (r / DONE_FILE).is_file()]
    summaries = [summarize_method(m, c, b.target_accuracy) for m, c in curves.items() if c]
    if not summaries:
        raise FileNotFoundError(f"{out}: no finished run to report")
    rc = run_config(cfg, next(iter(b.methods)), b.seeds[0])
    table = markdown_table(summaries, b.target_accuracy, budget_description(rc))
    (out / "results.md").write_text(f"# spo bench\n\n{table}")
    results = {"budget": budget_description(rc), "target_accuracy": b.target_accuracy, "metric": b.metric,
               "summaries": [s.as_dict() for s in summaries],
               "curves": {m: [[p.__dict__ for p in c] for c in cs] for m, cs in curves.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_curves(curves, out, b.metric)
    print(table)
    return summaries


def plot_curves(curves: dict[str, list], out: Path, metric: str) -> list[Path]:
    """accuracy_vs_{iterations,tokens,seconds}.png: each seed thin, the mean over seeds bold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'spo[bench]'): no plots")
        return []
    paths = []
    for key, label in [("iteration", "training iterations"), ("tokens", "generated tokens (incl. MC / tree)"),
                       ("seconds", "training seconds (no evaluation)")]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (method, runs) in enumerate(curves.items()):
            color = f"C{i}"
            for c in runs:
                ax.plot([getattr(p, key) for p in c], [p.accuracy for p in c], color=color, alpha=0.25, lw=1)
            n = min((len(c) for c in runs), default=0)
            if n:
                xs = [sum(getattr(c[j], key) for c in runs) / len(runs) for j in range(n)]
                ys = [sum(c[j].accuracy for c in runs) / len(runs) for j in range(n)]
                ax.plot(xs, ys, color=color, lw=2, marker="o", ms=3, label=f"{method} ({len(runs)} seeds)")
        ax.set_xlabel(label)
        ax.set_ylabel(f"held-out {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"accuracy_vs_{'iterations' if key == 'iteration' else key}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
