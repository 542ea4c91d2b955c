"""End-to-end training on the smoke preset: run folder, checkpoints, resume, NaN guard."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_metrics, resume_after_crash

from spo.cli import main
from spo.train.checkpoint import latest_checkpoint
from spo.train.run_log import read_metrics

FAST = ["sampling.max_new_tokens=8", "task.eval_limit=4"]
EPISODE_KEYS = {"prompt_ids", "response_ids", "logprobs", "reward", "advantages", "loss_mask"}


def run_train(out: Path, *overrides: str) -> int:
    return main(["train", "--config", "smoke", "--output-dir", str(out), *FAST, *overrides])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert run_train(out, "iterations=3", "save_every=1", "keep_checkpoints=5") == 0
    return out


def test_run_folder_has_everything(smoke_run):
    assert (smoke_run / "config.yaml").is_file()
    assert list((smoke_run / "tensorboard").iterdir())
    train_rows = read_metrics(smoke_run)
    assert [r["iteration"] for r in train_rows] == [1, 2, 3]
    for key in ["reward_mean", "accuracy", "policy_loss", "kl", "clip_frac", "entropy", "tokens_generated",
                "time_sample", "time_score", "time_estimate", "time_optimize", "time_sync"]:
        assert all(key in r for r in train_rows), key
    assert read_metrics(smoke_run, kind="eval")[-1]["iteration"] == 3
    assert latest_checkpoint(smoke_run).name == "iter_000003"


def test_episode_log_fields(smoke_run):
    lines = (smoke_run / "episodes" / "iter_000001.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 4  # prompts_per_iteration x group_size
    for line in lines:
        ep = json.loads(line)
        assert EPISODE_KEYS <= set(ep)
        n = len(ep["response_ids"])
        assert 1 <= n <= 8
        assert len(ep["logprobs"]) == len(ep["advantages"]) == len(ep["loss_mask"]) == n
        assert all(lp <= 0 for lp in ep["logprobs"])
        assert ep["reward"] in (0.0, 1.0)


def test_checkpoint_loads_with_plain_transformers(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = latest_checkpoint(smoke_run) / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("1 + 1 =", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_resume_gives_the_same_metrics(smoke_run, tmp_path):
    # as if the process had died right after iteration 2's checkpoint
    crashed = resume_after_crash(smoke_run, tmp_path, last_good=2)
    assert_same_metrics(read_metrics(smoke_run), read_metrics(crashed))
    ep_full = (smoke_run / "episodes" / "iter_000003.jsonl").read_text()
    ep_resumed = (crashed / "episodes" / "iter_000003.jsonl").read_text()
    assert [json.loads(x)["response_ids"] for x in ep_full.splitlines()] == [
        json.loads(x)["response_ids"] for x in ep_resumed.splitlines()
    ]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("iterations: 1\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import spo.optimize.losses as losses

    real = losses.ppo_clip_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # healthy in iteration 1 (2 mini x 2 micro-batches), NaN after
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] > 4 else loss), stats

    monkeypatch.setattr(losses, "ppo_clip_loss", poisoned)
    assert run_train(tmp_path, "iterations=3", "save_every=1") == 2  # bad input: exit 2, no traceback
    err = capsys.readouterr().err
    assert "spo: non-finite loss: iteration 2: loss is nan" in err
    assert "last good checkpoint:" in err and "iter_000001" in err and "Traceback" not in err
    good = latest_checkpoint(tmp_path)
    assert good.name == "iter_000001"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(good / "model")  # the last good one still loads
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1]


def test_two_process_accelerate_run(tmp_path):
    # `--multi_gpu` makes accelerate start 2 processes through torchrun; with no GPU each
    # runs on the CPU and they talk over gloo. (`--cpu --num_processes 2` starts only one.)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "spo.cli", "train",
           "--config", "smoke", "--output-dir", str(out), *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out)
    assert [r["episodes"] for r in rows] == [16, 16]  # the same global batch as one process
    lines = (out / "episodes" / "iter_000001.jsonl").read_text().splitlines()
    assert len(lines) == 16
    assert (latest_checkpoint(out) / "rng_rank1.pt").is_file()  # a second process really ran


def test_spo_eval_on_a_run_folder(smoke_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(smoke_run), "--samples", "3", "--temperature", "1.0", "--limit", "4",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pass@3" in printed and "maj@3" in printed
    result = json.loads(out.read_text())
    assert result["samples"] == 3 and len(result["problems"]) == 4
    assert all(len(p["correct"]) == 3 for p in result["problems"])
    assert 0.0 <= result["summary"]["accuracy"] <= result["summary"]["pass@3"] <= 1.0


@pytest.mark.parametrize("estimator", ["rloo", "reinforce"])
def test_other_estimators_train(tmp_path, estimator):
    assert run_train(tmp_path, "iterations=1", f"algorithm.estimator={estimator}", "eval.at_end=false") == 0
    assert read_metrics(tmp_path)[0]["episodes"] == 16


def test_lora_run_saves_loadable_merged_weights_and_resumes(tmp_path):
    run = tmp_path / "run"
    assert run_train(run, "iterations=2", "save_every=1", "model.lora.enabled=true", "model.lora.r=4",
                     "eval.at_end=false") == 0
    ckpt = latest_checkpoint(run)
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    crashed = resume_after_crash(run, tmp_path, last_good=1)
    assert_same_metrics(read_metrics(run), read_metrics(crashed))


def test_malformed_data_row_is_reported_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "oops"\n')
    args = ["task.name=gsm8k", f"task.options={{train_path: {bad}, eval_path: {bad}}}", "task.prompt_format=plain"]
    assert run_train(tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert "data error" in err and f"{bad}:2" in err
