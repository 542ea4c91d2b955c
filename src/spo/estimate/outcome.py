"""Trajectory-level (outcome) advantage estimators: GRPO, Dr.GRPO, RLOO, REINFORCE.

Notation (per prompt x, a group of G responses y_1..y_G with rewards r_1..r_G):

    GRPO      A_i = (r_i - mean(r)) / (std(r) + eps)        (Shao et al. 2024)
    Dr.GRPO   A_i =  r_i - mean(r)                          (Liu et al. 2025; scale_by_std=False)
    RLOO      A_i =  r_i - 1/(G-1) * sum_{j != i} r_j       (Ahmadian et al. 2024)
             = G/(G-1) * (r_i - mean(r))
    REINFORCE A_i =  r_i                                    (no baseline)

Each `*_advantages(rewards, group_ids, ...)` is a pure function on per-sequence tensors
(rewards: float [B], group_ids: long [B]) returning per-sequence advantages [B]. Groups
may have different sizes and any (non-contiguous, unsorted, negative) ids. A group of
size 1 has no baseline to compare with, so its advantage is 0 for GRPO, Dr.GRPO and RLOO.

Choices:
* GRPO's std is the UNBIASED sample std (Bessel, divide by G-1), as `torch.std`'s default
  used by TRL's GRPOTrainer and verl's GRPO estimator; `unbiased=False` gives the
  population std. eps defaults to 1e-6 (verl); a group whose rewards are all equal gets
  advantage 0 (numerator 0).
* Arithmetic is done in float64 and cast back to the rewards' dtype (float32 for
  integer / bool rewards).

The registered estimators ("grpo", "rloo", "reinforce") follow the registry contract
(`spo.estimate.registry`): they take an `EstimatorInputs` and return per-token
advantages [B, T], the sequence advantage broadcast over `response_mask`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spo.estimate.registry import EstimatorInputs, register_estimator

__all__ = [
    "broadcast_to_tokens",
    "grpo",
    "grpo_advantages",
    "reinforce",
    "reinforce_advantages",
    "rloo",
    "rloo_advantages",
]


def _group_sums(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return (r, inverse, count, sum): r = rewards as float64, inverse[i] = dense group index
    of sample i, count[g] / sum[g] = size / reward sum of dense group g."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids shape {tuple(group_ids.shape)} != rewards shape {tuple(rewards.shape)}"
        )
    if group_ids.is_floating_point():
        raise TypeError("group_ids must be an integer tensor")
    r = rewards.to(torch.float64)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
        0, inverse, torch.ones_like(r)
    )
    total = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    return r, inverse, count, total


def _out_dtype(rewards: Tensor) -> torch.dtype:
    return rewards.dtype if rewards.is_floating_point() else torch.float32


def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    scale_by_std: bool = True,
    unbiased: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps); Dr.GRPO when `scale_by_std=False`.

    std_g is the unbiased (G-1) std by default, the population std with `unbiased=False`.
    Groups of size 1 get 0. Returns [B] in the rewards' float dtype.
    """
    r, inv, count, total = _group_sums(rewards, group_ids)
    mean = (total / count)[inv]  # mean_g, per sample
    centered = r - mean  # r_i - mean_g
    if scale_by_std:
        sq = torch.zeros_like(total).index_add_(0, inv, centered * centered)  # sum (r - mean)^2
        dof = count - 1 if unbiased else count
        std = torch.sqrt(sq / dof.clamp_min(1))[inv]
        adv = centered / (std + eps)
    else:
        adv = centered
    adv = torch.where(count[inv] > 1, adv, torch.zeros_like(adv))  # singleton -> 0
    return adv.to(_out_dtype(rewards))


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO: A_i = r_i - mean_{j != i} r_j = r_i - (sum_g - r_i) / (G - 1); singletons get 0."""
    r, inv, count, total = _group_sums(rewards, group_ids)
    g = count[inv]
    baseline = (total[inv] - r) / (g - 1).clamp_min(1)  # leave-one-out mean
    adv = torch.where(g > 1, r - baseline, torch.zeros_like(r))
    return adv.to(_out_dtype(rewards))


def reinforce_advantages(rewards: Tensor, group_ids: Tensor | None = None) -> Tensor:
    """REINFORCE without a baseline: A_i = r_i (group_ids are ignored)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    return rewards.to(_out_dtype(rewards)).clone()


def broadcast_to_tokens(seq_adv: Tensor, response_mask: Tensor) -> Tensor:
    """Per-sequence advantages [B] -> per-token [B, T]: A[i, t] = seq_adv[i] * mask[i, t]."""
    if seq_adv.dim() != 1 or response_mask.dim() != 2 or response_mask.shape[0] != seq_adv.shape[0]:
        raise ValueError(
            f"expected seq_adv [B] and response_mask [B, T], got {tuple(seq_adv.shape)} and "
            f"{tuple(response_mask.shape)}"
        )
    seq_adv = seq_adv.to(response_mask.device)
    zero = torch.zeros((), dtype=seq_adv.dtype, device=seq_adv.device)
    return torch.where(response_mask.bool(), seq_adv.unsqueeze(1), zero)


# --- registered estimators: EstimatorInputs -> per-token advantages [B, T] -----------------


@register_estimator("grpo")
def grpo(
    inputs: EstimatorInputs, *, scale_by_std: bool = True, unbiased: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO / Dr.GRPO sequence advantage broadcast over the response tokens."""
    adv = grpo_advantages(
        inputs.rewards, inputs.group_ids, scale_by_std=scale_by_std, unbiased=unbiased, eps=eps
    )
    return broadcast_to_tokens(adv, inputs.response_mask)


@register_estimator("rloo")
def rloo(inputs: EstimatorInputs) -> Tensor:
    """RLOO leave-one-out advantage broadcast over the response tokens."""
    adv = rloo_advantages(inputs.rewards, inputs.group_ids)
    return broadcast_to_tokens(adv, inputs.response_mask)


@register_estimator("reinforce")
def reinforce(inputs: EstimatorInputs) -> Tensor:
    """Raw reward (no baseline) broadcast over the response tokens."""
    return broadcast_to_tokens(reinforce_advantages(inputs.rewards), inputs.response_mask)
