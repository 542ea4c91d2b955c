"""Optimizer and lr schedule, with fp32 master weights for low-precision models.

Why master weights: an AdamW step moves a weight by about `lr`. With lr = 1e-6 and
weights of magnitude ~1e-2, that is a relative change of 1e-4, far below bfloat16's
resolution (2^-8 = 4e-3): a bf16 weight updated in place would simply not move. So
when the model is held in bf16 (fast sampling and forward/backward on CPU), the
optimizer keeps an fp32 copy of every trainable weight, steps that copy, and writes
the rounded result back into the model. Gradients are produced (and, under DDP,
all-reduced) in the model's dtype and upcast before the step.

Under FSDP the parameters are DTensor shards: the master copies, AdamW's moments and the
gradients are shards too, the gradient norm is reduced over all processes, and
`state_dict(local=True)` / `load_state_dict` save and restore this process's shard.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.distributed.tensor import DTensor

from spo.config import OptimConfig


class MasterWeightsAdamW:
    """AdamW over fp32 copies of `params`; `step()` copies results back into `params`.

    When the params are already fp32 the copy is skipped and this is plain AdamW."""

    def __init__(self, params: Iterable[torch.nn.Parameter], cfg: OptimConfig):
        self.model_params = [p for p in params if p.requires_grad]
        if not self.model_params:
            raise ValueError("no trainable parameters")
        self.needs_master = any(p.dtype != torch.float32 for p in self.model_params)
        if self.needs_master:
            self.master_params = [
                torch.nn.Parameter(p.detach().clone().float(), requires_grad=True) for p in self.model_params
            ]
        else:
            self.master_params = self.model_params
        self.inner = torch.optim.AdamW(
            self.master_params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )

    @property
    def param_groups(self):  # for the lr scheduler
        return self.inner.param_groups

    def grads_to_master(self) -> None:
        if not self.needs_master:
            return
        for p, m in zip(self.model_params, self.master_params):
            m.grad = None if p.grad is None else p.grad.detach().float()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Global L2 norm of the (master) gradients, clipped in place when max_norm > 0.
        Sharded gradients (FSDP): the norm of the whole gradient (a collective)."""
        params = [m for m in self.master_params if m.grad is not None]
        if not params:
            return 0.0
        total = torch.nn.utils.get_total_norm([m.grad for m in params])
        if isinstance(total, DTensor):
            total = total.full_tensor()
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return float(total)

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        if self.needs_master:
            for p, m in zip(self.model_params, self.master_params):
                p.copy_(m)

    def zero_grad(self) -> None:
        for p in self.model_params:
            p.grad = None
        if self.needs_master:
            for m in self.master_params:
                m.grad = None

    def state_dict(self, local: bool = False) -> dict:
        """The optimizer's state; `local`: sharded tensors as this process's plain shard
        (what `torch.save` can write per process under FSDP)."""
        state = {"adamw": self.inner.state_dict()}
        if self.needs_master:
            state["master"] = [m.detach().clone() for m in self.master_params]
        return _local(state) if local else state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` or, on the same shards, `state_dict(local=True)`."""
        self.inner.load_state_dict(state["adamw"])
        for p in self.master_params:  # plain shards back into sharded tensors like the parameters'
            slots = self.inner.state.get(p, {})
            for key, value in slots.items():
                if key != "step":
                    slots[key] = _like(value, p)
        if self.needs_master:
            with torch.no_grad():
                for p, m, saved in zip(self.model_params, self.master_params, state["master"]):
                    m.copy_(_like(saved, m))
                    p.copy_(_like(saved, p))


def _local(obj: Any) -> Any:
    """`obj` (nested dicts and lists) with every DTensor replaced by its local shard."""
    if isinstance(obj, DTensor):
        return obj.to_local().detach().clone()
    if isinstance(obj, dict):
        return {k: _local(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_local(v) for v in obj]
    return obj


def _like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A saved tensor as one of `param`'s kind: a plain local shard becomes a DTensor
    sharded like `param` (FSDP); anything else is returned as it is."""
    if isinstance(param, DTensor) and not isinstance(value, DTensor):
        local = param.to_local()
        if value.shape != local.shape:
            raise ValueError(f"saved optimizer shard has shape {tuple(value.shape)}, this process's is "
                             f"{tuple(local.shape)}: resume with the same number of processes")
        return DTensor.from_local(value.to(device=local.device, dtype=value.dtype), param.device_mesh,
                                  param.placements, shape=param.shape, stride=param.stride(), run_check=False)
    return value


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the base lr at optimizer step `s`: linear warmup, then the schedule."""
    warmup = int(math.ceil(cfg.warmup_ratio * total_steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        progress = min(1.0, progress)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine

    return f


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int):
    optimizer = MasterWeightsAdamW(model.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.inner, lr_lambda(cfg, total_steps))
    return optimizer, scheduler
