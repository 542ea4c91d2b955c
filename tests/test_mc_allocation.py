"""Adaptive allocation of Monte-Carlo continuations (algorithm.mc_allocation: adaptive) on a
scripted policy whose state values are known: it never spends more than its budget, every
state gets its minimum, deterministic states get only that, and the stopping rule's bias
is the one docs/algorithms.md writes down."""

from __future__ import annotations

import math
import random

import pytest

from spo.estimate.chain_values import estimate_chain_values
from spo.estimate.mc_allocation import adaptive_allocation, fixed_allocation, value_variance
from spo.sample.engine import Rollout, SamplingParams

PROMPT = [7, 7]


class KnownValues:
    """From a state whose prefix ends in token v, answers 1 with probability Q[v], else 0."""

    def __init__(self, q: dict[int, float], seed: int = 0):
        self.q, self.rng = q, random.Random(seed)
        self.drawn: dict[int, int] = {}

    def generate(self, contexts, params, n=1, max_new_tokens=None):
        out = []
        for c in contexts:
            q = self.q[c[-1]]
            self.drawn[c[-1]] = self.drawn.get(c[-1], 0) + n
            out.append([Rollout(list(c), [int(self.rng.random() < q)], [-0.1], "eos") for _ in range(n)])
        return out


def last_token(_i, response, truncated):
    return float(response[-1] == 1)


def run(q_of_state: list[float], n: int, budget: float, minimum: int, seed: int = 0, stop: int | None = None):
    """One response per state: [state token, answer]; its one interior boundary is the state."""
    q = {10 + s: p for s, p in enumerate(q_of_state)}
    engine = KnownValues(q, seed)
    responses = [[10 + s, 0] for s in range(len(q_of_state))]
    est = estimate_chain_values(engine, [PROMPT] * len(responses), responses, [0.0] * len(responses),
                                list(range(len(responses))), [[0, 1, 2]] * len(responses), last_token,
                                num_samples=n, params=SamplingParams(max_new_tokens=8, seed=seed),
                                allocate=adaptive_allocation(n, budget, minimum, stop))
    return est, engine


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n, budget, minimum", [(4, 1.0, 2), (9, 0.5, 3), (8, 2.0, 1), (3, 1.0, 3)])
def test_never_over_budget_and_every_state_gets_its_minimum(seed, n, budget, minimum):
    rng = random.Random(seed)
    qs = [rng.choice([0.0, 1.0, 0.1, 0.5, 0.9, rng.random()]) for _ in range(rng.randint(1, 12))]
    est, engine = run(qs, n, budget, minimum, seed)
    assert est.continuations == sum(engine.drawn.values()) <= math.floor(budget * n * len(qs))
    assert all(v[1] >= minimum for v in est.value_samples)


def test_deterministic_states_get_their_minimum_and_the_rest_goes_to_the_others():
    qs = [0.0, 1.0] * 4 + [0.5] * 8  # half the states always agree
    est, engine = run(qs, 8, 1.0, 2, seed=1)
    deterministic = sum(engine.drawn.get(10 + s, 0) for s, q in enumerate(qs) if q in (0.0, 1.0))
    assert deterministic == 8 * 2  # exactly the minimum each
    assert est.continuations == 8 * len(qs)  # the whole budget: the undecided states never all agree for long
    assert est.continuations - deterministic >= 0.85 * est.continuations
    # values of deterministic states are exact
    assert [v[1] for v, q in zip(est.values, qs) if q in (0.0, 1.0)] == [q for q in qs if q in (0.0, 1.0)]


def test_states_stop_after_stop_samples_agreeing_samples():
    qs = [0.0, 1.0] * 4 + [0.5] * 8
    est, engine = run(qs, 8, 1.0, 2, seed=2, stop=6)
    assert all(engine.drawn[10 + s] == 6 for s, q in enumerate(qs) if q in (0.0, 1.0))  # 2, then rounds of 2 to 6
    assert est.continuations <= 8 * len(qs)
    assert sum(engine.drawn[10 + s] for s, q in enumerate(qs) if q == 0.5) > 0.55 * est.continuations


def test_the_stopping_rule_biases_values_towards_the_nearer_end():
    """Documented bias of one state alone with a budget of N = 9 and a minimum of 2: it stops
    at 2 when both agree, else gets the other 7, so E[V] = p^2 + 2p(1 - p)(1 + 7p)/9:
    0.956 at p = 0.9 (bias +0.056), 0.5 at p = 0.5. The fixed rule is unbiased."""
    trials = 3000
    for p in (0.9, 0.5, 0.2):
        values = [run([p], 9, 1.0, 2, seed=s)[0].values[0][1] for s in range(trials)]
        expected = p * p + 2 * p * (1 - p) * (1 + 7 * p) / 9
        spread = math.sqrt(sum((v - expected) ** 2 for v in values) / trials / trials)
        assert abs(sum(values) / trials - expected) < 4 * spread, (p, sum(values) / trials, expected)
    assert 0.9 * 0.9 + 2 * 0.9 * 0.1 * (1 + 6.3) / 9 == pytest.approx(0.956)
    q = {10: 0.9}
    fixed = [estimate_chain_values(KnownValues(q, s), [PROMPT], [[10, 0]], [0.0], [0], [[0, 1, 2]], last_token,
                                   num_samples=9, params=SamplingParams(max_new_tokens=8)).values[0][1]
             for s in range(1500)]
    assert abs(sum(fixed) / len(fixed) - 0.9) < 4 * math.sqrt(0.09 / 9 / len(fixed))


def test_fixed_allocation_is_one_round_of_n_less_group_samples():
    allocate = fixed_allocation(5)
    assert allocate([0, 2, 7], [[], [1.0, 0.0], [1.0] * 7], [2, 2, 2], 0) == {0: 5, 1: 3}
    assert allocate([0], [[]], [2], 1) == {}


def test_value_variance_is_the_beta_posterior_for_01_rewards():
    assert value_variance([]) == pytest.approx(0.5 * 0.5 / 3)  # Beta(1, 1)
    assert value_variance([1.0, 1.0, 0.0]) == pytest.approx((3 / 5) * (2 / 5) / 6)  # Beta(3, 2)
    assert value_variance([1.0, 1.0, 0.0], extra=4) < value_variance([1.0, 1.0, 0.0])
    assert value_variance([2.0, 0.0]) == pytest.approx(2.0 / 2)  # outside [0, 1]: sample variance / n


def test_budget_must_cover_the_minimum():
    with pytest.raises(ValueError, match="minimum"):
        adaptive_allocation(4, 0.25, 2)
