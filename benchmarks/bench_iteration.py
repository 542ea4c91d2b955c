"""Seconds per training iteration: spo's Trainer vs TRL's GRPOTrainer, same settings.

    python benchmarks/bench_iteration.py                          # demo preset, 1 warm-up + 1 timed iteration
    python benchmarks/bench_iteration.py --config smoke --skip-trl sampling.max_new_tokens=8
    python benchmarks/bench_iteration.py --iterations 2 --no-warmup optim.lr=1e-5

What it does
------------
1. spo: builds ``spo.train.loop.Trainer`` for the preset (``--config``, default ``demo``,
   plus ``section.key=value`` overrides) in a temporary run folder, runs one warm-up
   iteration (unless ``--no-warmup``), then ``--iterations`` timed ones, and reports the
   seconds of each phase (sampling, scoring, advantage estimation, update), the wall time
   of the whole iteration, tokens generated, and the peak resident memory of the process
   (``ru_maxrss`` of itself plus its children) against ``--max-rss-gb`` (PASS/FAIL).
2. TRL: ``trl.GRPOTrainer`` with a ``GRPOConfig`` derived from the same RunConfig (same model
   object from ``spo.models.load_policy``, same dtype, the same prompts in the same order
   as spo's iterations, same group size, completion length, temperature/top-p/top-k,
   prompts per step, micro-batch and gradient accumulation, lr, KL coefficient, clip
   range, loss aggregation), rewarded by the same task reward. It runs
   ``max_steps = (warm-up + timed iterations) x optimizer steps per iteration``; an
   iteration's time is measured from the end of the previous optimizer step (or the
   start of training) to the end of its last optimizer step, and split into generation
   (``_generate_single_turn``), scoring (``_calculate_rewards``), the rest of
   ``_generate_and_score_completions`` (decode, padding, advantages, and any extra
   log-prob forward passes, e.g. the reference model's when beta > 0) and the update
   (everything else: forward/backward/optimizer step).
3. Prints a table (phase seconds, tokens, tokens/s, spo/TRL time ratio) and the settings
   that could not be matched, and writes everything as JSON to ``--output``.

Each part runs in its own Python subprocess (the parent only orchestrates), so the two do
not share accelerate's process-wide state and each gets its own peak-memory figure.
``--part spo|trl`` runs a single part in the current process (used by the subprocesses and
by tests: see ``run_spo`` / ``run_trl``).

Fairness notes: both sides use their defaults for everything that is not a shared setting
(TRL's fused AdamW, TRL's one ``generate`` call over the whole generation batch, spo's own
decode loop with shared prefill). The sampled completions differ (different RNG streams),
so the token counts differ a little; tokens/s puts them on the same footing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PHASES = ["sample", "score", "estimate", "optimize"]
PHASE_LABELS = {"sample": "sampling", "score": "scoring", "estimate": "advantage est.", "optimize": "update"}


# ---------------------------------------------------------------------------------------
# Config

def build_run_config(config: str, overrides: list[str]):
    """RunConfig for `config` (a path or a shipped preset name) plus overrides.

    If the preset `demo` is not there (yet), falls back to the smoke preset switched to
    the real pretrained model (no shape overrides, bfloat16), and says so."""
    from spo.presets import resolve_preset
    from spo.config import ConfigError, build_config
    from spo.config_io import load_yaml

    try:
        path = resolve_preset(config)
        return build_config(load_yaml(path), overrides), str(path)
    except ConfigError:
        if config not in ("demo", "demo.yaml"):
            raise
    path = resolve_preset("smoke")
    data = load_yaml(path)
    model = dict(data.get("model") or {})
    model.pop("config_overrides", None)  # the tiny-model shapes; cannot be cleared by an override
    model.update({"random_init": False, "dtype": "bfloat16"})
    data["model"] = model
    note = (f"demo preset not found: {path} switched to the pretrained model (random_init=false, "
            "dtype=bfloat16, config_overrides removed)" + (", then " + " ".join(overrides) if overrides else ""))
    print(f"[bench] NOTE: {note}", flush=True)
    return build_config(data, overrides), note


def spo_settings(cfg) -> dict[str, Any]:
    from spo.models import load_model_config, resolve_dtype
    from spo.train.sft import resolve_model_name

    s, a, o, m = cfg.sampling, cfg.algorithm, cfg.optim, cfg.model
    dtype = resolve_dtype(m.dtype, load_model_config(resolve_model_name(m.name_or_path), m.config_overrides or None))
    return {
        "model": m.name_or_path, "dtype": str(dtype).removeprefix("torch."), "dtype_option": m.dtype, "random_init": m.random_init, "lora": m.lora.enabled,
        "gradient_checkpointing": m.gradient_checkpointing,
        "task": cfg.task.name, "task_options": cfg.task.options, "prompt_format": cfg.task.prompt_format,
        "prompts_per_iteration": s.prompts_per_iteration, "group_size": s.group_size,
        "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
        "engine_batch_size": s.batch_size, "estimator": a.estimator, "scale_by_std": a.scale_by_std,
        "kl_coef": a.kl_coef, "clip_eps": a.clip_eps, "clip_eps_high": a.clip_eps_high, "loss_agg": a.loss_agg,
        "epochs": a.epochs, "mini_batch_size": a.mini_batch_size, "micro_batch_size": a.micro_batch_size,
        "prob_mask": a.prob_mask, "whiten": a.whiten, "old_logprobs": a.old_logprobs,
        "lr": o.lr, "weight_decay": o.weight_decay, "grad_clip": o.grad_clip, "seed": cfg.seed,
    }


def steps_per_iteration(cfg) -> int:
    n = cfg.sampling.prompts_per_iteration * cfg.sampling.group_size
    return cfg.algorithm.epochs * math.ceil(n / cfg.algorithm.mini_batch_size)


# ---------------------------------------------------------------------------------------
# Memory

def peak_rss() -> dict[str, float]:
    """Peak resident set size in GB (1e9 bytes) of this process and of its (waited-for)
    children; Linux reports ru_maxrss in KiB, macOS in bytes."""
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 1e9
    return {"self_gb": own, "children_gb": kids, "total_gb": own + kids}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------
# spo

def run_spo(cfg, iterations: int = 1, warmup: bool = True) -> dict[str, Any]:
    """Build spo's Trainer and time `iterations` iterations (after one warm-up one)."""
    from spo.train.loop import Trainer
    from spo.train.progress import Progress

    out: dict[str, Any] = {"framework": "spo"}
    with tempfile.TemporaryDirectory(prefix="spo-bench-") as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp))
        out["setup_s"] = time.perf_counter() - t0
        progress = Progress(enabled=False, quiet=True)
        rows = []
        first = 0
        if warmup:
            t0 = time.perf_counter()
            rec = trainer.step(0, progress)
            out["warmup_wall_s"] = time.perf_counter() - t0
            out["warmup_tokens"] = rec["tokens_generated"]
            first = 1
        for it in range(first, first + iterations):
            t0 = time.perf_counter()
            rec = trainer.step(it, progress)
            wall = time.perf_counter() - t0
            row = {k: float(rec[f"time_{k}"]) for k in PHASES}
            row["estimate"] += rec.get("time_old_logprobs", 0.0)  # recomputed old log-probs: TRL counts them there
            row.update(iteration=it, wall=wall, tokens=int(rec["tokens_generated"]),
                       episodes=int(rec["episodes"]), reward_mean=float(rec["reward_mean"]),
                       response_len_mean=float(rec["response_len_mean"]))
            row["other"] = max(wall - sum(row[k] for k in PHASES), 0.0)
            rows.append(row)
            print(f"[bench] spo iteration {it}: " + "  ".join(f"{k}={row[k]:.2f}s" for k in PHASES)
                  + f"  wall={wall:.2f}s  tokens={row['tokens']}", flush=True)
        if trainer.log is not None:
            trainer.log.close()
    out["iterations"] = rows
    out["mean"] = _mean_rows(rows)
    out["memory"] = peak_rss()
    out["torch_threads"] = _threads()
    return out


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [*PHASES, "other", "wall", "tokens"]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys} if rows else {}


