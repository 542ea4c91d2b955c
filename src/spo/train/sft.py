"""Supervised fine-tuning on a task's gold solutions: `spo sft`.

Gives RL a starting point that is right on part of the problems: e.g. a tiny
character-level Llama trained from scratch on `arith_steps` until its greedy held-out
accuracy reaches `stop_at_accuracy` (configs/sft-arith.yaml). Reads top to bottom:

    task problems -> examples: prompt ids (exactly as RL and evaluation build them)
                     + solution ids + eos; the loss counts only the solution and eos
    AdamW (spo.optimize.optimizer, warmup + schedule) over seeded shuffled batches
    every `eval_every` steps: greedy held-out accuracy (spo.evaluate.evaluator.evaluate),
                     stop once it reaches `stop_at_accuracy`
    save: an HF model folder (safetensors + tokenizer) + sft_config.yaml + sft_metrics.json
          + sft_eval.jsonl (the last evaluation's responses), written to a temporary
          sibling folder and renamed into place

Caching: without `output_dir` the folder is `$SPO_CACHE_DIR/sft/<hash of the config>`;
when it exists the model is not trained again (`ensure_sft_model` returns it at once).
The hash covers every option except `output_dir` and `log_every`, plus SFT_CACHE_VERSION
and spo.tiny_models.VERSION (the built-in tiny model's vocabulary and architecture).

Crashes: while training, a verified checkpoint (spo.train.checkpoint: model, optimizer,
scheduler, RNG, the metrics so far) is saved after every validation (every
`FALLBACK_SAVE_EVERY` steps when `eval_every` is 0) into the hidden sibling folder
`.<name>.partial/`, which also holds the lock that keeps a second `spo sft` of the same
folder waiting. Running the same config again after a kill continues from there and
trains the same weights; the partial folder is removed once the model folder is published.

Preemption (docs/reliability.md): on SIGTERM / SIGINT / SIGUSR1 the current optimizer step
finishes, its checkpoint goes into the partial folder, and `spo sft` exits with status 75,
saying that the same command continues from there (within `preempt_grace` seconds, else
status 143 with the previous checkpoint intact, as in `spo train`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spo.cache import cache_dir, staged_folder
from spo.config import ConfigError, EvalConfig, ModelConfig
from spo.config_io import save_config, to_dict
from spo.evaluate.evaluator import evaluate, evaluation_params, summarize
from spo.models import load_policy_from_config, load_tokenizer, num_parameters, save_hf_model
from spo.optimize.optimizer import build_optimizer
from spo.presets import resolve_preset
from spo.seeds import shuffled_positions
from spo.tasks.problems import Problem, withhold_last
from spo.tasks.prompts import build_prompt_text
from spo.tasks.registry import build_task
from spo.tiny_models import VERSION as TINY_MODELS_VERSION
from spo.train.sft_config import SFTConfig, load_sft_config
from spo.train.checkpoint import (
    commit_checkpoint,
    latest_checkpoint,
    load_training_state,
    read_state,
    rng_state,
    save_training_state,
    staging_dir,
    write_state,
)
from spo.train.faults import disk_full_is_fatal, kill_point
from spo.train.preemption import Preemption
from spo.train.run_dir import RunLock

log = logging.getLogger("spo.sft")

SFT_CACHE_VERSION = 2
"""Part of the cache key: bump it when a change here changes what the same config trains,
so that stale cached models are not reused. 2: the seed streams' derivation (spo.seeds,
BLAKE2b) changed the order SFT draws its examples in."""
METRICS_FILE = "sft_metrics.json"
CONFIG_FILE = "sft_config.yaml"
EVAL_FILE = "sft_eval.jsonl"
PARTIAL_SUFFIX = ".partial"
FALLBACK_SAVE_EVERY = 100
"""Steps between checkpoints when `eval_every` is 0 (otherwise one after every validation)."""
_UNHASHED = ("output_dir", "log_every", "preempt_grace")  # options that do not change the trained model
IGNORE_INDEX = -100  # label of tokens the loss skips (the prompt, padding): HF's convention
SFT_RERUN = "the same `spo sft` command again (it continues from that checkpoint)"
"""How a preempted SFT continues (Preempted's advice)."""
SFT_PREFIX = "sft:"
"""Model names `sft:<preset name or YAML path>` name the model `spo sft` trains with that
preset (see `resolve_model_name`)."""


@dataclass
class SFTResult:
    path: Path
    """The model folder."""
    metrics: dict[str, Any]
    """The contents of its sft_metrics.json."""
    cached: bool
    """True when the folder already existed and nothing was trained."""


# ---------------------------------------------------------------------------------------
# Where the model goes, and whether it is already there.

def config_hash(cfg: SFTConfig) -> str:
    """16 hex digits of sha256 over the options that determine the trained model."""
    options = {k: v for k, v in to_dict(cfg).items() if k not in _UNHASHED}
    key = {"version": SFT_CACHE_VERSION, "tiny_models": TINY_MODELS_VERSION, "config": options}
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def output_path(cfg: SFTConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return cache_dir() / "sft" / config_hash(cfg)


def partial_path(out: Path) -> Path:
    """Where an unfinished training of `out` keeps its checkpoints and lock."""
    return out.parent / f".{out.name}{PARTIAL_SUFFIX}"


def cached_metrics(path: Path, cfg: SFTConfig) -> dict[str, Any] | None:
    """The metrics of a finished SFT folder made with this config, else None. A folder made
    with another config is an error rather than something to overwrite or silently reuse."""
    metrics_file = path / METRICS_FILE
    if not metrics_file.is_file():
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"output_dir: {path} exists and is not an SFT model folder; remove it or pick another")
        return None
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("config_hash") != config_hash(cfg):
        raise ConfigError(
            f"output_dir: {path} holds a model trained with another SFT config "
            f"(hash {metrics.get('config_hash')}, this config {config_hash(cfg)}); remove it or pick another"
        )
    return metrics


# ---------------------------------------------------------------------------------------
# Examples and batches.

def response_prefix(prompt_text: str) -> str:
    """What separates prompt and solution: nothing after a prompt that ends in whitespace
    (a chat template's "assistant\\n"), else a newline (the plain format's "Solution:")."""
    return "" if prompt_text[-1:].isspace() else "\n"


def encode_example(tokenizer: Any, task: Any, problem: Problem, prompt_format: str,
                   system_prompt: str | None, prompt_template: str | None = None) -> tuple[list[int], int]:
    """(token ids of prompt + solution + eos, number of prompt tokens).

    The prompt ids are the ones RL and evaluation condition on (`task.prompt_ids`); the
    solution is tokenized on its own and appended, so the model learns to continue exactly
    those ids, and to stop: eos ends every target."""
    if problem.solution is None:
        raise ValueError(f"problem {problem.id} has no reference solution: SFT needs one per training problem")
    prompt = task.prompt_ids(tokenizer, problem, prompt_format, system_prompt, prompt_template)
    text = build_prompt_text(tokenizer, problem.question, prompt_format, system_prompt, task.instruction,
                             prompt_template)
    target = tokenizer(response_prefix(text) + problem.solution.strip(), add_special_tokens=False)["input_ids"]
    return prompt + list(target) + [tokenizer.eos_token_id], len(prompt)


def collate(examples: list[tuple[list[int], int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask, and labels = input_ids with the prompt and
    padding set to IGNORE_INDEX (HF's causal-LM loss shifts labels by one itself)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "labels": labels.to(device)}


# ---------------------------------------------------------------------------------------
# Held-out evaluation (greedy).

def held_out_eval(engine: Any, tokenizer: Any, task: Any, problems: list[Problem], cfg: SFTConfig
                  ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    params = evaluation_params(EvalConfig(temperature=0.0), cfg.max_new_tokens, cfg.seed)  # greedy
    result = evaluate(engine, tokenizer, task, problems, params, k=1,
                      prompt_format=cfg.task.prompt_format, system_prompt=cfg.task.system_prompt,
                      prompt_template=cfg.task.prompt_template)
    return summarize(result.per_problem, 1), result.per_problem


# ---------------------------------------------------------------------------------------
# Training.

def train_sft(cfg: SFTConfig, out: Path, preemption: Preemption | None = None) -> dict[str, Any]:
    """Train as configured and write the model folder `out` (atomically); return its metrics.
    `preemption`: the installed signal handlers, looked at after every step (None: none)."""
    from spo.sample.hf_engine import HFEngine  # imports transformers (~1 s): only when training

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # --- data
    task = build_task(cfg.task.name, **cfg.task.options)
    train_problems = task.problems("train", cfg.task.train_limit)
    eval_problems = task.problems("eval", cfg.task.eval_limit)
    val_problems = eval_problems
    if cfg.val_size:  # choose the model on held-back training problems, not on the eval split
        try:
            train_problems, val_problems = withhold_last(train_problems, cfg.val_size, "val_size")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if any(p.solution is None for p in train_problems):
        raise ConfigError(f"task.name: task {cfg.task.name!r} has no gold solutions, which SFT trains on "
                          "(arith_steps, gsm8k and math500 have them)")

    # --- model
    model, tokenizer = load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    device = next(model.parameters()).device
    max_len = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 10**9
    encoded = [encode_example(tokenizer, task, p, cfg.task.prompt_format, cfg.task.system_prompt,
                              cfg.task.prompt_template)
               for p in train_problems]
    examples = [e for e in encoded if len(e[0]) <= max_len]
    if len(examples) < len(encoded):
        log.warning("sft: dropped %d of %d examples longer than the model's %d positions",
                    len(encoded) - len(examples), len(encoded), max_len)
    if not examples:
        raise ConfigError(f"model: no training example fits the model's {max_len} positions")
    log.info("sft: %d examples (mean %.1f tokens), %d held-out problems, %.2fM parameters",
             len(examples), sum(len(e[0]) for e in examples) / len(examples), len(eval_problems),
             num_parameters(model) / 1e6)

    # --- optimizer and evaluation engine (the engine samples from the model being trained)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.max_steps)
    engine = HFEngine(model, tokenizer, batch_size=cfg.eval_batch_size)
    partial = partial_path(out)
    progress = _resume(partial, cfg, model, optimizer, scheduler)  # {} when starting afresh
    losses: list[dict[str, float]] = progress.get("losses", [])
    evals: list[dict[str, float]] = progress.get("evals", [])
    window: list[float] = progress.get("window", [])
    eval_seconds = progress.get("eval_seconds", 0.0)
    t_start -= progress.get("wall_seconds", 0.0)  # time spent before the crash still counts
    last_rows: list[dict[str, Any]] = []
    stopped_by = "max_steps"
    step = first = progress.get("step", 0)
    save_every = cfg.eval_every or FALLBACK_SAVE_EVERY

    def checkpoint() -> None:  # of the step just done
        _save_progress(partial, cfg, step, model=model, tokenizer=tokenizer, optimizer=optimizer,
                       scheduler=scheduler, losses=losses, evals=evals, window=window, eval_seconds=eval_seconds,
                       wall_seconds=time.perf_counter() - t_start)

    if preemption is not None:
        preemption.where = lambda: f"sft step {step}"
    _stop_if_preempted(preemption, partial, first, checkpoint, saved=True)  # a signal during start-up

    # --- the loop
    model.train()
    for step in range(first + 1, cfg.max_steps + 1):
        # consecutive slices of a seeded shuffle of the examples, reshuffled every epoch
        order = shuffled_positions(len(examples), (step - 1) * cfg.batch_size, cfg.batch_size, cfg.seed)
        batch = collate([examples[i] for i in order], tokenizer.pad_token_id, device)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"sft: loss is {loss.item()} at step {step}")
        loss.backward()
        optimizer.grads_to_master()
        optimizer.clip_grad_norm(cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        window.append(loss.item())

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            row = {"step": step, "loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0],
                   "seconds": time.perf_counter() - t_start}
            losses.append(row)
            window = []
            log.info("sft step %d/%d  loss %.4f  lr %.2e  %.0f s", step, cfg.max_steps, row["loss"], row["lr"],
                     row["seconds"])

        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
            t0 = time.perf_counter()
            summary, _ = held_out_eval(engine, tokenizer, task, val_problems, cfg) if val_problems else ({}, [])
            eval_seconds += time.perf_counter() - t0
            accuracy = summary.get("accuracy", float("nan"))
            evals.append({"step": step, "accuracy": accuracy,
                          "response_len_mean": summary.get("response_len_mean", float("nan")),
                          "truncated_frac": summary.get("truncated_frac", float("nan")),
                          "seconds": time.perf_counter() - t_start})
            log.info("sft validation @ step %d: greedy accuracy %.3f (%d held-back problems)", step, accuracy,
                     len(val_problems))
            if cfg.stop_at_accuracy is not None and accuracy >= cfg.stop_at_accuracy:
                stopped_by = "stop_at_accuracy"
                break
        saved = step % save_every == 0 and step < cfg.max_steps
        if saved:
            checkpoint()
        _stop_if_preempted(preemption, partial, step, checkpoint, saved)

    # The eval split, once, for the record: what RL starts from (nothing above looked at it).
    t0 = time.perf_counter()
    final, last_rows = held_out_eval(engine, tokenizer, task, eval_problems, cfg) if eval_problems else ({}, [])
    eval_seconds += time.perf_counter() - t0
    metrics = {
        "config_hash": config_hash(cfg),
        "steps": step,
        "stopped_by": stopped_by,
        "val_accuracy": evals[-1]["accuracy"] if evals else float("nan"),
        "val_problems": len(val_problems),
        "eval_accuracy": final.get("accuracy", float("nan")),
        "eval_problems": len(eval_problems),
        "train_examples": len(examples),
        "parameters": num_parameters(model),
        "wall_seconds": time.perf_counter() - t_start,
        "eval_seconds": eval_seconds,
        "evals": evals,
        "losses": losses,
    }
    _save(model, tokenizer, cfg, metrics, last_rows, out)
    shutil.rmtree(partial, ignore_errors=True)
    return metrics


def _save_progress(partial: Path, cfg: SFTConfig, step: int, *, model: Any, tokenizer: Any, optimizer: Any,
                   scheduler: Any, **progress: Any) -> None:
    """A checkpoint of step `step` in the partial folder (the previous one is pruned)."""
    root = partial / "checkpoints"
    with disk_full_is_fatal(f"the SFT checkpoint of step {step}",
                            lambda: f"free space, then run the same `spo sft` again to continue from {partial}"):
        staged = staging_dir(root, step)
        save_training_state(staged, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler)
        torch.save(rng_state(), staged / "rng_rank0.pt")
        write_state(staged, {"iteration": step, "step": step, "config_hash": config_hash(cfg), **progress})
        commit_checkpoint(root, staged, step, keep=1)


def _stop_if_preempted(preemption: Preemption | None, partial: Path, step: int, checkpoint: Any,
                       saved: bool) -> None:
    """The safe point after step `step` (0: none yet): when a signal came, call `checkpoint()`
    unless this step was just saved, and raise Preempted (exit 75, `spo.cli`)."""
    if preemption is None or not preemption.requested():
        return
    if not saved:
        checkpoint()
    raise preemption.stopped(partial, step)


def _resume(partial: Path, cfg: SFTConfig, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore the newest good checkpoint of an earlier, killed training of this config into
    the given objects and return its progress (step, metrics so far); {} when there is none."""
    ckpt = latest_checkpoint(partial, tidy=True)
    if ckpt is None:
        return {}
    state = read_state(ckpt)
    if state.get("config_hash") != config_hash(cfg):
        log.warning("sft: %s holds another config's checkpoint; starting afresh", partial)
        return {}
    load_training_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
    log.info("sft: continuing from %s (step %d)", ckpt, state["step"])
    return state


def _save(model: Any, tokenizer: Any, cfg: SFTConfig, metrics: dict[str, Any], eval_rows: list[dict[str, Any]],
          out: Path) -> None:
    """Write everything into a temporary sibling of `out`, then rename it into place, so a
    crash never leaves a folder that looks finished. A LoRA model is saved merged."""
    with disk_full_is_fatal(f"the SFT model folder {out}", lambda: "free space, then run the same `spo sft` "
                                                                   "again (it continues from its last checkpoint)"):
        with staged_folder(out) as tmp:
            save_hf_model(model, tmp, tokenizer)
            save_config(cfg, tmp / CONFIG_FILE)
            (tmp / EVAL_FILE).write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
            kill_point("sft.publish")


# ---------------------------------------------------------------------------------------
# Entry points.

def run_sft(cfg: SFTConfig, rerun: str = SFT_RERUN) -> SFTResult:
    """The SFT model of `cfg`: the cached folder when there is one, else trained now (stopped
    by SIGTERM & co as in `spo train`; `rerun`: how the user then continues)."""
    out = output_path(cfg)
    metrics = cached_metrics(out, cfg)
    if metrics is None:
        with RunLock(partial_path(out), wait=True):  # one trainer per folder; others wait for its result
            metrics = cached_metrics(out, cfg)
            if metrics is None:
                for stale in out.parent.glob(f".{out.name}.tmp-*"):  # from a kill while publishing
                    shutil.rmtree(stale, ignore_errors=True)
                with Preemption(cfg.preempt_grace, rerun, unit="step") as preemption:
                    return SFTResult(out, train_sft(cfg, out, preemption), cached=False)
    return SFTResult(out, metrics, cached=True)


def ensure_sft_model(cfg: SFTConfig) -> Path:
    """Path of the SFT model folder of `cfg` (trained first if not cached): for benchmarks."""
    return run_sft(cfg, rerun="the same command again (the SFT model it needs continues from that checkpoint)").path


def sft_model_for_preset(preset: str, overrides: list[str] = ()) -> Path:
    """`ensure_sft_model` for a preset name (`sft-arith`) or YAML path: what the model name
    `sft:<preset>` resolves to (`resolve_model_name`)."""
    return ensure_sft_model(load_sft_config(resolve_preset(preset), overrides))


def resolve_model_name(name: str) -> str:
    """The folder (as str) of the SFT model that `sft:<preset>` names, trained first when not
    cached (minutes; run `spo sft` beforehand to see its progress); any other name unchanged.

    Resolved here rather than in `spo.models` (which refuses `sft:` names), because this
    needs the task and training code that the model loader must not import. The trainer
    and `spo eval` call it before loading a model or tokenizer; this is how an RL preset
    names an SFT'd starting point without hard-coding a config hash."""
    if name.startswith(SFT_PREFIX):
        return str(sft_model_for_preset(name[len(SFT_PREFIX):]))
    return name


def load_model_and_tokenizer(model_cfg: ModelConfig, *, seed: int | None = None, device: Any = None) -> tuple[Any, Any]:
    """(policy, tokenizer) that a config's `model` section names, `sft:<preset>` names
    resolved first (`resolve_model_name`): what training, SFT, `spo eval` and `spo credit`
    load a model with."""
    resolved = dataclasses.replace(model_cfg, name_or_path=resolve_model_name(model_cfg.name_or_path))
    tokenizer = load_tokenizer(resolve_model_name(model_cfg.tokenizer or resolved.name_or_path))
    return load_policy_from_config(resolved, seed=seed, device=device), tokenizer


def describe(result: SFTResult) -> str:
    """A few lines for the terminal: where, whether cached, steps, accuracy curve, time."""
    m = result.metrics
    curve = "  ".join(f"{e['step']}:{e['accuracy']:.3f}" for e in m.get("evals", []))
    head = "cached SFT model (nothing trained)" if result.cached else "trained SFT model"
    return (f"{head}: {result.path}\n"
            f"steps {m['steps']} (stopped by {m['stopped_by']}), greedy accuracy on the eval split "
            f"{m['eval_accuracy']:.3f} ({m['eval_problems']} problems), {m['wall_seconds']:.0f} s\n"
            f"validation accuracy ({m.get('val_problems', 0)} held-back training problems) by step: {curve}")


__all__ = ["SFT_PREFIX", "SFTResult", "config_hash", "ensure_sft_model", "load_model_and_tokenizer",
           "resolve_model_name", "run_sft",
           "sft_model_for_preset", "train_sft"]
