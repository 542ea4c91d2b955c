"""The policy update: PPO-clip epochs over an iteration's samples (SPO section 3).

    for each epoch, for each mini-batch (one optimizer step):
        for each micro-batch (gradient accumulation):
            logprobs = teacher-forced log pi(y_t | s_t)            (optimize.logprobs)
            L = aggregate( PPO-clip(logprobs, old, A) + kl_coef * k3(pi || ref) )
                                                                    (optimize.losses.policy_loss)
        clip the gradient norm, step AdamW and the lr schedule

Advantages are whitened over the counted tokens of the whole global batch before the
epochs (`whiten: global`), or of each micro-batch (`micro_batch`, the reference's). The
loss is normalised by the GLOBAL count of the mini-batch (counted tokens, or sequences),
so W processes take the same steps as one process with the same global batch; a process
with nothing in a step still runs one zero-weight micro-batch so that it joins the
step's gradient all-reduce. Under FSDP every forward pass is a collective (the layers'
weights are gathered), so every process runs as many micro-batches as the process with
the most, padding with zero-weight ones.

With `algorithm.packing` (the default) each micro-batch is one packed sequence in which a
prefix its samples share (a group's prompt, a tree's path) appears once (spo.optimize.
packing), and the micro-batches of a mini-batch keep such samples together: at most
`micro_batch_size` samples each, or, with `micro_batch_tokens`, whole groups/trees up to
that many packed tokens. The mini-batches themselves (which samples each optimizer step
sees) do not change, so neither do the losses and their normalisations.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from spo.config import RunConfig
from spo.optimize.logprobs import compute_logprobs
from spo.optimize.losses import masked_whiten, policy_loss, whiten_across
from spo.optimize.packing import packing_unsupported, plan_micro_batches, warn_fallback
from spo.seeds import SALT_UPDATE_SHUFFLE, derive_seed


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf: training stops before the bad step is applied.
    A FloatingPointError, so that `spo` (spo.cli) reports it as bad input, exit 2, without
    importing torch to name this class."""


class UpdateSample(Protocol):
    """What the update reads of one sequence: the fields spo.algorithms.base.TrainSample (which
    the algorithms fill) has for it."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # old log-probs
    advantages: list[float]
    loss_mask: list[int]


def pad_rows(rows: Sequence[Sequence[float]], width: int, value: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """Right-padded [len(rows), width] tensor of per-token lists."""
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def micro_batches(samples: Sequence[UpdateSample], rows: Sequence[int], algorithm, packing: bool) -> list[list[int]]:
    """Split mini-batch `rows` (indices into `samples`) into micro-batches: consecutive
    `micro_batch_size` rows, or with `packing` samples sharing prefixes kept together (by
    `micro_batch_tokens` packed tokens when set). `whiten: micro_batch` keeps the rows'
    order (the whitening groups do not change with packing)."""
    a = algorithm
    if not packing or a.whiten == "micro_batch":
        return [list(rows[i : i + a.micro_batch_size]) for i in range(0, len(rows), a.micro_batch_size)]
    sequences = [samples[i].prompt_ids + samples[i].response_ids for i in rows]
    by_tokens = a.micro_batch_tokens is not None
    plan = plan_micro_batches(sequences, None if by_tokens else a.micro_batch_size, a.micro_batch_tokens)
    return [[rows[k] for k in part] for part in plan]


def packing_enabled(model, algorithm) -> bool:
    """`algorithm.packing`, unless `model` cannot take a packed layout (logged once)."""
    if not algorithm.packing:
        return False
    reason = packing_unsupported(model)
    if reason is not None:
        warn_fallback(reason)
    return reason is None


class _RunningMeans:
    """Weighted means of per-micro-batch statistics (weights: counted tokens), over every
    process's micro-batches (`global_sums`: the element-wise sums over processes)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, key: str, value: float, weight: float = 1.0) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value * weight
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def means(self, dist=None) -> dict[str, float]:
        if dist is None or dist.world == 1:
            return {k: self.sums[k] / max(self.weights[k], 1e-12) for k in self.sums}
        keys = _STAT_KEYS  # the same on every process (one with only empty micro-batches has fewer)
        values = dist.global_sums([self.sums.get(k, 0.0) for k in keys] + [self.weights.get(k, 0.0) for k in keys])
        return {k: values[i] / max(values[len(keys) + i], 1e-12) for i, k in enumerate(keys)}


