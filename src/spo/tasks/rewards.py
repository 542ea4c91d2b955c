"""Answer extraction and grading: response text in, reward out.

Everything here is pure (no file or network I/O) and never executes model text: numbers
are parsed with `fractions.Fraction`, LaTeX is compared by `math_verify` (a SymPy-based
parser/comparer, not `eval`). The only side effect is the optional math-grader worker
process (see `math_answers_equal`), which exists so that a hung SymPy call can be killed.

Answer formats (`AnswerFormat`), i.e. where in a response the final answer is read:
    last_hash    text after the LAST "####" (GSM8K's convention). Several markers are
                 not an error (the reference scored them -2): the last one wins, as it
                 is the model's final word. No marker -> no answer (reward 0); there is
                 no fall-back to "last number", so the format is part of what is learned.
    last_number  the last number anywhere in the text (for models that ignore formats).
    answer_tag   content of the last <answer>...</answer> (reasoning-gym's convention).
    boxed        content of the last \\boxed{...} / \\fbox{...} (MATH's convention).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Literal, TypeVar

logger = logging.getLogger(__name__)

AnswerFormat = Literal["last_hash", "last_number", "answer_tag", "boxed"]
ANSWER_FORMATS: tuple[str, ...] = ("last_hash", "last_number", "answer_tag", "boxed")

DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "last_hash": "Solve the problem step by step. Then write the final answer on the last line "
    "after '####', for example: #### 42",
    "last_number": "Solve the problem step by step and end with the final answer as a number.",
    "answer_tag": "Solve the problem step by step. Then give the final answer inside "
    "<answer></answer> tags, for example: <answer>42</answer>",
    "boxed": "Solve the problem step by step. Then put the final answer in \\boxed{}.",
}
"""Text appended to each question (after a blank line) so the model knows where to put the
answer; one per answer format. Tasks take `instruction=` to override it ("" for none)."""


def default_instruction(answer_format: str) -> str:
    """The instruction that matches `answer_format` (raises ValueError for unknown formats)."""
    check_answer_format(answer_format)
    return DEFAULT_INSTRUCTIONS[answer_format]


def check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; expected one of {ANSWER_FORMATS}")


# --------------------------------------------------------------------------------------
# Locating the answer span in a response
# --------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def _balanced_group(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == "{", or None if never closed.

    Escaped braces (`\\{`, `\\}`) do not count, so `\\boxed{\\{1,2\\}}` works."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the LAST `\\boxed{...}` or `\\fbox{...}` (nested braces kept), or the
    `\\boxed 5` form (up to the next space or `$`).

    Returns None when there is no box, the box is empty, or the last box is never closed
    (a cut-off answer): we do not fall back to an earlier box, which the model abandoned."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        content = _balanced_group(text, end + len(rest) - len(stripped))
    elif rest[:1].isspace() and stripped:
        content = re.split(r"[\s$]", stripped, maxsplit=1)[0]
    else:
        content = None
    if content is None or not content.strip():
        return None
    return content.strip()


def extract_answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` (stripped), None if absent or empty."""
    matches = _ANSWER_TAG_RE.findall(text)
    if not matches or not matches[-1].strip():
        return None
    return matches[-1].strip()


def extract_after_hash(text: str) -> str | None:
    """First non-empty line after the LAST "####" (stripped, trailing period dropped)."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    for line in text[idx + 4 :].splitlines():
        line = line.strip().rstrip(".").strip()
        if line:
            return line
    return None


# --------------------------------------------------------------------------------------
# Numbers (GSM8K-style answers)
# --------------------------------------------------------------------------------------

# A number: optional minus (only when not glued to a preceding word/digit/")", so "5-3"
# yields 3 and not -3; and glued to what follows, so "10 - 5" yields 5), optional currency sign, digits with proper thousands commas or
# plain digits, optional decimals, optional "/denominator" (a simple fraction).
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w)])-)?(?:[$€£]\s?)?"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+))?"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}")
_MAX_DIGITS = 1000  # longer digit strings are garbage, not answers (and slow to convert)


def _clean_number_text(text: str) -> str:
    """Rewrite LaTeX/Unicode number spellings into plain ones: \\frac{3}{4} -> 3/4,
    \\$ -> $, 1{,}000 -> 1,000, Unicode minus -> '-'."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    return _LATEX_FRAC_RE.sub(r"\1/\2", text)


def _match_to_fraction(m: re.Match[str]) -> Fraction | None:
    body, den = m.group("body").replace(",", ""), m.group("den")
    if len(body) > _MAX_DIGITS or (den is not None and len(den) > _MAX_DIGITS):
        return None
    try:
        value = Fraction(body)
        if den is not None:
            if "." in body or int(den) == 0:
                return None
            value /= int(den)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if m.group("sign") else value


def parse_number(text: str) -> Fraction | None:
    """Parse ONE number written the way answers are: "1,234", "$18.00", "18%", "-5",
    "3/4", "\\frac{3}{4}", "0.75", "18 dollars" (trailing words ignored).

    Returns None when `text` does not start with a number (after whitespace). Exact:
    Fractions, no float parsing, no eval."""
    text = _clean_number_text(text.strip())
    m = _NUMBER_RE.match(text)
    return _match_to_fraction(m) if m else None


