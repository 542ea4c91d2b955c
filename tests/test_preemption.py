"""Graceful preemption and multi-process crashes (docs/reliability.md): real signals to
real `spo train` runs, one process and two (DDP over gloo, `accelerate launch`); the
preempted run checkpoints, exits 75, and resumes to the result of an uninterrupted run.
A `kill -9` of one process of a two-process run makes the other exit with a clear
message, in bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import assert_same_metrics
from safetensors.torch import load_file

from spo.commands.bench import DONE_FILE
from spo.train import checkpoint as ckpt
from spo.train.preemption import EXIT_GRACE_EXPIRED, EXIT_PREEMPTED
from spo.train.run_log import read_metrics

FAST = ["sampling.max_new_tokens=8", "task.eval_limit=4", "iterations=5", "eval.every=2"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
          "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]


def command(out: Path, processes: int, *args: str) -> list[str]:
    spo = ["-m", "spo.cli", "train", "--config", "smoke", "--output-dir", str(out), *FAST, *args]
    return [*LAUNCH, *spo] if processes == 2 else [sys.executable, *spo]


def start(cmd: list[str], log: Path, tag: str = "") -> subprocess.Popen:
    # one thread per process: bit-for-bit reproducible runs; a session of its own, so that
    # the whole run can be signalled as a scheduler does
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SPO_TEST_TAG": tag}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def finish(cmd: list[str], log: Path) -> int:
    proc = start(cmd, log)
    return proc.wait(timeout=600)


def wait_for_iterations(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and sum('"kind": "eval"' not in line for line in metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, "the run ended before it was signalled"
        time.sleep(0.2)
    raise AssertionError(f"no {n} iterations within {timeout} s")


def process_of_rank(tag: str, rank: int) -> int:
    """The pid of the training process with RANK=`rank` started with SPO_TEST_TAG=`tag`."""
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"SPO_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank}")


def same_result(ref: Path, out: Path) -> None:
    assert_same_metrics(read_metrics(ref), read_metrics(out))
    assert [(r["iteration"], r["accuracy"]) for r in read_metrics(ref, "eval")] == [
        (r["iteration"], r["accuracy"]) for r in read_metrics(out, "eval")]
    for a, b in zip(sorted((ref / "episodes").iterdir()), sorted((out / "episodes").iterdir()), strict=True):
        assert a.read_text() == b.read_text(), b
    wa, wb = (load_file(str(ckpt.latest_checkpoint(r) / "model" / "model.safetensors")) for r in (ref, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    """An uninterrupted two-process run, the twin of the interrupted ones."""
    ref = tmp_path_factory.mktemp("ddp") / "ref"
    assert finish(command(ref, 2), ref.parent / "ref.log") == 0
    return ref


def interrupt(tmp_path: Path, processes: int, send, *args: str) -> tuple[Path, int, str, float]:
    """Start a run, `send(proc, tag)` after its first iteration, wait for the end: (its folder,
    its exit status, its log, seconds from `send` to the end)."""
    out, tag = tmp_path / "run", uuid.uuid4().hex
    proc = start(command(out, processes, *args, "--resume", "auto"), tmp_path / "run.log", tag)
    try:
        wait_for_iterations(out, 1, proc)
        t0 = time.monotonic()
        send(proc, tag)
        code = proc.wait(timeout=300)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out, code, (tmp_path / "run.log").read_text(), seconds


def preempt_and_resume(tmp_path: Path, processes: int, send, ref: Path | None = None) -> str:
    """Preempt a run with `send` after its first iteration, resume it, compare with the
    reference (`ref`, or one run beside it). Returns the preempted run's log."""
    if ref is None:
        ref = tmp_path / "ref"
        with ThreadPoolExecutor(1) as pool:
            reference = pool.submit(finish, command(ref, processes), tmp_path / "ref.log")
            out, code, log, _ = interrupt(tmp_path, processes, send)
            assert reference.result() == 0
    else:
        out, code, log, _ = interrupt(tmp_path, processes, send)
    stopped = ckpt.latest_checkpoint(out)
    assert stopped is not None and ckpt.verify_checkpoint(stopped) is None
    done = ckpt.checkpoint_iteration(stopped)
    assert 1 <= done < 5, log[-3000:]
    assert f"preempted (SIG" in log and f"after iteration {done}" in log and "resume with" in log
    assert [r["iteration"] for r in read_metrics(out)] == list(range(1, done + 1))  # stopped right after it
    if processes == 1:
        assert code == EXIT_PREEMPTED, log[-3000:]
    assert finish(command(out, processes, "--resume", "auto"), tmp_path / "resume.log") == 0
    same_result(ref, out)
    return log + f"\nlauncher exit status {code}"


