"""A run folder's life: started fresh (never over another run), locked while a trainer
writes it, continued from its newest good checkpoint, or started again when it has none.

    with run_folder(cfg.output_dir, resume) as (run_dir, resuming):
        Trainer(cfg, run_dir, resume=resuming).train(preemption)

`resume`: None starts a new run (refused in a folder that already holds one: it would mix
two runs' metrics); a folder continues that run (an error when it has no good
checkpoint); `"auto"` continues `output_dir` when it has a good checkpoint and otherwise
starts it afresh, removing what an attempt killed before its first checkpoint left
behind. The same command can therefore be repeated after any crash.

The lock is an exclusive `flock` on `RUN/.lock`, which the kernel releases when its
process dies, even by `kill -9`: a lock file whose recorded holder is gone is detected as
stale and taken over (with a warning), while a live holder makes the second trainer stop
with a message naming it. Under `accelerate launch` only the main process (RANK 0) locks,
checks and clears; the others only follow.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from spo.config import ConfigError
from spo.train.run_log import EPISODES_DIR, METRICS_FILE

log = logging.getLogger("spo.train")
# The checkpoint functions (and torch with them) are imported where a run is cleared or
# resumed, so that `spo inspect` and `spo plot` check their run folders without torch.

AUTO = "auto"
LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, EPISODES_DIR, "tensorboard", "checkpoints")
"""What marks a folder as holding a run (and what a fresh restart removes)."""


class RunFolderError(ConfigError):
    """A run folder that cannot be used as asked: it holds another run, or another process
    is writing it."""

    label = "run folder"


def require_run_folder(path: str | Path, what: str = CONFIG_FILE, *, option: str | None = None) -> Path:
    """`path` as a run folder, checked to hold `what` (config.yaml, metrics.jsonl, ...);
    otherwise a RunFolderError (exit code 2) naming the path (after `option`, e.g.
    "--resume", when one gave it) and what was expected. The one check behind `spo train
    --resume`, `spo inspect` and `spo plot`."""
    path = Path(path)
    named = f"{option} {path}" if option else str(path)
    if not path.is_dir():
        raise RunFolderError(f"{named}: no such folder (give a run folder: {CONFIG_FILE}, {METRICS_FILE}, "
                             f"{EPISODES_DIR}/)")
    if not (path / what).exists():
        raise RunFolderError(f"{named}: not a run folder (no {what} there)")
    return path


def is_main_process() -> bool:
    """RANK 0 or no launcher at all (torchrun/accelerate set RANK before spo starts)."""
    return os.environ.get("RANK", "0") == "0"


def run_contents(path: Path) -> list[str]:
    """The names of RUN_FILES present in `path`."""
    return [name for name in RUN_FILES if (path / name).exists()]


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def new_run_path(output_dir: str | None) -> Path:
    """Where a new run goes: `output_dir`, or `runs/<timestamp>` (with a suffix when two
    runs start in the same second). A folder that holds a run already is refused."""
    base = Path(output_dir) if output_dir else default_run_dir()
    path, n = base, 1
    while output_dir is None and run_contents(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    refuse_existing_run(path)
    return path


def prepare_run_dir(output_dir: str | None) -> Path:
    """The folder of a new run (`new_run_path`), created."""
    path = new_run_path(output_dir)
    make_folder(path)
    return path


def make_folder(path: Path) -> None:
    """`mkdir -p path`, with a RunFolderError (exit 2) when `path` or a parent is a file."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise RunFolderError(f"--output-dir {path}: {part} is a file, not a folder; choose another --output-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # permissions, a read-only file system
        raise RunFolderError(f"--output-dir {path}: cannot create the folder: {err.strerror} ({err.filename})"
                             ) from None


