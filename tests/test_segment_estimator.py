"""SPO-chain advantages from boundaries and values, against hand-computed numbers."""

import pytest
import torch

from spo.estimate.registry import EstimatorInputs, get_estimator
from spo.estimate.segment import segment_advantages


def test_segment_advantages_by_hand():
    # segments [0,2), [2,3), [3,6); V = 0.5, 0.2, 0.8, 1.0
    assert segment_advantages([0, 2, 3, 6], [0.5, 0.2, 0.8, 1.0]) == pytest.approx(
        [-0.3, -0.3, 0.6, 0.2, 0.2, 0.2]
    )


def test_advantages_telescope_to_reward_minus_start_value():
    b, v = [0, 1, 4, 5], [0.25, 0.5, 0.0, 1.0]
    adv = segment_advantages(b, v)
    per_segment = [adv[b[k]] for k in range(len(b) - 1)]
    assert sum(per_segment) == pytest.approx(v[-1] - v[0])


def test_spo_chain_estimator_pads_and_checks():
    est = get_estimator("spo_chain")
    inputs = EstimatorInputs(
        rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
        response_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        boundaries=[[0, 1, 4], [0, 2]],
        values=[torch.tensor([0.5, 0.25, 1.0]), torch.tensor([0.5, 0.0])],
    )
    expected = torch.tensor([[-0.25, 0.75, 0.75, 0.75], [-0.5, -0.5, 0.0, 0.0]])
    assert torch.allclose(est(inputs), expected)


def test_spo_chain_rejects_inconsistent_inputs():
    est = get_estimator("spo_chain")
    base = dict(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]), response_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="needs boundaries"):
        est(EstimatorInputs(**base))
    with pytest.raises(ValueError, match="last boundary"):
        est(EstimatorInputs(**base, boundaries=[[0, 2]], values=[torch.tensor([0.0, 1.0])]))
    with pytest.raises(ValueError, match="values"):
        est(EstimatorInputs(**base, boundaries=[[0, 3]], values=[torch.tensor([0.0, 1.0, 1.0])]))
