"""A bench's design: its axes (start model x update structure), its cells, and the
learning-rate rule that is the same for every method (docs/bench.md, "Third round").

Pure functions and typed options (no I/O, no training), used by `spo bench`:

* `UpdateStructure` (`bench.updates`): optimizer steps per iteration as mini-batches x
  epochs. One mini-batch and one epoch is one AdamW step on fresh samples, where the PPO
  ratio is exactly 1 and clipping never acts; several steps per iteration reuse the samples
  and let the ratio move, so clipping acts.
* `bench_cells(starts, updates)`: the cells of the grid, one per (start, update structure),
  and `cell_overrides(cell, samples_per_iteration)`: the run overrides that make a method's
  run belong to a cell (`model.name_or_path`, `algorithm.epochs`, `algorithm.mini_batch_size`).
* `LrSweep` (`bench.lr_sweep`): the learning-rate grid and its seeds; `check_lr_grid`;
  `choose_by_mean(scores, order)`: the candidate with the highest mean over seeds, ties
  going to the first in `order` (for learning rates: ascending, so ties go to the smaller).
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from typing import Hashable, Sequence

from spo.config import ConfigError

MAX_LR_STEP = 2.0
"""Neighbouring learning rates of a sweep grid are at most this factor apart."""
MIN_SWEEP_SEEDS = 3
"""A sweep averages at least this many seeds per learning rate, so that one lucky seed
cannot pick the lr (bench-arith-long's one-seed sweep did pick the worse one)."""
TIE_TOLERANCE = 1e-9
"""Means closer than this count as tied (they differ only by floating-point rounding)."""


@dataclass
class UpdateStructure:
    mini_batches: int = 1
    """Optimizer steps per epoch: the iteration's training samples are split into this many
    mini-batches (`algorithm.mini_batch_size` = ceil(samples / mini_batches))."""
    epochs: int = 1
    """Passes over the iteration's samples (`algorithm.epochs`)."""

    @property
    def updates(self) -> int:
        """Optimizer steps per iteration (at most, for SPO-tree, which may train fewer edges)."""
        return self.mini_batches * self.epochs

    @property
    def label(self) -> str:
        return f"{self.mini_batches}x{self.epochs}"


@dataclass
class LrSweep:
    grid: list[float] = field(default_factory=list)
    """Learning rates tried, ascending, neighbours at most 2x apart (`MAX_LR_STEP`)."""
    seeds: list[int] = field(default_factory=lambda: [10, 11, 12])
    """Seeds of the sweep's runs: at least 3, none of them a bench seed (the runs that are
    reported never chose their own lr)."""
    grid_by_updates: dict[str, list[float]] = field(default_factory=dict)
    """Update-structure label (`4x2`: mini-batches x epochs) -> its own grid, for cells with
    that structure (more steps per iteration usually want a smaller lr); others use `grid`."""
    on_start: str | None = None
    """Sweep only in the cells of this start (a `bench.starts` label); the cells of the other
    starts use the lr chosen there for the same method and update structure. Null: every
    cell sweeps on its own."""

    scaled_by_updates: dict[str, str] = field(default_factory=dict)
    """Update-structure label -> `<label>/<divisor>` (e.g. `{4x2: 1x1/4}`): cells of that
    structure are not swept; each method's lr there is its choice in the cell of structure
    <label> (same start, or the `on_start` cell) divided by <divisor>, the same rule for every
    method (docs/bench.md's cut 4: fewer runs when the budget is short)."""

    def scaled_from(self, cell: "Cell", updates: Sequence["UpdateStructure"]) -> tuple["Cell", float] | None:
        """(the cell whose sweep `cell`'s lrs come from, the divisor), or None when `cell` sweeps."""
        if cell.updates is None or cell.updates.label not in self.scaled_by_updates:
            return None
        label, divisor = parse_scaled(cell.updates.label, self.scaled_by_updates[cell.updates.label], updates)
        source = next(u for u in updates if u.label == label)
        return Cell(cell.start, cell.model, source), divisor

    def grid_for(self, cell: "Cell") -> list[float]:
        return self.grid_by_updates.get(cell.updates.label, self.grid) if cell.updates else self.grid

    def sweep_cell(self, cell: "Cell", starts: dict[str, str]) -> "Cell":
        """The cell whose sweep chooses `cell`'s lr."""
        if self.on_start is None or cell.start is None:
            return cell
        return Cell(self.on_start, starts[self.on_start], cell.updates)


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a start model and an update structure (either may be absent,
    when the bench has no such axis)."""
    start: str | None = None  # the start's label (`bench.starts` key)
    model: str | None = None  # its `model.name_or_path`
    updates: UpdateStructure | None = None

    @property
    def label(self) -> str:
        """Folder name of the cell under the bench's output (`weak-4x2`); "" for no axes."""
        parts = [p for p in (self.start, self.updates.label if self.updates else None) if p]
        return "-".join(parts)


def check_updates(updates: Sequence[UpdateStructure]) -> None:
    for i, u in enumerate(updates):
        if u.mini_batches < 1 or u.epochs < 1:
            raise ConfigError(f"bench.updates[{i}]: mini_batches and epochs must be >= 1, got {u}")
    labels = [u.label for u in updates]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"bench.updates: each update structure at most once, got {labels}")


