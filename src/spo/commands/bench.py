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

With axes (`bench.starts`: start models, `bench.updates`: optimizer steps per iteration)
every cell of their grid is such a bench in its own folder OUT/<cell> (e.g. OUT/weak-4x2),
and OUT/map.png draws each method's difference to the baseline at equal tokens, per cell
(spo.evaluate.bench_map). With `bench.lr_sweep` each (cell, method) first runs the lr grid
on the sweep's seeds, judged on validation problems, under OUT/<cell>/sweep/, and its runs
use the lr chosen by the mean (spo.evaluate.bench_design; docs/bench.md, "Third round").
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spo.algorithms.registry import algorithm_class
from spo.cache import write_text_atomic
from spo.config import ConfigError, RunConfig, build_config
from spo.config_io import load_sections, to_dict
from spo.evaluate.bench_design import (
    Cell,
    LrSweep,
    UpdateStructure,
    bench_cells,
    cell_overrides,
    check_bench_design,
    choose_by_mean,
    lr_option,
    lr_sweep_table,
)
from spo.evaluate.bench_map import delta_map_data, save_delta_map
from spo.evaluate.learning_curves import (
    MethodSummary,
    equal_spend,
    equal_spend_table,
    learning_curve,
    markdown_table,
    summarize_method,
    update_diagnostics,
    update_diagnostics_table,
)
from spo.commands.plot import save_curves
from spo.presets import resolve_preset
from spo.train.faults import PeerFailedError, kill_point
from spo.train.loop import train
from spo.train.preemption import Preempted
from spo.train.resume_check import CONFIG_FILE, describe_changes, saved_config_changes
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
    starts: dict[str, str] = field(default_factory=dict)
    """Start-accuracy axis: label -> `model.name_or_path` of the run's start model (e.g.
    `{weak: "sft:sft-arith-long-weak", mid: "sft:sft-arith-long"}`); empty: only `run.model`."""
    updates: list[UpdateStructure] = field(default_factory=list)
    """Update-structure axis: each entry `{mini_batches: m, epochs: e}` is a cell whose runs take
    m x e optimizer steps per iteration (`algorithm.mini_batch_size` set per method so that its
    training samples split into m mini-batches); empty: the run's own settings."""
    lr_sweep: LrSweep | None = None
    """Choose each (cell, method)'s lr before its runs: every lr of `grid` on each of `seeds`,
    evaluated on validation problems, the lr with the best mean final accuracy kept (ties: the
    smaller); null: the lr of `run` and the method's overrides."""


@dataclass
class BenchConfig:
    bench: BenchOptions
    run: dict[str, Any]  # validated per method by build_config


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = load_bench_config(resolve_preset(args.config), args.overrides)
    out = Path(args.output_dir or Path("bench") / Path(args.config).stem)
    if args.sweep_only and cfg.bench.lr_sweep is None:
        raise ConfigError("--sweep-only: this bench has no bench.lr_sweep to run")
    run_bench(cfg, out, only_report=args.report_only, jobs=args.jobs, sweep_only=args.sweep_only)
    if args.sweep_only:
        print(f"lr sweep: {out}/<cell>/lr_sweep.md, chosen: {out}/<cell>/lr_chosen.json")
        return 0
    cells = bool(cfg.bench.starts or cfg.bench.updates)  # one folder per cell, and the map of them
    where = f"{out}/<cell>" if cells else f"{out}"
    print(f"results: {where}/results.md, plots: {where}/accuracy_vs_*.png" + (f", map: {out}/map.png" if cells else ""))
    return 0


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
    check_bench_design(b.starts, b.updates, b.lr_sweep, b.seeds, b.methods)
    for cell in bench_cells(b.starts, b.updates):
        for method in b.methods:
            run_config(cfg, method, b.seeds[0], cell)  # every run's config must be valid before anything runs
    return cfg


