"""Checkpoints that a crash cannot corrupt, and that are checked before they are trusted.

Layout of one checkpoint (`RUN/checkpoints/iter_000010/`):
    model/            HF folder (config + safetensors + tokenizer): `from_pretrained` loads it
    adapter/          peft adapter, only for LoRA runs (model/ then holds the merged weights)
    optimizer.pt      optimizer state (FSDP: optimizer_rank{R}.pt, each process's shard)
    scheduler.pt      lr-scheduler state
    rng_rank{R}.pt    python / torch RNG state of each process
    algorithm_rank{R}.json  the algorithm's own state on each process (SPO-tree: its
                      replay buffer), when it has any
    algorithm/        models the algorithm trains besides the policy (PPO: its critic), if any
    trainer_state.json  iteration reached, where metrics.jsonl ended, what the loop needs to continue
    manifest.json     size and sha256 of every other file, written last

Everything is written into a temporary sibling folder first, the manifest last, and the
folder is renamed into place only when complete (rename is atomic on one file system);
every file and folder is fsync'ed before the manifest is written, the manifest itself
before the rename, and the parent folder after it (so a power loss, not only a kill,
leaves either the previous checkpoint or the complete new one: the manifest is the
commit point);
then `RUN/checkpoints/latest` is replaced atomically and older checkpoints are pruned,
never before the new one is in place. A crash (kill -9) at any moment leaves the previous
checkpoint untouched.

Before a checkpoint is trusted (`latest_checkpoint`), its files are checked against its
manifest: a truncated, missing or altered file makes it "damaged", and the newest good
one is used instead, with a warning. A checkpoint without a manifest (written before spo
had them) is trusted when its trainer_state.json is there.
"""

from __future__ import annotations

import hashlib
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

from spo.cache import fsync_path, write_text_atomic
from spo.config import ConfigError
from spo.models import is_lora, lora_copy_from_state, peft_keys, save_hf_model
from spo.train.faults import disk_full_is_fatal, kill_point
from spo.train.run_log import EPISODES_DIR, METRICS_FILE

log = logging.getLogger("spo.train")

LATEST = "latest"
ALGORITHM_DIR = "algorithm"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
PREFIX = "iter_"
DAMAGED_PREFIX = "damaged-"
"""Damaged checkpoints newer than the one a run resumes from are renamed `damaged-iter_...`
(kept for inspection, ignored by spo)."""
_CHUNK = 1 << 20


def checkpoint_name(iteration: int) -> str:
    return f"{PREFIX}{iteration:06d}"


def checkpoint_iteration(path: Path) -> int:
    """The iteration in a checkpoint folder's name (`iter_000010`, `.old-iter_000010` -> 10)."""
    return int(path.name.rpartition(PREFIX)[2])


# ---------------------------------------------------------------------------------------
# Durability: a rename is atomic, but without fsync a power loss may persist the rename
# and not the data it points at (a checkpoint of zeroed or truncated files).

def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder in it, deepest first, then itself."""
    folders = [folder]
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fsync_path(p)
        elif p.is_dir():
            folders.append(p)
    for d in sorted(folders, key=lambda d: len(d.parts), reverse=True):
        fsync_path(d)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------------------------------
# The manifest: sizes and hashes, written last, checked before a checkpoint is trusted.

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """manifest.json: {"files": {relative path: {"size", "sha256"}}} of every file in `folder`.
    Every file is on the disk (fsync) before the manifest that vouches for it is written,
    and the manifest is before this returns: the manifest is the commit point."""
    fsync_tree(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))
    fsync_path(folder / MANIFEST)
    fsync_path(folder)


def verify_checkpoint(path: Path, *, hashes: bool = True) -> str | None:
    """Why checkpoint folder `path` cannot be trusted, or None when it can: every file in its
    manifest is there with its size (and, with `hashes`, its sha256)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None if (path / STATE_FILE).is_file() else f"no {MANIFEST} and no {STATE_FILE}"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} is unreadable ({err})"
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != meta["size"]:
            return f"{name} has {size} bytes, its manifest says {meta['size']} (truncated?)"
        if hashes and _sha256(file) != meta["sha256"]:
            return f"{name} does not match its sha256 in the manifest (altered or corrupted)"
    return None


# ---------------------------------------------------------------------------------------
# Finding the checkpoint to trust.

def _candidates(root: Path) -> list[Path]:
    """Checkpoint folders, newest first. A `.old-iter_N` (the previous copy of iteration N,
    moved aside while N was saved again) counts when `iter_N` itself is missing."""
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir()]
    found += [p for p in root.glob(f".old-{PREFIX}*")
              if p.is_dir() and not (root / p.name.removeprefix(".old-")).exists()]
    return sorted(found, key=checkpoint_iteration, reverse=True)


