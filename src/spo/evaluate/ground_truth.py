"""Ground-truth values for `spo credit`: V*(state) = mean reward of K Monte-Carlo
continuations of a frozen policy from an exact token prefix, with its standard error.

A state is the prompt plus a response prefix y_1..y_t, given as token ids (never
re-encoded text). Its continuations are sampled with the policy's own settings within what
is left of the response budget (`budget`, max_new_tokens - t), so a continuation is cut
(reward 0) exactly when a response of the same total length would be: the same
convention as SPO-chain's values (`spo.estimate.chain_values`).

No I/O and no engine import: any object with `RolloutEngine.generate` and a scoring
callback. States go to the engine `chunk_size` at a time, and `on_chunk` hears of each
finished chunk (the caller caches them, so a killed run keeps what it paid for).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from spo.evaluate.credit import mean_and_se
from spo.sample.engine import RolloutEngine, SamplingParams

ContinuationScore = Callable[[list[int], list[list[int]], list[bool]], list[float]]
"""score(state_indices, continuation_ids, truncated) -> reward of each prefix + continuation
(batched: one call per chunk)."""


@dataclass
class PrefixValue:
    mean: float
    se: float
    samples: int


def prefix_values(
    engine: RolloutEngine,
    contexts: Sequence[list[int]],
    budgets: Sequence[int],
    score: ContinuationScore,
    *,
    num_samples: int,
    params: SamplingParams,
    chunk_size: int = 256,
    on_chunk: Callable[[list[int], list[PrefixValue], int], None] | None = None,
) -> tuple[list[PrefixValue], int]:
    """(V* of every context, continuation tokens generated). `on_chunk(indices, values,
    tokens)` is called after every chunk. A context with budget 0 cannot continue: its
    one "continuation" is empty and truncated (reward as scored, SE 0)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if len(contexts) != len(budgets):
        raise ValueError(f"{len(contexts)} contexts but {len(budgets)} budgets")
    out: list[PrefixValue | None] = [None] * len(contexts)
    tokens = 0
    for start in range(0, len(contexts), max(chunk_size, 1)):
        idx = list(range(start, min(start + chunk_size, len(contexts))))
        live = [i for i in idx if budgets[i] > 0]
        dead = [i for i in idx if budgets[i] <= 0]
        for i, r in zip(dead, score(dead, [[] for _ in dead], [True] * len(dead)) if dead else []):
            out[i] = PrefixValue(r, 0.0, 1)
        chunk_tokens = 0
        if live:
            chunk_params = replace(params, seed=None if params.seed is None else params.seed + start)
            groups = engine.generate([list(contexts[i]) for i in live], chunk_params, n=num_samples,
                                     max_new_tokens=[budgets[i] for i in live])
            owners = [i for i, group in zip(live, groups) for _ in group]
            flat = [r for group in groups for r in group]
            chunk_tokens = sum(len(r.response_ids) for r in flat)
            rewards = score(owners, [list(r.response_ids) for r in flat], [r.truncated for r in flat])
            at = 0
            for i, group in zip(live, groups):
                out[i] = PrefixValue(*mean_and_se(rewards[at:at + len(group)]), len(group))
                at += len(group)
        tokens += chunk_tokens
        if on_chunk is not None:
            on_chunk(idx, [out[i] for i in idx], chunk_tokens)
    return [v for v in out if v is not None], tokens
