"""Credit-assignment accuracy: how well an estimator's advantages match true advantages
(`spo credit`, docs/credit.md). Pure functions over plain lists: no I/O, no engine.

Ground truth. V*(s) is the expected reward of the frozen policy from state s (the prompt
plus a response prefix), estimated by K Monte-Carlo continuations (`spo.evaluate.
ground_truth`) with standard error SE(s); V*(end of response) = its reward, SE 0. Scored
boundaries 0 = b_0 < b_1 < ... < b_J = T cut a response into *units* (single tokens at
stride 1); the true advantage of unit j is

    A*_j = V*(b_{j+1}) - V*(b_j),      SE(A*_j) = sqrt(SE(b_j)^2 + SE(b_{j+1})^2)

(the two estimates come from independent continuations). At stride 1 this is the
per-token advantage Q(s_t, y_t) - V(s_t). A segment's true advantage is the sum of its
units', V*(end) - V*(start).

Estimates. An estimator gives every token an advantage (GRPO/RLOO: the response's, SPO:
its segment's). Its value for a unit is the mean of its tokens' advantages (the token's
own at stride 1).

Metrics, pooled over all units of all responses:
  pearson         correlation of the estimates with A* (None when either is constant);
  ceiling         the correlation that the exact advantages would reach with the noisy A*:
                  sqrt(1 - mean SE(A*)^2 / var A*), so ground-truth noise is not mistaken
                  for an estimator's error (A* = A + noise of variance SE^2, independent);
  sign_agreement  over units whose |A*| > z SE(A*): share whose estimate has A*'s sign,
                  an estimate of exactly 0 counting 1/2 (it takes no side);
  mse             mean of (estimate - A*)^2, on the estimator's own scale;
  blame (wrong responses only): the unit where V* drops most (argmin A*; the set D of
                  units tied at the minimum) against the units the estimator blames most
                  (its argmin set M, every unit tied at its minimum: a response-level
                  estimate ties all units). hit = |M & D| / |M|, the chance that a pick
                  uniform over M lands in D; chance = |D| / J, the same for a pick uniform
                  over all units. Only responses whose drop is clear (min A* < -z SE) count.
                  Beside it: covers, the share of those responses whose M contains the
                  drop at all, and blamed, the mean share |M| / J of units M holds (a
                  segment estimator that finds the right 10-token segment covers the
                  drop but hits it only 1/10).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = [
    "CreditMetrics",
    "blame",
    "blame_hit",
    "bootstrap_differences",
    "correlation_ceiling",
    "credit_metrics",
    "mean_and_se",
    "pearson",
    "sign_agreement",
    "true_advantages",
    "unit_estimates",
]

TIE = 1e-9  # estimates closer than this are tied


def mean_and_se(rewards: Sequence[float]) -> tuple[float, float]:
    """Mean of K samples and its standard error, std (n - 1) / sqrt(K); for 0/1 rewards
    that is the binomial sqrt(p (1 - p) / (K - 1)). One sample: SE = inf (unknown)."""
    k = len(rewards)
    if k == 0:
        raise ValueError("no samples")
    m = sum(rewards) / k
    if k == 1:
        return m, math.inf
    var = sum((r - m) ** 2 for r in rewards) / (k - 1)
    return m, math.sqrt(var / k)


def true_advantages(values: Sequence[float], ses: Sequence[float]) -> tuple[list[float], list[float]]:
    """(A*_j, SE(A*_j)) of the units between consecutive scored boundaries."""
    if len(values) != len(ses) or len(values) < 2:
        raise ValueError(f"need >= 2 boundary values with one SE each, got {len(values)} and {len(ses)}")
    adv = [values[j + 1] - values[j] for j in range(len(values) - 1)]
    se = [math.sqrt(ses[j] ** 2 + ses[j + 1] ** 2) for j in range(len(values) - 1)]
    return adv, se


def unit_estimates(token_advantages: Sequence[float], boundaries: Sequence[int]) -> list[float]:
    """An estimator's value for each unit [b_j, b_{j+1}): the mean of its tokens' advantages."""
    if boundaries[0] != 0 or boundaries[-1] != len(token_advantages):
        raise ValueError(f"boundaries {list(boundaries)} do not span {len(token_advantages)} tokens")
    out = []
    for a, b in zip(boundaries, boundaries[1:]):
        if b <= a:
            raise ValueError(f"boundaries must increase, got {list(boundaries)}")
        out.append(sum(token_advantages[a:b]) / (b - a))
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when fewer than 2 points or either side is constant."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"{n} estimates but {len(y)} targets")
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def correlation_ceiling(true: Sequence[float], se: Sequence[float]) -> float | None:
    """sqrt(1 - mean(SE^2) / var(A*)): the expected correlation of the exact advantages
    with their noisy estimates A* (None for fewer than 2 units or a constant A*)."""
    n = len(true)
    if n < 2:
        return None
    m = sum(true) / n
    var = sum((t - m) ** 2 for t in true) / (n - 1)
    if var <= 0:
        return None
    noise = sum(s * s for s in se) / n
    return math.sqrt(max(0.0, 1.0 - noise / var))


def sign_agreement(est: Sequence[float], true: Sequence[float], se: Sequence[float],
                   z: float = 2.0) -> tuple[float | None, int]:
    """(agreement, count) over units with |A*| > z SE; an estimate of 0 counts 1/2."""
    total, n = 0.0, 0
    for e, t, s in zip(est, true, se):
        if abs(t) <= z * s:
            continue
        n += 1
        if abs(e) <= TIE:
            total += 0.5
        elif (e > 0) == (t > 0):
            total += 1.0
    return (total / n if n else None), n


def _argmin_set(xs: Sequence[float]) -> set[int]:
    lo = min(xs)
    return {i for i, x in enumerate(xs) if x <= lo + TIE}


def blame_hit(est: Sequence[float], true: Sequence[float]) -> tuple[float, float]:
    """(hit, chance) for one response's units; see the module docstring."""
    hit, chance, _, _ = blame(est, true)
    return hit, chance


