"""Pre-registered hypotheses of a bench with axes, judged from its cells' learning curves.

A hypothesis is a set of comparisons, each a method's paired difference to the baseline
(GRPO) in one cell at equal spend (iterations, generated tokens or seconds, as
`learning_curves.equal_spend` compares them), or that difference in one cell minus the same
difference in another cell, seed by seed (does reuse change the gap?). Each comparison gets
a verdict from its paired t interval and the predicted sign:

    supported     the interval excludes 0 on the predicted side
    contradicted  the interval excludes 0 on the other side
    unresolved    the interval contains 0 (or, for `within`, is not inside [-w, +w])

and the hypothesis one from its comparisons: with `needs="all"` it is supported when every
comparison is, contradicted when any is; with `needs="any"` supported when any comparison
is, contradicted when every one is; else unresolved. `THIRD_ROUND` holds the hypotheses
docs/bench.md pre-registered for the third round (H5, RLOO's, was cut with RLOO).
Pure functions, no I/O; `scripts/bench_hypotheses.py` reads a bench's folder and writes the
table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from spo.evaluate.learning_curves import CurvePoint, PairedDiff, differences_at_equal_spend, paired_t_interval

Curves = dict[str, dict[str, dict[int, Sequence[CurvePoint]]]]
"""cell label -> method -> seed -> learning curve."""


@dataclass(frozen=True)
class Comparison:
    cell: str
    method: str
    key: str
    """Spend at which the method and the baseline are compared: iteration, tokens or seconds."""
    sign: int
    """+1: the method is predicted ahead of the baseline (or the gap larger in `cell`); -1: behind."""
    minus_cell: str | None = None
    """When set: the gap in `cell` minus the gap in `minus_cell`, per seed (same seeds)."""

    @property
    def label(self) -> str:
        gap = f"{self.method} - baseline in {self.cell}"
        if self.minus_cell:
            gap = f"({gap}) - (the same in {self.minus_cell})"
        return f"{gap}, equal {self.key}, predicted {'> 0' if self.sign > 0 else '< 0'}"


@dataclass(frozen=True)
class Hypothesis:
    name: str
    claim: str
    comparisons: tuple[Comparison, ...]
    needs: str = "all"
    """"all" or "any" of the comparisons supported (module docstring)."""


@dataclass
class Judged:
    comparison: Comparison
    diff: PairedDiff
    verdict: str


def verdict(diff: PairedDiff, sign: int) -> str:
    if diff.n < 2 or math.isnan(diff.low):
        return "too few seeds"
    if sign * diff.low > 0 and sign * diff.high > 0:
        return "supported"
    if sign * diff.low < 0 and sign * diff.high < 0:
        return "contradicted"
    return "unresolved"


def gaps(curves: Curves, cell: str, method: str, baseline: str, key: str) -> dict[int, float]:
    """Seed -> method minus baseline at the pair's common spend `key` in `cell`."""
    return differences_at_equal_spend(curves[cell][method], curves[cell][baseline], key)


def judge_comparison(c: Comparison, curves: Curves, baseline: str, confidence: float = 0.95) -> Judged:
    here = gaps(curves, c.cell, c.method, baseline, c.key)
    if c.minus_cell is not None:
        there = gaps(curves, c.minus_cell, c.method, baseline, c.key)
        here = {s: here[s] - there[s] for s in sorted(here.keys() & there.keys())}
    diff = paired_t_interval(list(here.values()), confidence)
    return Judged(c, diff, verdict(diff, c.sign))


def judge(h: Hypothesis, curves: Curves, baseline: str, confidence: float = 0.95) -> tuple[str, list[Judged]]:
    """(the hypothesis' verdict, each comparison judged); comparisons whose cells or methods
    have no finished runs are left out and make the hypothesis "incomplete"."""
    judged = [judge_comparison(c, curves, baseline, confidence) for c in h.comparisons
              if all(curves.get(cell, {}).get(m) for cell in (c.cell, c.minus_cell) if cell for m in (c.method, baseline))]
    verdicts = [j.verdict for j in judged]
    if len(judged) < len(h.comparisons) or "too few seeds" in verdicts:
        return "incomplete", judged
    supported = [v == "supported" for v in verdicts]
    contradicted = [v == "contradicted" for v in verdicts]
    if h.needs == "any":
        return ("supported" if any(supported) else "contradicted" if all(contradicted) else "unresolved"), judged
    return ("supported" if all(supported) else "contradicted" if any(contradicted) else "unresolved"), judged


def _each(cells: Sequence[str], methods: Sequence[str], key: str, sign: int) -> tuple[Comparison, ...]:
    return tuple(Comparison(cell, m, key, sign) for cell in cells for m in methods)


THIRD_ROUND = (
    Hypothesis("H1", "weak start, per iteration: SPO-tree and SPO-chain ahead of GRPO at equal iterations, "
                     "in both update structures",
               _each(("weak-1x1", "weak-4x2"), ("spo_tree", "spo_chain"), "iteration", +1)),
    Hypothesis("H2", "weak start and 4x2: at least one SPO variant ahead of GRPO at equal generated tokens",
               _each(("weak-4x2",), ("spo_tree", "spo_chain"), "tokens", +1), needs="any"),
    Hypothesis("H3", "reuse: SPO-chain's and VinePPO's gap to GRPO at equal tokens larger at 4x2 than at 1x1, "
                     "at both starts",
               tuple(Comparison(f"{start}-4x2", m, "tokens", +1, minus_cell=f"{start}-1x1")
                     for start in ("weak", "mid") for m in ("spo_chain", "vineppo"))),
    Hypothesis("H4", "mid start and 1x1 (round 2 replicates): GRPO ahead of SPO-chain and VinePPO at equal tokens",
               _each(("mid-1x1",), ("spo_chain", "vineppo"), "tokens", -1)),
)
"""docs/bench.md, "Third round: pre-registration", Hypotheses (H5, RLOO within ±0.02 of
GRPO, is not here: RLOO left the grid by the budget rule's cut 2)."""


def hypotheses_table(results: Sequence[tuple[Hypothesis, str, list[Judged]]]) -> str:
    """Markdown: each hypothesis' verdict, then each of its comparisons with its interval."""
    lines = ["| hypothesis | comparison | n | mean [interval] | verdict |", "|---|---|---:|---|---|"]
    for h, overall, judged in results:
        lines.append(f"| **{h.name}**: {h.claim} ({h.needs} of its comparisons) | | | | **{overall}** |")
        for j in judged:
            d = j.diff
            lines.append(f"| | {j.comparison.label} | {d.n} | {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | "
                         f"{j.verdict} |")
    return "\n".join(lines) + "\n"
