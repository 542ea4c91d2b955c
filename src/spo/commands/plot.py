"""Learning curves as PNG: `spo plot RUN_DIR [RUN_DIR ...]`, and the one drawing function
that `spo bench` uses for its accuracy plots too.

    spo plot runs/a runs/b                                # held-out accuracy and reward, by iteration
    spo plot runs/a --metric eval/pass@4 kl --x tokens --out kl.png

A metric is a key of metrics.jsonl: `eval/NAME` reads the evaluation lines, `NAME` (or
`train/NAME`) the training lines, as TensorBoard names them. `--x` puts training
iterations, generated tokens (MC continuations and tree nodes included), policy samples
or training seconds (no evaluation) on the x axis; the points come from
`spo.evaluate.learning_curves.metric_curve`, the function behind the bench's learning curves.
Each run is one line, labelled with the shortest end of its path that tells the runs
apart. Several metrics go into one figure, one panel each. Needs matplotlib
(`pip install 'spo[bench]'`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from spo.config import ConfigError
from spo.evaluate.learning_curves import CurvePoint, metric_curve
from spo.train.run_dir import require_run_folder
from spo.train.run_log import METRICS_FILE, read_metrics

log = logging.getLogger("spo.plot")

# --x choice -> (CurvePoint field, axis label); the labels are the ones `spo bench` prints.
X_AXES = {
    "iterations": ("iteration", "training iterations"),
    "tokens": ("tokens", "generated tokens (incl. MC / tree)"),
    "samples": ("samples", "policy samples (responses, MC continuations, tree nodes)"),
    "seconds": ("seconds", "training seconds (no evaluation)"),
}
DEFAULT_METRICS = ["eval/accuracy", "reward_mean"]

Curves = dict[str, list[list[CurvePoint]]]
"""Legend label -> one curve per run (a bench method's seeds, or one run)."""


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None (with a warning) when
    matplotlib is not installed: a missing plot must not fail a finished bench."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'spo[bench]'): no plots")
        return None
    return plt


def draw_curves(ax: Any, curves: Curves, x: str, ylabel: str) -> None:
    """One axis: each run thin, the mean over a label's runs bold (over the points all its
    runs have), x from X_AXES."""
    key, xlabel = X_AXES[x]
    for i, (label, runs) in enumerate(curves.items()):
        color = f"C{i}"
        for c in runs:
            ax.plot([getattr(p, key) for p in c], [p.accuracy for p in c], color=color, alpha=0.25, lw=1)
        n = min((len(c) for c in runs), default=0)
        if n:
            xs = [sum(getattr(c[j], key) for c in runs) / len(runs) for j in range(n)]
            ys = [sum(c[j].accuracy for c in runs) / len(runs) for j in range(n)]
            ax.plot(xs, ys, color=color, lw=2, marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save_curves(panels: dict[str, Curves], x: str, path: Path) -> Path | None:
    """A figure of one panel per y label (two columns), saved as `path`; None without
    matplotlib. One panel is 6 x 4 inches at 120 dpi, the bench's plot size."""
    plt = pyplot()
    if plt is None:
        return None
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax, (ylabel, curves) in zip(axes.flat, panels.items()):
        draw_curves(ax, curves, x, ylabel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ spo plot


def parse_metric(name: str) -> tuple[str, str]:
    """`eval/NAME` -> ("eval", NAME); `train/NAME` or `NAME` -> ("train", NAME)."""
    kind, _, metric = name.partition("/") if name.startswith(("eval/", "train/")) else ("train", "", name)
    return kind, metric


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """The shortest path ends that tell the runs apart (`seed0` of one run, `grpo/seed0`
    and `rloo/seed0` of two)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]  # the same folder named twice


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of a run's metrics.jsonl; a bad folder is a ConfigError naming it."""
    return read_metrics(require_run_folder(run_dir, METRICS_FILE), kind=None)


def plot_runs(run_dirs: Sequence[Path], metrics: Sequence[str], x: str, out: Path) -> Path:
    """The `spo plot` figure: one panel per metric, one line per run."""
    if x not in X_AXES:
        raise ConfigError(f"--x must be one of {sorted(X_AXES)}, got {x!r}")
    rows = {label: read_rows(Path(d)) for label, d in zip(run_labels(run_dirs), run_dirs)}
    panels = {}
    for name in metrics:
        kind, metric = parse_metric(name)
        curves = {label: [metric_curve(r, metric, kind)] for label, r in rows.items()}
        if not any(c[0] for c in curves.values()):
            raise ConfigError(f"--metric {name}: no {kind} line of these runs has it")
        panels[f"{metric} ({'held-out' if kind == 'eval' else 'training'})"] = curves
    if save_curves(panels, x, out) is None:
        raise ConfigError("spo plot needs matplotlib: pip install 'spo[bench]'")
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    out = plot_runs([Path(d) for d in args.runs], args.metric, args.x, Path(args.out))
    print(f"wrote {out}")
    return 0


def add_plot_command(subparsers: Any) -> None:
    """`spo plot`, added to the command line's sub-commands."""
    p = subparsers.add_parser("plot", help="learning curves of one or several runs as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (with metrics.jsonl)")
    p.add_argument("--metric", nargs="+", default=DEFAULT_METRICS,
                   help="metrics.jsonl keys: NAME for training lines, eval/NAME for evaluation lines "
                        f"(default: {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--x", choices=list(X_AXES), default="iterations", help="x axis (default iterations)")
    p.add_argument("--out", default="curves.png", help="PNG file to write (default curves.png)")
    p.set_defaults(func=cmd_plot)
