"""What spo's vLLM engine and trainer do on GPUs, checked without a GPU (issue 25): the
arguments vLLM is built with (model runner, external launcher, per-rank seed, device check,
compile-cache folder), the order of a weight push and its memory, the wake-up of a sleeping
engine, the explicit first sync on every process, and the old-log-probs policy of bf16
runs. None of these needs vLLM (it is imported only when an engine is built); the engine's
own behaviour is in tests/test_vllm_engine.py, and what only a GPU shows is in
scripts/gpu_check.py (docs/vllm.md)."""

from __future__ import annotations

import types
import weakref

import pytest
import torch

from spo.sample.vllm_args import (GPU_BATCHED_TOKENS, RUNNER_ENV, Placement, check_engine_device, engine_args,
                                  model_folder, placement)

COMMON = dict(folder="/m", dtype="bfloat16", max_context=2048, max_num_seqs=64, block_size=32,
              enable_prefix_caching=True, enforce_eager=False, kv_cache_gb=None, gpu_memory_utilization=0.3,
              sleep=False, logits_processors=["recorder"])


# ------------------------------------------------------------------ engine arguments


def test_the_v1_model_runner_is_forced():
    """vLLM 0.32 picks V2 when triton is importable; V2 refuses spo's V1 logits processor."""
    assert RUNNER_ENV == {"VLLM_USE_V2_MODEL_RUNNER": "0"}


def test_gpu_arguments_of_one_process():
    args = engine_args(**COMMON, on_cpu=False, where=None)
    assert "distributed_executor_backend" not in args and args["seed"] == 0
    assert args["gpu_memory_utilization"] == 0.3 and args["max_num_batched_tokens"] == GPU_BATCHED_TOKENS
    assert args["logprobs_mode"] == "processed_logits" and args["async_scheduling"] is False
    assert args["logits_processors"] == ["recorder"] and "enable_chunked_prefill" not in args


@pytest.mark.parametrize("rank, local_rank", [(0, 0), (1, 1), (5, 1)])
def test_gpu_arguments_of_several_processes_use_the_external_launcher_and_a_seed_per_rank(rank, local_rank):
    where = Placement(rank=rank, local_rank=local_rank, world_size=6, master_addr="10.0.0.1", master_port="1234")
    args = engine_args(**COMMON, on_cpu=False, where=where)
    assert args["distributed_executor_backend"] == "external_launcher" and args["seed"] == rank
    assert where.env() == {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": "6",
                           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}


def test_cpu_arguments_keep_the_cpu_backends_limits():
    args = engine_args(**{**COMMON, "kv_cache_gb": 0.25, "max_context": 9000}, on_cpu=True, where=None)
    assert args["enable_chunked_prefill"] is False and args["max_num_batched_tokens"] == 9000
    assert args["kv_cache_memory_bytes"] == 2**28
    assert "gpu_memory_utilization" not in args and "distributed_executor_backend" not in args