# ---------------------------------------------------------------------------------------
# TRL

LOSS_TYPE = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum": "dr_grpo"}
SCHEDULE = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def trl_prompts(cfg, task, tokenizer, problems, iterations: int):
    """The dataset rows TRL trains on: spo's prompts for iterations 0..iterations-1, in
    spo's order, as conversational messages (chat format) or pre-templated text (plain)."""
    from spo.tasks.prompts import build_prompt_text, has_chat_template, user_message
    from spo.seeds import iteration_prompts

    chat = cfg.task.prompt_format == "chat" and has_chat_template(tokenizer)
    rows = []
    for it in range(iterations):
        for i in iteration_prompts(len(problems), cfg.sampling.prompts_per_iteration, it, cfg.seed):
            q = problems[i].question
            if chat:
                msgs = [{"role": "system", "content": cfg.task.system_prompt}] if cfg.task.system_prompt else []
                msgs.append({"role": "user", "content": user_message(q, task.instruction)})
                prompt: Any = msgs
            else:
                prompt = build_prompt_text(tokenizer, q, "plain", cfg.task.system_prompt, task.instruction)
            rows.append({"prompt": prompt, "problem_index": i})
    return rows, chat


def _trl_prompt_ids(tokenizer, prompt, chat: bool) -> list[int]:
    """How TRL 1.16 tokenizes a prompt (GRPOTrainer._tokenize_prompts)."""
    if chat:
        enc = tokenizer.apply_chat_template(conversation=[prompt], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
        return list(enc["input_ids"][0])
    return list(tokenizer(text=[prompt])["input_ids"][0])


@contextlib.contextmanager
def _patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class _Timer:
    """Accumulates the time spent in wrapped methods."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self.tokens = 0
        self.depth: dict[str, int] = {}

    def wrap(self, obj, name: str, key: str, count_tokens: bool = False):
        fn = getattr(obj, name)

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            self.depth[key] = self.depth.get(key, 0) + 1
            t0 = time.perf_counter()
            try:
                res = fn(*args, **kwargs)
            finally:
                self.depth[key] -= 1
                if self.depth[key] == 0:
                    self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - t0
            if count_tokens:
                self.tokens += sum(len(ids) for ids in res[0])
            return res

        setattr(obj, name, wrapped)

    def take(self) -> tuple[dict[str, float], int]:
        t, n = self.t, self.tokens
        self.t, self.tokens = {}, 0
        return t, n


def trl_config_kwargs(cfg, total_iterations: int, output_dir: str) -> tuple[dict[str, Any], list[str]]:
    """GRPOConfig keyword arguments matched to `cfg`, and the differences that remain."""
    import torch

    from spo.models import load_model_config, resolve_dtype
    from spo.train.sft import resolve_model_name

    s, a, o, m = cfg.sampling, cfg.algorithm, cfg.optim, cfg.model
    diffs: list[str] = []
    n = s.prompts_per_iteration * s.group_size
    mini = min(a.mini_batch_size, n)
    if a.mini_batch_size % a.micro_batch_size:
        diffs.append(f"mini_batch_size {a.mini_batch_size} is not a multiple of micro_batch_size "
                     f"{a.micro_batch_size}: TRL uses micro-batches of {a.micro_batch_size}")
    grad_accum = max(1, mini // a.micro_batch_size)
    if n % a.micro_batch_size:
        raise ValueError(f"prompts x group ({n}) must be a multiple of micro_batch_size ({a.micro_batch_size}) for TRL")
    if n % mini:
        diffs.append(f"last mini-batch of spo is smaller ({n % mini} of {mini}); TRL's is full size")
    dtype = resolve_dtype(m.dtype, load_model_config(resolve_model_name(m.name_or_path), m.config_overrides or None))
    cuda = torch.cuda.is_available()
    steps = steps_per_iteration(cfg)
    warmup_steps = int(math.ceil(o.warmup_ratio * cfg.iterations * steps))
    kw = dict(
        output_dir=output_dir,
        use_cpu=not cuda,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        seed=cfg.seed,
        # batch layout: one generation batch of P prompts x G per iteration, split into micro-batches
        num_generations=s.group_size,
        generation_batch_size=n,
        per_device_train_batch_size=a.micro_batch_size,
        gradient_accumulation_steps=grad_accum,
        num_iterations=a.epochs,
        max_steps=total_iterations * steps,
        shuffle_dataset=False,
        # sampling
        max_completion_length=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        use_vllm=False,
        # objective
        beta=a.kl_coef,
        epsilon=a.clip_eps,
        epsilon_high=a.clip_eps_high,
        loss_type=LOSS_TYPE[a.loss_agg],
        scale_rewards="group" if a.scale_by_std else "none",
        mask_truncated_completions=False,
        # optimizer
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.betas[0],
        adam_beta2=o.betas[1],
        adam_epsilon=o.eps,
        max_grad_norm=o.grad_clip,
        lr_scheduler_type=SCHEDULE[o.schedule],
        warmup_steps=warmup_steps,
        # no eval, no saving, no logging
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    # GRPOConfig turns checkpointing ON by default; spo's default is off. transformers >= 5.x
    # renamed the option (the old name still works but warns).

    from trl import GRPOConfig

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    kw["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = (
        m.gradient_checkpointing
    )
    if a.estimator != "grpo":
        diffs.append(f"advantage estimator: spo {a.estimator!r}, TRL GRPO group baseline")
    if a.loss_agg == "seq_mean_token_sum":
        diffs.append("loss_agg seq_mean_token_sum ~ TRL dr_grpo (normalised by max_completion_length)")
    if a.prob_mask:
        diffs.append("spo prob_mask (rho) has no TRL equivalent: TRL counts every token")
    if a.whiten != "none":
        diffs.append(f"spo whiten={a.whiten} has no TRL equivalent")
    if a.old_logprobs == "recompute":
        diffs.append("spo recomputes old log-probs with an extra forward; TRL reuses the current ones "
                     "(steps aligned with generation)")
    if m.lora.enabled:
        diffs.append("LoRA: both train the same peft-wrapped model object")
    if n > s.batch_size:
        diffs.append(f"spo decodes at most {s.batch_size} sequences at once; TRL generates all {n} in one call")
    if cfg.task.prompt_format == "plain":
        diffs.append("plain prompt format: TRL tokenizes the pre-templated text itself")
    diffs += [
        "sampling RNG streams differ, so completions (and their lengths/token counts) differ",
        ("optimizer: spo torch.optim.AdamW over fp32 master copies of the "
         f"{str(dtype).removeprefix('torch.')} weights; TRL's default optimizer ({{optim}}) steps the "
         f"{str(dtype).removeprefix('torch.')} parameters themselves"
         + (", under bf16 autocast (bf16=True)" if dtype == torch.bfloat16 else "")
         if dtype != torch.float32 else
         "optimizer: spo torch.optim.AdamW, TRL its default ({optim}), both on the fp32 weights"),
        "generation: spo's own decode loop (one prefill per prompt shared by its G samples, finished rows "
        "dropped); TRL: model.generate over the prompts repeated G times",
        "lr schedule: same type and warm-up steps, but TRL's horizon is max_steps of this benchmark "
        "(lr values do not affect timing)",
    ]
    if a.kl_coef > 0:
        diffs.append("beta > 0: TRL computes the reference log-probs before the update (counted in its "
                     "'advantage est.' phase); spo inside the update (counted in 'update')")
    return kw, diffs


def run_trl(cfg, iterations: int = 1, warmup: bool = True) -> dict[str, Any]:
    """TRL GRPOTrainer on the same model, prompts and settings; per-iteration timings."""
    import datasets
    import torch
    import transformers
    import trl
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spo.models import load_policy_from_config, load_reference, load_tokenizer
    from spo.train.sft import resolve_model_name
    from spo.tasks.registry import build_task

    out: dict[str, Any] = {"framework": "trl", "versions": {"trl": trl.__version__,
                                                            "transformers": transformers.__version__}}
    total_iters = iterations + (1 if warmup else 0)
    t_setup = time.perf_counter()
    m = dataclasses.replace(cfg.model, name_or_path=resolve_model_name(cfg.model.name_or_path))
    task = build_task(cfg.task.name, **cfg.task.options)
    problems = task.problems("train", cfg.task.train_limit)
    tokenizer = load_tokenizer(resolve_model_name(m.tokenizer or m.name_or_path))
    rows, chat = trl_prompts(cfg, task, tokenizer, problems, total_iters)
    # The prompt token ids TRL will feed the model must be the ones spo feeds its engine.
    mismatched = [
        r["problem_index"] for r in rows
        if _trl_prompt_ids(tokenizer, r["prompt"], chat)
        != task.prompt_ids(tokenizer, problems[r["problem_index"]], cfg.task.prompt_format, cfg.task.system_prompt)
    ]
    out["prompt_ids_identical"] = not mismatched
    if mismatched:
        print(f"[bench] WARNING: TRL's prompt ids differ from spo's for problems {mismatched[:5]}", flush=True)
    dataset = datasets.Dataset.from_list(rows)

    model = load_policy_from_config(m, seed=cfg.seed, device="cuda" if torch.cuda.is_available() else "cpu")

    max_len = cfg.sampling.max_new_tokens
    timer = _Timer()

    def task_reward(prompts, completions, problem_index, completion_ids, **_):
        """spo's task reward; truncated = hit the length cap without a stop token."""
        t0 = time.perf_counter()
        eos = set(trainer.eos_token_ids)
        out_ = []
        for c, pi, ids in zip(completions, problem_index, completion_ids):
            text = c[0]["content"] if isinstance(c, list) else c
            truncated = len(ids) >= max_len and (not ids or ids[-1] not in eos)
            out_.append(task.reward(problems[pi], text, truncated))
        timer.t["reward_fn"] = timer.t.get("reward_fn", 0.0) + time.perf_counter() - t0
        rewards_seen.extend(out_)
        return out_

    rewards_seen: list[float] = []
    marks: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())
            step_timings.append(timer.take())
            step_rewards.append(list(rewards_seen))
            rewards_seen.clear()

    step_timings: list[tuple[dict[str, float], int]] = []
    step_rewards: list[list[float]] = []

    with tempfile.TemporaryDirectory(prefix="trl-bench-") as tmp:
        kw, diffs = trl_config_kwargs(cfg, total_iters, tmp)
        args = GRPOConfig(**kw)
        # TRL builds its reference model (beta > 0) by re-loading the policy's config name; make it
        # the same frozen copy of the initial policy that spo uses (load_reference), which also
        # keeps it right for random-init / shape-overridden models.
        import trl.trainer.grpo_trainer as grpo_module

        with _patched(grpo_module, "create_model_from_path", lambda *a_, **k_: load_reference(model)):
            trainer = GRPOTrainer(model=model, reward_funcs=[task_reward], args=args, train_dataset=dataset,
                                  processing_class=tokenizer, callbacks=[StepClock()])
        timer.wrap(trainer, "_generate_single_turn", "generate", count_tokens=True)
        timer.wrap(trainer, "_calculate_rewards", "rewards")
        timer.wrap(trainer, "_generate_and_score_completions", "gen_and_score")
        diffs = [d.replace("{optim}", str(getattr(args.optim, "value", args.optim))) for d in diffs]
        out["setup_s"] = time.perf_counter() - t_setup
        out["grpo_config"] = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                              for k, v in kw.items() if k != "output_dir"}
        out["grpo_config"].update(steps_per_generation=args.steps_per_generation,
                                  generation_batch_size=args.generation_batch_size, optim=str(args.optim))
        trainer.train()

    steps = steps_per_iteration(cfg)
    if len(step_timings) != total_iters * steps:
        raise RuntimeError(f"TRL ran {len(step_timings)} optimizer steps, expected {total_iters * steps}")
    iters = []
    for k in range(total_iters):
        seg = step_timings[k * steps : (k + 1) * steps]
        t: dict[str, float] = {}
        for d, _ in seg:
            for key, v in d.items():
                t[key] = t.get(key, 0.0) + v
        wall = marks[(k + 1) * steps] - marks[k * steps]
        gen, rew, gs = t.get("generate", 0.0), t.get("rewards", 0.0), t.get("gen_and_score", 0.0)
        row = {"iteration": k, "sample": gen, "score": rew, "estimate": max(gs - gen - rew, 0.0),
               "optimize": max(wall - gs, 0.0), "other": 0.0, "wall": wall,
               "tokens": sum(n for _, n in seg), "reward_fn": t.get("reward_fn", 0.0)}
        rewards = [r for _, rs in zip(seg, step_rewards[k * steps : (k + 1) * steps]) for r in rs]
        row["reward_mean"] = sum(rewards) / len(rewards) if rewards else float("nan")
        iters.append(row)
    if warmup:
        out["warmup_wall_s"], out["warmup_tokens"] = iters[0]["wall"], iters[0]["tokens"]
        iters = iters[1:]
    for row in iters:
        print(f"[bench] trl iteration {row['iteration']}: " + "  ".join(f"{k}={row[k]:.2f}s" for k in PHASES)
              + f"  wall={row['wall']:.2f}s  tokens={row['tokens']}", flush=True)
    out["iterations"] = iters
    out["mean"] = _mean_rows(iters)
    out["differences"] = diffs
    out["memory"] = peak_rss()
    out["torch_threads"] = _threads()
    return out