def latest_checkpoint(run_dir: str | Path, *, tidy: bool = False, hashes: bool = True) -> Path | None:
    """The newest checkpoint of a run that passes `verify_checkpoint`, or None. Damaged ones
    are skipped with a warning. `tidy` (the process about to resume the run): damaged ones
    newer than the one returned are renamed `damaged-iter_...`, so that nothing takes them
    for the run's state; a `.old-` copy returned is renamed back; the leftovers of writes
    and deletions a kill interrupted are removed. `hashes=False`: sizes only (quick)."""
    root = Path(run_dir) / "checkpoints"
    found = None
    for path in _candidates(root):
        problem = verify_checkpoint(path, hashes=hashes)
        if problem is None:
            found = path
            break
        log.warning("checkpoint %s is damaged (%s); falling back to the previous one", path, problem)
        if tidy:
            aside = root / f"{DAMAGED_PREFIX}{path.name.removeprefix('.old-')}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            log.warning("moved it to %s", aside)
    if tidy:
        if found is not None and found.name.startswith(".old-"):  # killed while saving it again
            os.replace(found, root / found.name.removeprefix(".old-"))
            found = root / found.name.removeprefix(".old-")
        _remove_leftovers(root)
    return found


def _remove_leftovers(root: Path) -> None:
    """Staging folders of unfinished saves and folders that were being deleted."""
    for leftover in [*root.glob(f".tmp-{PREFIX}*"), *root.glob(f".del-{PREFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE_FILE).read_text())


def write_state(staged: Path, state: dict[str, Any]) -> None:
    (staged / STATE_FILE).write_text(json.dumps(state, indent=2))


# ---------------------------------------------------------------------------------------
# Writing: stage, manifest, rename, point `latest`, prune.

def staging_dir(ckpt_root: Path, iteration: int) -> Path:
    """A fresh temporary folder to write checkpoint `iteration` into (what earlier crashes
    left is removed first)."""
    _remove_leftovers(ckpt_root)
    tmp = ckpt_root / f".tmp-{checkpoint_name(iteration)}"
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(ckpt_root: Path, staged: Path, iteration: int, keep: int) -> Path:
    """Write the staged folder's manifest, rename it into place, point `latest` at it, then
    prune: of the older checkpoints, the `keep - 1` newest good ones stay."""
    write_manifest(staged)
    kill_point("checkpoint.staged")
    final = ckpt_root / checkpoint_name(iteration)
    old = ckpt_root / f".old-{final.name}"
    if final.exists():  # saving the same iteration again (e.g. after a resume): replace it
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    fsync_path(ckpt_root)  # the rename itself on the disk before `latest` points at it
    kill_point("checkpoint.commit")
    write_text_atomic(ckpt_root / LATEST, final.name + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if verify_checkpoint(final, hashes=False) is None:  # never prune before the new one is sound
        older = [p for p in _candidates(ckpt_root) if checkpoint_iteration(p) < iteration]
        good = [p for p in older if verify_checkpoint(p, hashes=False) is None][: keep - 1]
        for path in older:
            if path not in good:  # renamed first, so that a kill mid-deletion leaves no half checkpoint
                trash = ckpt_root / f".del-{path.name.removeprefix('.old-')}"
                os.replace(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
    return final


def save_training_state(staged: Path, *, model, tokenizer, optimizer, scheduler, model_state=None) -> None:
    """Model (LoRA: adapter for resuming + merged weights to load), optimizer (None: saved
    elsewhere, per process) and scheduler. `model_state`: the model's whole state dict when
    the model holds only a shard of it (FSDP)."""
    if is_lora(model) and model_state is not None:  # a sharded LoRA model: save from a whole CPU copy
        model, model_state = lora_copy_from_state(model, model_state), None
    if is_lora(model):
        model.save_pretrained(staged / "adapter")
    save_hf_model(model, staged / "model", tokenizer, state_dict=model_state)
    kill_point("checkpoint.write")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), staged / "optimizer.pt")
    torch.save(scheduler.state_dict(), staged / "scheduler.pt")


def save_checkpoint(run_dir: Path, iteration: int, *, model, tokenizer, optimizer, scheduler, algorithm, dist,
                    state: dict[str, Any], keep: int) -> Path | None:
    """Write checkpoint `iteration` of a run from every process (collective): the main
    process writes the model, optimizer, scheduler and the algorithm's files, every
    process its RNG and algorithm state (FSDP: also its optimizer shard; the model is
    gathered whole first); then the main process records how long
    metrics.jsonl was (resuming cuts it back to that) and commits the checkpoint. `model`
    is the unwrapped policy. Returns the folder on the main process. A full disk raises
    DiskFullError after removing the partial folder; the previous checkpoint is untouched."""
    root = run_dir / "checkpoints"
    staged = root / f".tmp-{checkpoint_name(iteration)}"
    with disk_full_is_fatal(f"the checkpoint of iteration {iteration}",
                            lambda: f"{_previous(run_dir)}; free space, then `spo train --resume {run_dir}`"):
        try:
            if dist.is_main:
                root.mkdir(exist_ok=True)
                staging_dir(root, iteration)
            dist.barrier()
            model_state = dist.full_state_dict(model) if dist.is_fsdp else None  # collective
            if dist.is_main:
                save_training_state(staged, model=model, tokenizer=tokenizer, scheduler=scheduler,
                                    optimizer=None if dist.shards_optimizer else optimizer, model_state=model_state)
                algorithm.save_files(staged / ALGORITHM_DIR)
            if dist.shards_optimizer:
                torch.save(optimizer.state_dict(local=True), staged / f"optimizer_rank{dist.rank}.pt")
            torch.save(rng_state(), staged / f"rng_rank{dist.rank}.pt")
            algorithm_state = algorithm.state_dict()
            if algorithm_state:
                (staged / f"algorithm_rank{dist.rank}.json").write_text(json.dumps(algorithm_state))
            dist.barrier()
            final = None
            if dist.is_main:
                metrics = run_dir / METRICS_FILE
                sync_logs(run_dir)  # the logs the checkpoint counts on survive a power loss with it
                write_state(staged, {"iteration": iteration, "world_size": dist.world,
                                     "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0, **state})
                final = commit_checkpoint(root, staged, iteration, keep)
                log.info("saved checkpoint %s", final)
        except OSError:
            if dist.is_main:
                shutil.rmtree(staged, ignore_errors=True)  # free what the partial copy took
            raise
    dist.barrier()
    return final


def sync_logs(run_dir: Path) -> None:
    """fsync metrics.jsonl and the episode logs (files already on the disk cost a syscall each)."""
    if (run_dir / METRICS_FILE).exists():
        fsync_path(run_dir / METRICS_FILE)
    if (run_dir / EPISODES_DIR).is_dir():
        fsync_tree(run_dir / EPISODES_DIR)
    fsync_path(run_dir)


def _previous(run_dir: Path) -> str:
    previous = latest_checkpoint(run_dir)
    return f"the previous checkpoint {previous} is intact" if previous else "no checkpoint was written yet"


def load_training_state(path: Path, *, model, optimizer, scheduler, rank: int = 0, dist=None) -> None:
    """Restore what `save_training_state` wrote (and this process's RNG state). `dist`: the
    run's spo.distributed.Dist when the model and optimizer may be sharded (FSDP)."""
    if is_lora(model):
        from peft import set_peft_model_state_dict  # peft is imported only for LoRA runs (slow to import)

        adapter = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        if dist is not None and dist.is_fsdp:
            dist.load_full_state_dict(model, peft_keys(adapter, model.active_adapter), strict=False)
        else:
            set_peft_model_state_dict(model, adapter)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(path / "model", dtype=next(model.parameters()).dtype)
        if dist is not None:
            dist.load_full_state_dict(model, loaded.state_dict())
        else:
            model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(torch.load(_optimizer_file(path, dist), weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))


def _optimizer_file(path: Path, dist) -> Path:
    """Where this process's optimizer state is: one file, or (FSDP) one shard per process,
    which only the same number of processes can load."""
    if dist is None or not dist.shards_optimizer:
        if not (path / "optimizer.pt").is_file() and (path / "optimizer_rank0.pt").is_file():
            raise ConfigError(f"{path} was saved by an FSDP run (optimizer state in shards); resume it with the "
                              "same accelerate FSDP config and number of processes")
        return path / "optimizer.pt"
    saved = read_state(path).get("world_size")
    if not (path / f"optimizer_rank{dist.rank}.pt").is_file() or saved != dist.world:
        raise ConfigError(f"{path} holds no optimizer shards for {dist.world} FSDP processes (it was saved by "
                          f"{saved} process(es){'' if (path / 'optimizer_rank0.pt').is_file() else ' without FSDP'});"
                          f" resume with the same number of processes and the same accelerate config")
    return path / f"optimizer_rank{dist.rank}.pt"


def load_checkpoint(path: Path, *, model, optimizer, scheduler, algorithm, rank: int, dist=None) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote into the given objects; returns its trainer state."""
    load_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank, dist=dist)
    algorithm.load_files(path / ALGORITHM_DIR)
    algorithm_file = path / f"algorithm_rank{rank}.json"
    legacy_replay = path / f"replay_rank{rank}.json"  # SPO-tree's buffer, before algorithm_rank files
    if algorithm_file.exists():
        algorithm.load_state_dict(json.loads(algorithm_file.read_text()))
    elif legacy_replay.exists():
        algorithm.load_state_dict({"replay": json.loads(legacy_replay.read_text())})
    return read_state(path)
