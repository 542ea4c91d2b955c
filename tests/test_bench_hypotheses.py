"""The third round's hypotheses judged on known curves (spo.evaluate.bench_hypotheses and
scripts/bench_hypotheses.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pytest import approx

from spo.evaluate.bench_hypotheses import THIRD_ROUND, Comparison, Hypothesis, judge, verdict
from spo.evaluate.learning_curves import CurvePoint, PairedDiff

ROOT = Path(__file__).parents[1]
SEEDS = range(5)
NOISE = (0.01, -0.01, 0.0, 0.005, -0.005)


def curve(final: float, iterations: int, tokens_per_iteration: float) -> list[CurvePoint]:
    """Start at 0.2, rise linearly to `final` over `iterations`."""
    return [CurvePoint(i, i * tokens_per_iteration, 8 * i, float(i), 0.2 + (final - 0.2) * i / iterations)
            for i in range(iterations + 1)]


def cells(gap: dict[tuple[str, str], float]) -> dict:
    """Every cell and method; GRPO ends at 0.5 (40 iterations, 4k tokens each), a method at
    0.5 + gap[(cell, method)] + a per-seed wobble, with half GRPO's iterations at 2x its tokens."""
    out = {}
    for cell in ("weak-1x1", "weak-4x2", "mid-1x1", "mid-4x2"):
        out[cell] = {"grpo": {s: curve(0.5, 40, 4000) for s in SEEDS}}
        for m in ("spo_chain", "spo_tree", "vineppo"):
            out[cell][m] = {s: curve(0.5 + gap.get((cell, m), 0.0) + NOISE[s], 20, 8000) for s in SEEDS}
    return out


def test_verdicts_follow_the_interval_and_the_predicted_sign():
    ahead = PairedDiff(5, 0.05, 0.01, 0.03, 0.07)
    assert verdict(ahead, +1) == "supported" and verdict(ahead, -1) == "contradicted"
    assert verdict(PairedDiff(5, 0.01, 0.03, -0.02, 0.04), +1) == "unresolved"
    assert verdict(PairedDiff(1, 0.05, float("nan"), float("nan"), float("nan")), +1) == "too few seeds"


def test_the_third_round_on_known_gaps():
    gap = {("weak-1x1", "spo_tree"): 0.10, ("weak-1x1", "spo_chain"): 0.10,
           ("weak-4x2", "spo_tree"): 0.10, ("weak-4x2", "spo_chain"): 0.15, ("weak-4x2", "vineppo"): 0.05,
           ("mid-1x1", "spo_chain"): -0.08, ("mid-1x1", "vineppo"): -0.10,
           ("mid-4x2", "spo_chain"): -0.08, ("mid-4x2", "vineppo"): -0.02}
    curves = cells(gap)
    verdicts = {h.name: judge(h, curves, "grpo") for h in THIRD_ROUND}
    # H1: at equal iterations (20, the methods' last) GRPO is at 0.2 + 0.3 * 20/40 = 0.35, the methods at their end
    assert verdicts["H1"][0] == "supported"
    assert verdicts["H2"][0] == "supported"  # weak-4x2 at equal tokens (160k): both SPO variants ahead
    h3 = {(j.comparison.method, j.comparison.cell): j for j in verdicts["H3"][1]}
    # spo_chain: weak +0.05 (supported), mid 0.0 (the same gap in both: unresolved); vineppo: weak +0.05, mid +0.08
    assert h3["spo_chain", "weak-4x2"].verdict == "supported" and h3["spo_chain", "weak-4x2"].diff.mean == approx(0.05)
    assert h3["spo_chain", "mid-4x2"].verdict == "unresolved"
    assert h3["vineppo", "mid-4x2"].verdict == "supported" and h3["vineppo", "mid-4x2"].diff.mean == approx(0.08)
    assert verdicts["H3"][0] == "unresolved"  # needs all four
    assert verdicts["H4"][0] == "supported"  # GRPO ahead of both at mid-1x1
    curves["mid-1x1"]["spo_chain"] = {s: curve(0.6 + NOISE[s], 20, 8000) for s in SEEDS}
    assert judge(THIRD_ROUND[3], curves, "grpo")[0] == "contradicted"  # one comparison the other way round


def test_a_hypothesis_with_cells_not_run_is_incomplete_and_any_needs_one():
    curves = cells({("weak-4x2", "spo_tree"): 0.1})
    del curves["mid-4x2"]
    assert judge(THIRD_ROUND[2], curves, "grpo")[0] == "incomplete"
    anyone = Hypothesis("Hx", "", (Comparison("weak-4x2", "spo_tree", "tokens", +1),
                                   Comparison("weak-4x2", "spo_chain", "tokens", +1)), needs="any")
    assert judge(anyone, curves, "grpo")[0] == "supported"


def test_the_script_writes_the_table_and_the_manipulation_check(tmp_path):
    curves = cells({("mid-1x1", "spo_chain"): -0.1, ("mid-1x1", "vineppo"): -0.1})
    for cell, methods in curves.items():
        diag = {m: {"clip_frac": {"runs": 5, "min": 0.0, "mean": 0.0 if cell.endswith("1x1") else 0.01, "max": 0.0,
                                  "zero_runs": 5 if cell.endswith("1x1") else 0}} for m in methods}
        if cell == "weak-4x2":
            diag["vineppo"]["clip_frac"]["zero_runs"] = 1  # one run never clipped: reported
        (tmp_path / cell).mkdir()
        (tmp_path / cell / "results.json").write_text(json.dumps({
            "baseline": "grpo", "confidence": 0.95, "update_diagnostics": diag,
            "seeds": {m: list(SEEDS) for m in methods},
            "curves": {m: [[p.__dict__ for p in c[s]] for s in SEEDS] for m, c in methods.items()}}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_hypotheses.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "hypotheses.json").read_text())
    assert [h["name"] for h in res["hypotheses"]] == ["H1", "H2", "H3", "H4"]
    assert res["hypotheses"][3]["verdict"] == "supported"
    assert "weak-4x2 vineppo clip_frac: 4/5 runs above 0, mean 0.01: NOT as designed" in res["manipulation_check"]
    assert "mid-1x1 grpo clip_frac: 0/5 runs above 0, mean 0: as designed" in res["manipulation_check"]
    assert "**H4**" in (tmp_path / "hypotheses.md").read_text()
    empty = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_hypotheses.py"), str(tmp_path / "none")],
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "no <cell>/results.json" in empty.stderr
