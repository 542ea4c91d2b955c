"""Graceful preemption: a scheduler's SIGTERM (SLURM, Kubernetes, ...), SIGUSR1 (SLURM's
`--signal`) or a Ctrl-C (SIGINT) makes the run checkpoint at its next safe point and exit.

    with Preemption(grace_s=cfg.preempt_grace) as preemption:
        for it in ...:
            ...                                     # one iteration, its log line, eval, checkpoint
            if preemption.requested(dist):         # collective: every process agrees
                save the checkpoint if this iteration has none; raise Preempted(...)

The signal handler only sets a flag (and says so); the loop looks at it between
iterations, where the state is whole. Under `accelerate launch` the flag is all-reduced
(max) at that point, so every process stops after the same iteration even when only one
got the signal. From the first signal a watchdog counts `grace_s` seconds: a run that has
not exited by then (an iteration or evaluation longer than the grace period) exits at
once with EXIT_GRACE_EXPIRED, as a `kill -9` would: the last good checkpoint is intact,
since checkpoints are written aside and committed by their manifest. A second SIGINT
(Ctrl-C twice) does the same at once; a second SIGTERM or SIGUSR1 changes nothing (a
scheduler signals every process and torchrun forwards the signal again).

Exit statuses (docs/reliability.md): EXIT_PREEMPTED (75, sysexits' EX_TEMPFAIL: "try
again") after the checkpoint; EXIT_GRACE_EXPIRED (143, 128 + SIGTERM) without one.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("spo.train")

EXIT_PREEMPTED = 75
EXIT_GRACE_EXPIRED = 143
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a signal after checkpointing iteration `iteration` in `run_dir`.
    `rerun`: how the caller's user continues (e.g. "the same `spo bench` command again");
    None: `spo train`'s own advice (`--resume`). `unit`: what `iteration` counts (`spo sft`:
    "step")."""

    def __init__(self, run_dir, iteration: int, signal_name: str, checkpoint, rerun: str | None = None,
                 unit: str = "iteration"):
        self.run_dir, self.iteration, self.signal_name, self.checkpoint = run_dir, iteration, signal_name, checkpoint
        stopped = (f"preempted ({signal_name}) before its first {unit}, so with no checkpoint" if checkpoint is None
                   else f"preempted ({signal_name}) after {unit} {iteration}, checkpoint {checkpoint}")
        if rerun is not None:
            advice = f"to continue, run {rerun}"
        elif checkpoint is None:
            advice = f"start it again with the same command plus `--resume auto --output-dir {run_dir}`"
        else:
            advice = (f"resume with `spo train --resume {run_dir}` (or the same command again with `--resume auto "
                      f"--output-dir {run_dir}`)")
        self.rerun, self.unit = rerun, unit
        super().__init__(f"{stopped}; {advice}")

    def __reduce__(self):  # so that it crosses from a `spo bench --jobs` worker process intact
        return Preempted, (self.run_dir, self.iteration, self.signal_name, self.checkpoint, self.rerun, self.unit)


class Preemption:
    """Installs the handlers for SIGNALS while the `with` block runs (main thread only;
    elsewhere it does nothing), and restores the previous ones after."""

    def __init__(self, grace_s: float, rerun: str | None = None, unit: str = "iteration"):
        self.grace_s = grace_s
        self.rerun = rerun
        """How to continue after a stop, for Preempted's message (None: `spo train --resume`)."""
        self.unit = unit
        """What the run checkpoints after (`spo sft`: "step"), for the messages."""
        self.where: Callable[[], str] = lambda: "start-up"
        """What the run is doing (named in the message when a signal comes)."""
        self.signal_name: str | None = None  # the signal this process got
        self.name = ""  # the signal the run stops on (any process's)
        self._previous: dict[int, object] = {}
        self._cancelled = threading.Event()

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if exc_type is None or not issubclass(exc_type, Preempted):  # stopping: the watchdog still guards the exit
            self._cancelled.set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: no more waiting
                _exit_now(f"spo: {name} again while stopping: exiting now, without a new checkpoint; the last good "
                          "checkpoint is intact")
            return  # SIGTERM twice is common (a scheduler signals every process, torchrun forwards it again)
        self.signal_name = name
        print(f"spo: {name} received during {self.where()}: checkpointing after the current {self.unit}, then exiting "
              f"(within {self.grace_s:.0f} s, preempt_grace)", file=sys.stderr, flush=True)
        threading.Thread(target=self._watchdog, daemon=True, name="spo-preempt-watchdog").start()

    def _watchdog(self) -> None:
        if self._cancelled.wait(self.grace_s):
            return
        _exit_now(f"spo: preempt_grace ({self.grace_s:.0f} s) ran out before the run reached a safe point: exiting "
                  "without a new checkpoint; the last good checkpoint is intact (resume from it)")

    def stop_if_requested(self, trainer, done: int, saved: bool) -> None:
        """At a safe point of `trainer` (spo.train.loop.Trainer; between iterations; a
        collective): when any process got a signal, checkpoint iteration `done` unless it
        just was, and raise Preempted."""
        if not self.requested(trainer.dist):
            return
        if not saved:
            trainer.save_checkpoint(done)
        if trainer.log:
            trainer.log.close()
        trainer.dist.barrier()
        raise self.stopped(trainer.run_dir, done)

    def stopped(self, run_dir, done: int) -> Preempted:
        """The exception that ends a run stopped after `done` (0: before the first), whose
        checkpoint is in `run_dir/checkpoints` (spo train's run folder, spo sft's partial one)."""
        from spo.train.checkpoint import checkpoint_name  # not at import time: `spo --help` imports this module

        checkpoint = run_dir / "checkpoints" / checkpoint_name(done) if done else None
        return Preempted(run_dir, done, self.name, checkpoint, self.rerun, self.unit)

    def requested(self, dist=None) -> bool:
        """Whether any process got a signal (collective: every process calls it at the same
        point; `dist` None: a one-process run); `name` is then the signal's (the highest
        number when they differ)."""
        mine = float(signal.Signals[self.signal_name]) if self.signal_name else 0.0
        agreed = int(mine if dist is None or dist.world == 1 else dist.global_max(mine))
        if agreed:
            self.name = signal.Signals(agreed).name
        return bool(agreed)


def _exit_now(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(EXIT_GRACE_EXPIRED)
