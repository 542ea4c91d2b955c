"""Response token ids -> text -> reward: the one place responses are decoded and graded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spo.tasks.problems import Problem


def decode_and_score(tokenizer: Any, task: Any, problems: Sequence[Problem], responses: Sequence[Sequence[int]],
                     truncated: Sequence[bool]) -> tuple[list[str], list[float]]:
    """The text of each response (special tokens dropped) and its reward for its problem;
    a truncated response is graded as the task says (0 for every task here)."""
    if not responses:
        return [], []
    texts = tokenizer.batch_decode([list(r) for r in responses], skip_special_tokens=True)
    rewards = [task.reward(p, text, cut) for p, text, cut in zip(problems, texts, truncated)]
    return texts, rewards
