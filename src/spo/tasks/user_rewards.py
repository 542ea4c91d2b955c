"""Rewards you write, and the built-in graders as building blocks (docs/own-task.md).

Every reward function has one signature:

    def reward(prompt: str, response: str, problem: dict, finish_reason: str) -> float

`prompt` is the question text (the filled prompt template, without chat markup or the
answer-format instruction), `response` the decoded response, `problem` the data row (every
field of it, e.g. problem["answer"]), `finish_reason` "stop" (the model ended it) or
"length" (cut at the length limit). A function of three positional parameters is called
without `finish_reason`. Any finite float is a reward (partial credit, penalties).

A reward is named by a spec: a callable; a built-in name (`exact_match`, `numeric`,
`math_verify`, `regex`); `"module:function"` (an importable module) or
`"path/to/file.py:function"`; a dict `{function: <name or spec>, weight: 1.0, options: {}}`
(options go to a built-in); or a list of those, whose rewards are summed with their weights.

Protections (`RewardGuard`): a user function runs in a worker process with a time limit
per call and a memory cap (`isolation: process`, the default), or in this process under a
SIGALRM time limit without a memory cap (`isolation: inprocess`: faster, for trusted code,
and the only choice for a lambda or a function defined in a notebook). An exception, a
time-out, a crash of the worker, or a value that is not a finite number is an error: with
`on_error: zero` it scores 0, is counted and logged; with `on_error: raise` the run stops
with a `RewardError` carrying the user function's traceback. Never a silent NaN.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import re
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spo.tasks.grader import math_answers_equal
from spo.tasks.problems import DataError
from spo.tasks.rewards import (
    AnswerFormat,
    check_answer_format,
    extract_answer,
    extract_gsm8k_answer,
    normalize_math_answer,
    numbers_equal,
)
from spo.tasks.workers import WorkerPool, call_with_time_limit

log = logging.getLogger("spo.tasks.rewards")

RewardFn = Callable[..., float]
"""reward(prompt, response, problem, finish_reason) -> float (see the module docstring)."""
Isolation = Literal["process", "inprocess"]
OnError = Literal["zero", "raise"]
FINISH_REASONS = ("stop", "length")


class RewardError(DataError):
    """A user reward function failed (raised, timed out, crashed, or returned a non-number)
    and `on_error` is "raise"; the message names the function and the problem and carries the
    function's traceback."""


# --------------------------------------------------------------------------------------
# Built-in graders: factories returning reward functions of the common signature
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class exact_match:  # noqa: N801 - named like the function it stands for
    """1.0 when the answer read from the response (by `answer_format`) equals
    str(problem[field]) after stripping (and lower-casing with ignore_case); a response cut at
    the length limit scores 0."""

    field: str = "answer"
    answer_format: AnswerFormat = "last_hash"
    ignore_case: bool = False

    def __call__(self, prompt: str, response: str, problem: dict, finish_reason: str) -> float:
        if finish_reason == "length":
            return 0.0
        answer = extract_answer(response, self.answer_format)
        if answer is None:
            return 0.0
        gold = str(_gold(problem, self.field)).strip()
        answer = answer.strip()
        if self.ignore_case:
            answer, gold = answer.lower(), gold.lower()
        return 1.0 if answer == gold else 0.0


@dataclass(frozen=True)
class numeric:  # noqa: N801
    """1.0 when the number read from the response equals problem[field] (integers exactly,
    others within rel_tol; "1,000", "$5", "3/4" understood, see spo.tasks.rewards)."""

    field: str = "answer"
    answer_format: AnswerFormat = "last_hash"
    rel_tol: float = 1e-6

    def __call__(self, prompt: str, response: str, problem: dict, finish_reason: str) -> float:
        if finish_reason == "length":
            return 0.0
        return 1.0 if numbers_equal(extract_gsm8k_answer(response, self.answer_format),
                                    str(_gold(problem, self.field)), self.rel_tol) else 0.0


