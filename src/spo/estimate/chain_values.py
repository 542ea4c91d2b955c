"""SPO-chain value estimation: Monte-Carlo values at segment boundaries (SPO section 2).

For a response y with boundaries 0 = t_0 < ... < t_K = T:
    V(t_k) = mean reward of N continuations sampled from the state (x, y_1..y_{t_k}),
             for 0 < k < K (and k = 0 when start_value == "mc");
    V(t_K) = r(x, y);
    V(t_0) = mean reward of the G responses to x  (start_value == "group_mean", default).

Continuations start from the exact token ids x + y_1..y_{t_k} (never a decode/re-encode),
are sampled with the policy's own settings and must fit in what is left of the
response budget (max_new_tokens - t_k), so a continuation is truncated (reward 0) exactly
when a response of the same total length would be. Identical states (same prompt and
prefix, e.g. two responses that share a start) are estimated once, and all states of an
iteration go to the engine in one call so it can batch them and share each prefix's
encoding among its N continuations.

This module does no I/O and imports no engine: it takes any object with the
`RolloutEngine.generate` signature and a scoring callback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from spo.sample.engine import RolloutEngine, SamplingParams

ScoreFn = Callable[[int, list[int], bool], float]
"""score(episode_index, full_response_ids, truncated) -> reward of that response."""


@dataclass
class ChainValues:
    values: list[list[float]]  # per episode, V(t_0) .. V(t_K)
    value_samples: list[list[int]]  # per episode, how many samples each V averaged (end: 0)
    states: int  # distinct states estimated by MC
    continuation_tokens: int  # tokens generated for the estimates


def group_mean_rewards(rewards: Sequence[float], group_ids: Sequence[int]) -> tuple[list[float], list[int]]:
    """Per episode: the mean reward of its group and the group's size."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for r, g in zip(rewards, group_ids):
        sums[g] = sums.get(g, 0.0) + float(r)
        counts[g] = counts.get(g, 0) + 1
    return [sums[g] / counts[g] for g in group_ids], [counts[g] for g in group_ids]


def estimate_chain_values(
    engine: RolloutEngine,
    prompt_ids: Sequence[list[int]],
    response_ids: Sequence[list[int]],
    rewards: Sequence[float],
    group_ids: Sequence[int],
    boundaries: Sequence[list[int]],
    score: ScoreFn,
    *,
    num_samples: int,
    params: SamplingParams,
    start_value: Literal["group_mean", "mc"] = "group_mean",
) -> ChainValues:
    """V at every boundary of every response; see the module docstring.

    `params.max_new_tokens` is the full response budget; each state's continuations get
    `params.max_new_tokens - t`."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if start_value not in ("group_mean", "mc"):
        raise ValueError(f"start_value must be 'group_mean' or 'mc', got {start_value!r}")
    n_ep = len(response_ids)
    if not (len(prompt_ids) == len(rewards) == len(group_ids) == len(boundaries) == n_ep):
        raise ValueError("prompt_ids, response_ids, rewards, group_ids and boundaries differ in length")

    # 1. The distinct states that need MC: (prompt, prefix) for each interior boundary.
    state_index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    states: list[tuple[int, int]] = []  # (episode that owns it, prefix length t)
    needs: list[list[int | None]] = []  # per episode, per boundary: state id or None
    for i, (b, resp) in enumerate(zip(boundaries, response_ids)):
        if b[0] != 0 or b[-1] != len(resp):
            raise ValueError(f"episode {i}: boundaries {b} do not span its {len(resp)} response tokens")
        row: list[int | None] = []
        for k, t in enumerate(b):
            mc = (0 < k < len(b) - 1) or (k == 0 and start_value == "mc")
            if not mc:
                row.append(None)
                continue
            key = (tuple(prompt_ids[i]), tuple(resp[:t]))
            if key not in state_index:
                state_index[key] = len(states)
                states.append((i, t))
            row.append(state_index[key])
        needs.append(row)

    # 2. One engine call for all states; each continues within the remaining budget.
    mc_values: list[float] = []
    tokens = 0
    if states:
        contexts = [list(prompt_ids[i]) + list(response_ids[i][:t]) for i, t in states]
        budgets = [max(params.max_new_tokens - t, 0) for _, t in states]
        rollouts = engine.generate(contexts, params, n=num_samples, max_new_tokens=budgets)
        for (i, t), group, budget in zip(states, rollouts, budgets):
            prefix = list(response_ids[i][:t])
            total = 0.0
            for r in group:
                tokens += len(r.response_ids)
                total += score(i, prefix + list(r.response_ids), r.truncated or budget == 0)
            mc_values.append(total / len(group))

    # 3. Assemble V(t_0..t_K) per episode.
    start, group_size = group_mean_rewards(rewards, group_ids)
    values, samples = [], []
    for i, (b, row) in enumerate(zip(boundaries, needs)):
        v, s = [], []
        for k, sid in enumerate(row):
            if sid is not None:
                v.append(mc_values[sid])
                s.append(num_samples)
            elif k == len(b) - 1:
                v.append(float(rewards[i]))
                s.append(0)
            else:  # k == 0 with start_value == "group_mean"
                v.append(start[i])
                s.append(group_size[i])
        values.append(v)
        samples.append(s)
    return ChainValues(values, samples, len(states), tokens)
