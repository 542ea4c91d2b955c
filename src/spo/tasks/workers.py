"""Time-limited, memory-capped worker processes for code that may hang or blow up: the math
grader (`grader.math_answers_equal`) and user reward functions (`spo.tasks.user_rewards`).

A worker is `python -m <module> <args>` speaking JSON lines over pipes: it caps its own
address space (`limit_memory`), prints "ready", then answers one JSON line per request. The
parent waits at most the request's time limit plus a grace period and kills a worker that
overruns or dies; `WorkerPool` keeps one idle worker per concurrent caller and starts a new
one after a kill. A subprocess (not multiprocessing) never re-imports the user's __main__
and can be killed without touching the parent's state. `call_with_time_limit` is the
in-process (SIGALRM) alternative, and what a worker uses inside itself.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

WORKER_START_TIMEOUT_S = 120.0
"""Importing SymPy (or a user's reward module) on a busy machine can take a while."""
WORKER_GRACE_S = 2.0
"""Beyond a request's own time limit (the worker's alarm), before the parent kills it."""

WORKER_ENV = "SPO_IN_WORKER"
"""Set (to "1") inside a worker process, so that `spo.train` refuses to start there: a user
module that trains when imported would otherwise start a run in every reward worker."""

T = TypeVar("T")


class TimeLimitExceeded(BaseException):
    """Raised by our SIGALRM handler. A BaseException so that library code's `except
    Exception` blocks cannot swallow it and keep computing."""


def call_with_time_limit(fn: Callable[[], T], timeout_s: float) -> tuple[bool, T | None]:
    """Run fn() under a SIGALRM interval timer (main thread only). Returns (finished, value).

    The alarm can only interrupt Python bytecode: a single C-level call that never returns
    (e.g. a giant integer power) is not stopped; a worker process killed by its parent is."""
    armed = True

    def on_alarm(signum: int, frame: object) -> None:
        if armed:
            raise TimeLimitExceeded

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            return True, fn()
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except TimeLimitExceeded:
        return False, None
    finally:
        signal.signal(signal.SIGALRM, previous)


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at `megabytes` (0 = no cap), so that a
    huge allocation raises MemoryError instead of eating the machine's RAM."""
    if megabytes > 0:
        limit = megabytes << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def protocol_channel() -> Any:
    """In a worker: the stdout to answer on; anything else printed goes to stderr, so that a
    user's print() cannot corrupt the protocol."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return channel


class JsonLineWorker:
    """One `python -m module *args` child: `request(obj, timeout_s)` -> its answer (a dict),
    or None when it overran (it is then killed) or died."""

    def __init__(self, module: str, args: Sequence[str] = (), what: str = "worker",
                 paths: Sequence[str] = ()) -> None:
        env = os.environ.copy()
        src_root = str(Path(__file__).resolve().parents[2])  # so the child finds `spo`
        # `paths`: more import folders (the parent's sys.path, for a user's module)
        env["PYTHONPATH"] = os.pathsep.join([src_root, *paths, *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        first = self._next_line(WORKER_START_TIMEOUT_S)
        if first != "ready":
            self.close()
            raise RuntimeError(f"the {what} process failed to start: {first or '(see its stderr above)'}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _next_line(self, timeout_s: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, obj: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj, default=str) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            return None
        line = self._next_line(timeout_s + WORKER_GRACE_S)
        if line is None:
            self.close()
            return None
        return json.loads(line)

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()


class WorkerPool:
    """Workers of one kind (module + args): one idle worker per concurrent caller, started
    on demand and reused; a worker that overran or died is dropped and replaced."""

    def __init__(self, module: str, args: Sequence[str] = (), what: str = "worker",
                 paths: Sequence[str] = ()) -> None:
        self.module, self.args, self.what, self.paths = module, list(args), what, list(paths)
        self._idle: list[JsonLineWorker] = []
        self._all: list[JsonLineWorker] = []
        self._lock = threading.Lock()
        _pools.append(self)

    def request(self, obj: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """The answer of an idle worker, or None when it overran its time limit or died."""
        worker = None
        with self._lock:
            while self._idle and worker is None:
                worker = self._idle.pop()
                if not worker.alive():  # died while idle (e.g. killed): forget it
                    self._all.remove(worker)
                    worker = None
        if worker is None:
            worker = JsonLineWorker(self.module, self.args, self.what, self.paths)
            with self._lock:
                self._all.append(worker)
        answer = worker.request(obj, timeout_s)
        with self._lock:
            if worker.alive():
                self._idle.append(worker)
            elif worker in self._all:
                self._all.remove(worker)
        return answer

    def close(self) -> None:
        with self._lock:
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
        for w in workers:
            w.close()


_pools: list[WorkerPool] = []


@atexit.register
def shutdown_workers() -> None:
    """Kill every worker of every pool (also runs at interpreter exit)."""
    for pool in list(_pools):
        pool.close()