def bench_cells(starts: dict[str, str], updates: Sequence[UpdateStructure]) -> list[Cell]:
    """Every (start, update structure) pair, starts outermost; one cell without axes."""
    start_items = list(starts.items()) or [(None, None)]
    update_items = list(updates) or [None]
    return [Cell(s, m, u) for (s, m), u in itertools.product(start_items, update_items)]


def mini_batch_size_for(samples: int, mini_batches: int) -> int:
    """The `algorithm.mini_batch_size` that splits `samples` training sequences into exactly
    `mini_batches` optimizer steps (the update takes ceil(samples / mini_batch_size))."""
    if samples < 1 or mini_batches < 1:
        raise ConfigError(f"need samples >= 1 and mini_batches >= 1, got {samples} and {mini_batches}")
    size = math.ceil(samples / mini_batches)
    if math.ceil(samples / size) != mini_batches:
        raise ConfigError(f"mini_batches={mini_batches}: {samples} training samples per iteration cannot be "
                          f"split into exactly {mini_batches} mini-batches")
    return size


def cell_overrides(cell: Cell, samples_per_iteration: int) -> list[str]:
    """Run overrides placing one method's run in `cell`; `samples_per_iteration` is the most
    training sequences the method's update gets per iteration (its algorithm's
    `max_samples_per_iteration`), which the mini-batch size divides."""
    out = []
    if cell.model is not None:
        out.append(f"model.name_or_path={cell.model}")
    if cell.updates is not None:
        size = mini_batch_size_for(samples_per_iteration, cell.updates.mini_batches)
        out += [f"algorithm.mini_batch_size={size}", f"algorithm.epochs={cell.updates.epochs}"]
    return out


def check_lr_grid(sweep: LrSweep, bench_seeds: Sequence[int]) -> None:
    """The sweep's rules: ascending positive lrs at most `MAX_LR_STEP` apart, at least
    `MIN_SWEEP_SEEDS` distinct seeds, none shared with the bench."""
    g = sweep.grid
    if len(g) < 2:
        raise ConfigError(f"bench.lr_sweep.grid: at least two learning rates, got {g}")
    if any(not (lr > 0) for lr in g):
        raise ConfigError(f"bench.lr_sweep.grid: learning rates must be > 0, got {g}")
    for lo, hi in zip(g, g[1:]):
        if not lo < hi:
            raise ConfigError(f"bench.lr_sweep.grid: must be ascending, got {g}")
        if hi / lo > MAX_LR_STEP * (1 + 1e-9):
            raise ConfigError(f"bench.lr_sweep.grid: {lo:g} -> {hi:g} is a step of {hi / lo:.2f}x; "
                              f"neighbours must be at most {MAX_LR_STEP:g}x apart")
    s = sweep.seeds
    if len(set(s)) != len(s) or len(s) < MIN_SWEEP_SEEDS:
        raise ConfigError(f"bench.lr_sweep.seeds: at least {MIN_SWEEP_SEEDS} distinct seeds, got {s}")
    shared = sorted(set(s) & set(bench_seeds))
    if shared:
        raise ConfigError(f"bench.lr_sweep.seeds: {shared} are also bench seeds; the sweep must use other seeds")


@dataclass
class Choice:
    chosen: Hashable
    means: dict  # candidate -> mean score over seeds
    seeds: list[int]


def choose_by_mean(scores: dict[Hashable, dict[int, float]], order: Sequence[Hashable]) -> Choice:
    """The candidate whose mean score over seeds is highest; among candidates tied within
    `TIE_TOLERANCE` the one first in `order` (ascending learning rates: the smaller lr).

    `scores`: candidate -> seed -> score (final validation accuracy). Every candidate must
    have the same seeds and no NaN, so that the means compare like with like."""
    if set(scores) != set(order) or not order:
        raise ValueError(f"scores for {sorted(map(str, scores))} but order {list(map(str, order))}")
    seeds = sorted(scores[order[0]])
    for c in order:
        if sorted(scores[c]) != seeds or not seeds:
            raise ValueError(f"candidate {c}: seeds {sorted(scores[c])}, expected {seeds} for every candidate")
        if any(math.isnan(v) for v in scores[c].values()):
            raise ValueError(f"candidate {c}: a NaN score")
    means = {c: statistics.fmean(scores[c].values()) for c in order}
    best = max(means.values())
    chosen = next(c for c in order if means[c] >= best - TIE_TOLERANCE)
    return Choice(chosen, means, seeds)


