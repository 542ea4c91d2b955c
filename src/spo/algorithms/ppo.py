"""PPO with a learned critic (Ouyang et al. 2022; the paper's PPO baseline): token-level
advantages from a value model trained alongside the policy.

    1. sample    G responses per prompt, and score them
    2. values    V_t of every response state by the critic: the policy's trunk (a copy,
                 initialised from the policy as the reference does) with a one-output head
    3. GAE       A_t and the returns G_t = A_t + V_t (gamma = lambda = 1: A_t = r - V_t)
    4. critic    `algorithm.epochs` passes over mini-batches of the samples, clipped value
                 loss 1/2 max((V - G)^2, (V_clip - G)^2), its own AdamW (`critic.*`)
    5. mask      the probability mask if on; the policy update (PPO-clip) is the loop's

The critic is saved in checkpoints as a Hugging Face `*ForTokenClassification` folder
(`algorithm/critic`, safetensors) with its optimizer, and resumed with the policy.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForTokenClassification

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
from spo.config import OptimConfig
from spo.estimate.gae import gae_advantages
from spo.models import plain_copy
from spo.optimize.logprobs import compute_values
from spo.optimize.losses import aggregate_loss, clipped_value_loss
from spo.optimize.optimizer import build_optimizer
from spo.optimize.update import NonFiniteLossError, micro_batches, packing_enabled, pad_rows
from spo.seeds import SALT_CRITIC, derive_seed

CRITIC_DIR, CRITIC_OPTIMIZER = "critic", "critic_optimizer.pt"


def value_model_from(policy) -> torch.nn.Module:
    """A `*ForTokenClassification` model with one output whose trunk is a copy of the
    policy's (LoRA adapters merged), with a fresh head; no dropout."""
    source = plain_copy(policy)
    config = copy.deepcopy(source.config)
    config.num_labels, config.classifier_dropout = 1, 0.0
    dtype = next(source.parameters()).dtype
    critic = AutoModelForTokenClassification.from_config(config, dtype=dtype)
    critic.base_model.load_state_dict(source.base_model.state_dict())
    return critic.to(next(source.parameters()).device).train()


@dataclass
class CriticValues:
    """PPO's record of one response (its fields in the episode log)."""

    values: list[float]  # V_t of the state before each response token
    returns: list[float]  # G_t = A_t + V_t, the critic's targets


