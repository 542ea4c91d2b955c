"""Checkpoints that a crash cannot corrupt.

Layout of one checkpoint (`RUN/checkpoints/iter_000010/`):
    model/            HF folder (config + safetensors + tokenizer): `from_pretrained` loads it
    adapter/          peft adapter, only for LoRA runs (model/ then holds the merged weights)
    optimizer.pt      optimizer state
    scheduler.pt      lr-scheduler state
    rng_rank{R}.pt    python / torch RNG state of each process
    trainer_state.json  iteration reached and what the loop needs to continue

Everything is written into a temporary sibling folder first and renamed into place
only when complete (rename is atomic on one file system), then `RUN/checkpoints/latest`
is replaced atomically. A crash mid-save leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"
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
