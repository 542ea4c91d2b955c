"""Judge the third round's pre-registered hypotheses (spo.evaluate.bench_hypotheses) and its
manipulation check from a finished `spo bench --config bench-map` folder.

    python scripts/bench_hypotheses.py bench_results/bench-map      # writes OUT/hypotheses.{md,json}

Reads each cell's results.json (run `spo bench ... --report-only` first with code that writes
`update_diagnostics`, for the manipulation check). Exit 2 when the folder holds no cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from spo.cache import write_text_atomic
from spo.evaluate.bench_hypotheses import THIRD_ROUND, hypotheses_table, judge
from spo.evaluate.learning_curves import CurvePoint


def load_curves(out: Path) -> tuple[dict, dict, str, float]:
    curves, diagnostics, baseline, confidence = {}, {}, "grpo", 0.95
    for path in sorted(out.glob("*/results.json")):
        res = json.loads(path.read_text())
        cell = path.parent.name
        baseline, confidence = res["baseline"], res["confidence"]
        curves[cell] = {m: {s: [CurvePoint(**p) for p in c] for s, c in zip(res["seeds"][m], runs)}
                        for m, runs in res["curves"].items()}
        diagnostics[cell] = res.get("update_diagnostics")
    return curves, diagnostics, baseline, confidence


def manipulation_check(diagnostics: dict) -> list[str]:
    """docs/bench.md: at 1x1 clip_frac and approx_kl are 0 in every run; at 4x2 above 0 in every run."""
    lines = []
    for cell, diag in diagnostics.items():
        if diag is None:
            lines.append(f"{cell}: no update diagnostics in results.json (run the bench with --report-only first)")
            continue
        one_step = cell.endswith("-1x1")
        for method, metrics in diag.items():
            for key, d in metrics.items():
                ok = d["zero_runs"] == d["runs"] if one_step else d["zero_runs"] == 0
                lines.append(f"{cell} {method} {key}: {d['runs'] - d['zero_runs']}/{d['runs']} runs above 0, "
                             f"mean {d['mean']:.4g}: {'as designed' if ok else 'NOT as designed'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the bench's output folder (its cells' results.json)")
    args = parser.parse_args(argv)
    curves, diagnostics, baseline, confidence = load_curves(args.out)
    if not curves:
        print(f"error: {args.out}: no <cell>/results.json here", file=sys.stderr)
        return 2
    results = [(h, *judge(h, curves, baseline, confidence)) for h in THIRD_ROUND]
    checks = manipulation_check(diagnostics)
    text = (f"# Third round: hypotheses (baseline {baseline}, {confidence:.0%} paired t intervals)\n\n"
            + hypotheses_table(results) + "\n## Manipulation check\n\n" + "".join(f"- {c}\n" for c in checks))
    write_text_atomic(args.out / "hypotheses.md", text)
    write_text_atomic(args.out / "hypotheses.json", json.dumps(
        {"baseline": baseline, "confidence": confidence, "manipulation_check": checks,
         "hypotheses": [{"name": h.name, "claim": h.claim, "needs": h.needs, "verdict": v,
                         "comparisons": [{"label": j.comparison.label, "verdict": j.verdict, **asdict(j.diff)}
                                         for j in judged]} for h, v, judged in results]}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
