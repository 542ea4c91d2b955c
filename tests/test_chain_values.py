"""SPO-chain Monte-Carlo values on a hand-built policy whose true state values are known.

The policy: after a prefix, it emits one answer token, 1 ("right") with probability
q(prefix) and 0 otherwise, then stops. The reward is 1 when the last token is 1, so the
true value of a state is exactly q(prefix). The MC estimate from N continuations is a
mean of N Bernoulli(q) draws: unbiased, with standard error sqrt(q (1 - q) / N).
"""

import math
import random

import pytest

from spo.estimate.chain_values import estimate_chain_values, group_mean_rewards
from spo.sample.engine import Rollout, SamplingParams


def q_of(prefix: list[int]) -> float:
    return 0.2 + 0.6 * (sum(prefix) % 3) / 2  # 0.2, 0.5 or 0.8


class BernoulliEngine:
    """A RolloutEngine with known state values; records what it was asked."""

    def __init__(self, prompt_len: int, seed: int = 0):
        self.prompt_len = prompt_len
        self.rng = random.Random(seed)
        self.calls: list[tuple[list[list[int]], int, list[int] | None]] = []

    def generate(self, contexts, params, n=1, max_new_tokens=None):
        self.calls.append(([list(c) for c in contexts], n, None if max_new_tokens is None else list(max_new_tokens)))
        out = []
        for c, cap in zip(contexts, max_new_tokens or [params.max_new_tokens] * len(contexts)):
            q = q_of(list(c[self.prompt_len :]))
            group = []
            for _ in range(n):
                tok = 1 if self.rng.random() < q else 0
                group.append(Rollout(list(c), [tok], [math.log(q if tok else 1 - q)], "eos" if cap >= 1 else "length"))
            out.append(group)
        return out

    def sync_weights(self):
        pass


def score_last_token(_episode: int, response: list[int], truncated: bool) -> float:
    return 0.0 if truncated or not response else float(response[-1] == 1)


PROMPT = [7, 7, 7]


def run(engine, responses, boundaries, rewards, groups, n, start="group_mean", max_new=32):
    return estimate_chain_values(
        engine, [PROMPT] * len(responses), responses, rewards, groups, boundaries, score_last_token,
        num_samples=n, params=SamplingParams(max_new_tokens=max_new, temperature=1.0), start_value=start,
    )


def test_values_layout_and_exact_prefixes():
    engine = BernoulliEngine(len(PROMPT))
    responses = [[1, 2, 0, 1], [1, 2, 2, 0]]
    boundaries = [[0, 2, 3, 4], [0, 2, 4]]
    est = run(engine, responses, boundaries, rewards=[1.0, 0.0], groups=[5, 5], n=3)
    # state (prompt + [1, 2]) is shared by both responses: estimated once
    contexts, n, budgets = engine.calls[0]
    assert len(engine.calls) == 1 and n == 3
    assert contexts == [PROMPT + [1, 2], PROMPT + [1, 2, 0]]  # the exact token ids
    assert budgets == [30, 29]  # what is left of the 32-token response budget
    assert est.states == 2
    assert est.values[0][0] == est.values[1][0] == 0.5  # group mean of rewards 1 and 0
    assert est.values[0][1] == est.values[1][1]  # the shared state
    assert est.values[0][-1] == 1.0 and est.values[1][-1] == 0.0  # V(t_K) = reward
    assert est.value_samples == [[2, 3, 3, 0], [2, 3, 0]]
    assert est.continuation_tokens == 2 * 3


def test_start_value_by_mc_and_exhausted_budget_scores_zero():
    engine = BernoulliEngine(len(PROMPT))
    est = run(engine, [[1, 1]], [[0, 1, 2]], rewards=[1.0], groups=[0], n=4, start="mc", max_new=1)
    contexts, _, budgets = engine.calls[0]
    assert contexts == [PROMPT, PROMPT + [1]] and budgets == [1, 0]
    assert est.values[0][1] == 0.0  # no budget left: every continuation is truncated
    assert est.value_samples[0] == [4, 4, 0]


