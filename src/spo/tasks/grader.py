"""MATH answer grading with math_verify under a time limit: `math_answers_equal`.

math_verify (a SymPy-based LaTeX parser/comparer; it never `eval`s model text) can hang on
adversarial answers such as `9^{9^{9^{9}}}`, or allocate gigabytes for `2^{2^{40}}`, so by
default every comparison runs in a persistent worker process
(`python -m spo.tasks._grader_worker`) whose memory is capped and which is killed when it
overruns its time limit; a SIGALRM timer in the main thread is the in-process option. The side effects
(signal handlers, threads, child processes, an atexit hook) live here, away from the pure
extraction and normalisation in `spo.tasks.rewards`.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from spo.tasks.rewards import normalize_math_answer

logger = logging.getLogger(__name__)

GraderBackend = Literal["auto", "signal", "process"]
MAX_MATH_ANSWER_CHARS = 1000
"""Extracted answers longer than this are graded by string match only: nothing that long is
a MATH answer, and parsing it would only burn the time limit."""


class _GraderTimeout(BaseException):
    """Raised by our SIGALRM handler. A BaseException so that library code's
    `except Exception` blocks cannot swallow it and keep computing."""


T = TypeVar("T")


def _call_with_alarm(fn: Callable[[], T], timeout_s: float) -> tuple[bool, T | None]:
    """Run fn() under a SIGALRM interval timer (main thread only). Returns (finished, value).

    The alarm can only interrupt Python bytecode: a single C-level call that never returns
    (e.g. a giant integer power) is not stopped; the "process" backend handles that."""
    armed = True

    def on_alarm(signum: int, frame: object) -> None:
        if armed:
            raise _GraderTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            return True, fn()
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _GraderTimeout:
        return False, None
    finally:
        signal.signal(signal.SIGALRM, previous)


class _DropTimeoutDisabledWarning(logging.Filter):
    """math_verify warns that its own timeout is off; it is off because we provide ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_log_filter_installed = False


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math_verify's verdict, with its own (signal) timeouts off: the caller limits time.
    Grader exceptions (bad LaTeX, SymPy errors) mean "not equal"; they are logged at debug."""
    global _log_filter_installed
    from math_verify import parse, verify

    if not _log_filter_installed:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        _log_filter_installed = True
    try:
        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)  # type: ignore[arg-type]
        pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)  # type: ignore[arg-type]
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception as e:  # only the grader's own failures land here
        logger.debug("math_verify failed on pred=%r gold=%r: %r", pred[:100], gold[:100], e)
        return False


def math_equal_in_main_thread(pred: str, gold: str, timeout_s: float) -> bool:
    """math_verify under a SIGALRM time limit; timeouts count as "not equal"."""
    finished, equal = _call_with_alarm(lambda: _math_verify_equal(pred, gold), timeout_s)
    if not finished:
        logger.warning("math grader timed out after %.1fs on answer %r", timeout_s, pred[:100])
        return False
    return bool(equal)


def math_answers_equal(
    pred: str | None,
    gold: str,
    *,
    timeout_s: float = 5.0,
    backend: GraderBackend = "auto",
) -> bool:
    """Whether the extracted answer `pred` equals the gold MATH answer (both LaTeX, without $).

    1. normalised exact string match (instant, always safe);
    2. math_verify parse + verify (numbers, fractions, radicals, sets, intervals, tuples,
       equations), limited to `timeout_s` seconds for this answer in total.
    backend: "process" (and "auto", the default) sends it to a persistent worker process
    that is killed if it overruns and whose memory is capped (`_grader_worker`): it works
    from any thread and also stops hangs and huge allocations inside C code, such as SymPy
    evaluating `2^{2^{40}}`; "signal" runs math_verify in this thread under SIGALRM (main
    thread only; Python code only is interrupted, memory is not bounded). A timeout, a
    memory error or a grader error counts as wrong (reward 0), never a crash."""
    if pred is None or not pred.strip():
        return False
    if normalize_math_answer(pred) == normalize_math_answer(gold):
        return True
    if len(pred) > MAX_MATH_ANSWER_CHARS:
        return False
    if backend == "signal":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("math grader backend 'signal' only works in the main thread; use 'process' or 'auto'")
        return math_equal_in_main_thread(pred, gold, timeout_s)
    if backend not in ("auto", "process"):
        raise ValueError(f"unknown grader backend {backend!r}; expected auto, signal or process")
    return _grade_in_worker(pred, gold, timeout_s)


# --- worker processes for the "process" backend ---------------------------------------

_WORKER_START_TIMEOUT_S = 120.0  # importing SymPy on a busy machine can take a while
_WORKER_GRACE_S = 2.0  # beyond the worker's own alarm, before we kill it


class _GraderWorker:
    """A `python -m spo.tasks._grader_worker` child speaking JSON lines over pipes.

    A subprocess (not multiprocessing) so that it never re-imports the user's __main__ and
    can be killed without touching the parent's state."""

    def __init__(self) -> None:
        env = os.environ.copy()
        src_root = str(Path(__file__).resolve().parents[2])  # so the child finds `spo`
        env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spo.tasks._grader_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        if self._next_line(_WORKER_START_TIMEOUT_S) != "ready":
            self.close()
            raise RuntimeError("the math grader worker process failed to start (see its stderr above)")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _next_line(self, timeout_s: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        """The worker's verdict, or None if it overran (it is then killed) or died."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold, "timeout_s": timeout_s}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            return None
        line = self._next_line(timeout_s + _WORKER_GRACE_S)
        if line is None:
            self.close()
            return None
        return bool(json.loads(line)["equal"])

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()


_idle_workers: list[_GraderWorker] = []
_all_workers: list[_GraderWorker] = []
_workers_lock = threading.Lock()


def _grade_in_worker(pred: str, gold: str, timeout_s: float) -> bool:
    """One idle worker per concurrent caller (started on demand, reused afterwards)."""
    worker = None
    with _workers_lock:
        while _idle_workers and worker is None:
            worker = _idle_workers.pop()
            if not worker.alive():  # died while idle (e.g. killed): forget it
                _all_workers.remove(worker)
                worker = None
    if worker is None:
        worker = _GraderWorker()
        with _workers_lock:
            _all_workers.append(worker)
    verdict = worker.ask(pred, gold, timeout_s)
    with _workers_lock:
        if worker.alive():
            _idle_workers.append(worker)
        elif worker in _all_workers:
            _all_workers.remove(worker)
    if verdict is None:
        logger.warning("math grader worker overran %.1fs on answer %r; restarted", timeout_s, pred[:100])
        return False
    return verdict


@atexit.register
def shutdown_grader_workers() -> None:
    """Kill every grader worker (also runs at interpreter exit)."""
    with _workers_lock:
        workers = list(_all_workers)
        _all_workers.clear()
        _idle_workers.clear()
    for w in workers:
        w.close()