# ---------------------------------------------------------------------------------------
# Report

def _fmt_row(label: str, a: float | None, b: float | None, fmt: str = "{:10.2f}") -> str:
    def f(x):
        return fmt.format(x) if x is not None else f"{'-':>10}"

    ratio = f"{a / b:8.2f}" if a is not None and b is not None and b >= 0.01 else f"{'-':>8}"
    return f"  {label:<22}{f(a)}  {f(b)}  {ratio}"


def _settings_line(st: dict[str, Any], threads: int | None) -> str:
    if not st:
        return ""
    return (f"model {st['model']} ({st['dtype']}{', random init' if st['random_init'] else ''}), "
            f"{st['prompts_per_iteration']} prompts x {st['group_size']}, <= {st['max_new_tokens']} new tokens, "
            f"mini/micro batch {st['mini_batch_size']}/{st['micro_batch_size']}, kl {st['kl_coef']}, "
            f"torch threads {threads or 'default'}")


def report(results: dict[str, Any], max_rss_gb: float) -> str:
    spo, trl = results.get("spo"), results.get("trl")
    lines = ["", "=" * 64,
             f"One training iteration ({results['timed_iterations']} timed, warm-up: {results['warmup']})",
             f"config: {results['config']}",
             _settings_line(results.get("settings", {}), results.get("threads")),
             f"{'':24}{'spo':>10}  {'TRL':>10}  {'spo/TRL':>8}"]
    sm = spo["mean"] if spo else {}
    tm = trl["mean"] if trl else {}
    for k in PHASES:
        lines.append(_fmt_row(PHASE_LABELS[k] + " (s)", sm.get(k), tm.get(k)))
    lines.append(_fmt_row("total (s)", sm.get("wall"), tm.get("wall")))
    lines.append(_fmt_row("tokens generated", sm.get("tokens"), tm.get("tokens"), "{:10.0f}"))
    gen_tps = [m["tokens"] / m["sample"] if m and m.get("sample") else None for m in (sm, tm)]
    tot_tps = [m["tokens"] / m["wall"] if m and m.get("wall") else None for m in (sm, tm)]
    lines.append(_fmt_row("tokens/s (sampling)", *gen_tps, "{:10.1f}"))
    lines.append(_fmt_row("tokens/s (iteration)", *tot_tps, "{:10.1f}"))
    mem = [r["memory"]["total_gb"] if r else None for r in (spo, trl)]
    lines.append(_fmt_row("peak RSS (GB)", *mem, "{:10.2f}"))
    loads = [f"{name} {r['load_average']['before'][0]:.1f}->{r['load_average']['after'][0]:.1f}"
             for name, r in (("spo", spo), ("TRL", trl)) if r and "load_average" in r]
    if loads:
        lines.append(f"1-min load average during each part ({results.get('machine', {}).get('cpus', '?')} CPUs): "
                     + ", ".join(loads))
    if spo and trl:
        ratio = sm["wall"] / tm["wall"]
        results["ratio_spo_over_trl"] = ratio
        verdict = "meets" if ratio <= 0.7 else "misses"
        lines.append(f"spo/TRL time per iteration: {ratio:.2f} ({verdict} the <= 0.7 target)")
    if spo:
        ok = spo["memory"]["total_gb"] < max_rss_gb
        results["memory_check"] = {"limit_gb": max_rss_gb, "spo_peak_gb": spo["memory"]["total_gb"], "pass": ok}
        lines.append(f"{'PASS' if ok else 'FAIL'}: spo peak RSS {spo['memory']['total_gb']:.2f} GB "
                     f"(self {spo['memory']['self_gb']:.2f} + children {spo['memory']['children_gb']:.2f}) "
                     f"{'<' if ok else '>='} {max_rss_gb:g} GB")
    if trl:
        lines.append(f"TRL prompt ids identical to spo's: {trl.get('prompt_ids_identical')}")
        lines.append("Settings not matched exactly:")
        lines += [f"  - {d}" for d in trl["differences"]]
    lines.append("=" * 64)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    p.add_argument("--config", default="demo", help="preset name or YAML path (default: demo)")
    p.add_argument("--iterations", type=int, default=1, help="timed iterations (default 1)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up iteration")
    p.add_argument("--skip-trl", action="store_true", help="only measure spo")
    p.add_argument("--skip-spo", action="store_true", help="only measure TRL")
    p.add_argument("--output", default="bench_results/iteration.json", help="JSON results file")
    p.add_argument("--max-rss-gb", type=float, default=12.0, help="spo peak-memory bound (GB, 1e9 bytes)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads for both parts (default: torch's own choice)")
    p.add_argument("--part", choices=["spo", "trl"], help=argparse.SUPPRESS)  # run one part in-process
    p.add_argument("--part-output", help=argparse.SUPPRESS)
    args = p.parse_intermixed_args(argv)
    if args.iterations < 1:
        p.error("--iterations must be >= 1")
    return args


