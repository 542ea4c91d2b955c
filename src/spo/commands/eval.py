"""`spo eval`: a run's latest checkpoint or a model on the held-out split (spo.api.evaluate);
prints the table and writes the per-problem JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_eval(args: argparse.Namespace) -> int:
    from spo.api import evaluate

    report = evaluate(args.model, args.config, args.overrides, samples=args.samples, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, limit=args.limit)
    print(format_table(report.task, report.model, report.summary))
    # default: beside the checkpoint for a run folder, else in the working directory
    run_folder = Path(args.model, "config.yaml").is_file()
    out = Path(args.output or (Path(report.model).parent / "eval.json" if run_folder else "eval.json"))
    out.write_text(report.to_json())
    print(f"wrote {out}")
    return 0


def format_table(dataset: str, model: str, summary: dict[str, float]) -> str:
    keys = [k for k in summary if k not in ("problems", "seconds")]
    head = "| dataset | problems | " + " | ".join(keys) + " |"
    line = "|" + "---|" * (len(keys) + 2)
    row = f"| {dataset} | {int(summary['problems'])} | " + " | ".join(f"{summary[k]:.3f}" for k in keys) + " |"
    return f"model: {model}\n{head}\n{line}\n{row}"
