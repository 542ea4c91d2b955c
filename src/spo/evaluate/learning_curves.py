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
* `value_at(curve, key, x)`: accuracy at spend x (iterations, tokens, ...), linearly
  interpolated between the two evaluations around x; `common_spend(curves, key)`: the
  largest spend every run reached (the last iteration all reached, the fewest tokens any
  spent), where methods are compared at equal iterations and at equal generated tokens.
* `paired_t_interval(diffs)`: mean of per-seed differences (same seed, so same prompts
  and initial weights) with a Student-t confidence interval; `paired_comparison` and
  `equal_spend_table` apply it to every method against a baseline (GRPO);
  `differences_at_equal_spend` gives the per-seed differences themselves, so that a gap can
  be compared between two cells of a bench with axes.
* `update_diagnostics(rows)` / `update_diagnostics_table`: per method, each run's mean PPO
  clip fraction and approx-KL over its iterations (0 in every iteration when each
  iteration is one optimizer step on fresh samples: a check that an update-structure axis
  did what it says).

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


# --- equal spend and paired comparisons -------------------------------------------------

def value_at(curve: Sequence[CurvePoint], key: str, x: float) -> float:
    """Accuracy at spend `x` (`key` in SPEND_KEYS): linear interpolation between the last
    evaluation at or below x and the first above it; exactly an evaluation's value when
    one falls at x. NaN when x lies outside the curve (before its first point or past
    its last), since nothing was measured there."""
    if key not in SPEND_KEYS:
        raise ValueError(f"key must be one of {SPEND_KEYS}, got {key!r}")
    pts = [(float(getattr(p, key)), p.accuracy) for p in curve]
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            if x == x1 or x1 == x0:
                return y1 if x == x1 else y0
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]  # x is the last point's spend


