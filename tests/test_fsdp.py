"""FSDP (FSDP2 through accelerate, configs/accelerate/fsdp-cpu.yaml) with 2 CPU processes
over gloo: the same update as one process on the same global batch, checkpoints that are
full Hugging Face models equal to the trained weights, and a resume equal to an
uninterrupted run. The worker (tests/fsdp_worker.py) itself asserts that sampling inside
`Dist.gathered` needs no collective and that an update on uneven shares (1 and 2
micro-batches) pads the short process instead of hanging (without the padding it hangs).

Why the one-process comparison replays the FSDP run's batches instead of sampling its own:
sampling seeds are drawn per process (spo.seeds: iteration and rank), so 2 processes
sample other responses than 1 process does. The update is what FSDP changes, so the test
feeds the FSDP run's own global batch (its episode log holds every TrainSample field) to a
one-process update from the same initial weights, iteration after iteration, and compares
the update's statistics and the final weights. `algorithm.mini_batch_size=16` (the whole
global batch, one optimizer step per iteration) makes the mini-batch the same set of
samples in both; how they split into micro-batches differs, which changes only the order
of float sums.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import assert_same_metrics
from spo.cli import main
from spo.train.run_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "configs" / "accelerate" / "fsdp-cpu.yaml"
OVERRIDES = ["iterations=3", "save_every=1", "keep_checkpoints=5", "sampling.max_new_tokens=8", "task.eval_limit=4",
             "algorithm.mini_batch_size=16", "optim.grad_clip=0.5"]  # the norms are 0.5-0.9: clipping acts
UPDATE_KEYS = ("policy_loss", "kl", "clip_frac", "approx_kl", "entropy", "grad_norm", "lr")
# fp32; 2 processes sum the gradient in another order (reduce-scatter) than 1 process does.
# Measured here: grad_norm to a relative 1.4e-7, kl to 8e-6, policy_loss (~1e-8: one
# on-policy step) to 2e-8 absolute, final weights to 1.2e-7 (three steps at lr 1e-4 move
# them by ~3e-4).
REL, ABS = 1e-4, 1e-7  # update statistics
WEIGHT_ATOL = 1e-6


def launch_worker(out: Path, overrides: list[str]) -> Path:
    """tests/fsdp_worker.py under accelerate with the FSDP config: `run` (a checkpoint each
    iteration) and `crashed` (its copy stopped after iteration 1, resumed)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
           str(ROOT / "tests" / "fsdp_worker.py"), str(out), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)  # a hang fails
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def fsdp_out(tmp_path_factory):
    return launch_worker(tmp_path_factory.mktemp("fsdp"), OVERRIDES)


def final_checkpoint(run: Path, iterations: int = 3) -> Path:
    from spo.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == f"iter_{iterations:06d}"
    return ckpt


