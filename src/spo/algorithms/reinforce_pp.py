"""REINFORCE++ (Hu 2025; verl's `reinforce_plus_plus`): no group baseline; the KL to the
reference is folded into a per-token reward, and returns are normalised over the global
batch.

    r_t = -beta * (log pi_old(y_t | s_t) - log pi_ref(y_t | s_t)) + [t = T] * r(x, y)
    G_t = sum_{s >= t} gamma^(s - t) r_s                          (returns)
    A_t = (G_t - mean G) / std G       over the response tokens of the whole global batch

beta is `algorithm.kl_coef`, gamma is 1 (verl's default). Because the KL is in the reward,
the update adds no KL term to the loss (`kl_in_loss = False`); `algorithm.whiten` still
applies on top (it changes nothing after this normalisation when every token counts).

    1. sample   G responses per prompt, and score them
    2. KL       log-probs of the frozen reference on each response (kl_coef > 0)
    3. estimate returns with the KL in the reward, normalised over the global batch
"""

from __future__ import annotations

from typing import Any

import torch

from spo.algorithms.base import (
    Algorithm,
    Batch,
    Response,
    Timer,
    estimator_inputs,
    response_batch,
    sample_and_score,
    set_advantages,
)
from spo.algorithms.registry import register_algorithm
from spo.estimate.reinforce_pp import reinforce_pp
from spo.optimize.logprobs import compute_logprobs
from spo.optimize.losses import whiten_across
from spo.optimize.update import pad_rows


@register_algorithm("reinforce_pp")
class ReinforcePP(Algorithm):
    kl_in_loss = False

    def collect(self, iteration: int, progress: Any) -> Batch:
        timer = Timer()
        responses = sample_and_score(self.ctx, iteration, progress, timer)  # 1.
        self.advantages(responses, iteration, progress, timer)  # 2. and 3.
        return response_batch(responses, timings=timer.seconds)

    def advantages(self, responses: list[Response], iteration: int, progress: Any, timer: Timer) -> dict[str, int]:
        ctx, a = self.ctx, self.cfg.algorithm
        width = max((len(r.response_ids) for r in responses), default=1)
        old = pad_rows([r.logprobs for r in responses], width)
        token_kl = torch.zeros_like(old)
        if ctx.reference is not None and responses:  # 2.
            with timer("reference"), torch.no_grad():
                ref = compute_logprobs(ctx.reference, [r.prompt_ids for r in responses],
                                       [r.response_ids for r in responses], self.cfg.sampling.temperature,
                                       a.micro_batch_size, pad_token_id=ctx.pad_token_id, packing=a.packing,
                                       micro_batch_tokens=a.micro_batch_tokens)
                token_kl = old - ref.logprobs[:, :width].float().cpu()
        with timer("estimate"):  # 3.
            inputs = estimator_inputs(responses, [r.reward for r in responses], [r.group_id for r in responses],
                                      extras={"token_kl": token_kl})
            returns = reinforce_pp(inputs, kl_coef=a.kl_coef)
            set_advantages(responses, whiten_across(returns, inputs.response_mask, ctx.dist.global_sum),
                           self.cfg)
        return {}
