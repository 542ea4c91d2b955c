"""Comparing methods: learning curves from run logs and their aggregation over seeds.

Pure functions over the rows of `metrics.jsonl` (no I/O), used by `spo bench`:

* `learning_curve(rows)`: one point per held-out evaluation, with what the run had spent
  by then (training iterations, generated tokens, policy samples, training seconds).
* `metric_curve(rows, metric, kind)`: the same for any metric of the training lines or of
  the evaluation lines (`spo plot` draws these).
* `first_reaching(curve, target, key)`: the spend at the first evaluation whose accuracy
  reaches `target` (None if none did).
* `summarize_method(curves, target)`: final and best accuracy (mean and spread over
  seeds) and the spend to reach the target, for one method.

"Generated tokens" count every token sampled from the policy: responses, SPO-chain's MC
continuations and SPO-tree's nodes (`tokens_generated_total`); "policy samples" count
the sequences sampled (`samples_generated`); seconds are training time without
evaluation (`time_total`), so evaluation cost, the same protocol for every method, does
not enter the comparison.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

SPEND_KEYS = ("iteration", "tokens", "samples", "seconds")


@dataclass
class CurvePoint:
    iteration: int
    tokens: float
    samples: float
    seconds: float
    accuracy: float


def learning_curve(rows: Iterable[dict[str, Any]], metric: str = "accuracy") -> list[CurvePoint]:
    """Evaluation points of one run, each with the run's cumulative spend at that moment."""
    return metric_curve(rows, metric, kind="eval")


def metric_curve(rows: Iterable[dict[str, Any]], metric: str, kind: str = "eval") -> list[CurvePoint]:
    """`metric` on every line of `kind` ("train" or "eval") that has it, each point with the
    run's cumulative spend at the end of that line's iteration, sorted by iteration.

    A point's value sits in `CurvePoint.accuracy`, the name `spo bench` writes. Lines where
    the metric is missing or null (a NaN logged as null) give no point."""
    spent = {0: (0.0, 0.0, 0.0)}
    picked = []
    tokens = samples = seconds = 0.0
    for r in rows:
        line_kind = r.get("kind", "train")
        if line_kind == kind and r.get(metric) is not None:
            picked.append(r)
        if line_kind == "eval":
            continue
        tokens += r["tokens_generated_total"]
        samples += r["samples_generated"]
        seconds += r["time_total"]
        spent[r["iteration"]] = (tokens, samples, seconds)
    curve = []
    for e in picked:
        it = e["iteration"]
        if it not in spent:
            raise ValueError(f"evaluation at iteration {it} but no training line for it")
        t, s, sec = spent[it]
        curve.append(CurvePoint(it, t, s, sec, float(e[metric])))
    curve.sort(key=lambda p: p.iteration)
    return curve


def first_reaching(curve: Sequence[CurvePoint], target: float, key: str) -> float | None:
    """The spend (`key` in SPEND_KEYS) at the first point with accuracy >= target."""
    if key not in SPEND_KEYS:
        raise ValueError(f"key must be one of {SPEND_KEYS}, got {key!r}")
    for p in curve:
        if p.accuracy >= target:
            return float(getattr(p, key))
    return None


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value); NaN, NaN for none."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class MethodSummary:
    method: str
    seeds: int
    start_accuracy: float
    final_accuracy: float
    final_accuracy_std: float
    best_accuracy: float
    best_accuracy_std: float
    reached: int  # seeds that reached the target accuracy
    iterations_to_target: float  # means over the seeds that reached it (NaN if none)
    tokens_to_target: float
    samples_to_target: float
    seconds_to_target: float
    iterations: float  # what the runs spent in all (means over seeds)
    tokens: float
    samples: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_method(method: str, curves: Sequence[Sequence[CurvePoint]], target: float) -> MethodSummary:
    """Aggregate one method's runs (one curve per seed)."""
    curves = [c for c in curves if c]
    if not curves:
        raise ValueError(f"{method}: no run has an evaluation point")
    final = [c[-1].accuracy for c in curves]
    best = [max(p.accuracy for p in c) for c in curves]
    to_target = {k: [first_reaching(c, target, k) for c in curves] for k in SPEND_KEYS}
    reached = sum(v is not None for v in to_target["tokens"])

    def mean_reached(key: str) -> float:
        return mean_and_std([v for v in to_target[key] if v is not None])[0]

    def mean_last(key: str) -> float:
        return statistics.fmean(getattr(c[-1], key) for c in curves)

    return MethodSummary(
        method=method, seeds=len(curves),
        start_accuracy=statistics.fmean(c[0].accuracy for c in curves),
        final_accuracy=mean_and_std(final)[0], final_accuracy_std=mean_and_std(final)[1],
        best_accuracy=mean_and_std(best)[0], best_accuracy_std=mean_and_std(best)[1],
        reached=reached,
        iterations_to_target=mean_reached("iteration"), tokens_to_target=mean_reached("tokens"),
        samples_to_target=mean_reached("samples"), seconds_to_target=mean_reached("seconds"),
        iterations=mean_last("iteration"), tokens=mean_last("tokens"), samples=mean_last("samples"),
        seconds=mean_last("seconds"),
    )


def _fmt(x: float, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_table(summaries: Sequence[MethodSummary], target: float, budget: str) -> str:
    """The results table: accuracy over seeds and the spend to reach `target`."""
    head = (f"Budget: {budget}. Accuracy: held-out, mean ± std over seeds. Spend to reach "
            f"{target:.2f} accuracy: mean over the seeds that reached it.\n\n")
    cols = ["method", "seeds", "start acc", "final acc", "best acc", f"reached {target:.2f}",
            "iters to target", "tokens to target", "samples to target", "seconds to target",
            "tokens (all)", "seconds (all)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summaries:
        lines.append("| " + " | ".join([
            s.method, str(s.seeds), _fmt(s.start_accuracy, ".3f"),
            f"{_fmt(s.final_accuracy, '.3f')} ± {_fmt(s.final_accuracy_std, '.3f')}",
            f"{_fmt(s.best_accuracy, '.3f')} ± {_fmt(s.best_accuracy_std, '.3f')}",
            f"{s.reached}/{s.seeds}", _fmt(s.iterations_to_target, ".1f"), _fmt(s.tokens_to_target, ",.0f"),
            _fmt(s.samples_to_target, ",.0f"), _fmt(s.seconds_to_target, ".0f"),
            _fmt(s.tokens, ",.0f"), _fmt(s.seconds, ".0f"),
        ]) + " |")
    return head + "\n".join(lines) + "\n"
