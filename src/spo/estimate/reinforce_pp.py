"""REINFORCE++'s estimator (pure; the algorithm, spo.algorithms.reinforce_pp, says how it is
used): the KL to the reference folded into a per-token reward, and the returns of it.

    r_t = -beta * (log pi_old(y_t | s_t) - log pi_ref(y_t | s_t)) + [t = T] * r(x, y)
    G_t = sum_{s >= t} gamma^(s - t) r_s
"""

from __future__ import annotations

import torch
from torch import Tensor

from spo.estimate.registry import EstimatorInputs, register_estimator


def kl_shaped_returns(scores: Tensor, token_kl: Tensor, response_mask: Tensor, *, kl_coef: float,
                      gamma: float = 1.0) -> Tensor:
    """Returns G_t [B, T] of the rewards r_t = -kl_coef * token_kl_t + [t = last] * score.

    `token_kl` [B, T] is log pi_old - log pi_ref per token (0 on padding); `scores` [B] is
    each response's reward, paid on its last token. Pure; 0 on padding."""
    mask = response_mask.to(torch.float32)
    rewards = -kl_coef * token_kl.to(torch.float32) * mask
    lengths = mask.sum(-1).long()
    rows = torch.arange(len(scores))[lengths > 0]
    rewards[rows, lengths[rows] - 1] += scores.to(torch.float32)[rows]
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]  # padding after a response's end does not carry over
    return returns * mask


@register_estimator("reinforce_pp")
def reinforce_pp(inputs: EstimatorInputs, *, kl_coef: float = 0.0, gamma: float = 1.0) -> Tensor:
    """REINFORCE++ token returns (before the global normalisation), from
    `inputs.extras["token_kl"]` when given (else no KL)."""
    token_kl = inputs.extras.get("token_kl", torch.zeros(inputs.response_mask.shape))
    return kl_shaped_returns(inputs.rewards, token_kl, inputs.response_mask, kl_coef=kl_coef, gamma=gamma)
