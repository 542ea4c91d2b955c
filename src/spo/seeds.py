"""Every seeded stream of a run, in one place.

A run's randomness is a pure function of `seed`, the iteration and the process rank, so
a resumed run draws exactly what an uninterrupted one would:

* which problems an iteration (or an SFT step) uses: `shuffled_positions`, consecutive
  slices of a seeded shuffle of the data, reshuffled every pass;
* the generator seed of each engine call and of each shuffle: `derive_seed(seed,
  iteration, rank, salt)`, with one salt per stream (below).
"""

from __future__ import annotations

import functools
import random

# Salts of `derive_seed`: one per random stream of an iteration.
SALT_SAMPLE = 0  # the iteration's responses (and SPO-tree's trees)
SALT_MC = 7  # SPO-chain's Monte-Carlo continuations
SALT_EDGES = 11  # SPO-tree's choice of which edges to train now
SALT_EVAL = 99  # evaluation after the iteration
SALT_PROMPTS = 5  # the iteration's problems when drawn with replacement (the same on every process)
# the update's mini-batch shuffle of epoch e uses salt e + 1


def derive_seed(seed: int, iteration: int, rank: int, salt: int = 0) -> int:
    """The seed of one random stream of one iteration on one process."""
    return (seed * 1_000_003 + iteration * 7919 + rank * 104_729 + salt) % (2**62)


@functools.lru_cache(maxsize=8)
def _pass_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def shuffled_positions(n: int, start: int, count: int, seed: int) -> list[int]:
    """Items `start .. start + count - 1` of an endless stream over range(n): pass e over
    the data is a seeded shuffle of it (a pure function of its arguments)."""
    out = []
    for pos in range(start, start + count):
        epoch, offset = divmod(pos, n)
        out.append(_pass_order(n, seed, epoch)[offset])
    return out


def iteration_prompts(num_problems: int, per_iteration: int, iteration: int, seed: int,
                      with_replacement: bool = False) -> list[int]:
    """The training problems of an iteration (all processes together): consecutive slices
    of seeded passes over the data, or (`with_replacement`, the reference's) the first ones
    of a fresh seeded shuffle every iteration: no repeat within an iteration, but any
    problem may come back in the next one."""
    if with_replacement:
        order = list(range(num_problems))
        random.Random(derive_seed(seed, iteration, 0, SALT_PROMPTS)).shuffle(order)
        return [order[i % num_problems] for i in range(per_iteration)]
    return shuffled_positions(num_problems, iteration * per_iteration, per_iteration, seed)
