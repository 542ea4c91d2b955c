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


def select_edges_uniform(groups: list[list[T]], buffer: ReplayBuffer[T], per_group: int, iteration: int,
                         rng: random.Random, question: Callable[[T], Any]) -> EdgeSelection[T]:
    """The reference's draw: every fresh edge enters the buffer, buffered edges
    `max_age` or more iterations old expire, then each question in the buffer gives up
    to `per_group` edges drawn uniformly from all of its edges, fresh and buffered. Drawn
    edges leave the buffer, so an edge trains at most once (as with `select_edges`)."""
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    fresh_count = sum(len(g) for g in groups)
    buffer.add([e for g in groups for e in g], iteration)
    expired = buffer.expire(iteration)
    by_question: dict[Any, list[int]] = {}
    for i, (_, edge) in enumerate(buffer.items):
        by_question.setdefault(question(edge), []).append(i)
    drawn = sorted(i for idx in by_question.values() for i in rng.sample(idx, min(per_group, len(idx))))
    taken = set(drawn)
    fresh = [buffer.items[i][1] for i in drawn if buffer.items[i][0] == iteration]
    replayed = [buffer.items[i] for i in drawn if buffer.items[i][0] != iteration]
    buffer.items = [item for i, item in enumerate(buffer.items) if i not in taken]
    if buffer.max_age <= 0:  # no replay: what was not drawn now is dropped
        buffer.items = []
    return EdgeSelection(fresh, replayed, fresh_count - len(fresh), expired)


def fit_to_size(items: list[T], size: int, rng: random.Random) -> list[T]:
    """The reference's fixed number of episodes per iteration: `size` of `items` drawn at
    random without repeats when there are more; all of them, then random repeats up to
    `size`, when there are fewer (none when there are none)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if len(items) >= size:
        return [items[i] for i in sorted(rng.sample(range(len(items)), size))]
    if not items:
        return []
    return list(items) + [rng.choice(items) for _ in range(size - len(items))]
