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
run again, and an unfinished one (a killed bench) continues from its newest good
checkpoint, exactly as `spo train --resume auto` does, so the bench picks up where it
stopped and its curves are those of an uninterrupted bench. Bench runs checkpoint at
every evaluation (`save_every` = `eval.every` when the preset leaves it 0). Then
OUT/results.md, OUT/results.json and three plots (accuracy against iterations, generated
tokens and training seconds) are written. A lock on OUT keeps a second bench out.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo.config import ConfigError, RunConfig, build_config
from spo.config_io import load_sections, to_dict
from spo.evaluate.compare import (
    MethodSummary,
    equal_spend,
    equal_spend_table,
    learning_curve,
    markdown_table,
    summarize_method,
)
from spo.plot import save_curves
from spo.train.checkpoint import write_text_atomic
from spo.train.faults import kill_point
from spo.train.loop import train
from spo.train.run_dir import AUTO, RunLock
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
    baseline: str | None = None
    """Method the others are compared with, seed by seed (paired differences with a t
    interval); null: `grpo` when it is among the methods, else the first method."""
    confidence: float = 0.95
    """Level of the paired t intervals of the differences to the baseline."""


@dataclass
class BenchConfig:
    bench: BenchOptions
    run: dict[str, Any]  # validated per method by build_config


def load_bench_config(path: str | Path, overrides: list[str] = ()) -> BenchConfig:
    """Read a bench preset; overrides are `bench.x=...` or `run.section.key=...`."""
    cfg = BenchConfig(*load_sections(path, overrides, "bench", BenchOptions))
    b = cfg.bench
    if not b.methods:
        raise ConfigError("bench.methods: at least one method")
    if not b.seeds or len(set(b.seeds)) != len(b.seeds):
        raise ConfigError(f"bench.seeds: a non-empty list of distinct seeds, got {b.seeds}")
    if not 0 < b.target_accuracy <= 1:
        raise ConfigError(f"bench.target_accuracy: must be in (0, 1], got {b.target_accuracy}")
    if b.baseline is not None and b.baseline not in b.methods:
        raise ConfigError(f"bench.baseline: {b.baseline!r} is not one of the methods {sorted(b.methods)}")
    if not 0 < b.confidence < 1:
        raise ConfigError(f"bench.confidence: must be in (0, 1), got {b.confidence}")
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
    rc.save_every = rc.save_every or rc.eval.every  # so that a killed bench continues from its last evaluation
    return rc


def budget_description(rc: RunConfig) -> str:
    parts = [f"at most {rc.iterations} iterations"]
    if rc.max_tokens is not None:
        parts.append(f"{rc.max_tokens:,} generated tokens")
    if rc.max_train_seconds is not None:
        parts.append(f"{rc.max_train_seconds:g} training seconds")
    return ", ".join(parts) + " per run (a run stops at the first limit reached)"


def _run_one(rc: RunConfig, run_dir: Path) -> None:
    """Train one (method, seed) run: skipped when done, continued when interrupted."""
    if (run_dir / DONE_FILE).is_file():
        log.info("%s: finished earlier, not repeated", run_dir)
        return
    t0 = time.perf_counter()
    rc.output_dir = str(run_dir)
    train(rc, resume_dir=AUTO)
    kill_point("bench.done")
    write_text_atomic(run_dir / DONE_FILE, json.dumps({"wall_seconds": time.perf_counter() - t0}))


def run_bench(cfg: BenchConfig, out: Path, *, only_report: bool = False) -> list[MethodSummary]:
    """Train every (method, seed) not done yet, then write the table and the plots."""
    with RunLock(out):
        write_text_atomic(out / "bench.json", json.dumps({"bench": to_dict(cfg.bench), "run": cfg.run}, indent=2))
        b = cfg.bench
        if not only_report:
            for seed in b.seeds:  # seed-major: a partial bench already compares every method
                for method in b.methods:
                    log.info("bench: %s, seed %d", method, seed)
                    print(f"[bench] {method} seed {seed}", flush=True)
                    _run_one(run_config(cfg, method, seed), out / "runs" / method / f"seed{seed}")
        return write_report(cfg, out)


def baseline_method(b: BenchOptions) -> str:
    return b.baseline or ("grpo" if "grpo" in b.methods else next(iter(b.methods)))


def write_report(cfg: BenchConfig, out: Path) -> list[MethodSummary]:
    b = cfg.bench
    by_seed: dict[str, dict[int, list]] = {}  # method -> seed -> curve, finished runs only
    for method in b.methods:
        runs = {s: out / "runs" / method / f"seed{s}" for s in b.seeds}
        by_seed[method] = {s: learning_curve(read_metrics(r, kind=None), b.metric)
                           for s, r in runs.items() if (r / DONE_FILE).is_file()}
    by_seed = {m: {s: c for s, c in cs.items() if c} for m, cs in by_seed.items()}
    curves = {m: list(cs.values()) for m, cs in by_seed.items()}
    summaries = [summarize_method(m, c, b.target_accuracy) for m, c in curves.items() if c]
    if not summaries:
        raise FileNotFoundError(f"{out}: no finished run to report")
    rc = run_config(cfg, next(iter(b.methods)), b.seeds[0])
    baseline = baseline_method(b)
    equal = equal_spend({m: cs for m, cs in by_seed.items() if cs}, baseline, b.confidence) \
        if by_seed.get(baseline) else []
    table = markdown_table(summaries, b.target_accuracy, budget_description(rc))
    if equal:
        table += "\n" + equal_spend_table(equal, baseline, b.confidence)
    write_text_atomic(out / "results.md", f"# spo bench\n\n{table}")
    results = {"budget": budget_description(rc), "target_accuracy": b.target_accuracy, "metric": b.metric,
               "summaries": [s.as_dict() for s in summaries],
               "baseline": baseline, "confidence": b.confidence,
               "equal_spend": [r.as_dict() for r in equal],
               "seeds": {m: sorted(cs) for m, cs in by_seed.items()},
               "curves": {m: [[p.__dict__ for p in c] for c in cs] for m, cs in curves.items()}}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    plot_curves(curves, out, b.metric)
    print(table)
    return summaries


def plot_curves(curves: dict[str, list], out: Path, metric: str) -> list[Path]:
    """accuracy_vs_{iterations,tokens,seconds}.png: each seed thin, the mean over seeds bold."""
    labelled = {f"{method} ({len(runs)} seeds)": runs for method, runs in curves.items()}
    paths = []
    for x in ("iterations", "tokens", "seconds"):
        path = save_curves({f"held-out {metric}": labelled}, x, out / f"accuracy_vs_{x}.png")
        if path is None:  # no matplotlib
            return []
        paths.append(path)
    return paths
