"""Advantage estimators: hand-computed values on uneven, interleaved, non-contiguous groups."""

from __future__ import annotations

import math

import pytest
import torch

from spo.estimate.outcome import (
    broadcast_to_tokens,
    grpo_advantages,
    reinforce_advantages,
    rloo_advantages,
)
from spo.estimate.registry import (
    ADVANTAGE_ESTIMATORS,
    EstimatorInputs,
    UnknownEstimatorError,
    available_estimators,
    get_estimator,
    register_estimator,
)

# Four prompts, interleaved, ids not contiguous:
#   id 7  -> rewards [1, 0, 0, 1]   (positions 0, 3, 5, 9)
#   id 2  -> rewards [1, 1, 1, 1]   (positions 1, 4, 7, 10)
#   id 42 -> rewards [0, 1]         (positions 2, 8)
#   id -5 -> rewards [1]            (position 6, singleton)
GROUP_IDS = torch.tensor([7, 2, 42, 7, 2, 7, -5, 2, 42, 7, 2])
REWARDS = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])

S3 = math.sqrt(3.0) / 2.0  # id 7: mean .5, unbiased std sqrt(1/3) -> 0.5 / sqrt(1/3) = sqrt(3)/2
R2 = math.sqrt(0.5)  # id 42: mean .5, unbiased std sqrt(.5) -> 0.5 / sqrt(.5) = sqrt(.5)


def test_grpo_unbiased_std_uneven_groups():
    adv = grpo_advantages(REWARDS, GROUP_IDS)
    expected = [S3, 0.0, -R2, -S3, 0.0, -S3, 0.0, 0.0, R2, S3, 0.0]
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=0)


def test_grpo_population_std():
    # population std is 0.5 for both mixed groups -> advantages +-1
    adv = grpo_advantages(REWARDS, GROUP_IDS, unbiased=False)
    expected = [1.0, 0.0, -1.0, -1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=0)


def test_dr_grpo_no_std_scaling():
    adv = grpo_advantages(REWARDS, GROUP_IDS, scale_by_std=False)
    expected = [0.5, 0.0, -0.5, -0.5, 0.0, -0.5, 0.0, 0.0, 0.5, 0.5, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=0, rtol=0)


def test_grpo_non_binary_rewards():
    # group [3, 1, 2]: mean 2, unbiased std 1 -> [1, -1, 0]; eps 0 to compare exactly
    adv = grpo_advantages(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 0, 0]), eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0]))


def test_rloo_leave_one_out():
    adv = rloo_advantages(REWARDS, GROUP_IDS)
    # id 7: r=1 -> 1 - 1/3 = 2/3; r=0 -> 0 - 2/3. id 42: 0 - 1 = -1, 1 - 0 = 1.
    t = 2.0 / 3.0
    expected = [t, 0.0, -1.0, -t, 0.0, -t, 0.0, 0.0, 1.0, t, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-6, rtol=0)


def test_rloo_non_binary():
    # [4, 1, 1]: 4 - 1 = 3; 1 - (4+1)/2 = -1.5 (twice)
    adv = rloo_advantages(torch.tensor([4.0, 1.0, 1.0]), torch.tensor([9, 9, 9]))
    torch.testing.assert_close(adv, torch.tensor([3.0, -1.5, -1.5]))


def test_permutation_equivariance():
    perm = torch.tensor([10, 3, 6, 0, 8, 1, 5, 9, 2, 7, 4])
    for fn in (grpo_advantages, rloo_advantages):
        full = fn(REWARDS, GROUP_IDS)
        torch.testing.assert_close(fn(REWARDS[perm], GROUP_IDS[perm]), full[perm])


def test_singletons_and_empty_batch():
    r = torch.tensor([1.0, 0.0])
    g = torch.tensor([1, 2])
    assert grpo_advantages(r, g).tolist() == [0.0, 0.0]
    assert grpo_advantages(r, g, scale_by_std=False).tolist() == [0.0, 0.0]
    assert rloo_advantages(r, g).tolist() == [0.0, 0.0]
    empty = torch.zeros(0)
    assert grpo_advantages(empty, torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_integer_rewards_become_float():
    adv = rloo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert adv.dtype == torch.float32
    assert adv.tolist() == [1.0, -1.0]


def test_reinforce_is_reward():
    assert reinforce_advantages(REWARDS).tolist() == REWARDS.tolist()


def test_shape_errors():
    with pytest.raises(ValueError):
        grpo_advantages(REWARDS, GROUP_IDS[:-1])
    with pytest.raises(TypeError):
        grpo_advantages(REWARDS, GROUP_IDS.float())


def test_broadcast_to_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = broadcast_to_tokens(torch.tensor([2.0, -3.0]), mask)
    assert out.tolist() == [[2.0, 2.0, 0.0], [-3.0, 0.0, 0.0]]


def test_registry_builtins_return_tokens():
    assert {"grpo", "rloo", "reinforce"} <= set(available_estimators())
    mask = torch.ones(len(REWARDS), 3)
    mask[0, 2] = 0
    inputs = EstimatorInputs(rewards=REWARDS, group_ids=GROUP_IDS, response_mask=mask)
    tok = get_estimator("grpo")(inputs)
    assert tok.shape == (len(REWARDS), 3)
    torch.testing.assert_close(tok[0], torch.tensor([S3, S3, 0.0]), atol=1e-5, rtol=0)
    dr = get_estimator("grpo")(inputs, scale_by_std=False)
    assert dr[2].tolist() == [-0.5, -0.5, -0.5]
    rl = get_estimator("rloo")(inputs)
    torch.testing.assert_close(rl[:, 0], rloo_advantages(REWARDS, GROUP_IDS))


def test_get_estimator_unknown_lists_names():
    with pytest.raises(KeyError) as err:
        get_estimator("nope")
    msg = str(err.value)
    assert "nope" in msg and "grpo" in msg and "rloo" in msg
    with pytest.raises(ValueError):
        get_estimator("nope")
    assert isinstance(err.value, UnknownEstimatorError)


def test_register_new_estimator_and_duplicate():
    name = "_test_constant"
    try:

        @register_estimator(name)
        def constant(inputs: EstimatorInputs, *, value: float = 1.0) -> torch.Tensor:
            return broadcast_to_tokens(torch.full_like(inputs.rewards, value), inputs.response_mask)

        inputs = EstimatorInputs(torch.tensor([0.0]), torch.tensor([0]), torch.ones(1, 2))
        assert get_estimator(name)(inputs, value=3.0).tolist() == [[3.0, 3.0]]
        with pytest.raises(ValueError):

            @register_estimator(name)
            def other(inputs):  # pragma: no cover - never called
                return inputs.rewards
    finally:
        ADVANTAGE_ESTIMATORS.pop(name, None)


def test_estimator_inputs_validation():
    with pytest.raises(ValueError):
        EstimatorInputs(torch.zeros(2), torch.zeros(3, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError):
        EstimatorInputs(torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.ones(3, 4))
    with pytest.raises(ValueError):
        EstimatorInputs(
            torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.ones(2, 4), boundaries=[[0, 4]]
        )
