"""The map of a bench with axes: per cell (start accuracy x updates per iteration), every
method's difference in held-out accuracy to the baseline (GRPO) at equal generated tokens,
with its paired t interval, in one figure (`spo bench` writes it as OUT/map.png).

`delta_map_data` prepares what is drawn from the cells' `equal_spend` rows (as
`results.json` holds them, `spo.evaluate.learning_curves.EqualSpend.as_dict`), with no I/O;
`draw_delta_map` draws those bars and nothing else; `save_delta_map` writes the PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class DeltaBar:
    """One bar: `method` minus the baseline in `cell` at equal spend, mean [low, high] over n seeds
    (NaN bounds when n < 2)."""
    cell: str
    method: str
    mean: float
    low: float
    high: float
    n: int


def delta_map_data(equal: dict[str, Sequence[dict[str, Any]]], baseline: str, key: str = "tokens") -> list[DeltaBar]:
    """Bars for every (cell, method other than the baseline), cells and methods in the order
    given; `equal`: cell label -> that cell's equal-spend rows, `key`: the spend compared at
    (`tokens`, `iteration`, `seconds` or `final`)."""
    bars = []
    for cell, rows in equal.items():
        for row in rows:
            if row["method"] == baseline:
                continue
            d = row["vs_baseline"].get(key)
            if d is None:
                raise ValueError(f"cell {cell!r}, method {row['method']!r}: no comparison at {key!r}")
            bars.append(DeltaBar(cell, row["method"], float(d["mean"]), float(d["low"]), float(d["high"]),
                                 int(d["n"])))
    return bars


def draw_delta_map(bars: Sequence[DeltaBar], baseline: str, confidence: float = 0.95, key: str = "tokens"):
    """A matplotlib Figure: cells along x, one coloured bar per method in each (the same colour
    in every cell), its height the mean difference, its error bar the interval (none when
    fewer than 2 seeds), a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(b.cell for b in bars))
    methods = list(dict.fromkeys(b.method for b in bars))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cells) + 2), 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, method in enumerate(methods):
        mine = [(cells.index(b.cell), b) for b in bars if b.method == method]
        xs = [i - 0.4 + width * (j + 0.5) for i, _ in mine]
        heights = [b.mean for _, b in mine]
        err = [[0.0 if math.isnan(b.low) else b.mean - b.low for _, b in mine],
               [0.0 if math.isnan(b.high) else b.high - b.mean for _, b in mine]]
        ax.bar(xs, heights, width, yerr=err, capsize=3, label=method, color=colours[j % len(colours)])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cells)), cells)
    ax.set_xlabel("cell: start - mini-batches x epochs per iteration")
    spend = {"tokens": "equal generated tokens", "iteration": "equal iterations", "seconds": "equal training seconds",
             "final": "the end of each run"}.get(key, key)
    ax.set_ylabel(f"Δ accuracy to {baseline}")
    ax.set_title(f"Δ held-out accuracy to {baseline} at {spend}\n(mean over seeds, "
                 f"{100 * confidence:g}% paired t interval)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_delta_map(equal: dict[str, Sequence[dict[str, Any]]], path: Path, baseline: str,
                   confidence: float = 0.95, key: str = "tokens") -> Path | None:
    """Write the map as a PNG at `path`; None when matplotlib is missing or nothing to draw."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    bars = delta_map_data(equal, baseline, key)
    if not bars:
        return None
    import matplotlib.pyplot as plt

    fig = draw_delta_map(bars, baseline, confidence, key)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