def run_config(cfg: BenchConfig, method: str, seed: int, cell: Cell = Cell(), extra: list[str] = ()) -> RunConfig:
    """The shared run config + the method's overrides + the cell's + `extra` (the swept lr,
    the sweep's validation split) + the seed."""
    where = f"bench method {method!r}" + (f" in cell {cell.label!r}" if cell.label else "")
    try:
        overrides = [*cfg.bench.methods[method], f"seed={seed}"]
        if cell.updates is not None:  # the mini-batch size depends on the method's samples per iteration
            rc = build_config(cfg.run, overrides)
            samples = algorithm_class(rc.algorithm.estimator).max_samples_per_iteration(rc)
        else:
            samples = 1
        rc = build_config(cfg.run, [*overrides[:-1], *cell_overrides(cell, samples), *extra, overrides[-1]])
    except (ConfigError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
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


RERUN = "the same `spo bench` command again (finished runs are reused, the interrupted one continues where it stopped)"
"""A preempted bench run's advice (spo.train.preemption.Preempted): not `spo train --resume`."""


REUSE_IGNORES = frozenset({"progress", "save_every", "keep_checkpoints", "log_episodes", "preempt_grace",
                           "collective_timeout"})
"""Keys in which a finished run's config may differ from the bench's and still be reused: none
of them changes what the run trained, what it spent or how it was evaluated."""


def finished(rc: RunConfig, run_dir: Path) -> bool:
    """Whether `run_dir` holds a finished run of `rc`, to be reused. A finished run whose saved
    config differs from `rc` in anything else than REUSE_IGNORES (another lr, method option,
    budget, evaluation...) is refused with the keys (ConfigError, exit 2): reusing it would
    report another experiment's numbers under this one's name."""
    if not (run_dir / DONE_FILE).is_file():
        return False
    found = saved_config_changes(run_dir, rc)
    if found is None:
        raise ConfigError(f"{run_dir}: a finished bench run without its {CONFIG_FILE}; it cannot be checked against "
                          "this bench's config: delete the folder to run it again")
    changes = found[1]
    differing = [k for k in changes if k not in REUSE_IGNORES]
    if differing:
        listed = describe_changes(changes, differing)
        raise ConfigError(f"{run_dir}: finished with another config than this bench asks for ({listed}); it is not "
                          "reused: give the bench another --output-dir, or delete that run's folder to run it again")
    return True


def _run_one(label: str, rc: RunConfig, run_dir: Path) -> None:
    """Train one (method, seed) run: skipped when done, continued when interrupted."""
    if (run_dir / DONE_FILE).is_file():
        log.info("%s: finished earlier, not repeated", run_dir)
        return
    print(f"[bench] {label}", flush=True)
    t0 = time.perf_counter()
    rc.output_dir = str(run_dir)
    train(rc, resume_dir=AUTO, rerun=RERUN)
    kill_point("bench.done")
    write_text_atomic(run_dir / DONE_FILE, json.dumps({"wall_seconds": time.perf_counter() - t0, "pid": os.getpid(),
                                                       "torch_threads": torch.get_num_threads()}))


_STOPPED_IN_THIS_WORKER = False  # a worker whose run was preempted starts no further run


def _worker_init(threads: int, log_level: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format=f"%(asctime)s [pid {os.getpid()}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if sys.platform.startswith("linux"):  # the bench process gone (even kill -9): preempt, as on its SIGTERM
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _run_in_worker(label: str, rc: RunConfig, run_dir: Path) -> None:
    global _STOPPED_IN_THIS_WORKER
    if _STOPPED_IN_THIS_WORKER:
        return
    try:
        _run_one(label, rc, run_dir)
    except Preempted:
        _STOPPED_IN_THIS_WORKER = True
        raise


def run_all(runs: list[tuple[str, RunConfig, Path]], jobs: int = 1) -> None:
    """Train the (label, config, folder) runs not finished yet. jobs 1: one after another in
    this process. jobs > 1: in that many worker processes at once, each with
    cpu_count // jobs torch threads (small models use many cores poorly, so several runs at
    once finish more runs per hour; a run's numbers then depend on that thread count as
    float sums do). The first run that fails cancels those not started and is raised.
    SIGTERM and SIGUSR1 sent to the bench are passed on to its workers, whose runs checkpoint
    and stop (spo.train.preemption); a Ctrl-C reaches them from the terminal."""
    todo = [r for r in runs if not finished(r[1], r[2])]  # every reused run checked before any trains
    if jobs <= 1 or len(todo) <= 1:
        for label, rc, run_dir in runs:
            _run_one(label, rc, run_dir)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(threads, logging.getLogger().getEffectiveLevel()))
    stop: list[str] = []

    def pass_on(signum: int, frame: object) -> None:
        stop.append(signal.Signals(signum).name)
        if signum != signal.SIGINT:  # a terminal's Ctrl-C already reached the whole process group
            for child in multiprocessing.active_children():
                os.kill(child.pid, signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        futures = [pool.submit(_run_in_worker, *r) for r in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()  # raises the first failure (Preempted included)
    except BrokenProcessPool:
        after = f"after {stop[0]}, its preempt_grace ran out" if stop else "killed? out of memory?"
        raise PeerFailedError(f"a spo bench worker process died ({after}); finished runs and every run's last good "
                              f"checkpoint are kept: to continue, run {RERUN}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_bench(cfg: BenchConfig, out: Path, *, only_report: bool = False, jobs: int = 1,
              sweep_only: bool = False) -> list[MethodSummary]:
    """Train every run not done yet (the lr sweeps first, when set), then write each cell's
    table and plots, and the map of the cells when the bench has axes. `jobs`: runs trained
    at once (`run_all`). `sweep_only`: stop once the lrs are chosen (lr_sweep.md and
    lr_chosen.json written), before the bench's own runs."""
    with RunLock(out):
        write_text_atomic(out / "bench.json", json.dumps({"bench": to_dict(cfg.bench), "run": cfg.run}, indent=2))
        b = cfg.bench
        cells = bench_cells(b.starts, b.updates)
        lrs: dict[str, dict[str, float] | None] = {}
        for cell in cells:
            swept = b.lr_sweep.sweep_cell(cell, b.starts) if b.lr_sweep else cell
            scaled = b.lr_sweep.scaled_from(swept, b.updates) if b.lr_sweep else None
            divisor = 1.0
            if scaled is not None:  # this structure's lrs: another structure's choices / divisor
                swept, divisor = scaled
            if swept.label not in lrs:
                lrs[swept.label] = run_lr_sweep(cfg, swept, out / swept.label, only_report, jobs)
            lrs[cell.label] = lrs[swept.label] and {m: lr / divisor for m, lr in lrs[swept.label].items()}
            if lrs[cell.label] is not None:  # which lr each method's runs in this cell use, and whence
                (out / cell.label).mkdir(parents=True, exist_ok=True)
                whence = {"swept_in": swept.label, **({"divided_by": divisor} if scaled else {})}
                write_text_atomic(out / cell.label / "lr_chosen.json",
                                  json.dumps({**whence, "lr": lrs[cell.label]}, indent=2))
        if sweep_only:
            return []
        if not only_report:  # seed-major: a partial bench already compares every method in every cell
            run_all([(f"{cell.label + ': ' if cell.label else ''}{method} seed {seed}",
                      run_config(cfg, method, seed, cell, lr_override(lrs[cell.label], method)),
                      out / cell.label / "runs" / method / f"seed{seed}")
                     for seed in b.seeds for cell in cells for method in b.methods], jobs)
        summaries = []
        for cell in cells:
            if len(cells) > 1 and not any((out / cell.label / "runs").glob(f"*/seed*/{DONE_FILE}")):
                continue  # a cell not started yet (a bench cut short)
            summaries += write_report(cfg, out / cell.label, cell, lr_override(lrs[cell.label], next(iter(b.methods))))
        if b.starts or b.updates:
            write_map(cfg, out, cells)
        return summaries


def lr_override(chosen: dict[str, float] | None, method: str) -> list[str]:
    return [lr_option(chosen[method])] if chosen else []


def run_lr_sweep(cfg: BenchConfig, cell: Cell, out: Path, only_report: bool, jobs: int = 1) -> dict[str, float] | None:
    """Each method's lr for `cell`: every lr of the grid on every sweep seed, judged on the
    validation problems (`eval.split=validation`), chosen by `choose_by_mean` (ties: the
    smaller lr). Writes OUT/<cell>/lr_sweep.{md,json}; None without a sweep."""
    b = cfg.bench
    sweep = b.lr_sweep
    if sweep is None:
        return None
    grid = sweep.grid_for(cell)

    def run_dir(method: str, lr: float, seed: int) -> Path:
        return out / "sweep" / method / f"lr{lr:g}" / f"seed{seed}"

    if not only_report:
        run_all([(f"{cell.label + ': ' if cell.label else ''}lr sweep {method} lr {lr:g} seed {seed}",
                  run_config(cfg, method, seed, cell, [lr_option(lr), "eval.split=validation"]),
                  run_dir(method, lr, seed))
                 for method in b.methods for lr in grid for seed in sweep.seeds], jobs)
    scores: dict[str, dict[float, dict[int, float]]] = {}
    for method in b.methods:
        scores[method] = {}
        for lr in grid:
            scores[method][lr] = {}
            for seed in sweep.seeds:
                path = run_dir(method, lr, seed)
                if not (path / DONE_FILE).is_file():
                    raise FileNotFoundError(f"{path}: lr sweep run not finished; run the bench without "
                                            "--report-only first")
                curve = learning_curve(read_metrics(path, kind=None), b.metric)
                scores[method][lr][seed] = curve[-1].accuracy
    choices = {m: choose_by_mean(scores[m], grid) for m in b.methods}
    write_text_atomic(out / "lr_sweep.md", lr_sweep_table(choices, grid, b.metric))
    write_text_atomic(out / "lr_sweep.json", json.dumps(
        {m: {"chosen": c.chosen, "seeds": c.seeds, "means": {f"{lr:g}": v for lr, v in c.means.items()},
             "scores": {f"{lr:g}": scores[m][lr] for lr in grid}} for m, c in choices.items()}, indent=2))
    return {m: c.chosen for m, c in choices.items()}


def baseline_method(b: BenchOptions) -> str:
    return b.baseline or ("grpo" if "grpo" in b.methods else next(iter(b.methods)))


def write_report(cfg: BenchConfig, out: Path, cell: Cell = Cell(), extra: list[str] = ()) -> list[MethodSummary]:
    b = cfg.bench
    rows: dict[str, dict[int, list]] = {}  # method -> seed -> metrics.jsonl lines, finished runs only
    for method in b.methods:
        runs = {s: out / "runs" / method / f"seed{s}" for s in b.seeds}
        rows[method] = {s: read_metrics(r, kind=None) for s, r in runs.items() if (r / DONE_FILE).is_file()}
    by_seed = {m: {s: c for s, run in rs.items() if (c := learning_curve(run, b.metric))} for m, rs in rows.items()}
    curves = {m: list(cs.values()) for m, cs in by_seed.items()}
    summaries = [summarize_method(m, c, b.target_accuracy) for m, c in curves.items() if c]
    if not summaries:
        raise FileNotFoundError(f"{out}: no finished run to report")
    rc = run_config(cfg, next(iter(b.methods)), b.seeds[0], cell, extra)
    baseline = baseline_method(b)
    equal = equal_spend({m: cs for m, cs in by_seed.items() if cs}, baseline, b.confidence) \
        if by_seed.get(baseline) else []
    table = markdown_table(summaries, b.target_accuracy, budget_description(rc))
    if equal:
        table += "\n" + equal_spend_table(equal, baseline, b.confidence)
    diagnostics = update_diagnostics({m: {s: rows[m][s] for s in cs} for m, cs in by_seed.items() if cs})
    table += "\n" + update_diagnostics_table(diagnostics)
    choice = selection(by_seed, list(b.methods)) if rc.eval.split == "validation" else None
    if choice is not None:
        table += (f"\nSelection (runs judged on validation problems): **{choice.chosen}**, the highest mean final "
                  f"accuracy over seeds {choice.seeds} (ties: the method listed first).\n")
    write_text_atomic(out / "results.md", f"# spo bench\n\n{table}")
    results = {"budget": budget_description(rc), "target_accuracy": b.target_accuracy, "metric": b.metric,
               "choice": choice.chosen if choice else None,
               "summaries": [s.as_dict() for s in summaries],
               "baseline": baseline, "confidence": b.confidence,
               "equal_spend": [r.as_dict() for r in equal],
               "update_diagnostics": diagnostics,
               "seeds": {m: sorted(cs) for m, cs in by_seed.items()},
               "curves": {m: [[p.__dict__ for p in c] for c in cs] for m, cs in curves.items()}}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    plot_curves(curves, out, b.metric)
    print(table)
    return summaries


def selection(by_seed: dict[str, dict[int, list]], order: list[str]):
    """A selection bench's choice (`choose_by_mean` of final accuracies, ties to the method
    listed first); None until every method has finished the same seeds."""
    finals = {m: {s: c[-1].accuracy for s, c in by_seed.get(m, {}).items()} for m in order}
    seeds = {tuple(sorted(f)) for f in finals.values()}
    if len(seeds) != 1 or not next(iter(seeds)):
        return None
    return choose_by_mean(finals, order)


def write_map(cfg: BenchConfig, out: Path, cells: list[Cell]) -> Path | None:
    """OUT/map.png, and OUT/map.json with the numbers it draws: every method's Δ to the
    baseline at equal generated tokens, with its interval, per cell, from the cells'
    results.json."""
    equal = {}
    for cell in cells:
        path = out / cell.label / "results.json"
        if path.is_file():
            equal[cell.label] = json.loads(path.read_text())["equal_spend"]
    if not equal:
        return None
    baseline = baseline_method(cfg.bench)
    bars = delta_map_data(equal, baseline)  # what the figure draws, also as numbers
    write_text_atomic(out / "map.json", json.dumps({"baseline": baseline, "confidence": cfg.bench.confidence,
                                                     "at": "tokens", "bars": [asdict(b) for b in bars]}, indent=2))
    return save_delta_map(equal, out / "map.png", baseline=baseline, confidence=cfg.bench.confidence)


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