def test_mc_values_are_unbiased_and_error_shrinks_like_one_over_sqrt_n():
    responses = [[0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]]
    boundaries = [[0, 1, 3, 6], [0, 2, 4, 6]]
    truth = [[q_of(r[:t]) for t in b[1:-1]] for r, b in zip(responses, boundaries)]
    rmse = {}
    for n in (4, 64):
        errors, sums, trials = [], None, 400
        for seed in range(trials):
            est = run(BernoulliEngine(len(PROMPT), seed=seed), responses, boundaries, [0.0, 1.0], [0, 0], n)
            inner = [v[1:-1] for v in est.values]
            flat = [x for row in inner for x in row]
            sums = flat if sums is None else [a + b for a, b in zip(sums, flat)]
            errors += [(x - y) ** 2 for x, y in zip(flat, [y for row in truth for y in row])]
        means = [s / trials for s in sums]
        flat_truth = [y for row in truth for y in row]
        for m, y in zip(means, flat_truth):
            # unbiased: the mean of 400 estimates is within 4 standard errors of the truth
            assert abs(m - y) < 4 * math.sqrt(y * (1 - y) / (n * trials)), (n, m, y)
        rmse[n] = math.sqrt(sum(errors) / len(errors))
        expected = math.sqrt(sum(y * (1 - y) for y in flat_truth) / len(flat_truth) / n)
        assert rmse[n] == pytest.approx(expected, rel=0.15)
    assert rmse[4] / rmse[64] == pytest.approx(4.0, rel=0.2)  # sqrt(64 / 4)


def test_group_mean_rewards():
    means, sizes = group_mean_rewards([1, 0, 1, 1], [3, 3, 9, 3])
    assert means == pytest.approx([2 / 3, 2 / 3, 1.0, 2 / 3]) and sizes == [3, 3, 1, 3]


def test_bad_boundaries_raise():
    with pytest.raises(ValueError, match="do not span"):
        run(BernoulliEngine(3), [[1, 2]], [[0, 1]], [1.0], [0], 2)


# --- group samples (algorithm.mc_group_samples) ------------------------------------------
#
# A scripted policy: from each state it answers with a fixed queue of continuations, in
# order. The queue of a state holds some fresh continuations and then the suffixes of the
# group's responses that share its prefix (the other episodes'), so drawing N fresh
# continuations and counting the group's responses are the same N samples.

class QueueEngine:
    def __init__(self, prompt_len: int, queues: dict[tuple[int, ...], list[list[int]]]):
        self.prompt_len, self.queues = prompt_len, {k: list(v) for k, v in queues.items()}
        self.continuations = 0
        self.calls = 0

    def generate(self, contexts, params, n=1, max_new_tokens=None):
        self.calls += 1
        out = []
        for c in contexts:
            queue = self.queues[tuple(c[self.prompt_len:])]
            group, self.queues[tuple(c[self.prompt_len:])] = queue[:n], queue[n:]
            assert len(group) == n, "the script ran out"
            self.continuations += n
            out.append([Rollout(list(c), list(t), [-0.1] * len(t), "eos") for t in group])
        return out


def test_group_samples_give_the_values_of_drawing_them_fresh_with_fewer_continuations():
    # four responses to one prompt; 0, 1 and 2 share the prefix [1, 2]; 3 does not
    responses = [[1, 2, 5, 1], [1, 2, 6, 0], [1, 2, 1], [3, 4, 0]]
    rewards = [score_last_token(0, r, False) for r in responses]
    boundaries = [[0, 2, 4], [0, 1, 4], [0, 3], [0, 3]]  # states: [1, 2] (episode 0), [1] (episode 1)
    fresh = {(1, 2): [[9, 1], [9, 0], [0]], (1,): [[2, 2, 1], [7, 0], [1]]}
    # the other matching episodes' suffixes, in episode order
    group = {(1, 2): [responses[1][2:], responses[2][2:]], (1,): [responses[0][1:], responses[2][1:]]}
    n = 5
    queues = {k: fresh[k] + group[k] for k in fresh}
    alone, shared = QueueEngine(len(PROMPT), queues), QueueEngine(len(PROMPT), queues)
    base = run(alone, responses, boundaries, rewards, [0] * 4, n)
    est = estimate_chain_values(shared, [PROMPT] * 4, responses, rewards, [0] * 4, boundaries, score_last_token,
                                num_samples=n, params=SamplingParams(max_new_tokens=32), group_samples=True)
    assert est.values == base.values
    assert est.value_samples == base.value_samples == [[4, 5, 0], [4, 5, 0], [4, 0], [4, 0]]
    assert est.group_samples == [[4, 2, 0], [4, 2, 0], [4, 0], [4, 0]]  # V(t_0) is the group's mean
    assert (shared.continuations, alone.continuations) == (6, 10)
    assert est.continuations == 6 and base.continuations == 10 and est.free_samples == 4
    assert base.group_samples is None


