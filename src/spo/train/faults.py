"""What can go wrong while a run writes its files, in one place: a full disk, and (for the
crash tests) a `kill -9` at a chosen moment.

A lost peer: `peer_failure(err, dist, ...)` turns the error a collective raises when
another process of the run died or hung (gloo's "connection reset", a collective_timeout)
into a PeerFailedError that says so, names the last good checkpoint and how to resume;
`spo` prints it and exits 1.

Disk full: `disk_full_is_fatal(what, hint)` turns an ENOSPC / EDQUOT OSError raised inside
it into a `DiskFullError` whose message says what was being written, where, and what to
do next; `spo` prints it and exits 1 without a traceback.

Kill points: `SPO_KILL_AT=name:n` makes the process SIGKILL itself the n-th time it passes
`kill_point(name)` (n defaults to 1). The points are listed in `KILL_POINTS` and
docs/reliability.md; `scripts/chaos.py` uses them to hit the short windows (half a metrics
line written, a checkpoint staged but not yet renamed) that random kills rarely land in.
Unset, a kill point costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator

KILL_ENV = "SPO_KILL_AT"
KILL_POINTS = (
    "metrics.write",        # half of a metrics.jsonl line written
    "episodes.write",       # half of an iteration's episode log written to its temporary file
    "checkpoint.write",     # the model saved into the staging folder, optimizer and the rest not yet
    "checkpoint.staged",    # staging folder complete with its manifest, not yet renamed into place
    "checkpoint.commit",    # renamed into place, `latest` not yet updated, older ones not yet pruned
    "sft.publish",          # `spo sft`: the finished model folder written, not yet renamed into place
    "bench.done",           # `spo bench`: a run finished, its bench_done.json not yet written
)
_passes: Counter[str] = Counter()


class DiskFullError(OSError):
    """The disk (or quota) filled up while spo wrote a run's file; the message says which."""


def kill_point(name: str, before_kill: Callable[[], None] | None = None) -> None:
    """SIGKILL this process here when SPO_KILL_AT names this point and pass (crash tests).
    `before_kill` runs first, e.g. to leave half a line behind as a real crash would."""
    target = os.environ.get(KILL_ENV)
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(nth or 1):
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def disk_full_is_fatal(what: str, hint: Callable[[], str]) -> Iterator[None]:
    """Re-raise a full disk inside the block as DiskFullError: "disk full while writing
    <what>: <OS message> (<file>); <hint()>" (`hint` is called only then, e.g. to find the
    last good checkpoint). Other errors pass through unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise DiskFullError(err.errno, f"disk full while writing {what}: {err.strerror}{where}; {hint()}") from None


class PeerFailedError(RuntimeError):
    """Another process of a multi-process run died or hung: this one's collective failed
    (gloo: the connection was reset) or waited longer than `collective_timeout`."""


PEER_FAILURE_SIGNS = ("connection reset", "connection closed", "broken pipe", "timed out", "timeout", "gloo",
                      "nccl", "peer")
"""Words in the error a collective raises when a peer is gone (torch raises RuntimeError or
DistError with the backend's message)."""


def peer_failure(err: BaseException, run_dir, last_checkpoint, timeout_s: float) -> PeerFailedError | None:
    """A PeerFailedError saying what happened and what to do, when `err` (raised in a
    multi-process run) is a collective that lost its peer; None for any other error."""
    import torch.distributed  # only here: this module is imported by `spo --help`

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))  # set by the launcher
    text = str(err).strip()
    if world == 1 or not isinstance(err, RuntimeError) or not (
            isinstance(err, torch.distributed.DistError) or any(s in text.lower() for s in PEER_FAILURE_SIGNS)):
        return None
    first = text.splitlines()[0][:300] if text else type(err).__name__
    last = last_checkpoint()
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return PeerFailedError(
        f"process {rank} of {world}: another process of this run stopped (killed, crashed, or hung for "
        f"longer than collective_timeout={timeout_s:g} s), so this one stops too: {first}; {where}; resume with "
        f"`spo train --resume {run_dir}` under the same launcher (or repeat the command with --resume auto)")


@contextlib.contextmanager
def peer_failures_reported(run_dir, timeout_s: float, last_checkpoint: Callable[[], object]) -> Iterator[None]:
    """Re-raise, inside the block, a collective's error that means another process is gone
    as PeerFailedError (`peer_failure`; `last_checkpoint()` finds what to resume from),
    logged at once: the launcher may stop this process any moment now. Other errors pass
    through unchanged."""
    try:
        yield
    except RuntimeError as err:
        failed = peer_failure(err, run_dir, last_checkpoint, timeout_s)
        if failed is None:
            raise
        logging.getLogger("spo.train").error("%s", failed)
        raise failed from err
