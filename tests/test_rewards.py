"""Answer extraction and grading: tricky GSM8K numbers, MATH LaTeX, time limits, truncation."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from spo.tasks import grader
from spo.tasks.grader import math_answers_equal
from spo.tasks.problems import Problem
from spo.tasks.registry import build_task
from spo.tasks.rewards import (
    extract_after_hash,
    extract_answer,
    extract_answer_tag,
    extract_boxed,
    extract_gsm8k_answer,
    format_number,
    normalize_math_answer,
    numbers_equal,
    parse_number,
)

# --------------------------------------------------------------------------------------
# GSM8K numbers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 2+2=4\n#### 4", "4"),
        ("#### 1,234", "1234"),
        ("#### 1,234,567.50", "1234567.5"),
        ("#### $18.00", "18"),
        ("#### \\$18", "18"),
        ("#### 18 dollars", "18"),
        ("#### 18%", "18"),
        ("#### -5", "-5"),
        ("#### −5", "-5"),  # Unicode minus
        ("#### 3/4", "0.75"),
        ("#### \\frac{3}{4}", "0.75"),
        ("#### 1/3", "1/3"),
        ("#### 0.125", "0.125"),
        ("#### 3/4.", "0.75"),
        ("#### 7.", "7"),
        ("first #### 1 then #### 2", "2"),  # several markers: the last one counts
        ("####\n\n  42 apples", "42"),
        ("#### 123456789012345678901234567890", "123456789012345678901234567890"),
        ("The answer is 42", None),  # no marker: no answer (no fall-back)
        ("#### ", None),
        ("#### seven", None),
        ("", None),
        ("#### " + "9" * 5000, None),  # absurd digit string: not a number
    ],
)
def test_extract_gsm8k_last_hash(text: str, expected: str | None) -> None:
    assert extract_gsm8k_answer(text, "last_hash") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She pays 3 * $6 = $18. The answer is 18.", "18"),
        ("10 - 5 = 5", "5"),
        ("a loss of -7", "-7"),
        ("5-3", "3"),  # a minus glued to a digit is subtraction, not a sign
        ("costs $1,000.", "1000"),
        ("so 3/4 of them", "0.75"),
        ("The answer is \\frac{1}{2}.", "0.5"),
        ("no numbers here", None),
        ("1,2,3", "3"),
    ],
)
def test_extract_gsm8k_last_number(text: str, expected: str | None) -> None:
    assert extract_gsm8k_answer(text, "last_number") == expected


def test_extract_gsm8k_other_formats() -> None:
    assert extract_gsm8k_answer("so \\boxed{\\$1,200} total", "boxed") == "1200"
    assert extract_gsm8k_answer("<answer>12 cats</answer>", "answer_tag") == "12"
    assert extract_gsm8k_answer("<answer></answer>", "answer_tag") is None
    with pytest.raises(ValueError, match="answer format"):
        extract_gsm8k_answer("#### 1", "hashes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        ("18", "18", True),
        ("18.00", "18", True),
        ("$18", "18", True),
        ("1,000", "1000", True),
        ("3/4", "0.75", True),
        ("0.75", "3/4", True),
        ("-5", "-5", True),
        ("5", "-5", False),
        ("0.333333", "1/3", True),  # within rel_tol 1e-6
        ("0.33", "1/3", False),
        ("123456789012345678901234567890", "123456789012345678901234567891", False),  # ints: exact
        ("17", "18", False),
        (None, "18", False),
        ("seven", "7", False),
        ("1/0", "1", False),
    ],
)
def test_numbers_equal(pred: str | None, gold: str, equal: bool) -> None:
    assert numbers_equal(pred, gold) is equal


def test_parse_and_format_number() -> None:
    from fractions import Fraction

    assert parse_number(" $1,234.50 ") == Fraction(246_9, 2)
    assert parse_number("abc 5") is None
    assert format_number(Fraction(-3, 8)) == "-0.375"
    assert format_number(Fraction(1, 20)) == "0.05"
    assert format_number(Fraction(-2, 3)) == "-2/3"


def test_gsm8k_extraction_is_fast_on_long_garbage() -> None:
    junk = ("lorem 12,34 ipsum -.5 $ %" * 2000) + "#" * 3000 + "{" * 5000
    start = time.perf_counter()
    extract_gsm8k_answer(junk, "last_hash")
    extract_gsm8k_answer(junk, "last_number")
    extract_boxed(junk + "\\boxed{" + "{" * 10000)
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------------------
# Answer spans
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}} done", "\\frac{1}{\\sqrt{2}}"),
        ("first \\boxed{1}, finally \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not count
        ("\\boxed{}", None),
        ("no box here", None),
        ("\\boxed{3} and then \\boxed{4", None),  # last box cut off: no answer
        ("\\boxedx{3}", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


def test_other_spans() -> None:
    assert extract_answer_tag("<answer> 1 </answer> ... <answer>2</answer>") == "2"
    assert extract_answer_tag("<answer>3") is None
    assert extract_after_hash("work\n#### x = 5.\nmore") == "x = 5"
    assert extract_answer("total: 1,234.", "last_number") == "1234"
    assert extract_answer("so -7", "last_number") == "-7"
    assert extract_answer("nothing", "last_number") is None


# --------------------------------------------------------------------------------------
# MATH answers
# --------------------------------------------------------------------------------------


def test_normalize_math_answer() -> None:
    assert normalize_math_answer("\\left( 3, \\dfrac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalize_math_answer("$5$.") == "5"
    assert normalize_math_answer("2\\pi r") == "2\\pi r"  # the space ends a command: kept
    assert normalize_math_answer("x \\leftarrow y") == "x\\leftarrow y"  # not \\left
    assert normalize_math_answer("\\big( 1 , 2 \\big)") == "(1,2)"


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        ("\\frac{1}{2}", "\\frac{1}{2}", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac12", "\\frac{1}{2}", True),
        ("\\dfrac{1}{2}", "0.5", True),
        ("\\sqrt{8}", "2\\sqrt{2}", True),
        ("\\{2,1\\}", "\\{1,2\\}", True),
        ("(1, 2]", "(1,2]", True),
        ("(1, 2)", "(1,2]", False),
        ("1+x^2", "x^2+1", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\frac{1}{3}", "\\frac{1}{2}", False),
        ("\\$18", "18", True),
        ("7", "8", False),
        (None, "8", False),
        ("", "8", False),
        ("\\frac{", "\\frac{1}{2}", False),  # unparseable: wrong, no crash
    ],
)
def test_math_answers_equal(pred: str | None, gold: str, equal: bool) -> None:
    assert math_answers_equal(pred, gold, timeout_s=5) is equal


def test_math_pathological_answer_main_thread_respects_time_limit() -> None:
    handler_before = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    result = math_answers_equal("9^{9^{9^{9}}}", "5", timeout_s=1, backend="signal")
    elapsed = time.perf_counter() - start
    assert result is False
    assert elapsed < 3.0
    assert signal.getsignal(signal.SIGALRM) is handler_before  # handler restored
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left armed


def test_math_huge_answer_is_cheap() -> None:
    start = time.perf_counter()
    assert math_answers_equal("1+" * 5000 + "1", "5", timeout_s=5) is False
    assert time.perf_counter() - start < 1.0


def test_math_grader_from_worker_thread() -> None:
    """signal.alarm does not work off the main thread: the process backend takes over."""
    results: dict[str, object] = {}

    def work() -> None:
        start = time.perf_counter()
        results["slow"] = math_answers_equal("9^{9^{9^{9}}}", "5", timeout_s=1)
        results["slow_s"] = time.perf_counter() - start
        results["ok"] = math_answers_equal("0.5", "\\frac{1}{2}", timeout_s=5)
        results["no"] = math_answers_equal("0.4", "\\frac{1}{2}", timeout_s=5)
        try:
            math_answers_equal("2", "3", backend="signal")
        except RuntimeError as e:
            results["signal_error"] = str(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert results["slow"] is False
    # worker start-up (imports) + 1 s limit + grace
    assert float(results["slow_s"]) < 30  # type: ignore[arg-type]
    assert results["ok"] is True and results["no"] is False
    assert "main thread" in str(results["signal_error"])


def test_math_grader_worker_restarts_after_dying() -> None:
    assert math_answers_equal("0.5", "\\frac{1}{2}", backend="process") is True
    for worker in list(grader._pool._idle):
        worker.proc.kill()
        worker.proc.wait()
    assert math_answers_equal("0.25", "\\frac{1}{4}", backend="process") is True


def test_grader_exception_scores_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify

    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("grader bug")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert math_answers_equal("0.5", "\\frac{1}{3}", backend="signal") is False
    assert math_answers_equal("\\frac{1}{3}", "\\frac{1}{3}", backend="signal") is True  # string match first


def test_our_own_errors_are_not_swallowed() -> None:
    with pytest.raises(ValueError, match="backend"):
        math_answers_equal("1", "2", backend="bogus")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Task rewards
# --------------------------------------------------------------------------------------


def _problem(answer: str, **meta: object) -> Problem:
    return Problem(id="p", question="q", answer=answer, solution=None, meta=dict(meta))


def test_gsm8k_task_reward() -> None:
    task = build_task("gsm8k")
    p = _problem("18")
    assert task.reward(p, "3*6 = 18\n#### 18", truncated=False) == 1.0
    assert task.reward(p, "3*6 = 18\n#### $18.00", truncated=False) == 1.0
    assert task.reward(p, "3*6 = 18\n#### 18", truncated=True) == 0.0
    assert task.reward(p, "the answer is 18", truncated=False) == 0.0
    assert task.reward(p, "#### 18\n#### 19", truncated=False) == 0.0  # last marker counts
    assert task.extract("#### 1,000") == "1000"
    lenient = build_task("gsm8k", answer_format="last_number")
    assert lenient.reward(p, "the answer is 18", truncated=False) == 1.0


def test_math_task_reward() -> None:
    task = build_task("math500", timeout_s=2)
    p = _problem("\\frac{1}{2}")
    assert task.reward(p, "so $x = \\boxed{0.5}$", truncated=False) == 1.0
    assert task.reward(p, "so $x = \\boxed{\\dfrac{1}{2}}$", truncated=False) == 1.0
    assert task.reward(p, "so $x = \\boxed{\\frac{1}{2}}$", truncated=True) == 0.0
    assert task.reward(p, "so x = 1/2", truncated=False) == 0.0  # no box
    assert task.reward(p, "\\boxed{1/2} no wait \\boxed{1/3}", truncated=False) == 0.0
    assert task.extract("\\boxed{ \\dfrac{1}{2} }") == "\\frac{1}{2}"


def test_reasoning_gym_task_reward() -> None:
    task = build_task("reasoning_gym", dataset="chain_sum", train_size=5, eval_size=5)
    p = task.problems("train")[0]
    gold = p.answer
    assert task.reward(p, f"work...\n#### {gold}", truncated=False) == 1.0
    assert task.reward(p, f"work...\n#### {gold}", truncated=True) == 0.0
    assert task.reward(p, f"#### {gold}0", truncated=False) == 0.0
    assert task.reward(p, "no marker", truncated=False) == 0.0
    # the default scorer gives partial credit to answers that contain the gold one
    partial = build_task("reasoning_gym", dataset="basic_arithmetic", train_size=3, eval_size=0, partial_credit=True)
    binary = build_task("reasoning_gym", dataset="basic_arithmetic", train_size=3, eval_size=0)
    q = binary.problems("train")[0]
    padded = f"#### {q.answer} units"
    assert 0.0 < partial.reward(q, padded, truncated=False) < 1.0
    assert binary.reward(q, padded, truncated=False) == 0.0
    tagged = build_task("reasoning_gym", dataset="chain_sum", train_size=2, eval_size=0, answer_format="answer_tag")
    assert tagged.reward(p, f"<answer>{gold}</answer>", truncated=False) == 1.0
