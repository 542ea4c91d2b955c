"""The few collective operations spo needs, over an `accelerate.Accelerator`.

Every process samples and trains on its own share of an iteration; these turn local
numbers into the run's numbers. With one process each is the identity."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import gather_object


class Dist:
    def __init__(self, accelerator):
        self.acc = accelerator
        self.rank: int = accelerator.process_index
        self.world: int = accelerator.num_processes
        self.device = accelerator.device
        self.is_main: bool = accelerator.is_main_process

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

    def prepare(self, model):
        """`model` ready for data-parallel training (DDP wraps it; one process: as is)."""
        return self.acc.prepare(model)

    def unwrap(self, model):
        return self.acc.unwrap_model(model)

    def backward(self, loss) -> None:
        self.acc.backward(loss)