def test_sigterm_checkpoints_exits_75_and_resumes_equal(tmp_path):
    preempt_and_resume(tmp_path, 1, lambda proc, tag: proc.send_signal(signal.SIGTERM))


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_iteration(tmp_path, ddp_reference):
    # to rank 1 only: the flag is all-reduced between iterations, so rank 0 (which writes the
    # checkpoint) stops after the same iteration; each process exits 75, which the launcher reports
    log = preempt_and_resume(tmp_path, 2, lambda proc, tag: os.kill(process_of_rank(tag, 1), signal.SIGTERM),
                             ddp_reference)
    assert log.count("SIGTERM received") == 1 and "exitcode  : 75" in log, log[-3000:]


def test_kill_9_of_one_of_two_processes_stops_the_other_with_a_clear_message(tmp_path, ddp_reference):
    out, code, log, seconds = interrupt(tmp_path, 2, lambda proc, tag: os.kill(process_of_rank(tag, 1),
                                                                               signal.SIGKILL))
    assert code != 0 and seconds < 60, (code, seconds)  # gloo notices the lost connection at once
    assert "process 0 of 2: another process of this run stopped" in log, log[-3000:]
    assert finish(command(out, 2, "--resume", "auto"), tmp_path / "resume.log") == 0
    same_result(ddp_reference, out)


def test_a_hung_process_stops_the_other_after_collective_timeout(tmp_path):
    # SIGSTOP: rank 1 is alive but never answers; torchrun does not notice; rank 0 waits in
    # its collective for collective_timeout, then stops with the message (and the launcher then
    # stops rank 1)
    def hang(proc, tag):
        os.kill(process_of_rank(tag, 1), signal.SIGSTOP)

    out, code, log, seconds = interrupt(tmp_path, 2, hang, "collective_timeout=10")
    assert code != 0 and seconds < 10 + 30 + 30, (code, seconds)  # + torchrun's shutdown wait + slack
    assert "process 0 of 2: another process of this run stopped" in log, log[-3000:]


def test_sigusr1_and_sigint_ask_for_a_stop_too():
    from spo.train.preemption import Preemption

    class OneProcess:
        world = 1

    for sig in (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM):
        with Preemption(grace_s=600) as preemption:
            assert not preemption.requested(OneProcess())
            os.kill(os.getpid(), sig)
            time.sleep(0.1)  # the handler runs in the main thread, between bytecodes
            assert preemption.requested(OneProcess()) and preemption.name == sig.name
        assert signal.getsignal(sig) is not preemption._handle  # the previous handler is back


WAITS_FOREVER = textwrap.dedent("""
    import os, signal, time
    from spo.train.preemption import Preemption
    with Preemption(grace_s=1.0) as p:
        print("ready", flush=True)
        time.sleep(60)  # an iteration that never reaches a safe point
""")


