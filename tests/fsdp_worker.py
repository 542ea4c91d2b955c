"""Run by tests/test_fsdp.py under `accelerate launch --config_file configs/accelerate/fsdp-cpu.yaml`
(2 processes, FSDP2 over gloo): an uninterrupted smoke run, then a copy of it stopped after
iteration 1 and resumed. Both with the golden runs' text reward, so that advantages are not
all zero. After each run the main process also writes the policy's weights as they were
in memory at the end (`<run>-weights.pt`), to compare with the saved checkpoint; then
both processes run one extra update on uneven shares (`uneven_update`).

    python -m accelerate.commands.launch --config_file configs/accelerate/fsdp-cpu.yaml \
        tests/fsdp_worker.py OUT [OVERRIDES...]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))
from golden_runs import text_reward  # noqa: E402

from spo.cli import main  # noqa: E402
from spo.tasks.registry import Task  # noqa: E402
from spo.train.loop import Trainer  # noqa: E402
from spo.train.progress import Progress  # noqa: E402

real_train = Trainer.train


def train_and_keep_weights(self, *args):
    """Trainer.train, then the full weights (a collective) to `<run>-weights.pt`. First, a
    check that sampling needs no collective: inside `gathered`, process R runs R + 1
    forward passes (a per-forward all-gather would hang or pair them wrongly)."""
    assert self.dist.is_fsdp and self.dist.world == 2
    with torch.no_grad(), self.dist.gathered(self.policy):
        for _ in range(self.dist.rank + 1):
            self.policy(torch.tensor([[1, 2, 3]]))
    run_dir = real_train(self, *args)
    weights = self.dist.full_state_dict(self.model)
    if self.dist.is_main:
        torch.save(weights, run_dir.parent / f"{run_dir.name}-weights.pt")
    uneven_update(self)
    return run_dir


def uneven_update(trainer) -> None:
    """An extra update (after everything is saved) with 1 sample on process 0 and 5 on
    process 1: 1 and 2 micro-batches of 4. It must pad process 0 with an empty micro-batch
    (every forward pass is a collective under FSDP), and log the same statistics on both."""
    sample = SimpleNamespace(prompt_ids=[1, 2, 3], response_ids=[4, 5], logprobs=[-10.0, -10.0],
                             advantages=[1.0, -1.0], loss_mask=[1, 1])
    assert trainer.cfg.algorithm.micro_batch_size == 4
    samples = [sample] * (1 if trainer.dist.rank == 0 else 5)
    stats = trainer.update(samples, trainer.cfg.iterations, Progress(enabled=False, quiet=True))
    every = trainer.dist.gather([stats])
    assert every[0] == every[1], every


def run(args: list[str]) -> None:
    with mock.patch.object(Task, "reward", text_reward), mock.patch.object(Trainer, "train", train_and_keep_weights):
        assert main(args) == 0


if __name__ == "__main__":
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    run(["train", "--config", "smoke", "--output-dir", str(out / "run"), *overrides])
    if torch.distributed.get_rank() == 0:  # as if killed right after saving iteration 1
        crashed = out / "crashed"
        shutil.copytree(out / "run", crashed)
        for ckpt in (crashed / "checkpoints").glob("iter_*"):
            if int(ckpt.name.split("_")[1]) > 1:
                shutil.rmtree(ckpt)
        (crashed / "checkpoints" / "latest").write_text("iter_000001\n")
    torch.distributed.barrier()
    run(["train", "--resume", str(out / "crashed")])