def common_spend(curves: Iterable[Sequence[CurvePoint]], key: str) -> float:
    """The largest spend every run reached: min over runs of the last point's `key`
    (the last iteration all methods reached; the fewest generated tokens any run spent)."""
    ends = [float(getattr(c[-1], key)) for c in curves if c]
    if not ends:
        raise ValueError("no curve has a point")
    return min(ends)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution function with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf` (bisection; |error| < 1e-10): t_quantile(0.975, 4) = 2.776."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2.0


@dataclass
class PairedDiff:
    """Mean of n paired differences with a two-sided Student-t interval (NaN bounds when n < 2)."""
    n: int
    mean: float
    std: float
    low: float
    high: float
    confidence: float = 0.95


def paired_t_interval(diffs: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """mean(d) ± t_{(1+confidence)/2, n-1} · std(d)/sqrt(n) over per-seed differences d."""
    n = len(diffs)
    if n == 0:
        return PairedDiff(0, math.nan, math.nan, math.nan, math.nan, confidence)
    mean, std = mean_and_std(list(diffs))
    if n < 2:
        return PairedDiff(n, mean, math.nan, math.nan, math.nan, confidence)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return PairedDiff(n, mean, std, mean - half, mean + half, confidence)


def paired_comparison(values: dict[int, float], baseline: dict[int, float], confidence: float = 0.95) -> PairedDiff:
    """Method minus baseline over the seeds both have (seed -> value; NaNs skipped)."""
    seeds = sorted(s for s in values.keys() & baseline.keys()
                   if not (math.isnan(values[s]) or math.isnan(baseline[s])))
    return paired_t_interval([values[s] - baseline[s] for s in seeds], confidence)


EQUAL_SPEND_KEYS = ("iteration", "tokens", "seconds")


def differences_at_equal_spend(curves: dict[int, Sequence[CurvePoint]], base: dict[int, Sequence[CurvePoint]],
                               key: str) -> dict[int, float]:
    """Seed -> accuracy of `curves` minus that of `base` (seed -> curve each) at the pair's
    common spend `key` (as `equal_spend` compares them), over the seeds both have. Comparing
    these across two cells with `paired_comparison` (same seeds) asks whether a method's gap
    to the baseline differs between the cells (docs/bench.md, third round, H3)."""
    x = common_spend([c for c in [*curves.values(), *base.values()] if c], key)
    return {s: value_at(curves[s], key, x) - value_at(base[s], key, x)
            for s in sorted(curves.keys() & base.keys()) if curves[s] and base[s]}


@dataclass
class EqualSpend:
    """One method against the baseline at equal spend, seed by seed. For each spend key,
    `spend` is the common spend of this method's and the baseline's runs (the last
    iteration all of them reached, the fewest tokens / seconds any of them spent)."""
    method: str
    seeds: int
    spend: dict[str, float]
    at: dict[str, float]  # spend key -> this method's mean accuracy over seeds there
    at_std: dict[str, float]
    baseline_at: dict[str, float]  # the baseline's mean accuracy at the same spend
    vs_baseline: dict[str, PairedDiff]  # "final" and the spend keys; empty for the baseline itself

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seeds": self.seeds, "spend": self.spend, "at": self.at,
                "at_std": self.at_std, "baseline_at": self.baseline_at,
                "vs_baseline": {k: asdict(v) for k, v in self.vs_baseline.items()}}


def equal_spend(curves: dict[str, dict[int, Sequence[CurvePoint]]], baseline: str,
                confidence: float = 0.95) -> list[EqualSpend]:
    """Every method against `baseline` (`curves`: method -> seed -> curve) at equal
    iterations, generated tokens and training seconds, and in final accuracy: accuracies
    at the pair's common spend (`common_spend` over both methods' runs, so that one costly
    method does not pull every comparison down to its few iterations), and the paired
    differences (same seed) with their t intervals."""
    if baseline not in curves:
        raise ValueError(f"baseline {baseline!r} has no runs")
    base = curves[baseline]
    rows = []
    for m, by_seed in curves.items():
        runs = [c for c in [*by_seed.values(), *base.values()] if c]
        spend = {k: common_spend(runs, k) for k in EQUAL_SPEND_KEYS}
        mine = {k: {s: value_at(c, k, spend[k]) for s, c in by_seed.items() if c} for k in EQUAL_SPEND_KEYS}
        theirs = {k: {s: value_at(c, k, spend[k]) for s, c in base.items() if c} for k in EQUAL_SPEND_KEYS}
        vs = {}
        if m != baseline:
            vs["final"] = paired_comparison({s: c[-1].accuracy for s, c in by_seed.items() if c},
                                            {s: c[-1].accuracy for s, c in base.items() if c}, confidence)
            vs.update({k: paired_comparison(mine[k], theirs[k], confidence) for k in EQUAL_SPEND_KEYS})
        at = {k: mean_and_std(list(mine[k].values())) for k in EQUAL_SPEND_KEYS}
        rows.append(EqualSpend(m, len(by_seed), spend, {k: v[0] for k, v in at.items()},
                               {k: v[1] for k, v in at.items()},
                               {k: mean_and_std(list(theirs[k].values()))[0] for k in EQUAL_SPEND_KEYS}, vs))
    return rows


def _fmt_diff(d: PairedDiff | None) -> str:
    if d is None:
        return "–"
    if d.n < 2:
        return f"{_fmt(d.mean, '+.3f')} (n={d.n})"
    return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def equal_spend_table(rows: Sequence[EqualSpend], baseline: str, confidence: float = 0.95) -> str:
    """Each method against the baseline at equal iterations, generated tokens and training
    seconds: both accuracies and the paired difference with its confidence interval."""
    pct = f"{100 * confidence:g}%"
    head = (f"Equal spend, each method against {baseline}: held-out accuracy at the last iteration "
            f"that every run of the two methods reached, and at the fewest generated tokens and training "
            f"seconds that any of them spent, linearly interpolated between evaluations; mean over seeds, "
            f"{baseline}'s in brackets. Δ: method minus {baseline}, seed by seed (same prompts, same initial "
            f"weights), mean [{pct} paired t interval over seeds].\n\n")
    cols = ["method", "seeds", "iteration", "acc", "Δ", "tokens", "acc", "Δ", "seconds", "acc", "Δ", "Δ final"]
    fmts = {"iteration": ".0f", "tokens": ",.0f", "seconds": ".0f"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.method, str(r.seeds)]
        for k in EQUAL_SPEND_KEYS:
            acc = _fmt(r.at[k], ".3f") + ("" if r.method == baseline else f" ({_fmt(r.baseline_at[k], '.3f')})")
            cells += [_fmt(r.spend[k], fmts[k]), acc, _fmt_diff(r.vs_baseline.get(k))]
        cells.append(_fmt_diff(r.vs_baseline.get("final")))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


UPDATE_DIAGNOSTICS = ("clip_frac", "approx_kl")
"""Training-line metrics that are exactly 0 when the PPO ratio is 1 (one step per iteration)."""


def update_diagnostics(rows: dict[str, dict[int, Sequence[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> metric -> {"runs", "min", "mean", "max", "zero_runs"} over the runs' means of
    that metric over their training lines (`rows`: method -> seed -> metrics.jsonl lines; only
    training lines carry these metrics, so evaluation lines may be among them)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, by_seed in rows.items():
        out[method] = {}
        for key in UPDATE_DIAGNOSTICS:
            means = [statistics.fmean(r[key] for r in run if key in r) for run in by_seed.values()
                     if any(key in r for r in run)]
            if means:
                out[method][key] = {"runs": len(means), "min": min(means), "mean": statistics.fmean(means),
                                    "max": max(means), "zero_runs": sum(m == 0 for m in means)}
    return out


def update_diagnostics_table(diag: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: per method, each metric's run means as mean [min, max] and how many runs were 0."""
    lines = ["Update diagnostics: each run's mean over its iterations, then mean [min, max] over runs; "
             "'zero' counts the runs whose mean is exactly 0 (one optimizer step per iteration gives 0).\n",
             "| method | " + " | ".join(f"{k} | {k} zero" for k in UPDATE_DIAGNOSTICS) + " |",
             "|---|" + "---|---|" * len(UPDATE_DIAGNOSTICS)]
    for method, metrics in diag.items():
        cells = []
        for key in UPDATE_DIAGNOSTICS:
            d = metrics.get(key)
            cells += [f"{d['mean']:.4g} [{d['min']:.4g}, {d['max']:.4g}]", f"{d['zero_runs']}/{d['runs']}"] if d \
                else ["–", "–"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