def test_a_run_that_cannot_reach_a_safe_point_exits_when_the_grace_period_ends(tmp_path):
    for second_signal in (False, True):
        proc = subprocess.Popen([sys.executable, "-c", WAITS_FOREVER], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if second_signal:
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == EXIT_GRACE_EXPIRED
        err = proc.stderr.read()
        assert time.monotonic() - t0 < (1 if second_signal else 10)
        assert ("again while stopping" if second_signal else "preempt_grace (1 s) ran out") in err, err


def test_a_lost_peer_anywhere_in_the_run_is_one_clear_error(monkeypatch, tmp_path):
    # start-up included (a kill while the resumed FSDP run loads its checkpoint, a collective)
    from spo.train.faults import PeerFailedError, peer_failures_reported

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PeerFailedError, match="process 0 of 2: another process of this run stopped.*iter_000003"):
        with peer_failures_reported(tmp_path, 900, lambda: tmp_path / "checkpoints" / "iter_000003"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:51086")
    with pytest.raises(RuntimeError, match="CUDA out of memory"):  # other errors pass through
        with peer_failures_reported(tmp_path, 900, lambda: None):
            raise RuntimeError("CUDA out of memory")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="Connection closed"):  # one process: no peers
        with peer_failures_reported(tmp_path, 900, lambda: None):
            raise RuntimeError("Connection closed by peer")


def test_the_advice_of_a_preempted_run_depends_on_its_caller(tmp_path):
    from spo.train.preemption import Preempted

    stopped = Preempted(tmp_path, 3, "SIGTERM", tmp_path / "checkpoints" / "iter_000003")
    assert f"resume with `spo train --resume {tmp_path}`" in str(stopped)
    assert "--resume auto" in str(Preempted(tmp_path, 0, "SIGTERM", None))
    bench = Preempted(tmp_path, 3, "SIGTERM", tmp_path / "checkpoints" / "iter_000003", rerun="`spo bench` again")
    assert str(bench).endswith("after iteration 3, checkpoint "
                               f"{tmp_path / 'checkpoints' / 'iter_000003'}; to continue, run `spo bench` again")


SIGTERM_AFTER_THE_FIRST_ITERATION = textwrap.dedent("""
    import os, signal, sys
    from spo.train import loop
    step = loop.Trainer.step
    def step_then_sigterm(self, it, progress):
        record = step(self, it, progress)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's preemption, mid-run
        return record
    loop.Trainer.step = step_then_sigterm
    from spo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_preempted_bench_advises_the_same_bench_command_and_that_command_finishes(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--config", "bench-smoke", "--output-dir", str(out), "bench.seeds=[0]",
            "bench.methods={grpo: [algorithm.estimator=grpo]}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stopped = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_THE_FIRST_ITERATION, *args], capture_output=True,
                             text=True, timeout=300, env=env)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert "to continue, run the same `spo bench` command again" in stopped.stderr, stopped.stderr[-3000:]
    assert "spo train --resume" not in stopped.stderr
    run = out / "runs" / "grpo" / "seed0"
    assert [r["iteration"] for r in read_metrics(run)] == [1]
    again = subprocess.run([sys.executable, "-m", "spo.cli", *args], capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2]  # continued from iteration 1, not restarted


def test_a_sigterm_to_a_bench_with_jobs_reaches_its_workers_and_the_same_command_finishes(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--config", "bench-smoke", "--output-dir", str(out), "--jobs", "2", "bench.seeds=[0]",
            "run.iterations=40", "bench.methods={grpo: [algorithm.estimator=grpo], rloo: [algorithm.estimator=rloo]}"]
    runs = [out / "runs" / m / "seed0" for m in ("grpo", "rloo")]
    proc = subprocess.Popen([sys.executable, "-m", "spo.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not all(read_metrics(r) for r in runs if (r / "metrics.jsonl").is_file()) or \
            not all((r / "metrics.jsonl").is_file() for r in runs):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # to the bench's own process only, as `kill PID` does
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "to continue, run the same `spo bench` command again" in err, err[-3000:]
    stopped_at = {r: [m["iteration"] for m in read_metrics(r)] for r in runs}
    assert all(its and its[-1] < 40 and not (r / DONE_FILE).exists() for r, its in stopped_at.items())
    again = subprocess.run([sys.executable, "-m", "spo.cli", *args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for r, its in stopped_at.items():  # continued from the checkpoint each run stopped at, not restarted
        assert [m["iteration"] for m in read_metrics(r)] == list(range(1, 41)) and (r / DONE_FILE).is_file()
