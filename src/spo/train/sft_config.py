"""The options of supervised fine-tuning (`spo sft`), read the same way as a run's
(defaults <- YAML preset <- `a.b=value` overrides), with the model/task/optim sections of a
run but other defaults (a tiny model trained from scratch needs a large lr)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spo.config import ModelConfig, OptimConfig, TaskConfig, check_model_and_task, check_optim, need
from spo.config_io import apply_overrides, fill_defaults, from_dict, load_yaml


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
    preempt_grace: float = 90.0
    """Seconds SFT may take, after SIGTERM / SIGINT / SIGUSR1, to finish its optimizer step and
    checkpoint it in the partial folder (then it exits with status 75; the same `spo sft`
    continues from there); past them it exits at once (status 143), the last good checkpoint
    intact (docs/reliability.md). Not part of the config hash."""


def _check_sft_ranges(cfg: SFTConfig) -> None:
    need(cfg.max_steps >= 1, "max_steps", f"must be >= 1, got {cfg.max_steps}")
    need(cfg.batch_size >= 1, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    need(cfg.eval_every >= 0, "eval_every", f"must be >= 0, got {cfg.eval_every}")
    need(cfg.val_size >= 0, "val_size", f"must be >= 0, got {cfg.val_size}")
    need(cfg.stop_at_accuracy is None or 0 < cfg.stop_at_accuracy <= 1, "stop_at_accuracy",
         f"must be in (0, 1] or null, got {cfg.stop_at_accuracy}")
    need(cfg.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {cfg.max_new_tokens}")
    need(cfg.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {cfg.eval_batch_size}")
    need(cfg.log_every >= 1, "log_every", f"must be >= 1, got {cfg.log_every}")
    need(cfg.preempt_grace > 0, "preempt_grace", f"must be > 0 seconds, got {cfg.preempt_grace}")
    check_optim(cfg.optim)
    check_model_and_task(cfg.model, cfg.task)


def build_sft_config(data: dict | None = None, overrides: list[str] = ()) -> SFTConfig:
    """SFTConfig defaults <- `data` (nested dict, e.g. a YAML preset) <- `overrides` (`a.b=value`)."""
    merged = fill_defaults(SFTConfig(), apply_overrides(data, overrides))
    cfg = from_dict(SFTConfig, merged)
    _check_sft_ranges(cfg)
    return cfg


def load_sft_config(path: str | Path | None = None, overrides: list[str] = ()) -> SFTConfig:
    return build_sft_config(load_yaml(path) if path else {}, overrides)
