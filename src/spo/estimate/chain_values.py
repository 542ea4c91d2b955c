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

from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

from spo.estimate.mc_allocation import Allocator, fixed_allocation
from spo.sample.engine import Rollout, RolloutEngine, SamplingParams

ScoreFn = Callable[[int, list[int], bool], float]
"""score(episode_index, full_response_ids, truncated) -> reward of that response."""


@dataclass
class ChainValues:
    values: list[list[float]]  # per episode, V(t_0) .. V(t_K)
    value_samples: list[list[int]]  # per episode, how many samples each V averaged (end: 0)
    states: int  # distinct states estimated by MC
    continuation_tokens: int  # tokens generated for the estimates
    continuations: int = 0  # continuations sampled (fixed rule without group samples: states x N)
    group_samples: list[list[int]] | None = None
    """With `group_samples`: per episode, how many of each V's samples are the group's own
    responses (the rest are fresh continuations)."""
    engine_calls: int = 0
    states_free: int = 0  # states whose every sample came from the group
    free_samples: int = 0  # group samples per state (each episode of a state: matching - 1), summed over states
    draws: list[tuple[int, int, Rollout, float]] | None = None
    """With `keep_draws`: every fresh continuation as (episode, t, rollout, reward): the state
    (episode's prompt + its first t tokens) it continues and the reward it scored."""


def group_mean_rewards(rewards: Sequence[float], group_ids: Sequence[int]) -> tuple[list[float], list[int]]:
    """Per episode: the mean reward of its group and the group's size."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for r, g in zip(rewards, group_ids):
        sums[g] = sums.get(g, 0.0) + float(r)
        counts[g] = counts.get(g, 0) + 1
    return [sums[g] / counts[g] for g in group_ids], [counts[g] for g in group_ids]


def matching_responses(prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]],
                       states: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Per state (owner episode i, prefix length t): every episode j with the same prompt
    whose first t response tokens equal episode i's (exact token comparison; i included)."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for j, p in enumerate(prompt_ids):
        by_prompt.setdefault(tuple(p), []).append(j)
    out = []
    for i, t in states:
        prefix = list(response_ids[i][:t])
        out.append([j for j in by_prompt[tuple(prompt_ids[i])]
                    if len(response_ids[j]) >= t and list(response_ids[j][:t]) == prefix])
    return out


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
    group_samples: bool = False,
    allocate: Allocator | None = None,
    keep_draws: bool = False,
) -> ChainValues:
    """V at every boundary of every response; see the module docstring.

    `params.max_new_tokens` is the full response budget; each state's continuations get
    `params.max_new_tokens - t`.

    group_samples: a response j with the same prompt whose first t tokens equal a state's
    prefix is an on-policy sample from that state: its reward counts in V, and only the
    continuations still needed are sampled. A state's own episode is never one of its
    samples (the cutpoint rule places its boundary by the episode's next token, so that
    episode's reward is not a fair draw from the state); the value of a state shared by
    several episodes is therefore per episode: the fresh continuations plus every other
    matching response.

    allocate: who gets how many fresh continuations, in rounds (spo.estimate.mc_allocation;
    default: N per state, less its group samples, in one round)."""
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

    # 2. Group samples: the matching responses of each state; each of its episodes gets
    # all but itself, so a state has (matching - 1) free samples for every episode.
    matching = matching_responses(prompt_ids, response_ids, states) if group_samples else [[] for _ in states]
    free = [max(len(m) - 1, 0) for m in matching]

    # 3. Fresh continuations, in rounds; each round's states go to the engine in one call
    # per distinct count (one call in all for the fixed rule without group samples).
    allocate = allocate or fixed_allocation(num_samples)
    drawn: list[list[float]] = [[] for _ in states]
    # the allocator sees each state's samples as its first episode does, and how many
    # advantages its value enters (per episode: the segments before and after it; V(t_0) one)
    group_rewards = [[float(rewards[j]) for j in m if j != states[s][0]] for s, m in enumerate(matching)]
    uses = [0] * len(states)
    for row in needs:
        for k, sid in enumerate(row):
            if sid is not None:
                uses[sid] += 1 if k == 0 else 2
    tokens = calls = 0
    draws: list[tuple[int, int, Rollout, float]] = []
    round_index = 0
    while states:
        pools = [g + d for g, d in zip(group_rewards, drawn)]
        request = {s: n for s, n in allocate(free, pools, uses, round_index).items() if n > 0}
        if not request:
            break
        for n in sorted(set(request.values()), reverse=True):
            ids = [s for s in sorted(request) if request[s] == n]
            contexts = [list(prompt_ids[states[s][0]]) + list(response_ids[states[s][0]][: states[s][1]])
                        for s in ids]
            budgets = [max(params.max_new_tokens - states[s][1], 0) for s in ids]
            # each later call: the seed shifted by 2^40 per call, a stream of its own
            call_params = params if calls == 0 or params.seed is None else replace(
                params, seed=(params.seed + calls * 2**40) % 2**62)
            rollouts = engine.generate(contexts, call_params, n=n, max_new_tokens=budgets)
            calls += 1
            for s, group, budget in zip(ids, rollouts, budgets):
                i, t = states[s]
                prefix = list(response_ids[i][:t])
                for r in group:
                    tokens += len(r.response_ids)
                    drawn[s].append(score(i, prefix + list(r.response_ids), r.truncated or budget == 0))
                    if keep_draws:
                        draws.append((i, t, r, drawn[s][-1]))
        round_index += 1

    # 4. Assemble V(t_0..t_K) per episode.
    start, group_size = group_mean_rewards(rewards, group_ids)
    values, samples, from_group = [], [], []
    for i, (b, row) in enumerate(zip(boundaries, needs)):
        v, n_all, n_group = [], [], []
        for k, sid in enumerate(row):
            if sid is not None:
                own = [float(rewards[j]) for j in matching[sid] if j != i]
                pool = drawn[sid] + own
                if not pool:
                    raise ValueError(f"episode {i}: no sample for the state at token {b[k]} (the allocation gave it none)")
                v.append(sum(pool) / len(pool))
                n_all.append(len(pool))
                n_group.append(len(own))
            elif k == len(b) - 1:
                v.append(float(rewards[i]))
                n_all.append(0)
                n_group.append(0)
            else:  # k == 0 with start_value == "group_mean"
                v.append(start[i])
                n_all.append(group_size[i])
                n_group.append(group_size[i])
        values.append(v)
        samples.append(n_all)
        from_group.append(n_group)
    return ChainValues(values, samples, len(states), tokens, continuations=sum(len(d) for d in drawn),
                       group_samples=from_group if group_samples else None, engine_calls=calls,
                       states_free=sum(not d for d in drawn), free_samples=sum(free),
                       draws=draws if keep_draws else None)
