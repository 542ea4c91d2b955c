"""Task: the base class of every task (problems for a split, extract, reward, prompt ids)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from spo.tasks.problems import DataError, Problem
from spo.tasks.prompts import PromptStyle, build_prompt_ids
from spo.tasks.rewards import AnswerFormat, check_answer_format, default_instruction

Split = Literal["train", "eval"]


class Task(ABC):
    """Problems for a split, and the reward of a response to one of them."""

    name: ClassVar[str]

    def __init__(self, answer_format: str, instruction: str | None) -> None:
        check_answer_format(answer_format)
        self.answer_format: AnswerFormat = answer_format  # type: ignore[assignment]
        # None -> the format's default instruction; "" -> no instruction at all.
        text = default_instruction(answer_format) if instruction is None else instruction
        self.instruction: str | None = text or None
        self._cache: dict[str, list[Problem]] = {}

    # --- problems -----------------------------------------------------------------
    def problems(self, split: Split, limit: int | None = None) -> list[Problem]:
        """The split's problems in a fixed order (loaded once), at most `limit` of them."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if split not in self._cache:
            try:
                self._cache[split] = self._load(split)
            except (TypeError, ValueError) as err:
                if isinstance(err, DataError):
                    raise
                raise DataError(f"task {self.name!r}: cannot build the {split} split: {err} (check task.options)"
                                ) from None
        problems = self._cache[split]
        if split == "train" and not problems:
            raise DataError(f"task {self.name!r}: the train split is empty (check task.options: sizes, paths)")
        return list(problems if limit is None else problems[:limit])

    @abstractmethod
    def _load(self, split: Split) -> list[Problem]: ...

    # --- grading ------------------------------------------------------------------
    @abstractmethod
    def extract(self, text: str) -> str | None:
        """The answer in a response (canonical form), None when there is none."""

    @abstractmethod
    def score_answer(self, problem: Problem, answer: str | None) -> float:
        """Reward of an already-extracted answer (1.0 correct, 0.0 wrong or None)."""

    def reward(self, problem: Problem, text: str, truncated: bool) -> float:
        """1.0 for a correct, complete response; 0.0 otherwise (truncated ones always 0)."""
        if truncated:
            return 0.0
        return self.score_answer(problem, self.extract(text))

    # --- prompts ------------------------------------------------------------------
    def prompt_ids(
        self, tokenizer: Any, problem: Problem, style: PromptStyle = "chat", system_prompt: str | None = None,
        template: str | None = None,
    ) -> list[int]:
        """Prompt token ids for `problem`, with this task's answer-format instruction
        (`template`: the plain format's, see spo.tasks.prompts)."""
        return build_prompt_ids(tokenizer, problem.question, style, system_prompt, self.instruction, template)
