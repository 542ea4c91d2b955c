"""Checkpoints that a crash cannot corrupt.

Layout of one checkpoint (`RUN/checkpoints/iter_000010/`):
    model/            HF folder (config + safetensors + tokenizer): `from_pretrained` loads it
    adapter/          peft adapter, only for LoRA runs (model/ then holds the merged weights)
    optimizer.pt      optimizer state
    scheduler.pt      lr-scheduler state
    rng_rank{R}.pt    python / torch RNG state of each process
    algorithm_rank{R}.json  the algorithm's own state on each process (SPO-tree: its
                      replay buffer), when it has any
    algorithm/        models the algorithm trains besides the policy (PPO: its critic), if any
    trainer_state.json  iteration reached and what the loop needs to continue

Everything is written into a temporary sibling folder first and renamed into place
only when complete (rename is atomic on one file system), then `RUN/checkpoints/latest`
is replaced atomically. A crash mid-save leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from spo.models import is_lora, save_hf_model

log = logging.getLogger("spo.train")

LATEST = "latest"
ALGORITHM_DIR = "algorithm"
STATE_FILE = "trainer_state.json"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def staging_dir(ckpt_root: Path, iteration: int) -> Path:
    """A fresh temporary folder to write checkpoint `iteration` into."""
    tmp = ckpt_root / f".tmp-{checkpoint_name(iteration)}"
    if tmp.exists():  # left by an earlier crash
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(ckpt_root: Path, staged: Path, iteration: int, keep: int) -> Path:
    """Rename the staged folder into place, point `latest` at it, prune old ones."""
    final = ckpt_root / checkpoint_name(iteration)
    if final.exists():  # re-saving the same iteration (e.g. after a resume): replace it
        old = ckpt_root / f".old-{final.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)
    write_text_atomic(ckpt_root / LATEST, final.name + "\n")
    done = sorted(p for p in ckpt_root.glob("iter_*") if p.is_dir())
    for old in done[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / STATE_FILE).is_file():
            return path
    candidates = sorted(p for p in root.glob("iter_*") if (p / STATE_FILE).is_file())
    return candidates[-1] if candidates else None


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE_FILE).read_text())


def write_state(staged: Path, state: dict[str, Any]) -> None:
    (staged / STATE_FILE).write_text(json.dumps(state, indent=2))


def save_checkpoint(run_dir: Path, iteration: int, *, model, tokenizer, optimizer, scheduler, algorithm, dist,
                    state: dict[str, Any], keep: int) -> Path | None:
    """Write checkpoint `iteration` of a run from every process (collective): the main
    process writes the model (LoRA: adapter for resuming, merged weights to load),
    optimizer and scheduler, every process its RNG and algorithm state; then it is
    committed atomically. `model` is the unwrapped policy. Returns the folder on the main
    process."""
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    staged = staging_dir(root, iteration) if dist.is_main else root / f".tmp-{checkpoint_name(iteration)}"
    dist.barrier()
    if dist.is_main:
        if is_lora(model):
            model.save_pretrained(staged / "adapter")
        save_hf_model(model, staged / "model", tokenizer)
        torch.save(optimizer.state_dict(), staged / "optimizer.pt")
        torch.save(scheduler.state_dict(), staged / "scheduler.pt")
        algorithm.save_files(staged / ALGORITHM_DIR)
    torch.save(rng_state(), staged / f"rng_rank{dist.rank}.pt")
    algorithm_state = algorithm.state_dict()
    if algorithm_state:
        (staged / f"algorithm_rank{dist.rank}.json").write_text(json.dumps(algorithm_state))
    dist.barrier()
    final = None
    if dist.is_main:
        write_state(staged, {"iteration": iteration, "world_size": dist.world, **state})
        final = commit_checkpoint(root, staged, iteration, keep)
        log.info("saved checkpoint %s", final)
    dist.barrier()
    return final


def load_checkpoint(path: Path, *, model, optimizer, scheduler, algorithm, rank: int) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote into the given objects; returns its trainer state."""
    if is_lora(model):
        from peft import set_peft_model_state_dict  # peft is imported only for LoRA runs (slow to import)

        set_peft_model_state_dict(model, load_file(str(path / "adapter" / "adapter_model.safetensors")))
    else:
        loaded = AutoModelForCausalLM.from_pretrained(path / "model", dtype=next(model.parameters()).dtype)
        model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    algorithm.load_files(path / ALGORITHM_DIR)
    algorithm_file = path / f"algorithm_rank{rank}.json"
    legacy_replay = path / f"replay_rank{rank}.json"  # SPO-tree's buffer, before algorithm_rank files
    if algorithm_file.exists():
        algorithm.load_state_dict(json.loads(algorithm_file.read_text()))
    elif legacy_replay.exists():
        algorithm.load_state_dict({"replay": json.loads(legacy_replay.read_text())})
    return read_state(path)
