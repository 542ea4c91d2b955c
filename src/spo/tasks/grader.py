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

import logging
import threading
from typing import Literal

from spo.tasks.rewards import normalize_math_answer
from spo.tasks.workers import WorkerPool, call_with_time_limit

logger = logging.getLogger(__name__)

GraderBackend = Literal["auto", "signal", "process"]
MAX_MATH_ANSWER_CHARS = 1000
"""Extracted answers longer than this are graded by string match only: nothing that long is
a MATH answer, and parsing it would only burn the time limit."""


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
    finished, equal = call_with_time_limit(lambda: _math_verify_equal(pred, gold), timeout_s)
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


# --- worker processes for the "process" backend (spo.tasks.workers) -------------------

_pool = WorkerPool("spo.tasks._grader_worker", what="math grader worker")


def _grade_in_worker(pred: str, gold: str, timeout_s: float) -> bool:
    answer = _pool.request({"pred": pred, "gold": gold, "timeout_s": timeout_s}, timeout_s)
    if answer is None:
        logger.warning("math grader worker overran %.1fs on answer %r; restarted", timeout_s, pred[:100])
        return False
    return bool(answer["equal"])


def shutdown_grader_workers() -> None:
    """Kill every grader worker (also runs at interpreter exit)."""
    _pool.close()
