"""SPO-tree's edge replay buffer: which edge samples an iteration trains on.

A 6-6-6 tree can yield up to 258 edges per prompt, more than one update wants. Per
iteration, each prompt trains at most `per_group` of its fresh edges (a seeded random
choice); the surplus waits in the buffer with its old log-probs and tops up later
iterations whose fresh edges fall short of `per_group x prompts`. Order of operations
in `select_edges`, each iteration:

  1. drop buffered edges whose age (iterations since they were sampled) reached `max_age`;
  2. fill the free room from the buffer, newest first (the least off-policy);
  3. park this iteration's surplus.

So a replayed edge is 1 .. max_age - 1 iterations old, and no prompt ever trains more
than `per_group` of its own fresh edges in the iteration that sampled them. Pure
bookkeeping: no I/O; the trainer saves `state()` in its checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass
class ReplayBuffer(Generic[T]):
    max_age: int
    items: list[tuple[int, T]] = field(default_factory=list)  # (iteration sampled, item), oldest first

    def add(self, items: list[T], iteration: int) -> None:
        if self.max_age > 0:
            self.items.extend((iteration, x) for x in items)

    def expire(self, iteration: int) -> int:
        """Drop items at least `max_age` iterations old; returns how many were dropped."""
        kept = [(born, x) for born, x in self.items if iteration - born < self.max_age]
        dropped = len(self.items) - len(kept)
        self.items = kept
        return dropped

    def take(self, k: int) -> list[tuple[int, T]]:
        """Remove and return up to k items, newest first."""
        if k <= 0 or not self.items:
            return []
        k = min(k, len(self.items))
        taken = self.items[-k:][::-1]
        self.items = self.items[:-k]
        return taken

    def __len__(self) -> int:
        return len(self.items)

    def state(self, encode: Callable[[T], Any]) -> list[list[Any]]:
        return [[born, encode(x)] for born, x in self.items]

    def load_state(self, state: list[list[Any]], decode: Callable[[Any], T]) -> None:
        self.items = [(int(born), decode(x)) for born, x in state]


@dataclass
class EdgeSelection(Generic[T]):
    fresh: list[T]  # trained now, sampled this iteration
    replayed: list[tuple[int, T]]  # trained now, (iteration sampled, item) from the buffer
    parked: int  # fresh edges moved to the buffer
    expired: int  # buffered edges dropped for age


def select_edges(
    groups: list[list[T]], buffer: ReplayBuffer[T], per_group: int, iteration: int, rng: random.Random
) -> EdgeSelection[T]:
    """Choose this iteration's edge samples (see the module docstring)."""
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    expired = buffer.expire(iteration)
    fresh, surplus = [], []
    for edges in groups:
        order = list(edges)
        rng.shuffle(order)
        fresh += order[:per_group]
        surplus += order[per_group:]
    replayed = buffer.take(per_group * len(groups) - len(fresh))
    buffer.add(surplus, iteration)
    return EdgeSelection(fresh, replayed, len(surplus), expired)