def lr_option(lr: float) -> str:
    """The run override that sets the learning rate (exact: repr round-trips a float)."""
    return f"optim.lr={lr!r}"


def check_bench_design(starts: dict[str, str], updates: Sequence[UpdateStructure], sweep: LrSweep | None,
                       bench_seeds: Sequence[int], methods: dict[str, list[str]]) -> None:
    """The axes and the sweep of a bench preset, checked before anything runs."""
    for label, model in starts.items():
        if not str(label) or "/" in str(label) or "-" in str(label) or not isinstance(model, str) or not model:
            raise ConfigError(f"bench.starts.{label}: a label without '/' or '-' mapped to a model name, "
                              f"got {model!r}")
    check_updates(updates)
    owned = {"model.name_or_path": "bench.starts" if starts else None,
             "algorithm.mini_batch_size": "bench.updates" if updates else None,
             "algorithm.epochs": "bench.updates" if updates else None,
             "optim.lr": "bench.lr_sweep" if sweep is not None else None}
    for method, overrides in methods.items():
        for o in overrides:
            key = o.split("=", 1)[0].strip()
            if owned.get(key):
                raise ConfigError(f"bench.methods.{method}: sets {key}, which {owned[key]} sets for every "
                                  "method; drop it from the method's overrides")
    if sweep is None:
        return
    check_lr_grid(sweep, bench_seeds)
    labels = {u.label for u in updates}
    for label, grid in sweep.grid_by_updates.items():
        if label not in labels:
            raise ConfigError(f"bench.lr_sweep.grid_by_updates.{label}: not one of bench.updates {sorted(labels)}")
        check_lr_grid(LrSweep(list(grid), sweep.seeds), bench_seeds)
    for label, rule in sweep.scaled_by_updates.items():
        source, _ = parse_scaled(label, rule, updates)
        if source in sweep.scaled_by_updates:
            raise ConfigError(f"bench.lr_sweep.scaled_by_updates.{label}: its source {source!r} is not swept itself")
        if label in sweep.grid_by_updates:
            raise ConfigError(f"bench.lr_sweep: {label!r} has both a grid (grid_by_updates) and a scaled lr "
                              "(scaled_by_updates); keep one")
    if sweep.on_start is not None and sweep.on_start not in starts:
        raise ConfigError(f"bench.lr_sweep.on_start: {sweep.on_start!r} is not one of bench.starts {sorted(starts)}")


def parse_scaled(label: str, rule: str, updates: Sequence[UpdateStructure]) -> tuple[str, float]:
    """`1x1/4` -> ("1x1", 4.0), checked: the source is another update structure of the bench
    that is itself swept, and the divisor is a positive number."""
    where = f"bench.lr_sweep.scaled_by_updates.{label}"
    source, _, divisor = str(rule).partition("/")
    labels = {u.label for u in updates}
    if label not in labels:
        raise ConfigError(f"{where}: {label!r} is not one of bench.updates {sorted(labels)}")
    if source not in labels or source == label:
        raise ConfigError(f"{where}: {rule!r} must name another of bench.updates {sorted(labels)} as <label>/<divisor>")
    try:
        value = float(divisor)
    except ValueError:
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{where}: {rule!r} needs a positive divisor after '/', as in 1x1/4")
    return source, value


def lr_sweep_table(choices: dict[str, Choice], grid: Sequence[float], metric: str) -> str:
    """Markdown: per method, the mean final validation `metric` at each lr and the lr kept."""
    seeds = next(iter(choices.values())).seeds if choices else []
    head = (f"Learning-rate sweep: final validation {metric} (withheld training problems), mean over seeds "
            f"{seeds}; kept: the highest mean, ties to the smaller lr.\n\n")
    cols = ["method", *(f"lr {lr:g}" for lr in grid), "kept"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method, c in choices.items():
        cells = [f"**{c.means[lr]:.3f}**" if lr == c.chosen else f"{c.means[lr]:.3f}" for lr in grid]
        lines.append("| " + " | ".join([method, *cells, f"{c.chosen:g}"]) + " |")
    return head + "\n".join(lines) + "\n"
