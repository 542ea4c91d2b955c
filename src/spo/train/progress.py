"""Progress bars per phase (tqdm, with ETA) and one summary line per iteration."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator

from tqdm.auto import tqdm


class Progress:
    def __init__(self, enabled: bool = True, quiet: bool = False):
        self.enabled = enabled and not quiet
        self.quiet = quiet
        self.started = time.perf_counter()
        self.current = ""
        """The phase running now ("iter 3 sample", ...; "" between phases): what a
        preemption signal interrupted."""

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[Any]:
        """A bar for one phase; `total=None` shows elapsed time only."""
        outer, self.current = self.current, name
        try:
            if not self.enabled:
                yield None
                return
            bar = tqdm(total=total, desc=name, leave=False, dynamic_ncols=True, file=sys.stderr,
                       disable=not sys.stderr.isatty())
            try:
                yield bar
            finally:
                bar.close()
        finally:
            self.current = outer

    def write(self, line: str) -> None:
        """Summary lines are printed whether or not bars are enabled."""
        if not self.quiet:
            tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    def summary(self, record: dict[str, Any], iterations: int) -> None:
        """`iter 3/10  reward 0.41  acc 0.41  loss -0.002  kl 0.000  ...  eta 1m20s`."""
        it = record["iteration"]
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(it, 1) * (iterations - it) if it else 0.0
        parts = [f"iter {it}/{iterations}"]
        for key, label in [("reward_mean", "reward"), ("accuracy", "acc"), ("policy_loss", "loss"), ("kl", "kl"),
                           ("clip_frac", "clip"), ("entropy", "ent"), ("response_len_mean", "len"),
                           ("time_sample", "t_sample"), ("time_optimize", "t_opt")]:
            if record.get(key) is not None:
                parts.append(f"{label} {record[key]:.3g}")
        parts.append(f"eta {format_seconds(eta)}")
        self.write("  ".join(parts))


def format_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