@dataclass(frozen=True)
class math_verify:  # noqa: N801
    """1.0 when the LaTeX answer read from the response equals problem[field] by math_verify
    (in the math grader's own time-limited, memory-capped worker; see spo.tasks.grader)."""

    field: str = "answer"
    answer_format: AnswerFormat = "boxed"
    timeout_s: float = 5.0

    def __call__(self, prompt: str, response: str, problem: dict, finish_reason: str) -> float:
        if finish_reason == "length":
            return 0.0
        answer = extract_answer(response, self.answer_format)
        pred = None if answer is None else normalize_math_answer(answer)
        return 1.0 if math_answers_equal(pred, str(_gold(problem, self.field)), timeout_s=self.timeout_s) else 0.0


@dataclass(frozen=True)
class regex:  # noqa: N801
    """1.0 when `pattern` is found in the response (re.search). `{field}` placeholders in the
    pattern are filled with the problem's fields, escaped: pattern "#### {answer}$"."""

    pattern: str
    flags: int = re.MULTILINE

    def __call__(self, prompt: str, response: str, problem: dict, finish_reason: str) -> float:
        if finish_reason == "length":
            return 0.0
        try:
            pattern = self.pattern.format_map({k: re.escape(str(v)) for k, v in problem.items()})
        except KeyError as err:
            raise KeyError(f"regex pattern {self.pattern!r} names field {err} the problem does not have") from None
        return 1.0 if re.search(pattern, response, self.flags) else 0.0


BUILTINS: dict[str, type] = {cls.__name__: cls for cls in (exact_match, numeric, math_verify, regex)}


def _gold(problem: dict, field: str) -> Any:
    if field not in problem:
        raise KeyError(f"the problem has no field {field!r} (fields: {sorted(problem)})")
    return problem[field]


# --------------------------------------------------------------------------------------
# Finding a user function
# --------------------------------------------------------------------------------------


def import_target(target: str) -> Callable[..., Any]:
    """The function named by "module:function" or "path/to/file.py:function" (a dotted
    attribute path after the colon is allowed). Raises DataError naming what is missing."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise DataError(f"reward {target!r}: expected 'module:function' or 'path/to/file.py:function'")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise DataError(f"reward {target!r}: file not found: {path}")
        name = f"spo_user_reward_{abs(hash(str(path)))}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[name]
                raise DataError(f"reward {target!r}: importing {path} failed:\n{traceback.format_exc()}") from None
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception:
            raise DataError(f"reward {target!r}: cannot import module {module_name!r}:\n"
                            f"{traceback.format_exc(limit=-3)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DataError(f"reward {target!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DataError(f"reward {target!r}: {attr} is not callable ({type(obj).__name__})")
    return obj


PICKLED = "pickled:"
"""Worker target prefix: the function is in this file, serialised by value with dill."""


def locate(fn: Callable[..., Any]) -> str | None:
    """A "module:qualname" or "file.py:qualname" target a worker process can import `fn`
    from, or None (a lambda, a closure, a function of the running script or a notebook:
    importing the script in the worker would run it again)."""
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if not module or "<" in qualname or not qualname or module == "__main__":
        return None
    if module.startswith("spo_user_reward_"):  # imported from a file path by import_target
        path = getattr(sys.modules.get(module), "__file__", None)
        return f"{path}:{qualname}" if path else None
    return f"{module}:{qualname}"


def arg_count(fn: Callable[..., Any], name: str) -> int:
    """How many of (prompt, response, problem, finish_reason) `fn` takes: 3 or 4."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 4
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 4
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) <= 4 and len(positional) >= 4:
        return 4
    if len(required) <= 3 and len(positional) == 3:
        return 3
    raise DataError(f"reward {name}: takes ({', '.join(p.name for p in params)}); a reward takes "
                    "(prompt, response, problem, finish_reason) or (prompt, response, problem)")