def first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` (itself or a parent) that does not exist yet: what
    `make_folder(path)` creates, and what a failed start removes again."""
    missing = None
    for part in (path, *path.parents):
        if part.exists():
            break
        missing = part
    return missing


def remove_if_unused(path: Path, created: Path | None) -> None:
    """After a start that failed before writing anything (a missing model, a bad task
    option): remove the folders it created (`path` up to `created`), when they are empty."""
    if created is None or not path.is_dir():
        return
    for folder in (path, *path.parents):
        try:
            folder.rmdir()  # only empty ones
        except OSError:
            return
        if folder == created:
            return


def refuse_existing_run(path: Path) -> None:
    found = run_contents(path)
    if found:
        raise RunFolderError(
            f"{path} already holds a run ({', '.join(found)}); continue it with `spo train --resume {path}` "
            f"(or `--resume auto --output-dir {path}`), or choose another --output-dir")


def clear_unfinished(path: Path) -> None:
    """Remove what an attempt killed before its first good checkpoint left in `path`
    (damaged checkpoints are set aside as `checkpoints/damaged-*`, not deleted)."""
    from spo.train.checkpoint import DAMAGED_PREFIX, latest_checkpoint

    latest_checkpoint(path, tidy=True)
    removed = []
    for name in RUN_FILES:
        target = path / name
        if name == "checkpoints" and target.is_dir():
            for leftover in target.iterdir():
                if leftover.is_dir() and not leftover.name.startswith(DAMAGED_PREFIX):
                    shutil.rmtree(leftover)
                elif leftover.is_file():
                    leftover.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.warning("%s has no good checkpoint: starting the run afresh (removed %s of an unfinished attempt)",
                    path, ", ".join(removed))


class RunLock:
    """An exclusive lock on a folder (`folder/.lock`), for as long as the `with` block runs.
    `wait`: block until the holder finishes instead of failing at once."""

    def __init__(self, folder: Path, *, wait: bool = False, enabled: bool = True):
        self.path, self.wait, self.enabled = folder / LOCK_FILE, wait, enabled
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = self._read(fd) or "another process"
            os.close(fd)
            raise RunFolderError(f"{self.path.parent} is in use by {holder}; two processes must not write one "
                                 "folder: wait for it to finish or stop it") from None
        stale = self._read(fd)
        if stale:
            log.warning("%s: lock of %s found, but that process is gone (killed?): taking it over",
                        self.path.parent, stale)
        holder = f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty lock file: released cleanly (the file itself stays)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def _read(fd: int) -> str:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()


@contextlib.contextmanager
def run_folder(output_dir: str | None, resume: str | None) -> Iterator[tuple[Path, bool]]:
    """(the run folder, whether to resume from its checkpoint), locked while the block runs;
    see the module docstring for what `resume` (None, a folder, "auto") does."""
    from spo.train.checkpoint import latest_checkpoint

    main = is_main_process()
    created = None
    if resume is None:
        if main:
            path = new_run_path(output_dir)
            created = first_missing(path)
        else:
            path = Path(output_dir or default_run_dir())
    elif resume == AUTO:
        if not output_dir:
            raise RunFolderError("--resume auto continues or starts the run in --output-dir; give one")
        path = Path(output_dir)
        created = first_missing(path) if main else None
    else:
        path = require_run_folder(resume, option="--resume")
    make_folder(path)
    lock_existed = (path / LOCK_FILE).exists()
    try:
        with RunLock(path, enabled=main):
            resuming = resume is not None
            if main and resume is None:
                refuse_existing_run(path)  # again, now that no other trainer can be creating it
            elif resume == AUTO:
                resuming = latest_checkpoint(path) is not None
                if main and not resuming:
                    clear_unfinished(path)
            try:
                yield path, resuming
            except BaseException:
                if main and not lock_existed and not run_contents(path):
                    (path / LOCK_FILE).unlink(missing_ok=True)  # removed while still held
                raise
    except BaseException:
        remove_if_unused(path, created)  # a start that failed leaves no empty run folder behind
        raise
