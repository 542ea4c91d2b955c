"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard events, episode logs.

metrics.jsonl has one JSON object per iteration (and one per evaluation, with
"kind": "eval"), each appended with a single write. A checkpoint records how many bytes
the file had when it was saved; resuming from it cuts the file back to exactly that
(`resume_at`), so a resumed run's file reads as if it had never stopped: no line of an
iteration that is done again, no half line from a kill. Episode logs are written to a
temporary file and renamed into place; resuming removes those of later iterations.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from spo.train.faults import disk_full_is_fatal, kill_point

METRICS_FILE = "metrics.jsonl"
EPISODES_DIR = "episodes"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(v: Any) -> Any:
    # JSON has no NaN/inf; write null so every line stays valid JSON.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _write(path: Path, data: bytes, mode: str) -> None:
    """The one place run files are written (tests make it fail to simulate a full disk)."""
    with path.open(mode) as f:
        f.write(data)


def _parse_lines(data: bytes) -> list[dict[str, Any]]:
    """The complete JSON lines of `data`; a last line without its newline (a write cut short
    by a crash) is left out."""
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def _lines(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


class RunLog:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.run_dir = run_dir
        self.metrics_path = run_dir / METRICS_FILE
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer_cls = SummaryWriter
                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
                self._tb = None

    def _disk_full(self, what: str):
        return disk_full_is_fatal(what, lambda: f"free space, then `spo train --resume {self.run_dir}` continues "
                                                "from the last checkpoint")

    def resume_at(self, iteration: int, metrics_bytes: int | None) -> None:
        """Make the run's logs those of the moment checkpoint `iteration` was saved
        (`metrics_at_checkpoint`), rewritten atomically; episode logs of later iterations
        removed; TensorBoard events of later steps hidden."""
        rows, final_eval = metrics_at_checkpoint(self.run_dir, iteration, metrics_bytes)
        tmp = self.metrics_path.with_name(f".{METRICS_FILE}.tmp")
        with self._disk_full("metrics.jsonl"):
            _write(tmp, _lines(rows + final_eval), "wb")
            os.replace(tmp, self.metrics_path)
        for path in (self.run_dir / EPISODES_DIR).glob("iter_*.jsonl*"):
            if path.name.endswith(".tmp") or int(path.name[5:11]) > iteration:
                path.unlink()
        if self._tb is not None:
            self._tb.close()
            self._tb = self._writer_cls(log_dir=str(self.run_dir / "tensorboard"), purge_step=iteration + 1)

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        data = _lines([record])
        with self._disk_full(f"metrics.jsonl (iteration {record.get('iteration')})"):
            kill_point("metrics.write", lambda: _write(self.metrics_path, data[: len(data) // 2], "ab"))
            _write(self.metrics_path, data, "ab")
        if self._tb is not None:
            step = record.get("iteration", 0)
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and k != "iteration":
                    self._tb.add_scalar(prefix + k, v, step)
            self._tb.flush()

    def write_episodes(self, iteration: int, episodes: Iterable[dict[str, Any]]) -> Path:
        folder = self.run_dir / EPISODES_DIR
        path = folder / f"iter_{iteration:06d}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        data = "".join(json.dumps(ep, default=_json_default) + "\n" for ep in episodes).encode("utf-8")
        with self._disk_full(f"the episode log of iteration {iteration}"):
            try:
                folder.mkdir(exist_ok=True)
                kill_point("episodes.write", lambda: _write(tmp, data[: len(data) // 2], "wb"))
                _write(tmp, data, "wb")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def metrics_at_checkpoint(run_dir: str | Path, iteration: int, metrics_bytes: int | None
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the lines metrics.jsonl had when checkpoint `iteration` was saved: its first
    `metrics_bytes` bytes, or for checkpoints written before spo recorded that (None) the
    lines of iterations <= `iteration`; the complete evaluation lines of `iteration` logged
    after it, i.e. the final evaluation of a run that had finished)."""
    path = Path(run_dir) / METRICS_FILE
    raw = path.read_bytes() if path.exists() else b""
    if metrics_bytes is None:
        return [r for r in _parse_lines(raw) if r.get("iteration", 0) <= iteration], []
    after = _parse_lines(raw[metrics_bytes:])
    return _parse_lines(raw[:metrics_bytes]), [r for r in after if r.get("kind") == "eval" and r.get("iteration") == iteration]


def read_metrics(run_dir: str | Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """Lines of metrics.jsonl of one kind ("train" or "eval"), or all of them (kind=None).
    A last line cut short by a crash is not returned."""
    path = Path(run_dir) / METRICS_FILE
    rows = _parse_lines(path.read_bytes())
    return rows if kind is None else [r for r in rows if r.get("kind", "train") == kind]
