"""The few collective operations spo needs, over an `accelerate.Accelerator`.

Every process samples and trains on its own share of an iteration; these turn local
numbers into the run's numbers. With one process each is the identity.

Sharded training (FSDP2, from an accelerate config with `distributed_type: FSDP` and
`fsdp_version: 2`; see docs/distributed.md) is handled here too, so the loop stays the
same for one process, DDP and FSDP:

* `prepare` shards the policy (`fully_shard` on every decoder layer and the root, through
  accelerate); its parameters become DTensors, one shard per process.
* `gathered(model)` holds the full weights on every process while it samples (the HF
  engine runs a different number of forward passes on each process, and a per-forward
  all-gather would pair them wrongly or hang); the update runs sharded.
* `full_state_dict` / `load_full_state_dict`: the whole model in one dict, for checkpoints
  in the plain Hugging Face format (collective: every process calls them).
* `shards_optimizer`: the optimizer's state is sharded too; checkpoints keep one file per
  process (`optimizer_rank{R}.pt`), and resuming needs the same number of processes.

On a machine without an accelerator, accelerate ignores an FSDP config (it takes
`distributed_type: FSDP` for GPUs only and falls back to `MULTI_CPU`); `make_accelerator`
then switches its state to FSDP itself, so that the same accelerate code (`fully_shard`
over gloo) runs on the CPU. That is how the tests run FSDP with two CPU processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs, gather_object

from spo.config import ConfigError


def make_accelerator(collective_timeout_s: float | None = None) -> Accelerator:
    """The run's Accelerator, from the `accelerate launch` environment (CPU when there is no
    GPU). An FSDP config is honoured on the CPU too (see the module docstring); FSDP1
    (`fsdp_version: 1`) and DeepSpeed are refused: spo shards with FSDP2.
    `collective_timeout_s`: how long a collective waits for a peer (a dead or hung process)
    before it raises, instead of torch's 30 min (`collective_timeout`)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError("spo does not run under DeepSpeed (its update steps its own optimizer, with fp32 master "
                          "weights, and samples from the policy in-process); for ZeRO-3-like sharding use FSDP: "
                          "accelerate launch --config_file configs/accelerate/fsdp.yaml (docs/distributed.md)")
    handlers = [] if collective_timeout_s is None else [
        InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=collective_timeout_s))]
    acc = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=handlers)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return acc
    state = acc.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
    if state.distributed_type == DistributedType.FSDP and state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError("the accelerate config asks for FSDP1 (fsdp_version: 1); spo trains with FSDP2: set "
                          "fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    return acc


class Dist:
    def __init__(self, accelerator):
        self.acc = accelerator
        self.rank: int = accelerator.process_index
        self.world: int = accelerator.num_processes
        self.device = accelerator.device
        self.is_main: bool = accelerator.is_main_process
        self.is_fsdp: bool = accelerator.distributed_type == DistributedType.FSDP
        self.shards_optimizer: bool = self.is_fsdp
        """Each process holds only its shard of the optimizer state (saved per process)."""

    def check_supported(self, cfg, trains_another_model: bool) -> None:
        """ConfigError for what spo does not run sharded (a clear error before any loading)."""
        if not self.is_fsdp:
            return
        if cfg.sampling.engine == "vllm" and cfg.model.lora.enabled:
            raise ConfigError("sampling.engine=vllm with model.lora.enabled under FSDP: the LoRA merge before each "
                              "weight push is not sharded; use sampling.engine=hf, or DDP (docs/distributed.md)")
        if trains_another_model:
            raise ConfigError(f"algorithm.estimator={cfg.algorithm.estimator} trains a model besides the policy "
                              "(a critic), which spo does not shard; use DDP (docs/distributed.md)")

    def global_sum(self, value: float) -> float:
        """The sum of `value` over all processes (a float, the same on every process)."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], device=self.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's list, concatenated in rank order (on every process)."""
        return gather_object(items)

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def global_sums(self, values: list[float]) -> list[float]:
        """The element-wise sums of `values` over all processes (one collective)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return [float(v) for v in self.acc.reduce(t, reduction="sum").tolist()]

    def global_max(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def prepare(self, model):
        """`model` ready for data-parallel training (DDP wraps it; FSDP shards it in place;
        one process: as is). Build the optimizer afterwards, over the returned model's
        parameters (under FSDP they are the shards)."""
        if not self.is_fsdp:
            return self.acc.prepare(model)
        # accelerate shards a model only together with an optimizer; spo's own optimizer
        # (fp32 master weights) is built over the shards afterwards, so this one is a stand-in.
        stand_in = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        model, _ = self.acc.prepare(model, stand_in)
        return model

    @contextlib.contextmanager
    def gathered(self, model):
        """Inside: every process holds `model`'s full weights, and forward passes need no
        collective (sampling, evaluation). Outside: sharded again. A no-op unless FSDP."""
        if not self.is_fsdp:
            yield model
            return
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in sharded:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield model
        finally:  # back to how fully_shard set them: the config's value, the root never (torch's default)
            reshard = bool(self.acc.state.fsdp_plugin.reshard_after_forward)
            for m in sharded:
                m.reshard()
                m.set_reshard_after_forward(reshard and m is not model, recurse=False)

    def full_state_dict(self, model) -> dict[str, torch.Tensor]:
        """`model`'s whole state dict, on the CPU, on the main process (other processes: {}
        under FSDP). Collective under FSDP: every process must call it."""
        if not self.is_fsdp:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_state_dict(self, model, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load a whole state dict (every process passes the same one) into `model`;
        `strict=False`: only some of its tensors (a LoRA adapter)."""
        if not self.is_fsdp:
            model.load_state_dict(state, strict=strict)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))

    def unwrap(self, model):
        return self.acc.unwrap_model(model)

    def backward(self, loss) -> None:
        self.acc.backward(loss)