def _numbers_in(text: str) -> list[re.Match[str]]:
    return list(_NUMBER_RE.finditer(_clean_number_text(text)))


def format_number(value: Fraction) -> str:
    """Canonical text of a number, so equal numbers vote together in maj@k:
    18 -> "18", 3/4 -> "0.75" (terminating decimals), 1/3 -> "1/3"."""
    if value.denominator == 1:
        return str(value.numerator)
    den, places = value.denominator, 0
    while den % 10 == 0:
        den //= 10
        places += 1
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places += max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def extract_gsm8k_answer(text: str, mode: AnswerFormat = "last_hash") -> str | None:
    """The numeric answer of a response, in canonical form (`format_number`), or None.

    mode "last_hash": the first number after the last "####" (None without a marker);
    "last_number": the last number in the text; "boxed" / "answer_tag": the first number
    inside the last box / answer tag. Commas, currency, units and "%" are dropped:
    "#### $1,000.00 dollars" -> "1000"."""
    check_answer_format(mode)
    if mode == "last_number":
        matches = _numbers_in(text)
        return _canonical_or_none(matches[-1]) if matches else None
    span = {"last_hash": _after_last_hash, "boxed": extract_boxed, "answer_tag": extract_answer_tag}[mode](text)
    if span is None:
        return None
    matches = _numbers_in(span)
    return _canonical_or_none(matches[0]) if matches else None


def _after_last_hash(text: str) -> str | None:
    idx = text.rfind("####")
    return None if idx < 0 else text[idx + 4 :]


def _canonical_or_none(m: re.Match[str]) -> str | None:
    value = _match_to_fraction(m)
    return None if value is None else format_number(value)


def numbers_equal(pred: str | None, gold: str | None, rel_tol: float = 1e-6) -> bool:
    """Whether two number strings denote the same number.

    Two integers must match exactly (so 30-digit answers are not "close enough"); otherwise
    |pred - gold| <= rel_tol * max(1, |gold|), computed on exact Fractions, so that
    "0.333333" matches "1/3" but "0.33" does not."""
    if pred is None or gold is None:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is None or g is None:
        return False
    if p == g:
        return True
    if p.denominator == 1 and g.denominator == 1:
        return False
    return abs(p - g) <= Fraction(rel_tol) * max(Fraction(1), abs(g))


# --------------------------------------------------------------------------------------
# Free-form answers (raw strings, e.g. reasoning-gym)
# --------------------------------------------------------------------------------------


def extract_answer(text: str, answer_format: AnswerFormat) -> str | None:
    """The raw answer string of a response under `answer_format` (no number canonicalisation,
    which would be wrong for non-numeric answers, e.g. "3/6" must not become "1/2" when the
    task asks for a reduced fraction). "last_number" drops thousands commas and currency."""
    check_answer_format(answer_format)
    if answer_format == "last_hash":
        return extract_after_hash(text)
    if answer_format == "answer_tag":
        return extract_answer_tag(text)
    if answer_format == "boxed":
        return extract_boxed(text)
    matches = _numbers_in(text)
    if not matches:
        return None
    m = matches[-1]
    den = f"/{m.group('den')}" if m.group("den") else ""
    return ("-" if m.group("sign") else "") + m.group("body").replace(",", "") + den


# --------------------------------------------------------------------------------------
# MATH answers: cheap normalised string match, then math_verify under a time limit
# --------------------------------------------------------------------------------------

GraderBackend = Literal["auto", "signal", "process"]
MAX_MATH_ANSWER_CHARS = 1000
"""Extracted answers longer than this are graded by string match only: nothing that long is
a MATH answer, and parsing it would only burn the time limit."""

_SIZING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])|\\[!,;: ]|~")
_COMMAND_SPACE_RE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")  # "\pi r": this space matters


def normalize_math_answer(answer: str) -> str:
    """Conservative LaTeX normalisation for a first exact-match test (and for voting):
    drops whitespace (except the one ending a command name, as in "\\pi r"), spacing
    commands, \\left/\\right/\\big sizing, currency \\$, surrounding $...$, a trailing period, and maps
    \\dfrac/\\tfrac to \\frac. Never changes meaning, so a match is always correct."""
    s = answer.strip().rstrip(".").strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "")
    s = _SIZING_RE.sub("", s)
    s = _COMMAND_SPACE_RE.sub("\\1\x00", s)  # protect spaces that end a command name
    s = "".join(s.split()).replace("\x00", " ")
    return s.rstrip(".")


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
    backend: "signal" runs math_verify in this thread under SIGALRM (main thread only);
    "process" sends it to a persistent worker process that is killed if it overruns (works
    from any thread and also stops hangs inside C code); "auto" = signal in the main thread,
    process elsewhere. A timeout or grader error counts as wrong (reward 0), never a crash."""
    if pred is None or not pred.strip():
        return False
    if normalize_math_answer(pred) == normalize_math_answer(gold):
        return True
    if len(pred) > MAX_MATH_ANSWER_CHARS:
        return False
    use_signal = backend == "signal" or (
        backend == "auto" and threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    )
    if use_signal:
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