def blame(est: Sequence[float], true: Sequence[float]) -> tuple[float, float, bool, float]:
    """(hit, chance, covers, blamed share) for one response's units (module docstring)."""
    if len(est) != len(true) or not est:
        raise ValueError(f"need as many estimates as units (> 0), got {len(est)} and {len(true)}")
    drop, blamed = _argmin_set(true), _argmin_set(est)
    return len(blamed & drop) / len(blamed), len(drop) / len(true), bool(blamed & drop), len(blamed) / len(true)


@dataclass
class CreditMetrics:
    units: int  # units compared (tokens at stride 1; segments or edges at segment level)
    pearson: float | None
    ceiling: float | None  # the exact advantages' correlation with the noisy A*
    sign_agreement: float | None
    sign_units: int  # units with |A*| > z SE
    mse: float | None
    blame_hit: float | None = None  # mean over wrong responses with a clear drop
    blame_chance: float | None = None
    blame_responses: int = 0
    blame_covers: float | None = None  # share whose most blamed units include the drop
    blame_share: float | None = None  # mean share of units among the most blamed

    def as_dict(self) -> dict:
        return asdict(self)


def credit_metrics(est: Sequence[Sequence[float]], true: Sequence[Sequence[float]], se: Sequence[Sequence[float]],
                   wrong: Sequence[bool] | None = None, z: float = 2.0) -> CreditMetrics:
    """All metrics over responses (one list of units each): estimates, A*, SE(A*).
    `wrong[i]` marks responses whose blame is scored (None: no blame metric)."""
    if not len(est) == len(true) == len(se):
        raise ValueError(f"{len(est)} estimate rows, {len(true)} A* rows, {len(se)} SE rows")
    for i, (e, t, s) in enumerate(zip(est, true, se)):
        if not len(e) == len(t) == len(s):
            raise ValueError(f"response {i}: {len(e)} estimates, {len(t)} A*, {len(s)} SE")
    fe = [x for row in est for x in row]
    ft = [x for row in true for x in row]
    fs = [x for row in se for x in row]
    agree, n_sign = sign_agreement(fe, ft, fs, z)
    mse = sum((a - b) ** 2 for a, b in zip(fe, ft)) / len(fe) if fe else None
    out = CreditMetrics(units=len(fe), pearson=pearson(fe, ft),
                        ceiling=correlation_ceiling(ft, fs), sign_agreement=agree, sign_units=n_sign, mse=mse)
    if wrong is not None:
        scored = []
        for e, t, s, w in zip(est, true, se, wrong):
            if not w or not t:
                continue
            j = min(range(len(t)), key=t.__getitem__)
            if t[j] >= -z * s[j]:  # no clear drop
                continue
            scored.append(blame(e, t))
        if scored:
            n = len(scored)
            out.blame_hit, out.blame_chance, out.blame_covers, out.blame_share = (
                sum(float(x[k]) for x in scored) / n for k in range(4))
        out.blame_responses = len(scored)
    return out


def bootstrap_differences(estimates: dict[str, Sequence[Sequence[float]]], true: Sequence[Sequence[float]],
                          se: Sequence[Sequence[float]], clusters: Sequence[int], wrong: Sequence[bool], *,
                          baseline: str, resamples: int = 200, seed: int = 0, level: float = 0.95,
                          z: float = 2.0) -> dict[str, dict[str, tuple[float, float] | None]]:
    """Paired cluster bootstrap of token-level metrics: resample the clusters (prompts)
    with replacement, score every estimator on the same resample, and give per estimator
    the `level` percentile interval of each metric and of its difference to `baseline`
    (keys `pearson`, `sign_agreement`, `blame_hit`, and `<metric>_minus_baseline`).
    An interval is None when the metric is undefined on some resample."""
    import random

    if baseline not in estimates:
        raise ValueError(f"baseline {baseline!r} is not among the estimates")
    ids = sorted(set(clusters))
    members = {c: [i for i, k in enumerate(clusters) if k == c] for c in ids}
    rng = random.Random(seed)
    keys = ("pearson", "sign_agreement", "blame_hit")
    draws: dict[str, dict[str, list[float | None]]] = {
        label: {k: [] for k in (*keys, *(f"{k}_minus_baseline" for k in keys))} for label in estimates}
    for _ in range(resamples):
        rows = [i for c in rng.choices(ids, k=len(ids)) for i in members[c]]
        pick = lambda xs: [xs[i] for i in rows]  # noqa: E731
        scored = {label: credit_metrics(pick(e), pick(true), pick(se), wrong=pick(wrong), z=z)
                  for label, e in estimates.items()}
        base = scored[baseline]
        for label, m in scored.items():
            for k in keys:
                v, b = getattr(m, k), getattr(base, k)
                draws[label][k].append(v)
                draws[label][f"{k}_minus_baseline"].append(None if v is None or b is None else v - b)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2

    def interval(xs: list[float | None]) -> tuple[float, float] | None:
        if not xs or any(x is None for x in xs):
            return None
        s = sorted(xs)
        return s[int(lo_q * (len(s) - 1))], s[int(round(hi_q * (len(s) - 1)))]

    return {label: {k: interval(v) for k, v in d.items()} for label, d in draws.items()}