_STAT_KEYS = ("policy_loss", "kl", "clip_frac", "approx_kl", "entropy", "grad_norm")


@dataclass
class PolicyUpdate:
    """PPO-clip updates of `policy` (prepared by accelerate) with a frozen `reference`
    for the KL term (None: no KL term, as when kl_coef = 0 or the algorithm puts the KL in
    the reward). `steps_per_iteration` is the most optimizer
    steps an iteration can take: the lr schedule advances by that much every iteration."""

    policy: Any
    reference: Any
    optimizer: Any
    scheduler: Any
    accelerator: Any
    dist: Any
    cfg: RunConfig
    steps_per_iteration: int
    pad_token_id: int

    def __call__(self, samples: Sequence[UpdateSample], iteration: int, progress) -> dict[str, float]:
        """Train on this process's `samples`; returns the update's statistics."""
        cfg, a = self.cfg, self.cfg.algorithm
        n = len(samples)
        n_global = int(self.dist.global_sum(n))
        if n_global == 0:  # SPO-tree: no edge carried signal; nothing to train on anywhere
            self._finish_schedule(iteration)
            return {"lr": self.scheduler.get_last_lr()[0]}
        width = max((len(s.response_ids) for s in samples), default=1)
        adv = pad_rows([s.advantages for s in samples], width)
        mask = pad_rows([s.loss_mask for s in samples], width)
        old_lp = pad_rows([s.logprobs for s in samples], width)
        if a.whiten == "global":
            adv = whiten_across(adv, mask, self.dist.global_sum)

        packing = packing_enabled(self.policy, a)
        stats = _RunningMeans()
        # Every process takes the same number of optimizer steps (DDP all-reduces once per
        # step), set by the global sample count; its local samples are split evenly into them.
        # Never more steps than the lr schedule planned (`steps_per_iteration`, from the
        # algorithm's most samples): extra samples (SPO-chain's recycled continuations)
        # make the mini-batches larger instead of running the schedule ahead.
        steps = min(math.ceil(n_global / a.mini_batch_size), max(self.steps_per_iteration // a.epochs, 1))
        minibatches = []
        for epoch in range(a.epochs):
            order = list(range(n))
            random.Random(derive_seed(cfg.seed, iteration, self.dist.rank, SALT_UPDATE_SHUFFLE, epoch)).shuffle(order)
            minibatches += [order[k * n // steps : (k + 1) * n // steps] for k in range(steps)]
        plans = [micro_batches(samples, mb, a, packing) for mb in minibatches]
        micro_steps = sum(max(len(plan), 1) for plan in plans)
        with progress.phase(f"iter {iteration + 1} optimize", total=micro_steps) as bar:
            for mb, plan in zip(minibatches, plans):
                self._optimizer_step(samples, mb, plan, adv, mask, old_lp, iteration, stats, bar)
        self._finish_schedule(iteration)
        out = stats.means(self.dist)  # over all processes' micro-batches
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def _finish_schedule(self, iteration: int) -> None:
        """Advance the lr schedule to the end of `iteration` when it took fewer than the
        most steps (SPO-tree), so the schedule follows iterations, not sample counts."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            while self.scheduler.last_epoch < (iteration + 1) * self.steps_per_iteration:
                self.scheduler.step()

    def _optimizer_step(self, samples, mb, micro, adv, mask, old_lp, iteration, stats, bar) -> None:
        """One optimizer step on mini-batch `mb` (indices), accumulated over its micro-batches
        `micro` (lists of indices)."""
        cfg, a, dist = self.cfg, self.cfg.algorithm, self.dist
        if a.loss_agg == "token_mean":
            normalizer = dist.global_sum(mask[mb].sum().item())
        else:
            normalizer = dist.global_sum(len(mb))
        if a.loss_agg == "seq_mean_token_sum":
            normalizer *= cfg.sampling.max_new_tokens
        normalizer = max(normalizer, 1.0)
        sequences = max(dist.global_sum(len(mb)), 1.0) if a.kl_aggregation == "sequence_sum" else None
        micro = list(micro) or [[]]
        if dist.is_fsdp:  # the same number of forward passes on every process
            micro += [[]] * (int(dist.global_max(len(micro))) - len(micro))
        for j, rows in enumerate(micro):
            last = j == len(micro) - 1
            with self.accelerator.no_sync(self.policy) if not last else contextlib.nullcontext():
                if rows:
                    loss, st = self._micro_loss([samples[i] for i in rows], adv[rows], mask[rows], old_lp[rows],
                                                normalizer, sequences)
                else:
                    loss, st = self._empty_loss(), {"tokens": 0.0}
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"iteration {iteration + 1}: loss is {loss.item()} (micro-batch {j + 1} of {len(micro)})")
                self.accelerator.backward(loss * dist.world)  # DDP averages over processes
            weight = st.pop("tokens")
            for key, value in st.items():
                stats.add(key, value, weight=weight)
            if bar is not None:
                bar.update(1)
        self.optimizer.grads_to_master()
        grad_norm = self.optimizer.clip_grad_norm(cfg.optim.grad_clip)
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"iteration {iteration + 1}: gradient norm is {grad_norm}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        stats.add("grad_norm", grad_norm)

    def _logprobs(self, model, batch, **kwargs):
        return compute_logprobs(model, [s.prompt_ids for s in batch], [s.response_ids for s in batch],
                                self.cfg.sampling.temperature, pad_token_id=self.pad_token_id,
                                packing=self.cfg.algorithm.packing, **kwargs)

    def _empty_loss(self) -> torch.Tensor:
        pad = self.pad_token_id
        scored = compute_logprobs(self.policy, [[pad]], [[pad]], self.cfg.sampling.temperature, pad_token_id=pad)
        return scored.logprobs.sum() * 0.0

    def _micro_loss(self, batch, adv, mask, old_lp, normalizer, sequences) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch (normalised by the whole step's `normalizer`)."""
        a = self.cfg.algorithm
        width = max(max(len(s.response_ids) for s in batch), 1)
        scored = self._logprobs(self.policy, batch, return_entropy=True)
        logprobs = scored.logprobs[:, :width]
        m = mask[:, :width].to(logprobs.device)
        advantages = adv[:, :width].to(logprobs.device)
        if a.whiten == "micro_batch":
            advantages = masked_whiten(advantages, m) * m
        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logprobs = self._logprobs(self.reference, batch).logprobs[:, :width]
        loss, st = policy_loss(logprobs, old_lp[:, :width].to(logprobs.device), advantages, m,
                               ref_logprobs=ref_logprobs, kl_coef=a.kl_coef if ref_logprobs is not None else 0.0,
                               clip_eps_low=a.clip_eps, clip_eps_high=a.clip_eps_high, agg_mode=a.loss_agg,
                               normalizer=normalizer, kl_aggregation=a.kl_aggregation, sequences=sequences,
                               kl_importance_correction=a.kl_importance_correction)
        ent = scored.entropy[:, :width].detach()
        resp = scored.mask[:, :width].float()
        return loss, {
            "tokens": float(m.sum()),
            "policy_loss": st["pg_loss"],
            "kl": st["kl"],
            "clip_frac": st["clip_frac"],
            "approx_kl": st["approx_kl"],
            "entropy": float((ent * resp).sum() / resp.sum().clamp(min=1)),
        }