@register_algorithm("ppo")
class PPO(Algorithm):
    def __init__(self, ctx):
        super().__init__(ctx)
        c, a = self.cfg.critic, self.cfg.algorithm
        critic = value_model_from(ctx.policy)
        # the critic takes the same number of optimizer steps per iteration as the policy
        steps = a.epochs * math.ceil(self.cfg.sampling.prompts_per_iteration * self.cfg.sampling.group_size
                                     / a.mini_batch_size)
        optim = OptimConfig(lr=c.lr, weight_decay=c.weight_decay, betas=self.cfg.optim.betas, eps=self.cfg.optim.eps,
                            warmup_ratio=0.0, schedule="constant", grad_clip=c.grad_clip)
        self.optimizer, self.scheduler = build_optimizer(critic, optim, self.cfg.iterations * steps)
        self.critic = ctx.dist.prepare(critic)

    def collect(self, iteration: int, progress: Any) -> Batch:
        timer = Timer()
        responses = sample_and_score(self.ctx, iteration, progress, timer)  # 1.
        values, returns = self.gae(responses, timer)  # 2., 3. and 5.
        with timer("critic"), progress.phase(f"iter {iteration + 1} critic", total=None):  # 4.
            stats = self.train_critic(responses, values, returns, iteration)
        return response_batch(responses, timings=timer.seconds, extras={"critic": stats})

    def advantages(self, responses: list[Response], iteration: int, progress: Any, timer: Timer) -> dict[str, int]:
        self.gae(responses, timer)
        return {}

    def gae(self, responses: list[Response], timer: Timer) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic's values of the responses, GAE advantages set on them (with the
        loss mask and their details); (values, returns) [B, T] for the critic's update."""
        c = self.cfg.critic
        with timer("values"):
            values = self.values(responses)
        with timer("estimate"):
            inputs = estimator_inputs(responses, [r.reward for r in responses], [r.group_id for r in responses])
            advantages, returns = gae_advantages(inputs.rewards, values, inputs.response_mask, gamma=c.gamma,
                                                 lam=c.lam)
            set_advantages(responses, advantages, self.cfg)
            for i, r in enumerate(responses):
                n = len(r.response_ids)
                r.details = CriticValues(values=values[i, :n].tolist(), returns=returns[i, :n].tolist())
        return values, returns

    @torch.no_grad()
    def values(self, responses: list[Response]) -> torch.Tensor:
        """V_t [B, T] of every response state under the current critic."""
        critic = self.ctx.dist.unwrap(self.critic)
        critic.eval()
        a = self.cfg.algorithm
        packing = packing_enabled(critic, a)
        width = max(len(r.response_ids) for r in responses)
        out = torch.zeros((len(responses), width))
        for rows in micro_batches(responses, range(len(responses)), a, packing):
            v = compute_values(critic, [responses[i].prompt_ids for i in rows],
                               [responses[i].response_ids for i in rows], self.ctx.pad_token_id, packing=packing)
            out[rows, : v.shape[1]] = v.cpu()
        critic.train()
        return out

    def train_critic(self, responses: list[Response], old_values: torch.Tensor, returns: torch.Tensor,
                     iteration: int) -> dict[str, float]:
        """Clipped value regression on this iteration's returns; token-mean loss per
        mini-batch (normalised by the global token count, as the policy's)."""
        cfg, a, dist = self.cfg, self.cfg.algorithm, self.ctx.dist
        mask = pad_rows([[1.0] * len(r.response_ids) for r in responses], old_values.shape[1])
        n = len(responses)
        steps = math.ceil(dist.global_sum(n) / a.mini_batch_size)
        packing = packing_enabled(self.critic, a)
        if dist.is_fsdp:  # every process runs as many forwards: micro-batches of rows, not tokens
            a = dataclasses.replace(a, micro_batch_tokens=None)
        sums = {"critic_loss": 0.0, "value_clip_frac": 0.0, "value_error": 0.0, "tokens": 0.0}
        for epoch in range(a.epochs):
            order = list(range(n))
            random.Random(derive_seed(cfg.seed, iteration, dist.rank, SALT_CRITIC, epoch)).shuffle(order)
            for k in range(steps):
                mb = order[k * n // steps : (k + 1) * n // steps]
                normalizer = max(dist.global_sum(mask[mb].sum().item()), 1.0)
                for rows in micro_batches(responses, mb, a, packing):
                    batch = [responses[j] for j in rows]
                    v = compute_values(self.critic, [r.prompt_ids for r in batch], [r.response_ids for r in batch],
                                       self.ctx.pad_token_id, packing=packing)
                    width = v.shape[1]
                    m = mask[rows, :width].to(v.device)
                    per_token, st = clipped_value_loss(v, old_values[rows, :width].to(v.device),
                                                       returns[rows, :width].to(v.device), m, cfg.critic.value_clip)
                    loss = aggregate_loss(per_token, m, "token_mean", normalizer=normalizer)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(f"iteration {iteration + 1}: critic loss is {loss.item()}")
                    dist.backward(loss * dist.world)  # DDP averages over processes
                    tokens = float(m.sum())
                    sums["critic_loss"] += float(loss.detach()) * normalizer
                    sums["value_clip_frac"] += float(st["value_clip_frac"]) * tokens
                    sums["value_error"] += float(st["value_error"]) * tokens
                    sums["tokens"] += tokens
                self.optimizer.grads_to_master()
                self.optimizer.clip_grad_norm(cfg.critic.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
        return sums

    def finish_record(self, record: dict[str, Any], batch: Batch) -> None:
        total = self.ctx.dist.global_sum
        sums = {k: total(v) for k, v in batch.extras["critic"].items()}
        tokens = max(sums.pop("tokens"), 1.0)
        record.update({k: v / tokens for k, v in sums.items()})

    def save_files(self, folder: Path) -> None:
        critic = self.ctx.dist.unwrap(self.critic)
        critic.save_pretrained(folder / CRITIC_DIR)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   folder / CRITIC_OPTIMIZER)

    def load_files(self, folder: Path) -> None:
        if not (folder / CRITIC_DIR).is_dir():
            raise FileNotFoundError(f"{folder}: this checkpoint has no critic (was it written by another algorithm?)")
        critic = self.ctx.dist.unwrap(self.critic)
        loaded = AutoModelForTokenClassification.from_pretrained(folder / CRITIC_DIR,
                                                                 dtype=next(critic.parameters()).dtype)
        critic.load_state_dict(loaded.state_dict())
        state = torch.load(folder / CRITIC_OPTIMIZER, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

