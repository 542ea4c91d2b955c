"""REINFORCE++ (spo.algorithms.reinforce_pp): KL-shaped returns against hand-computed
values, global normalisation, and a smoke run whose episode logs follow the rules."""

import json
import math

import pytest
import torch

from spo.algorithms.registry import algorithm_class
from spo.cli import main
from spo.estimate.registry import EstimatorInputs, get_estimator
from spo.estimate.reinforce_pp import kl_shaped_returns, reinforce_pp
from spo.optimize.losses import whiten_across
from spo.train.run_log import read_metrics

SCORES = torch.tensor([1.0, 0.0])
KL = torch.tensor([[0.1, 0.2, 0.0], [0.5, 9.9, 9.9]])  # row 1's padding holds junk: must be ignored
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_returns_fold_the_kl_into_the_reward():
    returns = kl_shaped_returns(SCORES, KL, MASK, kl_coef=0.5)
    # row 0: r = [-0.05, -0.1, -0 + 1] -> G = [0.85, 0.9, 1.0]; row 1: r = [-0.25 + 0] -> G = [-0.25]
    assert torch.allclose(returns, torch.tensor([[0.85, 0.9, 1.0], [-0.25, 0.0, 0.0]]))


def test_discount():
    returns = kl_shaped_returns(SCORES, KL, MASK, kl_coef=0.5, gamma=0.5)
    # row 0: G_2 = 1, G_1 = -0.1 + 0.5 * 1 = 0.4, G_0 = -0.05 + 0.5 * 0.4 = 0.15
    assert returns[0].tolist() == pytest.approx([0.15, 0.4, 1.0])


def test_without_kl_every_token_carries_the_reward():
    returns = kl_shaped_returns(SCORES, KL, MASK, kl_coef=0.0)
    assert returns.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_registered_estimator_reads_the_kl_from_extras():
    inputs = EstimatorInputs(rewards=SCORES, group_ids=torch.tensor([0, 0]), response_mask=MASK,
                             extras={"token_kl": KL})
    assert get_estimator("reinforce_pp") is reinforce_pp
    assert torch.allclose(reinforce_pp(inputs, kl_coef=0.5), torch.tensor([[0.85, 0.9, 1.0], [-0.25, 0.0, 0.0]]))


def test_global_normalisation_by_hand():
    returns = kl_shaped_returns(SCORES, KL, MASK, kl_coef=0.5)
    values = [0.85, 0.9, 1.0, -0.25]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    out = whiten_across(returns, MASK)
    assert out[0].tolist() == pytest.approx([(v - mean) / std for v in values[:3]], abs=1e-5)
    assert out[1].tolist() == pytest.approx([(-0.25 - mean) / std, 0.0, 0.0], abs=1e-5)
    # two processes holding the same batch: the same mean and std, so the same result
    assert torch.allclose(whiten_across(returns, MASK, lambda x: 2 * x), out, atol=1e-6)


def test_kl_goes_into_the_reward_not_the_loss():
    assert algorithm_class("reinforce_pp").kl_in_loss is False
    assert algorithm_class("grpo").kl_in_loss is True


def _episodes(run):
    return [json.loads(x) for x in (run / "episodes" / "iter_000001.jsonl").read_text().splitlines()]


def test_smoke_run_without_kl_whitens_the_rewards(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", "smoke", "--output-dir", str(run), "algorithm.estimator=reinforce_pp",
                 "algorithm.kl_coef=0", "iterations=1", "eval.at_end=false", "sampling.max_new_tokens=8"]) == 0
    eps = _episodes(run)
    assert len(eps) == 16
    tokens = [(ep["reward"], n) for ep in eps for n in range(len(ep["response_ids"]))]
    mean = sum(r for r, _ in tokens) / len(tokens)
    std = math.sqrt(sum((r - mean) ** 2 for r, _ in tokens) / len(tokens) + 1e-8)
    for ep in eps:
        assert ep["advantages"] == pytest.approx([(ep["reward"] - mean) / std] * len(ep["response_ids"]), abs=1e-5)


def test_smoke_run_with_kl_shapes_the_advantages_and_adds_no_kl_loss(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", "smoke", "--output-dir", str(run), "algorithm.estimator=reinforce_pp",
                 "algorithm.kl_coef=0.5", "iterations=2", "eval.at_end=false", "sampling.max_new_tokens=8",
                 "optim.lr=1e-2"]) == 0
    rows = read_metrics(run)
    assert all(r["kl"] == 0.0 for r in rows)  # no KL term in the loss
    eps = [json.loads(x) for x in (run / "episodes" / "iter_000002.jsonl").read_text().splitlines()]
    # after an update the policy has moved from the reference: per-token KL makes advantages vary within a response
    assert any(len(set(round(a, 6) for a in ep["advantages"])) > 1 for ep in eps)
    flat = [a for ep in eps for a in ep["advantages"]]
    assert sum(flat) / len(flat) == pytest.approx(0.0, abs=1e-5)


def test_estimator_is_found_without_importing_the_algorithms():
    """`get_estimator("reinforce_pp")` in a fresh interpreter that imported only the
    estimator registry (it used to need spo.algorithms imported first)."""
    import subprocess
    import sys

    code = ("import sys; from spo.estimate.registry import get_estimator; get_estimator('reinforce_pp'); "
            "print(any(m.startswith('spo.algorithms') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