def _run_part(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg, source = build_run_config(args.config, args.overrides)
    fn = run_spo if args.part == "spo" else run_trl
    load_before = os.getloadavg()
    res = fn(cfg, iterations=args.iterations, warmup=not args.no_warmup)
    res["load_average"] = {"before": load_before, "after": os.getloadavg()}
    res["config"] = source
    res["settings"] = spo_settings(cfg)
    return res


def _child(args: argparse.Namespace, part: str, out_file: Path) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--part-output", str(out_file),
           "--config", args.config, "--iterations", str(args.iterations)]
    if args.no_warmup:
        cmd.append("--no-warmup")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--", *args.overrides] if args.overrides else []
    print(f"[bench] running the {part} part in a subprocess", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    res = json.loads(out_file.read_text())
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging_quiet()
    if args.part:
        res = _run_part(args)
        if args.part_output:
            Path(args.part_output).write_text(json.dumps(res, indent=2, default=str))
        return res

    t_start = time.perf_counter()
    cfg, source = build_run_config(args.config, args.overrides)  # fail fast on a bad config
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": source,
        "overrides": args.overrides,
        "settings": spo_settings(cfg),
        "timed_iterations": args.iterations,
        "warmup": not args.no_warmup,
        "threads": args.threads or None,
        "load_average_at_start": os.getloadavg(),
    }
    busy = os.getloadavg()[0]
    if busy > 0.5 * (os.cpu_count() or 1):
        print(f"[bench] WARNING: load average {busy:.1f} on {os.cpu_count()} CPUs: other work is running, "
              "timings will be slower and noisier than on an idle machine", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if not args.skip_spo:
            results["spo"] = _child(args, "spo", Path(tmp) / "spo.json")
        if not args.skip_trl:
            results["trl"] = _child(args, "trl", Path(tmp) / "trl.json")
    results["bench_wall_s"] = time.perf_counter() - t_start
    text = report(results, args.max_rss_gb)
    print(text, flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results written to {out}", flush=True)
    return results


def logging_quiet() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with contextlib.suppress(Exception):
        import transformers

        transformers.logging.set_verbosity_error()


if __name__ == "__main__":
    res = main()
    check = res.get("memory_check") if isinstance(res, dict) else None
    sys.exit(1 if check and not check["pass"] else 0)