def test_a_state_shared_by_episodes_counts_each_others_responses_not_its_own():
    responses = [[1, 2, 1], [1, 2, 0], [1, 2, 1]]
    rewards = [1.0, 0.0, 1.0]
    boundaries = [[0, 2, 3], [0, 2, 3], [0, 3]]  # [1, 2] is a boundary of episodes 0 and 1
    engine = QueueEngine(len(PROMPT), {(1, 2): [[0]]})
    est = estimate_chain_values(engine, [PROMPT] * 3, responses, rewards, [0] * 3, boundaries, score_last_token,
                                num_samples=3, params=SamplingParams(max_new_tokens=32), group_samples=True)
    assert engine.continuations == 1  # 3 - (3 matching - itself)
    assert est.values[0][1] == pytest.approx((0 + 0.0 + 1.0) / 3)  # fresh 0, episodes 1 and 2
    assert est.values[1][1] == pytest.approx((0 + 1.0 + 1.0) / 3)  # fresh 0, episodes 0 and 2
    assert est.states == 1 and est.states_free == 0


def test_group_samples_can_cover_a_state_without_any_engine_call():
    responses = [[4, 1], [4, 0], [4, 1], [4, 1]]
    est = estimate_chain_values(QueueEngine(len(PROMPT), {}), [PROMPT] * 4, responses, [1.0, 0.0, 1.0, 1.0],
                                [0] * 4, [[0, 1, 2], [0, 2], [0, 2], [0, 2]], score_last_token, num_samples=3,
                                params=SamplingParams(max_new_tokens=32), group_samples=True)
    assert est.continuations == 0 and est.engine_calls == 0 and est.states_free == 1
    assert est.values[0][1] == pytest.approx(2 / 3) and est.value_samples[0][1] == 3


def test_group_samples_are_unbiased_where_counting_the_states_own_episode_would_not_be():
    """A policy that writes 5, then 1 with probability 0.05 (reward 1) or 0 (reward 0): V([5]) =
    0.05. The cutpoint rule (rho 0.9) puts a boundary at t = 1 only when the second token was
    the unlikely 1, so the episodes that own the state all scored 1: counting them would bias
    V up; the other matching responses are fair draws."""
    from spo.partition.segments import partition_response

    p, group, n, trials = 0.05, 4, 4, 3000
    rng = random.Random(0)

    class Policy:
        def generate(self, contexts, params, n=1, max_new_tokens=None):
            return [[Rollout(list(c), [int(rng.random() < p)], [0.0], "eos") for _ in range(n)] for c in contexts]

    fair, naive = [], []
    for _ in range(trials):
        responses = [[5, int(rng.random() < p)] for _ in range(group)]
        logprobs = [[0.0, math.log(p if r[1] else 1 - p)] for r in responses]
        bounds = [partition_response(lp, rule="cutpoint", rho=0.9, interval=1)[0] for lp in logprobs]
        rewards = [float(r[1]) for r in responses]
        est = estimate_chain_values(Policy(), [PROMPT] * group, responses, rewards, [0] * group, bounds,
                                    score_last_token, num_samples=n, params=SamplingParams(max_new_tokens=4),
                                    group_samples=True)
        for i, b in enumerate(bounds):
            if len(b) == 3:  # episode i owns the state [5] (its second token was the unlikely 1)
                v, k = est.values[i][1], est.value_samples[i][1]
                fair.append(v)
                naive.append((v * k + rewards[i]) / (k + 1))  # its own reward counted too
    se = math.sqrt(p * (1 - p) / n / len(fair))
    assert abs(sum(fair) / len(fair) - p) < 4 * se
    assert sum(naive) / len(naive) - p > 0.1  # (1 - p) / (n + 1) = 0.19 too high
