"""Verified checkpoints, run folders (refusal, --resume auto, the lock) and a full disk
(docs/reliability.md). Smoke runs through `spo.cli.main`, a few seconds each."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_metrics

import spo.cache
from spo.cli import main
from spo.train import checkpoint as ckpt
from spo.train import run_log
from spo.train.run_dir import LOCK_FILE, RunFolderError, RunLock
from spo.train.run_log import read_metrics

FAST = ["sampling.max_new_tokens=8", "task.eval_limit=4", "save_every=1", "eval.every=2"]


def run_train(out: Path, *args: str) -> int:
    return main(["train", "--config", "smoke", "--output-dir", str(out), *FAST, *args])


def resume(out: Path, *args: str) -> int:
    return main(["train", "--config", "smoke", "--output-dir", str(out), "--resume", "auto", *FAST, *args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 3-iteration run, keeping every checkpoint."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert run_train(out, "iterations=3", "keep_checkpoints=5") == 0
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def same_run(a: Path, b: Path) -> None:
    assert_same_metrics(read_metrics(a), read_metrics(b))
    assert [(r["iteration"], r["accuracy"]) for r in read_metrics(a, "eval")] == [
        (r["iteration"], r["accuracy"]) for r in read_metrics(b, "eval")]
    assert sorted(p.name for p in (a / "episodes").iterdir()) == sorted(p.name for p in (b / "episodes").iterdir())


# ---------------------------------------------------------------------------------------
# Verified checkpoints.

def test_every_file_of_a_checkpoint_is_in_its_manifest(finished):
    latest = ckpt.latest_checkpoint(finished)
    files = json.loads((latest / ckpt.MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(latest).as_posix() for p in latest.rglob("*") if p.is_file()} - {ckpt.MANIFEST}
    assert set(files) == on_disk and "model/model.safetensors" in files and ckpt.STATE_FILE in files
    assert ckpt.verify_checkpoint(latest) is None
    state = ckpt.read_state(latest)
    assert state["metrics_bytes"] < (finished / "metrics.jsonl").stat().st_size  # the final eval came after


def test_algorithm_files_are_in_the_manifest(tmp_path):
    staged = tmp_path / "staged"
    (staged / ckpt.ALGORITHM_DIR / "critic").mkdir(parents=True)
    (staged / ckpt.ALGORITHM_DIR / "critic" / "model.safetensors").write_bytes(b"x" * 100)
    ckpt.write_state(staged, {"iteration": 1})
    final = ckpt.commit_checkpoint(tmp_path, staged, 1, keep=2)
    assert "algorithm/critic/model.safetensors" in json.loads((final / ckpt.MANIFEST).read_text())["files"]
    (final / "algorithm" / "critic" / "model.safetensors").write_bytes(b"y" * 100)  # same size, other bytes
    assert "sha256" in ckpt.verify_checkpoint(final)


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, caplog, damage):
    run = copy_run(finished, tmp_path / "run")
    last = run / "checkpoints" / "iter_000003"
    if damage == "truncate":
        weights = last / "model" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "delete":
        (last / "optimizer.pt").unlink()
    else:
        (last / ckpt.MANIFEST).write_text("{not json")
    assert ckpt.latest_checkpoint(run).name == "iter_000002"
    assert "is damaged" in caplog.text
    assert main(["train", "--resume", str(run)]) == 0  # continues from iteration 2, with a warning
    assert (run / "checkpoints" / "damaged-iter_000003").is_dir()  # set aside, kept for inspection
    assert ckpt.verify_checkpoint(run / "checkpoints" / "iter_000003") is None  # saved again, sound
    same_run(finished, run)


def test_keep_checkpoints_never_deletes_the_last_good_one(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"

    def commit(iteration, keep):
        staged = ckpt.staging_dir(root, iteration)
        ckpt.write_state(staged, {"iteration": iteration})
        (staged / "weights.bin").write_bytes(b"w" * iteration)
        return ckpt.commit_checkpoint(root, staged, iteration, keep)

    commit(1, keep=1)
    real = ckpt.write_manifest

    def wrong_sizes(folder):  # the new checkpoint fails its own check: nothing older may go
        real(folder)
        manifest = json.loads((folder / ckpt.MANIFEST).read_text())
        manifest["files"]["weights.bin"]["size"] += 1
        (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))

    monkeypatch.setattr(ckpt, "write_manifest", wrong_sizes)
    commit(2, keep=1)
    assert (root / "iter_000001").is_dir()
    monkeypatch.setattr(ckpt, "write_manifest", real)
    commit(3, keep=2)  # keeps iter_3 and the newest GOOD older one (iter_1), drops the damaged iter_2
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_000001", "iter_000003"]
    commit(4, keep=1)
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_000004"]


def test_a_kill_between_moving_a_checkpoint_aside_and_replacing_it_loses_nothing(tmp_path):
    root = tmp_path / "checkpoints"
    staged = ckpt.staging_dir(root, 5)
    ckpt.write_state(staged, {"iteration": 5})
    ckpt.commit_checkpoint(root, staged, 5, keep=1)
    os.replace(root / "iter_000005", root / ".old-iter_000005")  # as commit_checkpoint does, then killed
    assert ckpt.latest_checkpoint(tmp_path).name == ".old-iter_000005"


# ---------------------------------------------------------------------------------------
# Run folders.

def test_an_existing_run_folder_is_refused_without_resume(finished, capsys):
    before = (finished / "metrics.jsonl").read_bytes()
    assert run_train(finished, "iterations=3") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "Traceback" not in err
    assert (finished / "metrics.jsonl").read_bytes() == before


def test_resume_auto_starts_continues_and_finishes_once(finished, tmp_path):
    out = tmp_path / "auto"
    assert resume(out, "iterations=3", "keep_checkpoints=5") == 0  # nothing there: a fresh run
    same_run(finished, out)
    logged = (out / "metrics.jsonl").read_bytes()
    assert resume(out, "iterations=3", "keep_checkpoints=5") == 0  # finished: nothing is done again
    assert (out / "metrics.jsonl").read_bytes() == logged


def test_resume_auto_restarts_a_run_killed_before_its_first_checkpoint(finished, tmp_path):
    out = copy_run(finished, tmp_path / "early")
    shutil.rmtree(out / "checkpoints")  # as if killed during iteration 1: logs, but no checkpoint
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text().splitlines()[0][:40])
    assert resume(out, "iterations=3", "keep_checkpoints=5") == 0
    same_run(finished, out)


def test_resume_auto_needs_an_output_dir(capsys):
    assert main(["train", "--config", "smoke", "--resume", "auto"]) == 2
    assert "--output-dir" in capsys.readouterr().err


def test_resume_after_the_final_checkpoint_only_evaluates(finished, tmp_path):
    out = copy_run(finished, tmp_path / "final")
    state = ckpt.read_state(ckpt.latest_checkpoint(out))
    with (out / "metrics.jsonl").open("r+b") as f:  # killed during the final evaluation
        f.truncate(state["metrics_bytes"])
    assert resume(out, "iterations=3", "keep_checkpoints=5") == 0
    assert [r.get("kind") for r in read_metrics(out, None)] == [r.get("kind") for r in read_metrics(finished, None)]
    same_run(finished, out)


HOLD_LOCK = ("import sys, time; from pathlib import Path; from spo.train.run_dir import RunLock; "
             "lock = RunLock(Path(sys.argv[1])).__enter__(); print('locked', flush=True); time.sleep(120)")


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path, capsys, caplog):
    out = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_train(out, "iterations=1") == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err
        with pytest.raises(RunFolderError, match="in use"):
            RunLock(out).__enter__()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the holder dies without releasing anything
        holder.wait()
    assert str(holder.pid) in (out / LOCK_FILE).read_text()  # the stale lock file is still there
    assert run_train(out, "iterations=1", "eval.at_end=false") == 0
    assert f"lock of process {holder.pid}" in caplog.text and "is gone" in caplog.text
    assert (out / LOCK_FILE).read_text() == ""  # released cleanly


# ---------------------------------------------------------------------------------------
# A full disk.

def enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_writing_a_checkpoint(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "full"
    real = torch.save

    def save(obj, path, *args, **kwargs):
        if "iter_000002" in str(path) and str(path).endswith("optimizer.pt"):
            Path(path).write_bytes(b"half")
            raise enospc(path)
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert run_train(out, "iterations=3", "keep_checkpoints=5") == 1
    err = capsys.readouterr().err
    assert "disk full while writing the checkpoint of iteration 2" in err and "iter_000001 is intact" in err
    assert "Traceback" not in err
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the partial copy is removed, freeing its space
    assert ckpt.latest_checkpoint(out).name == "iter_000001"
    monkeypatch.setattr(torch, "save", real)
    assert resume(out, "iterations=3", "keep_checkpoints=5") == 0
    same_run(finished, out)


@pytest.mark.parametrize("target", ["metrics", "episodes"])
def test_disk_full_while_writing_a_log(finished, tmp_path, monkeypatch, capsys, target):
    out = tmp_path / "full"
    real = run_log._write

    def write(path, data, mode):
        if (target == "metrics" and path.name == "metrics.jsonl" and b'"iteration": 2,' in data) or (
                target == "episodes" and "iter_000002" in path.name):
            real(path, data[: len(data) // 2], mode)  # half of it made it to the disk
            raise enospc(path)
        return real(path, data, mode)

    monkeypatch.setattr(run_log, "_write", write)
    assert run_train(out, "iterations=3", "keep_checkpoints=5") == 1
    err = capsys.readouterr().err
    assert "disk full while writing" in err and ("metrics.jsonl" in err or "episode log" in err)
    assert ckpt.latest_checkpoint(out).name == "iter_000001"
    monkeypatch.setattr(run_log, "_write", real)
    assert resume(out, "iterations=3", "keep_checkpoints=5") == 0
    same_run(finished, out)


# ---------------------------------------------------------------------------------------
# Graders under hostile answers.

def test_the_grader_worker_runs_under_a_memory_cap(monkeypatch):
    from spo.tasks import grader

    monkeypatch.setenv("SPO_GRADER_MEMORY_MB", "300")
    from spo.tasks.workers import JsonLineWorker

    worker = JsonLineWorker("spo.tasks._grader_worker")
    try:
        limits = Path(f"/proc/{worker.proc.pid}/limits").read_text()
        assert [line.split()[3] for line in limits.splitlines() if line.startswith("Max address space")] == [
            str(300 << 20)]
        answer = worker.request({"pred": "2^{2^{40}}", "gold": "1", "timeout_s": 2.0}, timeout_s=2.0)
        assert answer in ({"equal": False}, None)  # wrong, or overran and was killed
        assert grader.math_answers_equal("0.5", "\\frac{1}{2}", timeout_s=5) is True  # grading goes on
    finally:
        worker.close()


# ---------------------------------------------------------------------------------------
# Rough edges: what a new user runs into first.

def test_output_dir_on_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert run_train(out) == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("resume_flag", [[], ["--resume", "auto"]])
def test_a_failed_start_removes_the_folder_it_created(tmp_path, resume_flag):
    out = tmp_path / "new" / "run"
    assert run_train(out, "model.name_or_path=./no-such-model", *resume_flag) == 2
    assert not (tmp_path / "new").exists()  # and the parent it created
    kept = tmp_path / "kept"
    (kept / "notes").mkdir(parents=True)  # a folder the user made: only spo's lock file goes
    assert run_train(kept, "model.name_or_path=./no-such-model", *resume_flag) == 2
    assert [p.name for p in kept.iterdir()] == ["notes"]


def test_eval_inspect_plot_train_on_a_folder_that_is_no_run_say_so(tmp_path, capsys):
    other, missing = tmp_path / "other", tmp_path / "missing"
    other.mkdir()
    (other / "a.txt").write_text("x")
    for argv, expected in [(["eval", str(other)], "neither a run folder (no config.yaml)"),
                           (["inspect", str(other)], f"{other}: not a run folder (no config.yaml there)"),
                           (["plot", str(other)], f"{other}: not a run folder (no metrics.jsonl there)"),
                           (["train", "--resume", str(other)], f"--resume {other}: not a run folder (no config.yaml"),
                           (["inspect", str(missing)], f"{missing}: no such folder"),
                           (["plot", str(missing)], f"{missing}: no such folder"),
                           (["train", "--resume", str(missing)], f"--resume {missing}: no such folder")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)
    assert not missing.exists() and [p.name for p in other.iterdir()] == ["a.txt"]  # nothing made or changed


def test_the_api_resuming_a_folder_that_is_no_run_says_so(tmp_path):
    import spo

    from spo.train.run_dir import RunFolderError

    (tmp_path / "other").mkdir()
    with pytest.raises(RunFolderError, match="--resume .*other: not a run folder"):
        spo.train(spo.make_config("smoke"), resume=str(tmp_path / "other"))


def test_a_hub_id_without_network_fails_in_seconds(monkeypatch, tmp_path):
    import socket
    import time

    import huggingface_hub.constants as hub

    from spo import models
    from spo.models import loading

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket, "create_connection", no_network)
    loading._hub_reachable.cache_clear()
    t0 = time.perf_counter()
    with pytest.raises(models.ModelNotFoundError, match="cannot be reached.*--local-dir"):
        models.load_tokenizer("nobody-xyz/no-model")
    assert time.perf_counter() - t0 < 5
    # in the cache: its snapshot folder, read without the network
    snapshot = tmp_path / "hub" / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cached" / "refs" / "main").write_text("abc123")
    assert models.resolve_model_path("org/cached") == str(snapshot)
    # with the hub reachable, a hub id goes to from_pretrained unchanged (users with the hub)
    monkeypatch.setattr(loading, "_hub_reachable", lambda endpoint: True)
    assert models.resolve_model_path("org/other") == "org/other"


# ---------------------------------------------------------------------------------------
# Durability: fsync before the manifest, and a simulated power loss.

def test_every_file_is_on_the_disk_before_the_manifest_and_the_rename_after(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    staged = ckpt.staging_dir(root, 1)
    (staged / "model").mkdir()
    (staged / "model" / "model.safetensors").write_bytes(b"w" * 10)
    ckpt.write_state(staged, {"iteration": 1})
    synced, events = [], []
    real = ckpt.fsync_path

    def record(path):
        path = Path(path)
        if path.is_file() and path.name != ckpt.MANIFEST:  # data first: no manifest may vouch for it yet
            assert not (path.parent / ckpt.MANIFEST).exists() and not (staged / ckpt.MANIFEST).exists(), path
        if path == root:
            events.append(("root", (root / "iter_000001").is_dir()))
        synced.append(path)
        real(path)

    monkeypatch.setattr(ckpt, "fsync_path", record)
    monkeypatch.setattr(spo.cache, "fsync_path", record)  # write_text_atomic's (`latest`)
    final = ckpt.commit_checkpoint(root, staged, 1, keep=2)
    names = {p.relative_to(staged).as_posix() for p in synced if staged in p.parents}
    assert {"model/model.safetensors", ckpt.STATE_FILE, "model", ckpt.MANIFEST} <= names
    assert staged in synced  # the folder's own entries
    assert ("root", True) in events  # the rename into place, flushed
    assert (root / ckpt.LATEST).read_text().strip() == final.name and synced.count(root) == 2  # and `latest`


@pytest.mark.parametrize("loss", ["zeroed", "truncated", "manifest zeroed"])
def test_a_power_loss_during_the_last_checkpoint_falls_back_and_resumes_equal(finished, tmp_path, loss):
    run = copy_run(finished, tmp_path / "run")
    last, previous = run / "checkpoints" / "iter_000003", run / "checkpoints" / "iter_000002"
    # What a power loss leaves of writes that had not reached the disk: the new checkpoint's
    # files with their sizes but zeros (ext4's delayed allocation), or cut short; and the
    # tail of metrics.jsonl written after the previous checkpoint, zeroed.
    targets = [last / ckpt.MANIFEST] if loss == "manifest zeroed" else [
        last / "model" / "model.safetensors", last / "optimizer.pt", last / ckpt.STATE_FILE]
    for f in targets:
        size = f.stat().st_size
        f.write_bytes(b"" if loss == "truncated" else b"\0" * size)
    kept = ckpt.read_state(previous)["metrics_bytes"]
    metrics = run / "metrics.jsonl"
    data = metrics.read_bytes()
    metrics.write_bytes(data[:kept] + b"\0" * (len(data) - kept))
    assert ckpt.latest_checkpoint(run) == previous
    assert resume(run, "iterations=3", "keep_checkpoints=5") == 0
    assert (run / "checkpoints" / "damaged-iter_000003").is_dir()
    same_run(finished, run)


# ---------------------------------------------------------------------------------------
# Resume that notices a changed config.

def test_resume_with_a_results_changing_config_is_refused_unless_allowed(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    ckpt.latest_checkpoint(run)
    shutil.rmtree(run / "checkpoints" / "iter_000003")  # as if killed after iteration 2
    before = (run / "metrics.jsonl").read_bytes()
    assert resume(run, "iterations=3", "keep_checkpoints=5", "algorithm.kl_coef=0.05", "seed=1") == 2
    err = capsys.readouterr().err
    assert "algorithm.kl_coef: 0.01 in the run, 0.05 now" in err and "seed: 0 in the run, 1 now" in err
    assert "--allow-config-change" in err and "Traceback" not in err
    assert (run / "metrics.jsonl").read_bytes() == before and not (run / "config_changes.jsonl").exists()
    assert main(["train", "--resume", str(run), "optim.lr=1e-3"]) == 2  # `--resume RUN overrides` too
    assert "optim.lr" in capsys.readouterr().err
    assert resume(run, "iterations=3", "keep_checkpoints=5", "algorithm.kl_coef=0.05", "--allow-config-change") == 0
    line = json.loads((run / "config_changes.jsonl").read_text())
    assert line["changes"] == {"algorithm.kl_coef": {"run": 0.01, "now": 0.05}}
    assert line["allowed"] == "--allow-config-change (algorithm.kl_coef)" and line["resumed_from_iteration"] == 2
    assert "kl_coef: 0.05" in (run / "config.yaml").read_text()


def test_resume_with_harmless_changes_continues_and_records_them(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    assert main(["train", "--resume", str(run), "iterations=4", "eval.every=1"]) == 0
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3, 4]
    line = json.loads((run / "config_changes.jsonl").read_text())
    assert line["allowed"] == "harmless" and set(line["changes"]) == {"iterations", "eval.every"}
    assert main(["train", "--resume", str(run)]) == 0  # config.yaml now says 4: nothing left to train
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3, 4]


def test_iterations_change_results_when_the_lr_schedule_spans_the_run():
    from spo.config import build_config
    from spo.train.resume_check import config_changes, results_changing

    for schedule, warmup, changing in [("constant", 0.0, []), ("linear", 0.0, ["iterations"]),
                                       ("constant", 0.1, ["iterations"])]:
        saved = build_config({"optim": {"schedule": schedule, "warmup_ratio": warmup}})
        longer = build_config({"optim": {"schedule": schedule, "warmup_ratio": warmup}, "iterations": 20})
        assert results_changing(config_changes(saved, longer), saved) == changing


def test_evaluation_options_are_harmless_they_do_not_change_training(finished, tmp_path):
    out = tmp_path / "evals"
    assert run_train(out, "iterations=3", "keep_checkpoints=5", "eval.every=1", "eval.samples=2",
                     "eval.temperature=1.0", "task.eval_limit=2", "eval.at_start=true") == 0
    assert_same_metrics(read_metrics(finished), read_metrics(out))  # the training lines
    from safetensors.torch import load_file

    ta, tb = (load_file(str(ckpt.latest_checkpoint(r) / "model" / "model.safetensors")) for r in (finished, out))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
