"""Chaos test: `kill -9` spo again and again, start it again each time, and check that
nothing is lost (docs/reliability.md).

    python scripts/chaos.py                     # the long version: 200 kills, about 20 min on 2 cores
    python scripts/chaos.py --kills 30 --jobs 2 --seed 1 --workdir /tmp/chaos

Scenarios (each first runs once uninterrupted, as the reference):
  train       `spo train --config smoke ... --resume auto`: GRPO, 6 iterations, a checkpoint
              every iteration, evaluation at the start, every 2 iterations and at the end
  train-tree  the same with SPO-tree (smoke-spo-tree: per-process replay buffer in the checkpoint)
  bench       `spo bench --config bench-smoke bench.seeds=[0]` (four methods, one seed)
  sft         `spo sft --config sft-arith` shrunk to 20 steps, a checkpoint every 5
  term        `spo train` as `train` (a checkpoint every 3 iterations), stopped with SIGTERM
              instead: it must checkpoint and exit 75 (docs/reliability.md, Preemption)
  ddp-term    the same under `accelerate launch` with 2 processes (DDP over gloo): SIGTERM
              to every process (as a scheduler sends it) or to one of them, at random
  ddp-kill    2-process DDP, SIGKILL to one of the processes: the other must stop with the
              "another process of this run stopped" message, never hang
  fsdp-term, fsdp-kill   the same with FSDP2 (configs/accelerate/fsdp-cpu.yaml)
  (the last five are not in the default `--scenarios`; name them)
Each scenario runs chains: the same command is started, killed with SIGKILL, started
again, ... until it finishes on its own. A kill comes either after a random delay (uniform
over the reference's wall time) or, through SPO_KILL_AT (spo.train.faults), at the n-th
pass of a point where a file is half written (n from 1 to 3). After every kill, every
checkpoint must pass its manifest check and the newest must load (weights, optimizer,
scheduler), and every metrics.jsonl must read. When the chain has finished, its output
must equal the reference's: metrics lines (all but wall-clock times, none missing or
duplicated), episode logs, final weights, bench results, SFT metrics and weights; and no
temporary file may be left. A kill counts as survived when both hold for it. For the
SIGTERM and one-process-killed scenarios, the way the attempt ended must also be as
documented (exit 75 with a checkpoint; 143 when the grace period ran out; the clear
message when a peer died), and it must end within STOP_LIMIT of the signal; the report
lists the endings, the phases hit (from spo's own "received during ..." line) and the
time from the signal to the end.

Children run with one thread (OMP_NUM_THREADS=1), so that runs are bit-for-bit
reproducible and `--jobs 2` chains can share two cores. Prints one line per kill, then
per scenario and in total: kills survived / kills tried. Exit code 0 when all survived.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as transformers_logging

from spo.train.checkpoint import PREFIX, latest_checkpoint, verify_checkpoint
from spo.train.faults import KILL_ENV
from spo.train.run_dir import LOCK_FILE
from spo.train.run_log import METRICS_FILE, read_metrics
from spo.train.sft import EVAL_FILE, METRICS_FILE as SFT_METRICS, partial_path

TIME_KEYS = ("seconds",)
"""Keys holding wall-clock time (any key containing one of these, or starting with time_)."""
TRAIN = ["sampling.max_new_tokens=8", "task.eval_limit=4", "save_every=1", "iterations=6", "eval.every=2",
         "eval.at_start=true", "keep_checkpoints=2"]
SFT = ["max_steps=20", "eval_every=5", "log_every=5", "batch_size=8", "task.options.train_size=200",
       "task.options.eval_size=8", "task.eval_limit=8", "val_size=8", "stop_at_accuracy=null", "max_new_tokens=16"]
TRAIN_POINTS = ("metrics.write", "episodes.write", "checkpoint.write", "checkpoint.staged", "checkpoint.commit")


@dataclass
class Scenario:
    name: str
    argv: Callable[[Path], list[str]]
    """The `spo` command line writing into the given folder (the same for every attempt)."""
    points: tuple[str, ...]
    """Kill points the command passes (spo.train.faults.KILL_POINTS)."""
    compare: Callable[[Path, Path], list[str]]
    """Differences between a reference output folder and a chaos one."""
    action: str = "kill"
    """How a run is interrupted: `kill` (SIGKILL to every process), `term` (SIGTERM, as a
    scheduler preempts: to every process, or to one of a multi-process run's), `kill-one`
    (SIGKILL to one process of a multi-process run)."""
    launch: tuple[str, ...] = ()
    """The launcher before `-m spo.cli` (accelerate launch for multi-process runs)."""


SCENARIOS = {
    "train": Scenario("train", lambda out: ["train", "--config", "smoke", "--output-dir", str(out), "--resume", "auto",
                                            *TRAIN], TRAIN_POINTS, lambda a, b: compare_run(a, b)),
    "train-tree": Scenario("train-tree", lambda out: ["train", "--config", "smoke-spo-tree", "--output-dir", str(out),
                                                      "--resume", "auto", *TRAIN], TRAIN_POINTS,
                           lambda a, b: compare_run(a, b)),
    "bench": Scenario("bench", lambda out: ["bench", "--config", "bench-smoke", "--output-dir", str(out),
                                            "bench.seeds=[0]"],
                      ("metrics.write", "checkpoint.write", "checkpoint.staged", "checkpoint.commit", "bench.done"),
                      lambda a, b: compare_bench(a, b)),
    "sft": Scenario("sft", lambda out: ["sft", "--config", "sft-arith", "--output-dir", str(out), *SFT],
                    ("checkpoint.write", "checkpoint.staged", "checkpoint.commit", "sft.publish"),
                    lambda a, b: compare_sft(a, b)),
}
ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = (sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no")
DDP = (*ACCELERATE, "--multi_gpu")  # 2 CPU processes over gloo (no GPU here)
FSDP = (*ACCELERATE, "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp-cpu.yaml"))
PREEMPT = [*TRAIN, "iterations=4", "eval.at_start=false", "save_every=3", "collective_timeout=120"]
"""Preemption runs: 4 iterations (start-up is most of a smoke run's time), a checkpoint
every 3, so that most SIGTERMs make the run write one of its own; a hung peer is noticed
within 2 minutes."""


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "smoke", "--output-dir", str(out), *PREEMPT, *extra, "--resume", "auto"]


SCENARIOS.update({
    "term": Scenario("term", _train, (), lambda a, b: compare_run(a, b), action="term"),
    "ddp-term": Scenario("ddp-term", _train, (), lambda a, b: compare_run(a, b), action="term", launch=DDP),
    "ddp-kill": Scenario("ddp-kill", _train, (), lambda a, b: compare_run(a, b), action="kill-one", launch=DDP),
    "fsdp-term": Scenario("fsdp-term", lambda out: _train(out, "algorithm.mini_batch_size=16"), (),
                          lambda a, b: compare_run(a, b), action="term", launch=FSDP),
    "fsdp-kill": Scenario("fsdp-kill", lambda out: _train(out, "algorithm.mini_batch_size=16"), (),
                          lambda a, b: compare_run(a, b), action="kill-one", launch=FSDP),
})
transformers_logging.disable_progress_bar()  # the checks below load many checkpoints
SHARE = {"train": 0.45, "train-tree": 0.15, "bench": 0.2, "sft": 0.2,
         "term": 0.34, "ddp-term": 0.17, "ddp-kill": 0.17, "fsdp-term": 0.16, "fsdp-kill": 0.16}
"""How the kills are spread over the scenarios."""
STOP_LIMIT = 300.0
"""Seconds a signalled run may take to end before it counts as hung (then it is SIGKILLed):
preempt_grace (90 s) plus start-up and slack; a dead peer must be noticed far sooner."""


# ---------------------------------------------------------------------------------------
# Running and killing.

def child_env(kill_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"}  # torchrun waits this long for preempted processes
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return env


@dataclass
class Attempt:
    killed: bool
    """Interrupted: died of the kill, or (term, kill-one) ended with an error status after the signal."""
    returncode: int
    seconds: float
    log: str
    phase: str = ""
    """What the run was doing when the signal came (term: its own message; else start-up or training)."""
    stop_seconds: float | None = None
    """From the signal to the end of every process."""
    hung: bool = False


def _pids_of_tag(tag: str) -> list[int]:
    """The training processes (RANK set) started with SPO_CHAOS_TAG=`tag`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"SPO_CHAOS_TAG={tag}".encode() in env and any(e.startswith(b"RANK=") for e in env):
            found.append(int(entry.name))
    return found


def attempt(argv: list[str], log_path: Path, *, kill_after: float | None = None, kill_at: str | None = None,
            action: str = "kill", launch: tuple[str, ...] = (), rng: random.Random | None = None) -> Attempt:
    """Run `spo argv` once (under `launch`); after `kill_after` seconds (if still running)
    interrupt it as `action` says (Scenario.action), or let SPO_KILL_AT=`kill_at` kill it
    from inside."""
    t0 = time.perf_counter()
    tag = f"{os.getpid()}-{log_path}"
    env = {**child_env(kill_at), "SPO_CHAOS_TAG": tag}
    cmd = [*(launch or (sys.executable,)), "-m", "spo.cli", *argv]
    what, stop_seconds, hung = "", None, False
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_path.parent,
                                start_new_session=True)  # `-m` puts the cwd on sys.path
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            what = "start-up" if "loaded " not in log_path.read_text(errors="replace") else "training"
            t_signal = time.perf_counter()
            if action == "kill":
                os.killpg(proc.pid, signal.SIGKILL)
            elif action == "term" and (not launch or (rng or random).random() < 0.5):
                os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: every process of the job
            else:  # term or kill-one of a multi-process run: one of its training processes
                ranks = _pids_of_tag(tag)
                os.kill((rng or random).choice(ranks) if ranks else proc.pid,
                        signal.SIGTERM if action == "term" else signal.SIGKILL)
            try:
                proc.wait(timeout=STOP_LIMIT)
            except subprocess.TimeoutExpired:
                hung = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            stop_seconds = time.perf_counter() - t_signal
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    text = log_path.read_text(errors="replace")
    if action == "kill":
        killed = proc.returncode == -signal.SIGKILL
    else:
        killed = stop_seconds is not None and proc.returncode != 0
    said = re.search(r"received during (.+?): checkpointing", text)
    return Attempt(killed, proc.returncode, time.perf_counter() - t0, text,
                   said.group(1) if said and action == "term" else what, stop_seconds, hung)


# ---------------------------------------------------------------------------------------
# What must hold after every kill, and at the end.

def check_after_kill(folder: Path) -> list[str]:
    """Every checkpoint under `folder` passes its manifest check, the newest of each run
    loads, every metrics.jsonl reads."""
    problems = []
    for root in sorted(p for p in folder.rglob("checkpoints") if p.is_dir()):
        for ckpt in sorted(root.glob(f"{PREFIX}*")):
            why = verify_checkpoint(ckpt)
            if why:
                problems.append(f"{ckpt} is damaged: {why}")
        newest = latest_checkpoint(root.parent)
        if newest is not None:
            try:
                AutoModelForCausalLM.from_pretrained(newest / "model")
                optimizer = ["optimizer.pt"] if (newest / "optimizer.pt").is_file() else sorted(
                    p.name for p in newest.glob("optimizer_rank*.pt"))  # FSDP: one shard per process
                for name in (*optimizer, "scheduler.pt", "rng_rank0.pt"):
                    torch.load(newest / name, weights_only=False)
            except Exception as err:  # anything at all is a failure to report, not to crash on
                problems.append(f"{newest} does not load: {type(err).__name__}: {err}")
    for metrics in folder.rglob(METRICS_FILE):
        try:
            read_metrics(metrics.parent, kind=None)
        except ValueError as err:
            problems.append(f"{metrics} does not read: {err}")
    return problems


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items()
                if not k.startswith("time_") and not any(t in k for t in TIME_KEYS)}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two JSON-like values differ (floats to a relative 1e-6)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())} in one only"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        close = abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b)) or (math.isnan(a) and math.isnan(b))
        return [] if close else [f"{where}: {a} vs {b}"]
    return [] if a == b else [f"{where}: {a!r:.80} vs {b!r:.80}"]


