"""`spo credit`'s report: the table of every setting's credit metrics (OUT/credit.md), the
paired bootstrap intervals in it, and the plot of correlation against samples spent
(OUT/credit_vs_samples.png). Reads the result dict `spo.commands.credit.run_credit` builds
(the one written to OUT/credit.json), so a report can be redrawn from that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from spo.evaluate.credit import bootstrap_differences

TokenUnits = tuple[list[list[float]], list[list[float]], list[list[float]]]
"""Per response: an estimator's value of each unit, A* and SE(A*)."""


def paired_intervals(units: dict[str, TokenUnits], estimators: dict[str, str], problems: Sequence[int],
                     wrong: Sequence[bool], *, resamples: int, seed: int, z: float) -> dict[str, Any] | None:
    """Paired bootstrap over prompts of the token-level metrics and their differences to the
    first GRPO setting (else the first token-level one); None when `resamples` is 0 or no
    setting is token-level. `units`: each token-level setting's (estimates, A*, SE(A*)) per
    response, by label; `estimators`: each label's estimator."""
    if not resamples or not units:
        return None
    baseline = next((label for label in units if estimators[label] == "grpo"), next(iter(units)))
    _, true, se = units[baseline]
    out = bootstrap_differences({label: est for label, (est, _, _) in units.items()}, true, se, problems, wrong,
                                baseline=baseline, resamples=resamples, seed=seed, z=z)
    return {"baseline": baseline, "resamples": resamples, "level": 0.95, "intervals": out}


def report_markdown(result: dict[str, Any]) -> str:
    gt = result["ground_truth"]
    head = (f"{result['prompts']} prompts x {result['responses'] // result['prompts']} responses "
            f"(accuracy {result['accuracy']:.3f}, {result['wrong_responses']} wrong), {result['response_tokens']} "
            f"response tokens. Ground truth: K = {gt['k']} continuations at {gt['states']} states (stride {gt['stride']}; "
            f"{gt['states_sampled_now']} sampled now, {gt['seconds']:.0f} s). Wall time {result['seconds']['wall']:.0f} s.\n\n")
    cols = ("setting", "estimator", "settings", "samples/prompt", "tokens", "continuations", "value MSE (bias)", "token r", "token r ceiling", "token sign", "token MSE",
            "blame hit", "blame chance", "blame covers (share)", "segment r", "segment sign", "segment MSE", "segments")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        t, s = r["token"] or {}, r["segment"]
        lines.append("| " + " | ".join([
            r["label"], r["estimator"], r["settings"], f"{r['samples_per_prompt']:.1f}", f"{r['tokens']:,}",
            f"{r.get('continuations', 0):,}",
            "-" if r.get("value_mse") is None else f"{r['value_mse']:.4f} ({r['value_bias']:+.4f})",
            _f(t.get("pearson")), _f(t.get("ceiling")), _f(t.get("sign_agreement")), _f(t.get("mse"), 4),
            _f(t.get("blame_hit")) + (f" ({t['blame_responses']})" if t else ""), _f(t.get("blame_chance")),
            _f(t.get("blame_covers"), 2) + (f" ({_f(t.get('blame_share'), 2)})" if t else ""),
            _f(s["pearson"]), _f(s["sign_agreement"]), _f(s["mse"], 4), str(s["units"]),
        ]) + " |")
    notes = ("\n\ncontinuations: MC continuations drawn for the values (SPO-chain, VinePPO); value MSE (bias): "
             "their values V(t_k) at interior boundaries against V*(t_k), mean squared error and mean error. "
             "token r / sign / MSE: each token's advantage against A*_t = V*(after) - V*(before) over all tokens "
             "(ceiling: the r that exact advantages would reach against this noisy A*) "
             "(sign: tokens with |A*| > z SE, a 0 estimate counting 1/2); blame hit: share of wrong responses (with a "
             "clear drop; their count in brackets) whose most negative advantage is on the token where V* drops most, "
             "ties shared; chance: the same for a uniformly random token; covers: share of them whose most negative "
             "tokens include that token at all (share: mean fraction of the response among its most negative tokens); segment: each estimator's own segments "
             "(GRPO/RLOO: the whole response, against r - V*(prompt); SPO-tree: its edges) against V*(end) - V*(start).")
    boot = result.get("bootstrap")
    if boot:
        base = boot["baseline"]
        lines2 = ["", "", f"Paired bootstrap over prompts ({boot['resamples']} resamples, 95% intervals): each metric and "
                  f"its difference to {base} on the same resampled prompts.", "",
                  f"| setting | token r | token r - {base} | token sign | token sign - {base} | blame hit | "
                  f"blame hit - {base} |", "|---|---|---|---|---|---|---|"]
        for label, iv in boot["intervals"].items():
            cells = [_iv(iv[k]) for k in ("pearson", "pearson_minus_baseline", "sign_agreement",
                                          "sign_agreement_minus_baseline", "blame_hit", "blame_hit_minus_baseline")]
            lines2.append(f"| {label} | " + " | ".join(cells) + " |")
        notes += "\n".join(lines2)
    return head + "\n".join(lines) + notes + "\n"


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _iv(x: list[float] | tuple[float, float] | None) -> str:
    return "-" if x is None else f"[{x[0]:+.3f}, {x[1]:+.3f}]"


def plot_credit(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Token- and segment-level correlation with A* against samples spent per prompt."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    families = list(dict.fromkeys(r["estimator"] for r in rows))
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    for ax, level, title in ((axes[0], "token", "token level: corr(A, A*)"),
                             (axes[1], "segment", "segment level: corr(A, V*(end) - V*(start))")):
        shown = set()
        for r in rows:
            m = r[level]
            if not m or m["pearson"] is None:
                continue
            f = r["estimator"]
            ax.scatter(r["samples_per_prompt"], m["pearson"], s=40, color=colors[f],
                       label=None if f in shown else f)
            shown.add(f)
            ax.annotate(r["label"], (r["samples_per_prompt"], m["pearson"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("samples spent per prompt (responses, tree nodes, MC continuations)")
        ax.set_ylabel("Pearson r")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
