"""Tasks: a problem source + an answer extractor + a grader, built by name.

    task = build_task("gsm8k", train_path="data/gsm8k/train.jsonl", eval_path="data/gsm8k/test.jsonl")
    problems = task.problems("train", limit=64)
    r = task.reward(problems[0], response_text, truncated=False)   # 1.0 or 0.0

Every task: truncated responses (cut at the length limit) score 0 whatever they contain;
otherwise 1.0 if the extracted answer is correct, else 0.0. `extract` gives the answer
used for grading in a canonical form, so maj@k can vote on it and then grade the winner
with `score_answer`. Options are keyword arguments with defaults (see each class).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import types
import typing
from typing import Any, Literal

from spo.tasks.arith import ArithSpec
from spo.tasks.arith import splits as arith_splits
from spo.tasks.problems import (
    GSM8K_HUB_ID,
    DataError,
    MATH500_HUB_ID,
    Problem,
    drop_overlap,
    default_source,
    hash_split,
    load_gsm8k,
    load_math,
    reasoning_gym_splits,
)
from spo.tasks.base import Split, Task
from spo.tasks.dataset import DatasetTask
from spo.tasks.grader import GraderBackend, math_answers_equal
from spo.tasks.rewards import (
    extract_answer,
    extract_gsm8k_answer,
    normalize_math_answer,
    numbers_equal,
)


class GSM8KTask(Task):
    """Grade-school math word problems; numeric answers.

    train_path / eval_path: jsonl file or hub id; None -> $SPO_DATA_DIR/gsm8k/{train,test}.jsonl
      when SPO_DATA_DIR is set, else the hub's `openai/gsm8k` (train / test).
    answer_format: where the answer is read (default "last_hash": after the last "####").
    instruction: appended to each question; None -> the format's default, "" -> none.
    rel_tol: tolerance for non-integer answers (integers must match exactly)."""

    name = "gsm8k"

    def __init__(
        self,
        *,
        train_path: str | None = None,
        eval_path: str | None = None,
        answer_format: str = "last_hash",
        instruction: str | None = None,
        rel_tol: float = 1e-6,
    ) -> None:
        super().__init__(answer_format, instruction)
        self.train_path, self.eval_path, self.rel_tol = train_path, eval_path, rel_tol

    def _load(self, split: Split) -> list[Problem]:
        if split == "train":
            return load_gsm8k(self.train_path or default_source("gsm8k/train.jsonl", GSM8K_HUB_ID), split="train")
        return load_gsm8k(self.eval_path or default_source("gsm8k/test.jsonl", GSM8K_HUB_ID), split="test")

    def extract(self, text: str) -> str | None:
        return extract_gsm8k_answer(text, self.answer_format)

    def score_answer(self, problem: Problem, answer: str | None) -> float:
        return 1.0 if numbers_equal(answer, problem.answer, self.rel_tol) else 0.0


class Math500Task(Task):
    """Competition math (MATH-500); LaTeX answers graded by math_verify.

    path: MATH-500 jsonl or hub id (None -> $SPO_DATA_DIR/math500/test.jsonl when SPO_DATA_DIR
      is set, else the hub's `HuggingFaceH4/MATH-500`).
    train_path: MATH-format training jsonl/hub id. When given, eval = all of `path` and train
      = train_path minus any question that also occurs in eval. When None, the 500 problems
      are split deterministically (sha256 of the id): `eval_size` for eval, the rest train,
      so a run never trains on the problems it reports.
    eval_size: size of that held-out part (default 100; ignored when train_path is given).
    answer_format: default "boxed" (the last \\boxed{}); instruction as for GSM8K.
    timeout_s: time limit for grading one answer; grader_backend: see spo.tasks.grader.math_answers_equal."""

    name = "math500"

    def __init__(
        self,
        *,
        path: str | None = None,
        train_path: str | None = None,
        eval_size: int = 100,
        answer_format: str = "boxed",
        instruction: str | None = None,
        timeout_s: float = 5.0,
        grader_backend: GraderBackend = "auto",
    ) -> None:
        super().__init__(answer_format, instruction)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.path, self.train_path, self.eval_size = path, train_path, eval_size
        self.timeout_s, self.grader_backend = timeout_s, grader_backend

    def _load(self, split: Split) -> list[Problem]:
        math500 = load_math(self.path or default_source("math500/test.jsonl", MATH500_HUB_ID), split="test")
        if self.train_path is None:
            train, evals = hash_split(math500, self.eval_size)
            return train if split == "train" else evals
        if split == "eval":
            return math500
        return drop_overlap(load_math(self.train_path, split="train"), math500)

    def extract(self, text: str) -> str | None:
        answer = extract_answer(text, self.answer_format)
        return None if answer is None else normalize_math_answer(answer)

    def score_answer(self, problem: Problem, answer: str | None) -> float:
        ok = math_answers_equal(answer, problem.answer, timeout_s=self.timeout_s, backend=self.grader_backend)
        return 1.0 if ok else 0.0


class ReasoningGymTask(Task):
    """Procedural problems from reasoning-gym, graded by the dataset's own `score_answer`.

    dataset: reasoning-gym dataset name (default "chain_sum"; also e.g. basic_arithmetic,
      products, simple_equations, gsm_symbolic); dataset_options: its config kwargs.
    seed / eval_seed: train and eval seeds (eval default seed + 1e9; overlaps removed).
    train_size / eval_size: how many problems to generate per split.
    answer_format: default "last_hash"; the raw answer string (not number-normalised) is
      passed to score_answer, as reasoning-gym answers need not be numbers.
    partial_credit: False (default) -> reward 1.0 only when score_answer returns 1.0 (its
      default scorer gives fractions for answers that merely contain the gold one, and some
      datasets give 0.01 for a wrong answer); True -> the raw score in [0, 1]."""

    name = "reasoning_gym"

    def __init__(
        self,
        *,
        dataset: str = "chain_sum",
        dataset_options: dict[str, Any] | None = None,
        seed: int = 0,
        eval_seed: int | None = None,
        train_size: int = 1000,
        eval_size: int = 200,
        answer_format: str = "last_hash",
        instruction: str | None = None,
        partial_credit: bool = False,
    ) -> None:
        super().__init__(answer_format, instruction)
        import reasoning_gym

        self.dataset, self.dataset_options = dataset, dict(dataset_options or {})
        self.seed, self.eval_seed = seed, eval_seed
        self.train_size, self.eval_size = train_size, eval_size
        self.partial_credit = partial_credit
        if train_size < 1 or eval_size < 0:
            raise ValueError(f"train_size must be >= 1 and eval_size >= 0, got {train_size}, {eval_size}")
        known = reasoning_gym.factory.DATASETS
        if dataset not in known:
            close = difflib.get_close_matches(dataset, known, n=3)
            raise DataError(f"task.options.dataset: unknown reasoning-gym dataset {dataset!r}"
                            + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
                            + f"; known: {', '.join(sorted(known))}")
        # Scorer from a config-aware instance (fails early on a bad option).
        self._scorer = self._reasoning_gym(reasoning_gym.create_dataset, dataset, seed=seed, size=1,
                                           **self.dataset_options)

    def _reasoning_gym(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call into reasoning-gym, whose configs validate with assertions and may raise any
        exception on a bad option: any failure is the user's dataset_options, said so."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise DataError(f"task.options.dataset_options: reasoning-gym dataset {self.dataset!r} rejects "
                            f"{self.dataset_options}: {type(err).__name__}: {err}") from None

    def _load(self, split: Split) -> list[Problem]:
        train, evals = self._reasoning_gym(
            reasoning_gym_splits,
            self.dataset,
            train_size=self.train_size,
            eval_size=self.eval_size,
            seed=self.seed,
            eval_seed=self.eval_seed,
            options=self.dataset_options,
        )
        self._cache["train"], self._cache["eval"] = train, evals
        return train if split == "train" else evals

    def extract(self, text: str) -> str | None:
        return extract_answer(text, self.answer_format)

    def score_answer(self, problem: Problem, answer: str | None) -> float:
        if answer is None:
            return 0.0
        score = float(self._scorer.score_answer(answer=answer, entry=problem.meta["entry"]))
        if self.partial_credit:
            return min(max(score, 0.0), 1.0)
        return 1.0 if score >= 1.0 - 1e-9 else 0.0


class ArithStepsTask(Task):
    """Procedural multi-step integer arithmetic with gold step-by-step solutions
    (`spo.tasks.arith`): "12+7-5+9" -> "12+7=19\n19-5=14\n14+9=23\n#### 23".

    min_terms / max_terms: numbers per problem (steps = terms - 1), drawn uniformly.
    min_operand / max_operand: range of each number (max_operand 9 = one digit, 99 = two).
    ops: operators to draw from, a string over "+-*"; `max_factor` bounds the right-hand
      number of a multiplication; allow_negative: False keeps every intermediate result
      >= 0 (a subtraction never takes more than the current value).
    seed / train_size / eval_size: the splits are seeded and disjoint (eval questions that
      occur in train are skipped).
    answer_format: default "last_hash", graded like GSM8K (integers must match exactly).
    instruction: default "" (none): a model trained on the solutions learns the format, and
      on a character-level model every instruction character costs a position."""

    name = "arith_steps"

    def __init__(
        self,
        *,
        min_terms: int = 3,
        max_terms: int = 3,
        min_operand: int = 0,
        max_operand: int = 99,
        ops: str = "+-",
        max_factor: int = 9,
        allow_negative: bool = False,
        seed: int = 0,
        train_size: int = 5000,
        eval_size: int = 200,
        answer_format: str = "last_hash",
        instruction: str | None = "",
    ) -> None:
        super().__init__(answer_format, instruction)
        self.spec = ArithSpec(min_terms=min_terms, max_terms=max_terms, min_operand=min_operand,
                              max_operand=max_operand, ops=ops, max_factor=max_factor,
                              allow_negative=allow_negative)
        self.spec.check()
        if train_size < 0 or eval_size < 0:
            raise ValueError(f"arith_steps: train_size and eval_size must be >= 0, got {train_size}, {eval_size}")
        self.seed, self.train_size, self.eval_size = seed, train_size, eval_size

    def _load(self, split: Split) -> list[Problem]:
        train, evals = arith_splits(self.spec, seed=self.seed, train_size=self.train_size, eval_size=self.eval_size)
        self._cache["train"], self._cache["eval"] = train, evals
        return train if split == "train" else evals

    def extract(self, text: str) -> str | None:
        return extract_gsm8k_answer(text, self.answer_format)

    def score_answer(self, problem: Problem, answer: str | None) -> float:
        return 1.0 if numbers_equal(answer, problem.answer) else 0.0


TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (GSM8KTask, Math500Task, ReasoningGymTask, ArithStepsTask, DatasetTask)
}


def task_options(name: str) -> dict[str, Any]:
    """The options task `name` accepts, with their defaults."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    params = inspect.signature(TASKS[name].__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _fits(value: Any, tp: Any) -> bool:
    """Whether `value` (read from YAML) is of the option type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if tp in (int, float):  # an int is a float option's value too; a bool is neither
        return isinstance(value, (int,) if tp is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def _checked_options(cls: type[Task], options: dict[str, Any]) -> dict[str, Any]:
    """`options` checked against the types of `cls`'s keyword arguments (YAML's "1e-6",
    a string, accepted as a float), so that a wrong one is named now rather than failing
    somewhere inside the task later. Raises DataError naming `task.options.<key>`."""
    hints = typing.get_type_hints(cls.__init__)
    checked = {}
    for key, value in options.items():
        tp = hints.get(key, Any)
        if isinstance(value, str) and not _fits(value, tp) and _fits(0.5, tp):
            with contextlib.suppress(ValueError):
                value = float(value)
        if not _fits(value, tp):
            raise DataError(f"task.options.{key}: expected {_type_name(tp)}, got {value!r}")
        checked[key] = value
    return checked


def build_task(name: str, **options: Any) -> Task:
    """Build task `name` ("gsm8k", "math500", "reasoning_gym", "arith_steps", "dataset") from keyword options.
    Unknown names and options raise ValueError listing the valid ones; options of the wrong
    type or out of range raise DataError naming them."""
    valid = task_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; valid options: {sorted(valid)}")
    try:
        return TASKS[name](**_checked_options(TASKS[name], options))
    except (TypeError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"task.options ({name}): {err}") from None