def plain_weights(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()  # plain transformers, no spo


def test_two_processes_shard_the_model_and_train_on_the_global_batch(fsdp_out):
    run = fsdp_out / "run"
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert all(r["episodes"] == 16 for r in rows)  # the same global batch as one process
    ckpt = final_checkpoint(run)
    # the optimizer state is sharded: one file per process, none whole
    assert sorted(p.name for p in ckpt.glob("optimizer*")) == ["optimizer_rank0.pt", "optimizer_rank1.pt"]
    shard = torch.load(ckpt / "optimizer_rank0.pt", weights_only=False)["adamw"]["state"]
    weights = plain_weights(ckpt / "model")
    names = [n for n, p in weights.items()]
    first = shard[0]["exp_avg"]
    assert first.shape[0] * 2 >= weights[names[0]].shape[0] > first.shape[0]  # half a tensor (dim 0)


def test_checkpoint_is_a_full_hf_model_equal_to_the_trained_weights(fsdp_out):
    ckpt = final_checkpoint(fsdp_out / "run")
    config = json.loads((ckpt / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not FSDP's wrapper class
    saved = plain_weights(ckpt / "model")
    in_memory = torch.load(fsdp_out / "run-weights.pt")  # gathered from the shards after training
    assert set(in_memory) <= set(saved)
    for name, tensor in in_memory.items():
        assert torch.equal(saved[name], tensor), name
    start = plain_weights(fsdp_out / "run" / "checkpoints" / "iter_000001" / "model")
    assert any(not torch.equal(saved[n], start[n]) for n in saved)  # training moved them


def test_resume_after_stopping_equals_the_uninterrupted_run(fsdp_out):
    assert_same_metrics(read_metrics(fsdp_out / "run"), read_metrics(fsdp_out / "crashed"))
    a = plain_weights(final_checkpoint(fsdp_out / "run") / "model")
    b = plain_weights(final_checkpoint(fsdp_out / "crashed") / "model")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_the_update_equals_one_process_on_the_same_global_batch(fsdp_out, tmp_path):
    from spo.config import load_config
    from spo.train.loop import Trainer
    from spo.train.progress import Progress

    run = fsdp_out / "run"
    trainer = Trainer(load_config(run / "config.yaml", [f"output_dir={tmp_path}"]), tmp_path)  # one process
    assert trainer.dist.world == 1 and not trainer.dist.is_fsdp
    progress = Progress(enabled=False, quiet=True)
    for it, row in enumerate(read_metrics(run)):
        lines = (run / "episodes" / f"iter_{it + 1:06d}.jsonl").read_text().splitlines()
        samples = [SimpleNamespace(**json.loads(line)) for line in lines]
        assert len(samples) == 16
        stats = trainer.update(samples, it, progress)
        for key in UPDATE_KEYS:
            assert stats[key] == pytest.approx(row[key], rel=REL, abs=ABS), (it + 1, key)
    fsdp = plain_weights(final_checkpoint(run) / "model")
    one = trainer.model.state_dict()
    for name, tensor in fsdp.items():
        torch.testing.assert_close(one[name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


def test_resuming_sharded_optimizer_state_needs_the_same_processes(fsdp_out, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(fsdp_out / "run", copy)
    assert main(["train", "--resume", str(copy), "iterations=4"]) == 2  # one process, no FSDP
    assert "saved by an FSDP run" in capsys.readouterr().err


def test_what_fsdp_does_not_run_is_a_config_error(monkeypatch):
    from accelerate.utils import DistributedType

    from spo.config import ConfigError, build_config
    from spo.distributed import Dist, make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what a DeepSpeed accelerate config sets
    with pytest.raises(ConfigError, match="DeepSpeed"):
        make_accelerator()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")

    fake = SimpleNamespace(process_index=0, num_processes=2, device=torch.device("cpu"), is_main_process=True,
                           distributed_type=DistributedType.FSDP)
    dist = Dist(fake)
    dist.check_supported(build_config({}), trains_another_model=False)
    dist.check_supported(build_config({}, ["model.lora.enabled=true"]), trains_another_model=False)
    dist.check_supported(build_config({}, ["sampling.engine=vllm"]), trains_another_model=False)
    for overrides, trains_another, word in [(["sampling.engine=vllm", "model.lora.enabled=true"], False, "lora"),
                                            ([], True, "critic")]:
        with pytest.raises(ConfigError, match=word):
            dist.check_supported(build_config({}, overrides), trains_another_model=trains_another)


@pytest.mark.slow
def test_bf16_with_sharded_master_weights_resumes_equal(tmp_path):
    """bf16 weights (the GPU default): the optimizer's fp32 master weights are shards too;
    they are saved per process and restored exactly (about 40 s: bf16 is emulated here)."""
    out = launch_worker(tmp_path, ["iterations=2", "save_every=1", "sampling.max_new_tokens=8",
                                   "task.eval_limit=4", "model.dtype=bfloat16"])
    assert_same_metrics(read_metrics(out / "run"), read_metrics(out / "crashed"))
    master = torch.load(final_checkpoint(out / "run", 2) / "optimizer_rank1.pt", weights_only=False)["master"]
    assert all(m.dtype == torch.float32 for m in master)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(final_checkpoint(out / "run", 2) / "model", dtype="auto")
    assert next(saved.parameters()).dtype == torch.bfloat16
    in_memory = torch.load(out / "run-weights.pt")
    resumed = plain_weights(final_checkpoint(out / "crashed", 2) / "model")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, in_memory[name]) and torch.equal(tensor.float(), resumed[name].float()), name


@pytest.mark.slow
def test_lora_under_fsdp_saves_the_adapter_and_merged_weights_and_resumes(tmp_path):
    """LoRA with the base weights sharded: the checkpoint's adapter equals the trained
    adapter, model/ is the merged plain model, and a resume equals the uninterrupted run."""
    import json

    from safetensors.torch import load_file

    from spo.models import peft_keys

    out = launch_worker(tmp_path, ["iterations=2", "save_every=1", "sampling.max_new_tokens=8", "task.eval_limit=4",
                                   "model.lora.enabled=true", "model.lora.r=4", "eval.at_end=false"])
    assert_same_metrics(read_metrics(out / "run"), read_metrics(out / "crashed"))
    in_memory = torch.load(out / "run-weights.pt")  # peft names: ...q_proj.base_layer.weight, ...lora_A.default.weight
    ckpt = final_checkpoint(out / "run", 2)
    adapter = peft_keys(load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    resumed = peft_keys(load_file(str(final_checkpoint(out / "crashed", 2) / "adapter" / "adapter_model.safetensors")))
    assert adapter and all(torch.equal(in_memory[k], v) and torch.equal(resumed[k], v) for k, v in adapter.items())
    merged = plain_weights(ckpt / "model")
    assert not any("lora" in k for k in merged)
    options = json.loads((ckpt / "adapter" / "adapter_config.json").read_text())
    scale = options["lora_alpha"] / options["r"]
    for module in ("self_attn.q_proj", "self_attn.v_proj"):
        live = f"base_model.model.model.layers.0.{module}."
        a, b = in_memory[live + "lora_A.default.weight"], in_memory[live + "lora_B.default.weight"]
        assert b.abs().max() > 0  # trained
        expected = in_memory[live + "base_layer.weight"] + scale * b @ a
        torch.testing.assert_close(merged[f"model.layers.0.{module}.weight"], expected, rtol=0, atol=1e-6)
