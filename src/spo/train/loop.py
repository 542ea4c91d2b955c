"""The training loop. Per iteration:

    batch = algorithm.collect(iteration)   sample -> score -> [partition -> values] -> advantages
    update(batch.samples)                  PPO-clip epochs over mini-batches (spo.optimize.update)
    engine.sync_weights()                  the engine samples from the new weights
    log, evaluate, checkpoint

The algorithm (`algorithm.name`: grpo, rloo, spo_chain, spo_tree, ...) comes from
spo.algorithms, the engine (`sampling.engine`) from spo.sample.factory; this file names
neither. Data parallelism comes from accelerate: every process takes 1/W of the
iteration's prompts (whole groups, so group baselines stay local), samples and scores
them, and trains on its share; DDP averages gradients (FSDP shards the policy and its
optimizer state: spo.distributed), and the loss is normalised by the GLOBAL token count
of each mini-batch, so W processes take the same optimizer steps as one process with the
same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from spo.algorithms.base import Algorithm, Batch, Context, iteration_metrics
from spo.algorithms.registry import algorithm_class
from spo.config import ConfigError, RunConfig
from spo.config_io import save_config, to_dict
from spo.distributed import Dist, make_accelerator
from spo.evaluate.evaluator import evaluate, evaluation_params, summarize
from spo.models import load_reference
from spo.optimize.optimizer import build_optimizer
from spo.optimize.update import NonFiniteLossError, PolicyUpdate
from spo.sample.factory import build_engine
from spo.seeds import SALT_EVAL, derive_seed
from spo.tasks.problems import drop_long_questions, withhold_last
from spo.tasks.base import Task
from spo.tasks.registry import build_task
from spo.train import checkpoint as ckpt
from spo.train.faults import peer_failures_reported
from spo.train.preemption import Preemption
from spo.train.progress import Progress
from spo.train.run_dir import prepare_run_dir, run_folder
from spo.train.resume_check import check_resume_config, record_config_changes
from spo.train.run_log import RunLog, metrics_at_checkpoint
from spo.train.sft import load_model_and_tokenizer

__all__ = ["NonFiniteLossError", "Trainer", "prepare_run_dir", "train"]

log = logging.getLogger("spo.train")


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, task: Task | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.acc = make_accelerator(cfg.collective_timeout)  # DDP or FSDP, from `accelerate launch`
        self.dist = dist = Dist(self.acc)
        for key, value in [("sampling.prompts_per_iteration", cfg.sampling.prompts_per_iteration),
                           ("algorithm.mini_batch_size", cfg.algorithm.mini_batch_size)]:
            if value % dist.world:
                raise ConfigError(f"{key}={value} must be divisible by the number of processes ({dist.world})")
        algorithm_cls = algorithm_class(cfg.algorithm.name)  # an unknown name fails before any loading
        dist.check_supported(cfg, trains_another_model=algorithm_cls.save_files is not Algorithm.save_files)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        # --- task and data
        self.task = task if task is not None else build_task(cfg.task.name, **cfg.task.options)
        problems = self.task.problems("train", cfg.task.train_limit)
        self.eval_problems = self.task.problems("eval", cfg.task.eval_limit)
        if cfg.eval.split == "validation":  # withhold the last training problems and evaluate on them
            try:
                problems, self.eval_problems = withhold_last(problems, cfg.eval.validation_size,
                                                             "eval.validation_size")
            except ValueError as err:
                raise ConfigError(str(err)) from None
        self.train_problems = problems
        if not problems:
            raise ValueError(f"task {cfg.task.name!r} has no training problems")
        if (cfg.eval.at_start or cfg.eval.at_end or cfg.eval.every > 0) and not self.eval_problems:
            raise ConfigError(
                f"task {cfg.task.name!r} has no held-out problems left (for reasoning-gym, eval items that also "
                "appear in train are dropped: a tiny problem space can leave none); enlarge the task, shrink "
                "train_size, or set eval.at_start=false eval.at_end=false eval.every=0")

        # --- models: the policy, and a frozen copy of its start for the KL term (LoRA: the base)
        policy, self.tokenizer = load_model_and_tokenizer(cfg.model, seed=cfg.seed, device=self.acc.device)
        t = cfg.task
        problems = self.train_problems = drop_long_questions(
            problems, lambda p: len(self.task.prompt_ids(self.tokenizer, p, t.prompt_format, t.system_prompt,
                                                         t.prompt_template)), t.max_question_tokens)
        if not problems:
            raise ConfigError(f"task.max_question_tokens={cfg.task.max_question_tokens} leaves no training problem")
        reference = load_reference(policy) if cfg.algorithm.kl_coef > 0 else None

        # --- algorithm, optimizer, engine. The lr schedule counts the most optimizer steps an
        # iteration can take (SPO-tree trains a varying number of edges).
        samples = algorithm_cls.max_samples_per_iteration(cfg)
        steps_per_iteration = cfg.algorithm.epochs * math.ceil(samples / cfg.algorithm.mini_batch_size)
        self.policy = dist.prepare(policy)  # FSDP: sharded, so the optimizer is built over the shards
        self.model = self.acc.unwrap_model(self.policy)
        self.optimizer, self.scheduler = build_optimizer(self.policy, cfg.optim, cfg.iterations * steps_per_iteration)
        self.engine = build_engine(cfg.sampling, self.model, self.tokenizer)
        pad_id = self.tokenizer.pad_token_id
        self.algorithm = algorithm_cls(Context(cfg, self.engine, self.tokenizer, self.task, problems, self.model,
                                               dist, pad_id, reference))
        self.update = PolicyUpdate(self.policy, reference if self.algorithm.kl_in_loss else None, self.optimizer,
                                   self.scheduler, self.acc, dist, cfg, steps_per_iteration, pad_id)

        self.start_iteration, self.where = 0, "start-up"  # where: named when a signal comes
        self.spent: dict[str, float] = {}  # tokens, samples, seconds used so far (and failed reward calls)
        self.reward_errors_seen = 0  # the task's failed reward calls, all processes, as of the last record
        self.log = RunLog(run_dir) if dist.is_main else None
        if resume:
            self._resume()
        elif dist.is_main:
            save_config(cfg, run_dir / "config.yaml")
        # the engine starts from the policy's weights as they are now (built or resumed), pushed
        # here on every process: under FSDP the push gathers shards, a collective that must not
        # wait on a process that samples nothing (an evaluation with no problems of its own)
        self.engine.sync_weights()

    # ------------------------------------------------------------------ the loop

    def train(self, preemption: Preemption) -> Path:
        """Train to the end; `preemption`: the signal handlers (installed before the start-up)."""
        cfg = self.cfg
        progress = Progress(enabled=cfg.progress, quiet=not self.dist.is_main)
        preemption.where = lambda: progress.current or self.where
        preemption.stop_if_requested(self, self.start_iteration, saved=True)  # a signal during start-up
        if cfg.eval.at_start and self.start_iteration == 0:
            self.evaluate(0, progress)
        done = self.start_iteration
        for it in range(self.start_iteration, cfg.iterations):
            self.where = f"iter {it + 1}"
            record = self.step(it, progress)
            if self.dist.is_main:
                self.log.log(record)
                progress.summary(record, cfg.iterations)
            done = it + 1
            last = done == cfg.iterations or self.budget_spent()
            if cfg.eval.every and done % cfg.eval.every == 0 and not last:
                self.evaluate(done, progress)
            if saved := (cfg.save_every and done % cfg.save_every == 0) or last:
                self.save_checkpoint(done)
            if last:
                break
            preemption.stop_if_requested(self, done, saved)  # SIGTERM & co: checkpoint, exit (75)
        if cfg.eval.at_end:
            self.evaluate(done, progress)
        if self.log:
            self.log.close()
        self.dist.barrier()
        return self.run_dir

    @contextlib.contextmanager
    def naming_last_good(self) -> Iterator[None]:
        """A NaN/inf loss (the policy's, or a critic's while collecting) names the last good
        checkpoint, to resume from."""
        try:
            yield
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}; last good checkpoint: {ckpt.latest_checkpoint(self.run_dir)}") from None

    def save_checkpoint(self, done: int) -> None:
        self.where = f"checkpoint {done}"
        ckpt.save_checkpoint(self.run_dir, done, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                             scheduler=self.scheduler, algorithm=self.algorithm, dist=self.dist,
                             state={"config": to_dict(self.cfg)}, keep=self.cfg.keep_checkpoints)

    def step(self, it: int, progress: Progress) -> dict[str, Any]:
        """One iteration: collect a batch, update the policy on it, sync the engine; returns
        the iteration's metrics (its episodes are written to the episode log)."""
        with self.dist.gathered(self.policy), self.naming_last_good():  # FSDP: full weights while sampling
            batch = self.algorithm.collect(it, progress)
        self.engine.release_memory()  # vLLM's sleep mode frees its memory for the update
        t0 = time.perf_counter()
        with self.naming_last_good():
            stats = self.update(batch.samples, it, progress)
        batch.timings["optimize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.engine.sync_weights()  # the HF engine samples from the policy itself: ~0 s
        batch.timings["sync"] = time.perf_counter() - t0
        self.write_episodes(it, batch.episode_log)
        return self.iteration_record(it, batch, stats)

    # ------------------------------------------------------------------ metrics and logs

    def iteration_record(self, it: int, batch: Batch, stats: dict[str, float]) -> dict[str, Any]:
        """The iteration's metrics over all processes (one line of metrics.jsonl), with the
        running totals of what the run has used (budgets, plots)."""
        record = iteration_metrics(it, batch, stats, self.dist)
        self.algorithm.finish_record(record, batch)
        used = {"tokens": record["tokens_generated_total"], "samples": record["samples_generated"],
                "seconds": self.dist.global_sum(record["time_total"]) / self.dist.world}  # the same on every process
        if hasattr(self.task, "reward_errors"):  # user rewards that failed (scored 0) since the last record
            seen, self.reward_errors_seen = self.reward_errors_seen, round(self.dist.global_sum(self.task.reward_errors))
            record["reward_errors"] = used["reward_errors"] = self.reward_errors_seen - seen
        for key, value in used.items():
            self.spent[key] = self.spent.get(key, 0) + value
            record[f"{key}_cumulative"] = self.spent[key]
        return record

    def budget_spent(self) -> bool:
        c = self.cfg
        return (c.max_tokens is not None and self.spent["tokens"] >= c.max_tokens) or (
            c.max_train_seconds is not None and self.spent["seconds"] >= c.max_train_seconds)

    def write_episodes(self, it: int, records: list[dict[str, Any]]) -> None:
        if self.cfg.log_episodes:
            records = self.dist.gather(records)
            if self.dist.is_main:
                self.log.write_episodes(it + 1, records)

    def evaluate(self, iteration: int, progress: Progress) -> None:
        """Held-out accuracy (pass@k, maj@k) of the current policy, logged as an eval line."""
        cfg, dist = self.cfg, self.dist
        params = evaluation_params(cfg.eval, cfg.sampling.max_new_tokens,
                                   derive_seed(cfg.seed, iteration, dist.rank, SALT_EVAL), cfg.sampling.stop)
        problems = self.eval_problems[dist.rank :: dist.world]
        with progress.phase(f"eval after iter {iteration}", total=None), dist.gathered(self.policy):
            result = evaluate(self.engine, self.tokenizer, self.task, problems, params, k=cfg.eval.samples,
                              prompt_format=cfg.task.prompt_format, system_prompt=cfg.task.system_prompt,
                              prompt_template=cfg.task.prompt_template)
        rows = dist.gather(result.per_problem)
        if dist.is_main:
            summary = summarize(rows, cfg.eval.samples)
            self.log.log({"kind": "eval", "iteration": iteration, **summary})
            progress.write(f"eval @ iter {iteration}: "
                           + "  ".join(f"{k}={v:.3f}" for k, v in summary.items() if isinstance(v, float)))

    # ------------------------------------------------------------------ resume

    def _resume(self) -> None:
        """Continue from the newest good checkpoint (damaged newer ones are set aside): weights,
        optimizer, RNG, algorithm state, the logs as they were when it was saved, the budget
        spent. A run whose training was over has only its final evaluation left, if that."""
        path = ckpt.latest_checkpoint(self.run_dir, tidy=self.dist.is_main)
        if path is None:
            raise FileNotFoundError(f"--resume {self.run_dir}: no complete checkpoint under {self.run_dir}/checkpoints"
                                    f" (`--resume auto --output-dir {self.run_dir}` starts it again)")
        state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                     algorithm=self.algorithm, rank=self.dist.rank, dist=self.dist)
        done = self.start_iteration = int(state["iteration"])
        rows, final_eval = metrics_at_checkpoint(self.run_dir, done, state.get("metrics_bytes"))
        if self.log:
            self.log.resume_at(done, state.get("metrics_bytes"))
        trained = [r for r in rows if r.get("kind", "train") == "train"]
        if trained:
            self.spent = {k: trained[-1].get(f"{k}_cumulative", 0) for k in ("tokens", "samples", "seconds",
                                                                              "reward_errors")}
        if done >= self.cfg.iterations or (trained and self.budget_spent()):
            at_end = self.cfg.eval.at_end and not final_eval
            self.cfg = dataclasses.replace(self.cfg, iterations=done, eval=dataclasses.replace(self.cfg.eval,
                                                                                                 at_end=at_end))
        log.info("resumed from %s (iteration %d)", path, done)


def train(cfg: RunConfig, resume_dir: str | None = None, task: Task | None = None,
          allow_config_change: bool = False, rerun: str | None = None) -> Path:
    """Run or resume training; returns the run folder. `resume_dir`: None (a new run), a run
    folder, or "auto" (spo.train.run_dir). `task`: instead of cfg.task's. A config that changes
    results is not resumed unless `allow_config_change` (spo.train.resume_check). `rerun`: what
    a preempted run's message advises running to continue (None: `spo train --resume`)."""
    with run_folder(cfg.output_dir, resume_dir) as (run_dir, resuming), Preemption(cfg.preempt_grace, rerun) as preemption, \
            peer_failures_reported(run_dir, cfg.collective_timeout, lambda: ckpt.latest_checkpoint(run_dir, hashes=False)):
        changes = check_resume_config(run_dir, cfg, allow_config_change) if resuming else {}
        trainer = Trainer(cfg, run_dir, resume=resuming, task=task)
        if trainer.dist.is_main:
            record_config_changes(run_dir, cfg, changes, trainer.start_iteration)
        return trainer.train(preemption)