def test_placement_reads_the_process_group_and_the_launchers_local_rank(monkeypatch):
    import torch.distributed as dist

    assert placement() is None  # no process group here
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    where = placement({"LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "99"})
    assert where == Placement(rank=3, local_rank=1, world_size=4, master_addr="h", master_port="99")
    monkeypatch.setattr(dist, "get_world_size", lambda: 1)
    assert placement({}) is None


def test_engine_device_is_asserted():
    two = Placement(rank=1, local_rank=1, world_size=2)
    check_engine_device("cuda:1", torch.device("cuda", 1), two)
    check_engine_device("cuda", "cuda:0", None)
    check_engine_device("cpu", "cpu", None)
    with pytest.raises(RuntimeError, match=r"process 1 is on cuda:0, not on its own GPU cuda:1"):
        check_engine_device("cuda:0", "cuda:1", two)  # what the default executor does (issue 25, 2.)
    with pytest.raises(RuntimeError, match="policy it samples for is on cuda:1"):
        check_engine_device("cuda:0", "cuda:1", None)
    check_engine_device("cuda:1", "cuda:1", two, current_device="cuda:1")
    with pytest.raises(RuntimeError, match="current CUDA device is cuda:0, not cuda:1"):
        check_engine_device("cuda:1", "cuda:1", two, current_device="cuda:0")


def test_model_folder_is_stable_across_runs(tmp_path):
    """vLLM's compile cache is keyed on the model path: the same config, the same folder."""
    a = model_folder('{"a": 1}', str(tmp_path))
    assert model_folder('{"a": 1}', str(tmp_path)) == a and (a / "config.json").read_text() == '{"a": 1}'
    assert model_folder('{"a": 2}', str(tmp_path)) != a
    assert sorted(p.name for p in a.iterdir()) == ["config.json"]


# ------------------------------------------------------------------ weight pushes


class _Shard:
    """Stands for an FSDP2 DTensor: `full_tensor()` gathers a new whole tensor (tracked)."""

    made: list = []

    def __init__(self, shape):
        self.shape = shape

    def full_tensor(self):
        whole = torch.ones(self.shape)
        _Shard.made.append(weakref.ref(whole))
        return whole


class _ShardedModel(torch.nn.Module):
    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def state_dict(self, *args, **kwargs):
        return {f"w{i}": _Shard(s) for i, s in enumerate(self.shapes)}


def test_a_push_gathers_one_tensor_at_a_time():
    """The push is streamed: vLLM consumes each gathered tensor before the next is made, so
    the push adds at most the largest tensor, not a second whole model (issue 25, 6.)."""
    from spo.sample.weight_push import push_order

    shapes = [(64, 32), (256, 32), (16,), (128, 32)]
    _Shard.made = []
    peak_bytes, names = 0, []
    for name, tensor in push_order(_ShardedModel(shapes)):
        names.append(name)
        del tensor  # vLLM has copied it into its own weights
        alive = [r() for r in _Shard.made if r() is not None]
        peak_bytes = max(peak_bytes, sum(t.numel() * t.element_size() for t in alive))
    assert names == ["w0", "w1", "w2", "w3"] and len(_Shard.made) == 4
    assert peak_bytes == 0  # nothing left behind once vLLM holds it
    # while one tensor is being consumed, it is the only gathered one
    _Shard.made = []
    live_at_consumption = []
    for _, tensor in push_order(_ShardedModel(shapes)):
        live_at_consumption.append(sum(r() is not None for r in _Shard.made))
    assert live_at_consumption == [1, 1, 1, 1]
    # the same accounting on a real model is scripts/gpu_check.py's "push: streamed peak" row
    # (tests/test_gpu_check.py): the largest tensor, the embedding, not the whole model


def test_lora_push_is_merged_layer_by_layer_equal_to_a_merged_copy(make_tiny_model):
    from peft import LoraConfig, get_peft_model

    from spo.models import plain_copy
    from spo.sample.weight_push import push_order

    model = get_peft_model(make_tiny_model(), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = plain_copy(model).state_dict()
    pushed = dict(push_order(model))
    assert sorted(pushed) == sorted(merged)
    assert all(torch.equal(pushed[k], merged[k]) for k in merged)
    # the trained model is left exactly as it was (no in-place merge and unmerge)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_wake_frees_the_trainers_cached_memory_first(monkeypatch, make_tiny_model):
    """Sleep mode: torch's cache is emptied before every wake-up (issue 25, 5.), and the
    weights wake (and are pushed) before the KV cache."""
    from spo.sample.vllm_engine import VLLMEngine

    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    worker = types.SimpleNamespace(reload_weights=lambda weights_iterator: calls.append(
        ("push", len(list(weights_iterator)))))
    llm = types.SimpleNamespace(
        wake_up=lambda tags: calls.append(("wake", tuple(tags))),
        reset_prefix_cache=lambda: calls.append("reset") or True,
        llm_engine=types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(worker=worker))))
    engine = object.__new__(VLLMEngine)
    model = make_tiny_model()
    engine.__dict__.update(model=model, llm=llm, _asleep=True, _stale=True, sync_seconds=[])
    engine.sync_weights()
    tensors = len(model.state_dict())
    assert calls == ["empty_cache", ("wake", ("weights",)), ("push", tensors), "empty_cache",
                     ("wake", ("kv_cache",)), "reset"]
    assert not engine._asleep and not engine._stale


# ------------------------------------------------------------------ the trainer's use of the engine


def test_the_engine_is_synced_on_every_process_before_anything_samples(tmp_path, monkeypatch):
    """Under FSDP a push gathers shards (a collective), so the first one must not happen
    lazily inside `gathered()` where a process with no evaluation problems never samples
    (issue 25, 4.): the trainer syncs once after building or resuming, outside it."""
    import contextlib

    import spo.sample.factory as factory
    from spo.cli import main
    from spo.distributed import Dist

    calls: list[tuple[str, bool]] = []
    inside = [False]
    real_gathered = Dist.gathered

    @contextlib.contextmanager
    def gathered(self, model):
        with real_gathered(self, model):
            inside[0] = True
            try:
                yield model
            finally:
                inside[0] = False

    def recording(cfg, model, tokenizer):
        engine = factory.HFEngine(model, tokenizer, batch_size=cfg.batch_size, max_context=cfg.max_context)
        for name in ("sync_weights", "generate", "release_memory"):
            method = getattr(engine, name)

            def record(*args, _name=name, _method=method, **kwargs):
                calls.append((_name, inside[0]))
                return _method(*args, **kwargs)

            setattr(engine, name, record)
        return engine

    monkeypatch.setattr(Dist, "gathered", gathered)
    monkeypatch.setitem(factory.ENGINES, "hf", recording)
    run = tmp_path / "run"
    assert main(["train", "--config", "smoke", "--output-dir", str(run), "iterations=1", "sampling.max_new_tokens=4",
                 "task.eval_limit=1", "eval.at_start=true", "save_every=1"]) == 0
    assert calls[0] == ("sync_weights", False)
    assert [c for c in calls if c[0] == "sync_weights"] == [("sync_weights", False)] * 2  # built, after the update
    assert ("generate", True) in calls  # sampling and evaluation are inside
    calls.clear()
    assert main(["train", "--resume", str(run), "iterations=2"]) == 0
    assert calls[0] == ("sync_weights", False)  # resumed weights pushed before any sampling


# ------------------------------------------------------------------ old log-probs of bf16 engines


@pytest.mark.parametrize("choice, dtype, recompute", [
    ("auto", torch.float32, False), ("auto", torch.bfloat16, True), ("auto", torch.float16, True),
    ("engine", torch.bfloat16, False), ("recompute", torch.float32, True),
])
def test_old_logprobs_are_recomputed_by_default_for_bf16_policies(choice, dtype, recompute):
    from spo.algorithms.base import Context
    from spo.config import build_config

    cfg = build_config({"algorithm": {"old_logprobs": choice}})
    policy = torch.nn.Linear(2, 2).to(dtype)
    ctx = Context(cfg, None, None, None, [], policy, None, 0)
    assert ctx.recomputes_old_logprobs() is recompute