def check_value(value: Any) -> float | str:
    """The reward as a float, or why it is not one (a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"returned {type(value).__name__} {value!r:.80}, not a number"
    value = float(value)
    if not math.isfinite(value):
        return f"returned {value}, not a finite number"
    return value


# --------------------------------------------------------------------------------------
# One guarded reward component
# --------------------------------------------------------------------------------------


class _Outcome:
    """A call's result: a float, or an error text (with the user's traceback when there is one)."""

    def __init__(self, value: float | None = None, error: str | None = None) -> None:
        self.value, self.error = value, error


def run_user_function(fn: Callable[..., Any], nargs: int, args: Sequence[Any], timeout_s: float) -> dict[str, Any]:
    """Call fn on the first `nargs` args under a SIGALRM time limit (when in the main
    thread); the answer a worker sends: {"value": ...} or {"error": traceback text}."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            value = fn(*args[:nargs])
        except MemoryError:
            box["error"] = "MemoryError: the reward ran out of memory (memory cap: task.options.reward_memory_mb)"
            return
        except Exception:
            box["error"] = traceback.format_exc()
            return
        checked = check_value(value)
        box.update({"value": checked} if isinstance(checked, float) else {"error": checked})

    if threading.current_thread() is threading.main_thread():
        finished, _ = call_with_time_limit(call, timeout_s)
        if not finished:
            return {"error": f"timed out after {timeout_s:g} s (task.options.reward_timeout_s)"}
    else:
        call()
    return box


def _pickled(fn: Callable[..., Any], name: str) -> str:
    """A worker target holding `fn` serialised by value (dill: a lambda, a closure, a function
    of the running script or a notebook, with the globals it uses)."""
    import dill

    try:
        payload = dill.dumps(fn, recurse=True)
    except Exception as err:
        raise DataError(f"reward {name}: cannot send this function to a worker process ({type(err).__name__}: "
                        f"{err}); move it to a module or .py file, or set reward_isolation: inprocess") from None
    with tempfile.NamedTemporaryFile(prefix="spo-reward-", suffix=".dill", delete=False) as f:
        f.write(payload)
    atexit.register(Path(f.name).unlink, missing_ok=True)
    return PICKLED + f.name


class GuardedReward:
    """One reward function with its protections: `__call__` returns a float or an error."""

    def __init__(self, fn: Callable[..., Any], name: str, *, isolation: Isolation, timeout_s: float,
                 memory_mb: int, trusted: bool = False) -> None:
        self.fn, self.name, self.timeout_s = fn, name, timeout_s
        self.nargs = arg_count(fn, name)
        self.pool: WorkerPool | None = None
        if isolation == "process" and not trusted:
            target = locate(fn) or _pickled(fn, name)
            # the parent's import path goes along (as multiprocessing's spawn does), so the
            # worker finds a module the parent imported from a folder it added
            paths = [str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir()]
            self.pool = WorkerPool("spo.tasks._reward_worker", [target, str(memory_mb)], what=f"reward {name} worker",
                                   paths=paths)

    def __call__(self, args: Sequence[Any]) -> _Outcome:
        if self.pool is None:
            answer = run_user_function(self.fn, self.nargs, args, self.timeout_s)
        else:
            try:
                answer = self.pool.request({"args": list(args), "timeout_s": self.timeout_s}, self.timeout_s)
            except RuntimeError as err:  # the worker could not start (import error in the module)
                raise DataError(f"reward {self.name}: {err}") from None
            if answer is None:
                answer = {"error": f"the worker process overran {self.timeout_s:g} s or died (time limit: "
                                   "task.options.reward_timeout_s, memory cap: task.options.reward_memory_mb); "
                                   "it was restarted"}
        if "error" in answer:
            return _Outcome(error=str(answer["error"]))
        checked = check_value(answer.get("value"))
        return _Outcome(value=checked) if isinstance(checked, float) else _Outcome(error=checked)


# --------------------------------------------------------------------------------------
# A weighted sum of components, with the error policy
# --------------------------------------------------------------------------------------


