"""Where spo caches what it builds (converted models, tiny models, SFT models), how a
folder is published there atomically, and how a file is replaced atomically and durably
(`write_text_atomic`, used by checkpoints, run folders and reports alike).

A leaf module (no spo imports) so that `spo.models`, `spo.tiny_models` and
`spo.train.sft` can all use it without importing one another.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Root of spo's cache: ``$SPO_CACHE_DIR`` or ``~/.cache/spo``."""
    env = os.environ.get("SPO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spo"


@contextlib.contextmanager
def staged_folder(out: Path):
    """Yield a temporary sibling folder of `out` to write into; when the block ends it is
    renamed to `out`, and when the block raises it is removed, so a crash never leaves a
    folder that looks finished."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty folder made beforehand (e.g. an --output-dir)
        _atomic_publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _atomic_publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder into place; lose gracefully to a concurrent writer."""
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / "config.json").is_file() or (final / "tokenizer_config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)  # someone else finished first
        else:
            raise


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` atomically and durably (the data on the disk before the
    rename, the rename on the disk before returning)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (new names, renames), to the disk: a rename
    is atomic, but without fsync a power loss may persist the rename and not the data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
