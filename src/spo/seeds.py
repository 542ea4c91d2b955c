"""Every seeded stream of a run, in one place.

A run's randomness is a pure function of `seed`, the iteration and the process rank, so
a resumed run draws exactly what an uninterrupted one would:

* which problems an iteration (or an SFT step) uses: `shuffled_positions`, consecutive
  slices of a seeded shuffle of the data, reshuffled every pass;
* the generator seed of each engine call and of each shuffle: `derive_seed(seed,
  iteration, rank, stream, *indices)`, one named stream per use (below), with indices
  such as the epoch for streams drawn more than once per iteration;
* the seed of each single request inside an engine call (vLLM seeds requests one by one):
  `request_seed`.

Every seed is a hash (BLAKE2b, 62 bits) of the stream's name and all of its numbers, so
two streams never share a seed by arithmetic accident (summing salts did: the update's
shuffle at epoch 4 drew the same numbers as the prompt stream). tests/test_seeds.py checks
that no two named streams coincide over a wide range of iterations, ranks and indices.
"""

from __future__ import annotations

import functools
import hashlib
import random

# Stream names of `derive_seed`: one per random stream of an iteration.
SALT_SAMPLE = "sample"  # the iteration's responses (and SPO-tree's trees)
SALT_MC = "mc"  # SPO-chain's Monte-Carlo continuations
SALT_EDGES = "edges"  # SPO-tree's choice of which edges to train now
SALT_EVAL = "eval"  # evaluation after the iteration
SALT_PROMPTS = "prompts"  # the iteration's problems when drawn with replacement (the same on every process)
SALT_UPDATE_SHUFFLE = "update_shuffle"  # the policy update's mini-batch order; index: the epoch
SALT_CRITIC = "critic_shuffle"  # PPO critic's mini-batch order; index: the epoch
SALT_TRUTH = "credit_truth"  # `spo credit`'s ground-truth continuations, a stream no estimator uses
# streams without an iteration: `shuffled_positions`' passes over the data, and `request_seed`
DATA_ORDER = "data_order"
REQUEST = "request"

NAMED_STREAMS = (SALT_SAMPLE, SALT_MC, SALT_EDGES, SALT_EVAL, SALT_PROMPTS, SALT_UPDATE_SHUFFLE, SALT_CRITIC,
                 SALT_TRUTH)


def mix_seed(stream: str, *numbers: int) -> int:
    """A seed in [0, 2**62) from a stream name and integers: a hash, so that different
    (name, numbers) never meet except by a 62-bit collision."""
    key = repr((str(stream), tuple(int(x) for x in numbers))).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 2


def derive_seed(seed: int, iteration: int, rank: int, stream: str, *indices: int) -> int:
    """The seed of one random stream of one iteration on one process; `indices` tell
    apart several draws of a stream in an iteration (e.g. the update's epochs)."""
    return mix_seed(stream, seed, iteration, rank, *indices)


def request_seed(call_seed: int, *indices: int) -> int:
    """The seed of one request of an engine call seeded with `call_seed` (indices: the
    context and the sample of it), for engines that seed each request on its own."""
    return mix_seed(REQUEST, call_seed, *indices)


@functools.lru_cache(maxsize=8)
def _pass_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(mix_seed(DATA_ORDER, seed, epoch)).shuffle(order)
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