class CombinedReward:
    """sum_i weight_i * reward_i(prompt, response, problem, finish_reason), every component
    guarded; errors follow `on_error` and are counted in `errors`."""

    def __init__(self, components: list[tuple[GuardedReward, float]], on_error: OnError) -> None:
        if not components:
            raise DataError("task.options.reward: no reward function given")
        if on_error not in ("zero", "raise"):
            raise DataError(f"task.options.reward_on_error: expected 'zero' or 'raise', got {on_error!r}")
        self.components, self.on_error = components, on_error
        self.errors = 0
        self._lock = threading.Lock()

    def __call__(self, prompt: str, response: str, problem: dict, finish_reason: str, where: str = "") -> float:
        total = 0.0
        for component, weight in self.components:
            outcome = component((prompt, response, problem, finish_reason))
            if outcome.error is not None:
                with self._lock:
                    self.errors += 1
                    count = self.errors
                message = f"reward {component.name} failed on problem {where or '?'}: {outcome.error.rstrip()}"
                if self.on_error == "raise":
                    raise RewardError(message + "\n(task.options.reward_on_error: zero scores such responses 0 "
                                                "instead)")
                if count <= 5 or count % 100 == 0:
                    log.warning("%s\n-> scored 0 (reward error %d so far; task.options.reward_on_error: raise stops "
                                "instead)", message, count)
                continue
            assert outcome.value is not None
            total += weight * outcome.value
        return total


def build_reward(spec: Any, *, answer_format: str = "last_hash", isolation: Isolation = "process",
                 timeout_s: float = 10.0, memory_mb: int = 1024, on_error: OnError = "zero") -> CombinedReward:
    """The reward a spec names (see the module docstring). Built-ins take `answer_format`
    unless their options say otherwise; user functions get the protections."""
    check_answer_format(answer_format)
    if isolation not in ("process", "inprocess"):
        raise DataError(f"task.options.reward_isolation: expected 'process' or 'inprocess', got {isolation!r}")
    if timeout_s <= 0:
        raise DataError(f"task.options.reward_timeout_s: must be > 0, got {timeout_s}")
    items = spec if isinstance(spec, list) else [spec]
    components = []
    for i, item in enumerate(items):
        key = f"task.options.reward[{i}]" if isinstance(spec, list) else "task.options.reward"
        weight, options = 1.0, {}
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"function", "weight", "options"})
            if unknown or "function" not in item:
                raise DataError(f"{key}: expected {{function, weight, options}}, got keys {sorted(item)}")
            weight, options, item = item.get("weight", 1.0), dict(item.get("options") or {}), item["function"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise DataError(f"{key}.weight: expected a finite number, got {weight!r}")
        components.append((_component(item, options, key, answer_format, isolation, timeout_s, memory_mb),
                           float(weight)))
    return CombinedReward(components, on_error)


def _component(item: Any, options: dict[str, Any], key: str, answer_format: str, isolation: Isolation,
               timeout_s: float, memory_mb: int) -> GuardedReward:
    if isinstance(item, str) and item in BUILTINS:
        cls = BUILTINS[item]
        if "answer_format" in inspect.signature(cls).parameters:
            options.setdefault("answer_format", answer_format)
        try:
            fn = cls(**options)
        except TypeError as err:
            raise DataError(f"{key}.options: {item}: {err}") from None
        return GuardedReward(fn, item, isolation="inprocess", timeout_s=timeout_s, memory_mb=memory_mb,
                             trusted=True)
    if options:
        raise DataError(f"{key}.options: only the built-in rewards ({', '.join(BUILTINS)}) take options")
    if isinstance(item, str):
        if ":" not in item:
            raise DataError(f"{key}: unknown reward {item!r}; expected a built-in ({', '.join(BUILTINS)}), "
                            "'module:function' or 'path/to/file.py:function'")
        return GuardedReward(import_target(item), item, isolation=isolation, timeout_s=timeout_s, memory_mb=memory_mb)
    if callable(item):
        trusted = type(item) in BUILTINS.values()
        name = getattr(item, "__qualname__", None) or type(item).__name__
        return GuardedReward(item, name, isolation="inprocess" if trusted else isolation, timeout_s=timeout_s,
                             memory_mb=memory_mb, trusted=trusted)
    raise DataError(f"{key}: expected a reward name, 'module:function', a callable or "
                    f"{{function, weight, options}}, got {type(item).__name__}")