def same_weights(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return [f"{b}: other tensors than {a}"]
    return [f"{b}: tensor {k} differs" for k in ta if not torch.equal(ta[k], tb[k])]


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders a finished command must not leave behind, and locks it
    must have released."""
    found = [f"left behind: {p}" for p in folder.rglob("*")
             if p.name.startswith((".tmp-", ".old-", ".del-")) or p.name.endswith(".tmp") or ".tmp-" in p.name
             or p.name.endswith(".partial")]
    found += [f"lock not released: {p}" for p in folder.rglob(LOCK_FILE) if p.read_text().strip()]
    return found


def compare_run(ref: Path, out: Path) -> list[str]:
    diffs = differences(_timeless(read_metrics(ref, kind=None)), _timeless(read_metrics(out, kind=None)), "metrics")
    episodes_ref, episodes_out = sorted((ref / "episodes").glob("*")), sorted((out / "episodes").glob("*"))
    if [p.name for p in episodes_ref] != [p.name for p in episodes_out]:
        diffs.append(f"episode logs {[p.name for p in episodes_out]} vs {[p.name for p in episodes_ref]}")
    for a, b in zip(episodes_ref, episodes_out):
        rows_a = [json.loads(x) for x in a.read_text().splitlines()]
        diffs += differences(rows_a, [json.loads(x) for x in b.read_text().splitlines()], f"episodes/{b.name}")
    last_ref, last_out = latest_checkpoint(ref), latest_checkpoint(out)
    if last_out is None or last_ref.name != last_out.name:
        diffs.append(f"latest checkpoint {last_out} vs {last_ref}")
    else:
        diffs += same_weights(last_ref / "model" / "model.safetensors", last_out / "model" / "model.safetensors")
    return diffs + leftovers(out)


def compare_bench(ref: Path, out: Path) -> list[str]:
    results = [json.loads((d / "results.json").read_text()) if (d / "results.json").exists() else None
               for d in (ref, out)]
    diffs = differences(_timeless(results[0]), _timeless(results[1]), "results.json")
    for run in sorted((ref / "runs").glob("*/*")):
        twin = out / run.relative_to(ref)
        if not (twin / "bench_done.json").is_file():
            diffs.append(f"{twin}: not finished")
            continue
        diffs += differences(_timeless(read_metrics(run, kind=None)), _timeless(read_metrics(twin, kind=None)),
                             str(twin.relative_to(out)))
    return diffs + leftovers(out)


def compare_sft(ref: Path, out: Path) -> list[str]:
    if not (out / SFT_METRICS).is_file():
        return [f"{out}: no {SFT_METRICS}"]
    diffs = differences(_timeless(json.loads((ref / SFT_METRICS).read_text())),
                        _timeless(json.loads((out / SFT_METRICS).read_text())), SFT_METRICS)
    if (ref / EVAL_FILE).read_text() != (out / EVAL_FILE).read_text():
        diffs.append(f"{EVAL_FILE} differs")
    diffs += same_weights(ref / "model.safetensors", out / "model.safetensors")
    if partial_path(out).exists():
        diffs.append(f"left behind: {partial_path(out)}")
    return diffs + leftovers(out.parent)


# ---------------------------------------------------------------------------------------
# Chains of kills.

@dataclass
class Tally:
    tried: int = 0
    survived: int = 0
    kinds: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    """term / kill-one: how each interrupted attempt ended (exit status, message seen)."""
    stop_seconds: list[float] = field(default_factory=list)
    """term / kill-one: from the signal to the end of every process."""

    def add(self, other: Tally) -> None:
        self.tried += other.tried
        self.survived += other.survived
        self.outcomes.update(other.outcomes)
        self.stop_seconds += other.stop_seconds
        self.kinds.update(other.kinds)
        self.failures += other.failures


_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def reference(scenario: Scenario, work: Path) -> tuple[Path, float]:
    """The scenario's uninterrupted output folder (made once per work folder) and its wall time."""
    folder = work / scenario.name / "reference"
    out = folder / "out"
    timing = folder / "seconds.json"
    if not timing.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        result = attempt(scenario.argv(out), folder / "log.txt", launch=scenario.launch)
        if result.returncode != 0:
            raise SystemExit(f"{scenario.name}: the reference run failed:\n{result.log[-3000:]}")
        timing.write_text(json.dumps(result.seconds))
    return out, json.loads(timing.read_text())


def random_plan(scenario: Scenario, ref_seconds: float, rng: random.Random) -> dict[str, Any]:
    """A kill after a random delay, or at the n-th pass of a random kill point (n in 1..3)."""
    if rng.random() < 0.5 or not scenario.points:
        return {"kill_after": rng.uniform(0.0, ref_seconds)}
    return {"kill_at": f"{rng.choice(scenario.points)}:{rng.randint(1, 3)}"}


def run_until_done(scenario: Scenario, ref: Path, ref_seconds: float, folder: Path, kills: int,
                   rng: random.Random, plans: list[dict[str, Any]] | None = None) -> Tally:
    """In a fresh folder: start the scenario's command, kill it, start it again, ... (at most
    `kills` kills; `plans`: the attempts' kills in order, instead of random ones), until it
    finishes on its own; then compare with the reference."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "out"
    tally, kill_problems, n = Tally(), [], 0
    while True:
        plan: dict[str, Any] = {}
        if plans is not None:
            plan = plans[n] if n < len(plans) else {}
        elif tally.tried < kills:
            plan = random_plan(scenario, ref_seconds, rng)
        result = attempt(scenario.argv(out), folder / f"attempt{n:03d}.log", **plan, action=scenario.action,
                         launch=scenario.launch, rng=rng)
        n += 1
        if result.hung:
            tally.failures.append(f"{folder}: attempt {n} did not end within {STOP_LIMIT:.0f} s of the signal")
        if not result.killed:
            if result.returncode != 0:
                tally.failures.append(f"{folder}: attempt {n} exited {result.returncode}: {result.log[-2000:]}")
                return tally
            break  # finished on its own (also when the kill would have come later)
        kind = plan.get("kill_at", "").split(":")[0] or (
            "random, after start-up" if "loaded " in result.log else "random, during start-up")
        problems = check_after_kill(folder)
        if scenario.action != "kill":
            kind = result.phase
            outcome = interruption_outcome(scenario, result)
            tally.outcomes[outcome] += 1
            tally.stop_seconds.append(result.stop_seconds or 0.0)
            if not outcome.startswith("ok"):
                problems.append(f"attempt {n}: {outcome}")
        tally.tried += 1
        tally.kinds[kind] += 1
        kill_problems.append(problems)
        say(f"[{scenario.name}] {folder.parent.name}/{folder.name} kill {tally.tried}: {kind} after "
            f"{result.seconds:.1f} s" + (f"  PROBLEMS: {problems}" if problems else ""))
    diffs = scenario.compare(ref, out)
    tally.survived = sum(not problems and not diffs for problems in kill_problems)
    tally.failures += [f"{folder}: {p}" for problems in kill_problems for p in problems]
    tally.failures += [f"{folder}: {d}" for d in diffs]
    say(f"[{scenario.name}] {folder.parent.name}/{folder.name} finished after {n} attempts, {tally.tried} kills: "
        + ("the same as the uninterrupted run" if not diffs else f"{len(diffs)} differences, e.g. {diffs[:3]}"))
    with _print_lock, (folder.parents[1] / "chains.jsonl").open("a") as f:  # what finished, should the run be cut short
        f.write(json.dumps({"scenario": scenario.name, "folder": str(folder), "tried": tally.tried,
                            "survived": tally.survived, "kinds": tally.kinds, "outcomes": tally.outcomes,
                            "stop_seconds": tally.stop_seconds, "failures": tally.failures[:5]}) + "\n")
    return tally


def interruption_outcome(scenario: Scenario, result: Attempt) -> str:
    """How a SIGTERM'd or half-killed run ended: "ok: ..." when as documented
    (docs/reliability.md), else what went wrong."""
    log, code = result.log, result.returncode
    if "run folder: " in log:  # printed once training and the final evaluation are over
        return "ok: the signal came after the run had finished (while exiting)"
    if scenario.action == "term":
        if "preempt_grace" in log and "ran out" in log:
            return "ok: grace ran out, exit 143"
        if "preempted (" in log and code == 75:
            return "ok: checkpointed, exit 75"
        # under accelerate launch: each process exits 75; the launcher reports that as its own
        # failure (1), or exits 143 when the SIGTERM reached it too
        if "preempted (" in log and scenario.launch and code in (1, 143):
            return f"ok: checkpointed, each process exit 75, launcher exit {code}"
        if result.phase == "start-up" and "loaded " not in log:  # before spo installed its handlers
            return "ok: stopped by the signal during start-up (no handler yet)"
        return f"unexpected end (exit {code})"
    if "another process of this run stopped" in log:
        return "ok: the other process stopped with the message"
    if result.phase == "start-up":
        return "ok: killed during start-up (the launcher's report)"
    done = re.findall(r"iter (\d+)/(\d+) ", log)
    if done and done[-1][0] == done[-1][1] and f"eval @ iter {done[-1][1]}:" in log:
        return "ok: killed after the run had finished (exiting)"
    return f"no clear message (exit {code})"


def run_chain(scenario: Scenario, ref: Path, ref_seconds: float, folder: Path, kills: int, rng: random.Random
              ) -> Tally:
    """`run_until_done` in fresh folders until `kills` kills were made."""
    tally = Tally()
    for i in range(kills + 5):
        if tally.tried >= kills or tally.failures:  # a failing command is reported, not hammered
            break
        tally.add(run_until_done(scenario, ref, ref_seconds, folder / f"run{i:02d}", kills - tally.tried, rng))
    return tally


def run(kills: int, scenarios: list[str], work: Path, jobs: int = 1, seed: int = 0, chain_kills: int = 8
        ) -> dict[str, Tally]:
    """Spread `kills` over `scenarios` (by SHARE), in chains of at most `chain_kills`."""
    work.mkdir(parents=True, exist_ok=True)
    share = sum(SHARE[s] for s in scenarios)
    budget = {s: max(1, round(kills * SHARE[s] / share)) for s in scenarios}
    refs = {}
    with ThreadPoolExecutor(jobs) as pool:
        for name, result in zip(scenarios, pool.map(lambda s: reference(SCENARIOS[s], work), scenarios)):
            refs[name] = result
            say(f"[{name}] reference run: {result[1]:.1f} s")
        jobs_list = []
        for name in scenarios:
            left, c = budget[name], 0
            while left > 0:
                k = min(chain_kills, left)
                jobs_list.append((name, c, k))
                left, c = left - k, c + 1
        jobs_list.sort(key=lambda job: job[1])  # round-robin over the scenarios: a run cut short has some of each
        rngs = {(name, c): random.Random(f"{seed}-{name}-{c}") for name, c, _ in jobs_list}
        results = pool.map(lambda j: (j[0], run_chain(SCENARIOS[j[0]], refs[j[0]][0], refs[j[0]][1],
                                                      work / j[0] / f"chain{j[1]:02d}", j[2], rngs[j[0], j[1]])),
                           jobs_list)
        tallies = {name: Tally() for name in scenarios}
        for name, tally in results:
            tallies[name].add(tally)
    return tallies


def report(tallies: dict[str, Tally], seconds: float) -> str:
    lines = []
    total = Tally()
    for name, t in tallies.items():
        total.add(t)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(t.kinds.items()))
        lines.append(f"{name}: kills survived / kills tried: {t.survived} / {t.tried} ({kinds})")
        if t.outcomes:
            lines.append(f"    endings: {', '.join(f'{k} {v}' for k, v in sorted(t.outcomes.items()))}; signal to "
                         f"end: median {sorted(t.stop_seconds)[len(t.stop_seconds) // 2]:.1f} s, "
                         f"max {max(t.stop_seconds):.1f} s")
    lines.append(f"total: kills survived / kills tried: {total.survived} / {total.tried} in {seconds / 60:.1f} min")
    lines += [f"FAILURE {f}" for f in total.failures[:50]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="kills in total, spread over the scenarios")
    parser.add_argument("--scenarios", default="train,train-tree,bench,sft", help=f"comma-separated, of {list(SCENARIOS)}")
    parser.add_argument("--jobs", type=int, default=2, help="chains run side by side")
    parser.add_argument("--chain-kills", type=int, default=8, help="kills before a chain may finish")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("chaos-work"))
    parser.add_argument("--report-only", action="store_true",
                        help="only report the chains that finished in --workdir (its */chains.jsonl), e.g. of a run "
                             "stopped early")
    args = parser.parse_args()
    if args.report_only:
        tallies: dict[str, Tally] = {}
        found = [args.workdir / "chains.jsonl", *sorted(args.workdir.glob("*/chains.jsonl"))]
        for line in (line for path in found if path.is_file() for line in path.read_text().splitlines()):
            row = json.loads(line)
            tallies.setdefault(row["scenario"], Tally()).add(Tally(
                row["tried"], row["survived"], Counter(row["kinds"]), row["failures"], Counter(row["outcomes"]),
                row["stop_seconds"]))
        print(report(tallies, 0.0))
        return 0
    t0 = time.perf_counter()
    tallies = run(args.kills, args.scenarios.split(","), args.workdir, args.jobs, args.seed, args.chain_kills)
    print(report(tallies, time.perf_counter() - t0))
    return 0 if all(t.survived == t.tried and not t.failures for t in tallies.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
