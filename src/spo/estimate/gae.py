"""Generalised advantage estimation (Schulman et al. 2016) for PPO with a learned critic.

A response y_1..y_T earns one reward r at its end. With V_t the critic's value of the
state before token t (prompt + y_1..y_{t-1}) and V_{T+1} = 0 after the last token:

    delta_t = [t = T] r + gamma V_{t+1} - V_t
    A_t     = delta_t + gamma lambda A_{t+1}          (A_{T+1} = 0)
    G_t     = A_t + V_t                               (the critic's regression target)

With gamma = lambda = 1 (the reference's) A_t = r - V_t: the Monte-Carlo return minus
the critic's baseline. Pure tensor code; the critic's values come in `extras`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spo.estimate.registry import EstimatorInputs, register_estimator

__all__ = ["gae", "gae_advantages"]


def gae_advantages(rewards: Tensor, values: Tensor, response_mask: Tensor, *, gamma: float = 1.0,
                   lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """(advantages, returns), both [B, T] and 0 on padding. `rewards` [B] is paid on each
    response's last token; `values` [B, T] are V_t (padding ignored)."""
    mask = response_mask.to(torch.float32)
    v = values.to(torch.float32) * mask
    lengths = mask.sum(-1).long()
    token_rewards = torch.zeros_like(v)
    rows = torch.arange(v.shape[0])[lengths > 0]
    token_rewards[rows, lengths[rows] - 1] = rewards.to(torch.float32)[rows]
    advantages = torch.zeros_like(v)
    next_value = torch.zeros(v.shape[0])
    next_advantage = torch.zeros(v.shape[0])
    for t in reversed(range(v.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - v[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * mask[:, t]
        # past a response's end the next state is terminal: value and advantage 0
        next_value = v[:, t] * mask[:, t]
        next_advantage = advantages[:, t]
    return advantages, (advantages + v) * mask


@register_estimator("gae")
def gae(inputs: EstimatorInputs, *, gamma: float = 1.0, lam: float = 1.0) -> Tensor:
    """GAE token advantages from `inputs.extras["values"]` ([B, T], the critic's V_t)."""
    if "values" not in inputs.extras:
        raise ValueError("gae needs extras['values']: the critic's value of every response state")
    advantages, _ = gae_advantages(inputs.rewards, inputs.extras["values"], inputs.response_mask,
                                   gamma=gamma, lam=lam)
    return advantages
