"""spo's policy loss against TRL's own: `trl.GRPOTrainer._compute_loss` (TRL 1.16) run on the
same log-probs, old log-probs, reference log-probs, advantages and mask. The loss, the KL
metric, the clip fraction and the gradient with respect to the log-probs agree to float32
rounding for each pairing of loss aggregations (docs/training.md, "Coming from TRL"):

    spo loss_agg          TRL loss_type
    token_mean            dapo       (one optimizer step over the whole batch)
    seq_mean_token_mean   grpo
    seq_mean_token_sum    dr_grpo    (max_completion_length = the batch's width)

with and without TRL's KL importance correction (`use_bias_correction_kl` =
`algorithm.kl_importance_correction`). Only the model's forward pass is replaced (by the
given log-probs); everything after it is TRL's code."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from spo.optimize.losses import policy_loss

trl = pytest.importorskip("trl", reason="trl is not installed (pip install spo[bench])")
if not trl.__version__.startswith("1.16."):  # the stand-in trainer below holds 1.16's attributes
    pytest.skip(f"written against TRL 1.16's GRPOTrainer, found {trl.__version__}", allow_module_level=True)
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

PAIRS = [("token_mean", "dapo"), ("seq_mean_token_mean", "grpo"), ("seq_mean_token_sum", "dr_grpo")]
B, T = 6, 9


def tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3 - 0.05
    logprobs = old + 0.4 * torch.randn(B, T, generator=g)  # ratios far enough from 1 to clip
    ref = old + 0.3 * torch.randn(B, T, generator=g)
    advantages = torch.randn(B, generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()  # every row has tokens
    return logprobs, old, ref, advantages, mask


def trl_loss(loss_type: str, logprobs, old, ref, advantages, mask, *, beta, eps_low, eps_high, bias_correction):
    """TRL's `_compute_loss` on a stand-in trainer that holds TRL's defaults and returns
    `logprobs` as the model's per-token log-probs. Returns (loss, logprobs' grad, metrics)."""
    leaf = logprobs.clone().requires_grad_(True)
    one_process = SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x,
                                  reduce=lambda x, reduction="sum": x)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (leaf, torch.zeros_like(leaf), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps_low,
        epsilon_high=eps_high, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=T,
        accelerator=one_process, _entropy_bonus_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    loss = trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), leaf.grad, metrics


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("spo_agg, trl_type", PAIRS)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_kl_clip_fraction_and_gradient_equal_trl(spo_agg, trl_type, bias_correction, seed):
    logprobs, old, ref, advantages, mask = tensors(seed)
    beta, eps_low, eps_high = 0.04, 0.2, 0.28
    trl, trl_grad, metrics = trl_loss(trl_type, logprobs, old, ref, advantages, mask, beta=beta, eps_low=eps_low,
                                      eps_high=eps_high, bias_correction=bias_correction)

    leaf = logprobs.clone().requires_grad_(True)
    ours, stats = policy_loss(leaf, old, advantages[:, None].expand(B, T), mask, ref_logprobs=ref, kl_coef=beta,
                              clip_eps_low=eps_low, clip_eps_high=eps_high, agg_mode=spo_agg,
                              kl_importance_correction=bias_correction)
    ours.backward()

    assert 0.05 < stats["clip_frac"] < 0.95  # the tensors exercise both branches
    torch.testing.assert_close(ours.detach(), trl, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(leaf.grad, trl_grad, rtol=1e-5, atol=1e-7)
    assert stats["kl"] == pytest.approx(metrics["kl"], rel=1e-5)
    assert stats["clip_frac"] == pytest.approx(metrics["clip_ratio/region_mean"], rel=1e-6)


def test_the_kl_correction_changes_the_loss():
    """The option is live: with ratios away from 1 the corrected KL differs."""
    logprobs, old, ref, advantages, mask = tensors(0)
    plain, _ = policy_loss(logprobs, old, advantages[:, None].expand(B, T), mask, ref_logprobs=ref, kl_coef=0.1)
    corrected, _ = policy_loss(logprobs, old, advantages[:, None].expand(B, T), mask, ref_logprobs=ref, kl_coef=0.1,
                               kl_importance_correction=True)
    assert abs(float(plain) - float(corrected)) > 1e-4


def test_grpo_advantages_with_std_eps_1e4_equal_trls_formula():
    """`algorithm.std_eps: 1e-4` reaches the estimator and gives TRL's group advantages
    (r - mean) / (nanstd + 1e-4), with TRL's own (unbiased) nanstd."""
    from spo.algorithms.outcome import estimator_options
    from spo.config import build_config
    from spo.estimate.registry import EstimatorInputs, get_estimator
    from trl.trainer.utils import nanstd

    a = build_config({}, ["algorithm.std_eps=1e-4"]).algorithm
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.25])
    inputs = EstimatorInputs(rewards=rewards, group_ids=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
                             response_mask=torch.ones(8, 1))
    ours = get_estimator("grpo")(inputs, **estimator_options(a))[:, 0]
    grouped = rewards.view(2, 4)
    trl = ((grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)).flatten()
    torch.testing.assert_close(ours, trl)
    default = get_estimator("grpo")(inputs, **estimator_options(build_config({}).algorithm))[:, 0]
    assert not torch.allclose(default, trl, rtol=0, atol=1e-6)  # 1e-6 and 1e-4 differ
