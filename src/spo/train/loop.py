"""The training loop: sample -> score -> estimate -> optimize -> log, once per iteration.

Reads top to bottom. Data parallelism comes from accelerate: every process takes
1/W of the iteration's prompts (whole groups, so group baselines stay local), samples
and scores them, and trains on its share; DDP averages gradients, and the loss is
normalised by the *global* token count of each mini-batch, so W processes take the
same optimizer steps as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from spo.config import ConfigError, RunConfig, save_config, to_dict
from spo.estimate.chain_values import estimate_chain_values
from spo.estimate.registry import EstimatorInputs, get_estimator
from spo.estimate.tree import edge_advantages, node_values
from spo.evaluate.evaluator import evaluate
from spo.models import load_policy_from_config, load_reference, load_tokenizer
from spo.optimize.losses import (
    aggregate_loss,
    kl_k3,
    masked_whiten,
    ppo_clip_loss,
    probability_mask,
)
from spo.optimize.replay import ReplayBuffer, select_edges
from spo.partition.segments import cutpoint_boundaries, cutpoints_from_logprobs, fixed_boundaries
from spo.sample.engine import SamplingParams
from spo.sample.hf_engine import HFEngine, compute_logprobs
from spo.sample.tree import Tree, sample_trees
from spo.tasks.problems import Problem, withhold_last
from spo.tasks.registry import Task, build_task
from spo.train import checkpoint as ckpt
from spo.train.optim import build_optimizer
from spo.train.progress import Progress
from spo.train.run_log import RunLog, read_metrics

log = logging.getLogger("spo.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops before the bad step is applied."""


# ---------------------------------------------------------------------------------------
# One trained sequence.

@dataclass
class Episode:
    problem_index: int
    group_id: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # old log-probs, one per response token
    finish_reason: str
    reward: float = 0.0
    text: str = ""
    advantages: list[float] = field(default_factory=list)  # before whitening
    loss_mask: list[int] = field(default_factory=list)
    segments: dict[str, list] = field(default_factory=dict)  # SPO: boundaries, values, ...

    def log_record(self) -> dict[str, Any]:
        return {
            **self.segments,
            "problem_index": self.problem_index,
            "group_id": self.group_id,
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
            "reward": self.reward,
            "advantages": self.advantages,
            "loss_mask": self.loss_mask,
            "response": self.text,
        }


class _RunningMeans:
    """Weighted means of per-micro-batch statistics (weights: counted tokens)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, key: str, value: float, weight: float = 1.0) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value * weight
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def add_all(self, values: dict[str, float], weight: float) -> None:
        for k, v in values.items():
            self.add(k, v, weight)

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / max(self.weights[k], 1e-12) for k in self.sums}


def pad_rows(rows: list[list[float]], width: int, value: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


# ---------------------------------------------------------------------------------------
# Which prompts an iteration uses: a seeded pass over the training set, reshuffled each
# pass. A pure function of (seed, iteration), so a resumed run picks the same prompts.

def iteration_prompts(num_problems: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    start = iteration * per_iteration
    out = []
    for pos in range(start, start + per_iteration):
        epoch, offset = divmod(pos, num_problems)
        order = list(range(num_problems))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[offset])
    return out


def sampling_seed(seed: int, iteration: int, rank: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + iteration * 7919 + rank * 104_729 + salt) % (2**62)


# ---------------------------------------------------------------------------------------
# The trainer.

class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False):
        from accelerate import Accelerator

        self.cfg = cfg
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.run_dir = run_dir
        self._check_divisibility()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        # --- task and data
        self.task: Task = build_task(cfg.task.name, **cfg.task.options)
        self.train_problems: list[Problem] = self.task.problems("train", cfg.task.train_limit)
        self.eval_problems: list[Problem] = self.task.problems("eval", cfg.task.eval_limit)
        if cfg.eval.split == "validation":  # withhold the last training problems and evaluate on them
            try:
                self.train_problems, self.eval_problems = withhold_last(
                    self.train_problems, cfg.eval.validation_size, "eval.validation_size")
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if not self.train_problems:
            raise ValueError(f"task {cfg.task.name!r} has no training problems")
        wants_eval = cfg.eval.at_start or cfg.eval.at_end or cfg.eval.every > 0
        if wants_eval and not self.eval_problems:
            raise ConfigError(
                f"task {cfg.task.name!r} has no held-out problems left (for reasoning-gym, eval items that also "
                "appear in train are dropped: a tiny problem space can leave none); enlarge the task, shrink "
                "train_size, or set eval.at_start=false eval.at_end=false eval.every=0"
            )

        # --- models
        m = cfg.model
        self.tokenizer = load_tokenizer(m.tokenizer or m.name_or_path)
        policy = load_policy_from_config(m, seed=cfg.seed, device=self.acc.device)
        self.ref = None
        if cfg.algorithm.kl_coef > 0:
            # A copy of the initial policy (LoRA: the base weights), frozen.
            self.ref = load_reference(policy)
        self.prompt_cache: dict[int, list[int]] = {}

        # --- estimator; SPO-tree trains on a varying number of tree edges, at most
        # prompts x max_edges_per_prompt, with leftovers in a replay buffer
        self.estimator = get_estimator(cfg.algorithm.estimator)
        self.tree = getattr(self.estimator, "needs_tree", False)
        self.replay: ReplayBuffer[Episode] | None = ReplayBuffer(cfg.algorithm.replay_max_age) if self.tree else None

        # --- optimizer: the LR schedule counts the most optimizer steps an iteration can take
        per_prompt = cfg.algorithm.max_edges_per_prompt if self.tree else cfg.sampling.group_size
        samples = cfg.sampling.prompts_per_iteration * per_prompt
        self.steps_per_iteration = cfg.algorithm.epochs * math.ceil(samples / cfg.algorithm.mini_batch_size)
        self.optimizer, self.scheduler = build_optimizer(
            policy, cfg.optim, cfg.iterations * self.steps_per_iteration
        )
        self.policy = self.acc.prepare(policy)
        self.engine = HFEngine(self.acc.unwrap_model(self.policy), self.tokenizer,
                               batch_size=cfg.sampling.batch_size)

        self.start_iteration = 0
        self.spent: dict[str, float] = {}  # tokens, samples, seconds used so far
        self.log = RunLog(run_dir) if self.acc.is_main_process else None
        if resume:
            self._load_checkpoint()
        elif self.acc.is_main_process:
            save_config(cfg, run_dir / "config.yaml")

    def _check_divisibility(self) -> None:
        c, w = self.cfg, self.world
        for key, value in [("sampling.prompts_per_iteration", c.sampling.prompts_per_iteration),
                           ("algorithm.mini_batch_size", c.algorithm.mini_batch_size)]:
            if value % w:
                raise ConfigError(f"{key}={value} must be divisible by the number of processes ({w})")

    # ------------------------------------------------------------------ main loop

    def train(self) -> Path:
        cfg = self.cfg
        progress = Progress(enabled=cfg.progress, quiet=not self.acc.is_main_process)
        if cfg.eval.at_start and self.start_iteration == 0:
            self._evaluate(0, progress)
        done = self.start_iteration
        for it in range(self.start_iteration, cfg.iterations):
            record = self._iteration(it, progress)
            self._add_spent(record)
            if self.acc.is_main_process:
                self.log.log(record)
                progress.summary(record, cfg.iterations)
            done = it + 1
            last = done == cfg.iterations or self._budget_spent()
            if cfg.eval.every and done % cfg.eval.every == 0 and not last:
                self._evaluate(done, progress)
            if (cfg.save_every and done % cfg.save_every == 0) or last:
                self._save_checkpoint(done)
            if last:
                break
        if cfg.eval.at_end:
            self._evaluate(done, progress)
        if self.log:
            self.log.close()
        self.acc.wait_for_everyone()
        return self.run_dir

    def _add_spent(self, record: dict[str, Any]) -> None:
        """Running totals of what the run has used, logged with each iteration (budgets, plots)."""
        seconds = self._global_sum(record["time_total"]) / self.world  # the same number on every process
        for key, value in [("tokens", record["tokens_generated_total"]), ("samples", record["samples_generated"]),
                           ("seconds", seconds)]:
            self.spent[key] = self.spent.get(key, 0) + value
            record[f"{key}_cumulative"] = self.spent[key]

    def _budget_spent(self) -> bool:
        c = self.cfg
        return (c.max_tokens is not None and self.spent["tokens"] >= c.max_tokens) or (
            c.max_train_seconds is not None and self.spent["seconds"] >= c.max_train_seconds)

    def _iteration(self, it: int, progress: Progress) -> dict[str, Any]:
        cfg = self.cfg
        timings: dict[str, float] = {}
        self.counts: dict[str, float] = {}  # extra work done by SPO (MC states, tree nodes, ...)

        # 1. sample: this process's share of the iteration's prompts, G responses each
        #    (SPO-tree: one tree each)
        t0 = time.perf_counter()
        indices = iteration_prompts(len(self.train_problems), cfg.sampling.prompts_per_iteration, it, cfg.seed)
        local = indices[self.rank :: self.world]
        # group id: the prompt's position in the iteration, unique even if a problem repeats
        group_ids = list(range(self.rank, len(indices), self.world))
        contexts = [self._prompt_ids(i) for i in local]
        params = self._sampling_params(sampling_seed(cfg.seed, it, self.rank))
        if self.tree:
            return self._tree_iteration(it, local, group_ids, contexts, params, progress)
        with progress.phase(f"iter {it + 1} sample", total=None):
            rollouts = self.engine.generate(contexts, params, n=cfg.sampling.group_size)
        episodes = [
            Episode(problem_index=pi, group_id=gid, prompt_ids=r.context_ids, response_ids=r.response_ids,
                    logprobs=r.logprobs, finish_reason=r.finish_reason)
            for pi, gid, group in zip(local, group_ids, rollouts) for r in group
        ]
        timings["sample"] = time.perf_counter() - t0

        # 2. score
        t0 = time.perf_counter()
        self._score(episodes)
        timings["score"] = time.perf_counter() - t0

        # 3. estimate advantages (pure function from the registry) and the loss mask
        t0 = time.perf_counter()
        if cfg.algorithm.old_logprobs == "recompute":
            self._recompute_old_logprobs(episodes)
        self._estimate(episodes, it)
        timings["estimate"] = time.perf_counter() - t0

        # 4. optimize
        t0 = time.perf_counter()
        stats = self._optimize(episodes, it, progress)
        timings["optimize"] = time.perf_counter() - t0

        # 5. log
        self._write_episodes(it, [e.log_record() for e in episodes])
        responses = [(e.reward, len(e.response_ids), e.finish_reason == "length") for e in episodes]
        return self._iteration_record(it, episodes, responses, sum(r[1] for r in responses), stats, timings)

    def _tree_iteration(self, it, local, group_ids, contexts, params, progress) -> dict[str, Any]:
        """SPO-tree's iteration: sample trees -> score leaves -> values and edges -> optimize."""
        cfg, a = self.cfg, self.cfg.algorithm
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        with progress.phase(f"iter {it + 1} sample tree", total=None):
            trees = sample_trees(self.engine, contexts, params, a.tree_branching, a.segment_length)
        timings["sample"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        leaf_rewards = [self._score_leaves(tree, pi) for tree, pi in zip(trees, local)]
        timings["score"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        groups, tree_logs = [], []
        for tree, pi, gid, rewards in zip(trees, local, group_ids, leaf_rewards):
            edges, record = self._tree_edges(tree, pi, gid, rewards, it)
            groups.append(edges)
            tree_logs.append(record)
        rng = random.Random(sampling_seed(cfg.seed, it, self.rank, salt=11))
        chosen = select_edges(groups, self.replay, a.max_edges_per_prompt, it, rng)
        for born, e in chosen.replayed:
            e.segments.update(replayed=True, age=it - born)
        if a.old_logprobs == "recompute":  # replayed edges keep the log-probs they were sampled with
            self._recompute_old_logprobs(chosen.fresh)
        episodes = chosen.fresh + [e for _, e in chosen.replayed]
        self._estimate(episodes, it)
        timings["estimate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stats = self._optimize(episodes, it, progress)
        timings["optimize"] = time.perf_counter() - t0

        # Log each tree with the fresh edges it trained, then the replayed edges.
        for record in tree_logs:
            record["edges"] = [e.log_record() for e in chosen.fresh if e.group_id == record["group_id"]]
        self._write_episodes(it, tree_logs + [{"kind": "replayed_edge", **e.log_record()} for _, e in chosen.replayed])
        nodes = [n for tree in trees for n in tree.nodes[1:]]
        self.counts = {
            "tree_nodes": len(nodes),
            "tree_leaves": sum(n.leaf for n in nodes),
            "edges_nonzero": sum(len(g) for g in groups),
            "edges_zero_dropped": len(nodes) - sum(len(g) for g in groups),
            "edges_fresh": len(chosen.fresh),
            "edges_replayed": len(chosen.replayed),
            "edges_parked": chosen.parked,
            "edges_expired": chosen.expired,
            "replay_buffer": len(self.replay),
        }
        responses = [
            (rewards[n.id], len(tree.prefix(n.id)), n.truncated)
            for tree, rewards in zip(trees, leaf_rewards) for n in tree.nodes if n.leaf
        ]
        generated = sum(tree.generated_tokens for tree in trees)
        record = self._iteration_record(it, episodes, responses, generated, stats, timings)
        record["replay_frac"] = record["edges_replayed"] / max(record["edges_fresh"] + record["edges_replayed"], 1)
        record["leaf_accuracy"] = record["accuracy"]
        # A leaf-weighted mean over-weights paths that branched more (longer ones); the root's
        # value weights each path by its probability, so it estimates the policy's mean reward.
        root_values = self._global_sum(sum(t["nodes"][0]["value"] for t in tree_logs))
        record["reward_mean"] = root_values / self._global_sum(len(tree_logs))
        return record

    def _score(self, episodes: list[Episode]) -> None:
        texts = self.tokenizer.batch_decode([e.response_ids for e in episodes], skip_special_tokens=True)
        for e, text in zip(episodes, texts):
            e.text = text
            e.reward = self.task.reward(self.train_problems[e.problem_index], text, e.finish_reason == "length")

    def _score_leaves(self, tree: Tree, problem_index: int) -> list[float | None]:
        """Reward of every leaf's full response (None for internal nodes); truncated leaves score 0."""
        rewards: list[float | None] = [None] * len(tree.nodes)
        for n in tree.leaves():
            text = self.tokenizer.decode(tree.prefix(n.id), skip_special_tokens=True)
            rewards[n.id] = self.task.reward(self.train_problems[problem_index], text, n.truncated)
        return rewards

    def _tree_edges(self, tree: Tree, problem_index: int, group_id: int, rewards, it: int):
        """Edge samples with nonzero advantage, and the tree's log record (nodes with V and A)."""
        parents = [n.parent for n in tree.nodes]
        values = node_values(parents, rewards)
        advantages = edge_advantages(parents, values, sibling_std=self.cfg.algorithm.sibling_std)
        edges = []
        for n in tree.nodes[1:]:
            if abs(advantages[n.id]) < 1e-9:  # all siblings scored alike: no signal
                continue
            edges.append(Episode(
                problem_index=problem_index, group_id=group_id,
                prompt_ids=tree.prompt_ids + tree.prefix(n.parent), response_ids=n.token_ids,
                logprobs=n.logprobs, finish_reason=n.finish_reason, reward=values[n.id],
                text=self.tokenizer.decode(n.token_ids, skip_special_tokens=True),
                segments={"node": n.id, "parent": n.parent, "depth": n.depth, "value": values[n.id],
                          "parent_value": values[n.parent], "edge_advantage": advantages[n.id],
                          "sampled_iteration": it + 1, "replayed": False, "age": 0},
            ))
        nodes = [
            {"id": n.id, "parent": n.parent, "depth": n.depth, "token_ids": n.token_ids, "logprobs": n.logprobs,
             "finish_reason": n.finish_reason, "leaf": n.leaf, "truncated": n.truncated,
             "reward": rewards[n.id], "value": values[n.id], "advantage": advantages[n.id]}
            for n in tree.nodes
        ]
        record = {"kind": "tree", "problem_index": problem_index, "group_id": group_id,
                  "prompt_ids": tree.prompt_ids, "nodes": nodes}
        return edges, record

    def _write_episodes(self, it: int, records: list[dict[str, Any]]) -> None:
        if self.cfg.log_episodes:
            records = gather_object(records)
            if self.acc.is_main_process:
                self.log.write_episodes(it + 1, records)

    # ------------------------------------------------------------------ stages

    def _prompt_ids(self, index: int) -> list[int]:
        if index not in self.prompt_cache:
            self.prompt_cache[index] = self.task.prompt_ids(
                self.tokenizer, self.train_problems[index], self.cfg.task.prompt_format, self.cfg.task.system_prompt
            )
        return self.prompt_cache[index]

    def _boundaries(self, episode: Episode) -> tuple[list[int], list[int]]:
        """(boundaries, cutpoints) of one response under the configured partition rule."""
        a = self.cfg.algorithm
        cuts = cutpoints_from_logprobs(episode.logprobs, a.rho)
        if a.partition == "fixed":
            return fixed_boundaries(len(episode.response_ids), a.segment_length, a.max_segments), cuts
        return cutpoint_boundaries(cuts, len(episode.response_ids), a.interval, a.max_segments), cuts

    def _chain_values(self, episodes: list[Episode], it: int) -> tuple[list[list[int]], list[torch.Tensor]]:
        """SPO-chain: partition every response, then MC values at its boundaries."""
        cfg, a = self.cfg, self.cfg.algorithm
        parts = [self._boundaries(e) for e in episodes]
        boundaries = [b for b, _ in parts]

        def score(i: int, response_ids: list[int], truncated: bool) -> float:
            text = self.tokenizer.decode(response_ids, skip_special_tokens=True)
            return self.task.reward(self.train_problems[episodes[i].problem_index], text, truncated)

        params = self._sampling_params(sampling_seed(cfg.seed, it, self.rank, salt=7))
        chain = estimate_chain_values(
            self.engine, [e.prompt_ids for e in episodes], [e.response_ids for e in episodes],
            [e.reward for e in episodes], [e.group_id for e in episodes], boundaries, score,
            num_samples=a.mc_samples, params=params, start_value=a.start_value,
        )
        for e, (b, cuts), v, n in zip(episodes, parts, chain.values, chain.value_samples):
            e.segments = {"boundaries": b, "values": v, "value_samples": n, "cutpoints": cuts}
        self.counts = {"mc_states": chain.states, "mc_tokens": chain.continuation_tokens,
                       "mc_continuations": chain.states * a.mc_samples}
        return boundaries, [torch.tensor(v, dtype=torch.float32) for v in chain.values]

    def _sampling_params(self, seed: int) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                              top_p=s.top_p, top_k=s.top_k, seed=seed)

    def _estimate(self, episodes: list[Episode], it: int) -> None:
        """Fill each episode's advantages (before whitening) and loss mask."""
        a = self.cfg.algorithm
        if not episodes:  # SPO-tree: every edge of this process's trees had advantage 0
            return
        width = max(len(e.response_ids) for e in episodes)
        response_mask = pad_rows([[1.0] * len(e.response_ids) for e in episodes], width)
        inputs = EstimatorInputs(
            rewards=torch.tensor([e.reward for e in episodes], dtype=torch.float32),
            group_ids=torch.tensor([e.group_id for e in episodes], dtype=torch.long),
            response_mask=response_mask,
        )
        if getattr(self.estimator, "needs_chain_values", False):
            inputs.boundaries, inputs.values = self._chain_values(episodes, it)
        if self.tree:
            inputs.extras["edge_advantages"] = torch.tensor([e.segments["edge_advantage"] for e in episodes])
        options = {"scale_by_std": a.scale_by_std} if a.estimator == "grpo" else {}
        advantages = self.estimator(inputs, **options)
        old_logprobs = pad_rows([e.logprobs for e in episodes], width)
        rho = (a.mask_rho if a.mask_rho is not None else a.rho) if a.prob_mask else None
        loss_mask = probability_mask(old_logprobs, response_mask, rho)
        for i, e in enumerate(episodes):
            n = len(e.response_ids)
            e.advantages = advantages[i, :n].tolist()
            e.loss_mask = loss_mask[i, :n].int().tolist()

    @torch.no_grad()
    def _recompute_old_logprobs(self, episodes: list[Episode]) -> None:
        model = self.acc.unwrap_model(self.policy)
        was_training = model.training
        model.eval()
        scored = compute_logprobs(model, [e.prompt_ids for e in episodes], [e.response_ids for e in episodes],
                                  self.cfg.sampling.temperature, self.cfg.algorithm.micro_batch_size,
                                  pad_token_id=self.engine.pad_token_id)
        model.train(was_training)
        for e, lp in zip(episodes, scored.to_lists()):
            e.logprobs = lp

    def _global_sum(self, value: float) -> float:
        t = torch.tensor([float(value)], device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item()) if self.world > 1 else float(value)

    def _optimize(self, episodes: list[Episode], it: int, progress: Progress) -> dict[str, float]:
        """PPO-clip epochs over mini-batches of this iteration's episodes."""
        cfg, a = self.cfg, self.cfg.algorithm
        n = len(episodes)
        n_global = int(self._global_sum(n))
        if n_global == 0:  # SPO-tree: no edge carried signal; nothing to train on anywhere
            self._finish_schedule(it)
            return {"lr": self.scheduler.get_last_lr()[0]}
        width = max((len(e.response_ids) for e in episodes), default=1)
        adv = pad_rows([e.advantages for e in episodes], width)
        mask = pad_rows([e.loss_mask for e in episodes], width)
        old_lp = pad_rows([e.logprobs for e in episodes], width)
        if a.whiten == "global":
            # mean/std over counted tokens of the whole global batch
            s, s2, c = (adv * mask).sum(), (adv * adv * mask).sum(), mask.sum()
            s, s2, c = (self._global_sum(x) for x in (s, s2, c))
            mean = s / max(c, 1.0)
            var = max(s2 / max(c, 1.0) - mean * mean, 0.0)
            adv = (adv - mean) / math.sqrt(var + 1e-8) * mask

        stats = _RunningMeans()
        # Every process takes the same number of optimizer steps (DDP all-reduces once per
        # step), set by the global sample count; its local samples are split evenly into them.
        steps = math.ceil(n_global / a.mini_batch_size)
        minibatches = []
        for epoch in range(a.epochs):
            order = list(range(n))
            random.Random(sampling_seed(cfg.seed, it, self.rank, salt=epoch + 1)).shuffle(order)
            minibatches += [order[k * n // steps : (k + 1) * n // steps] for k in range(steps)]
        micro_steps = sum(max(math.ceil(len(mb) / a.micro_batch_size), 1) for mb in minibatches)
        with progress.phase(f"iter {it + 1} optimize", total=micro_steps) as bar:
            for mb in minibatches:
                self._optimizer_step(episodes, mb, adv, mask, old_lp, it, stats, bar)
        self._finish_schedule(it)
        out = stats.means()
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def _finish_schedule(self, it: int) -> None:
        """Advance the LR schedule to the end of iteration `it` when it took fewer than the
        most steps (SPO-tree), so the schedule follows iterations, not sample counts."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            while self.scheduler.last_epoch < (it + 1) * self.steps_per_iteration:
                self.scheduler.step()

    def _optimizer_step(self, episodes, mb, adv, mask, old_lp, it, stats, bar) -> None:
        """One optimizer step on mini-batch `mb` (indices), accumulated over micro-batches."""
        cfg, a = self.cfg, self.cfg.algorithm
        if a.loss_agg == "token_mean":
            normalizer = self._global_sum(mask[mb].sum().item())
        else:
            normalizer = self._global_sum(len(mb))
        if a.loss_agg == "seq_mean_token_sum":
            normalizer *= cfg.sampling.max_new_tokens
        normalizer = max(normalizer, 1.0)
        # A process with no samples in this step still runs one zero-weight micro-batch, so
        # that it joins the step's gradient all-reduce.
        micro = [mb[i : i + a.micro_batch_size] for i in range(0, len(mb), a.micro_batch_size)] or [[]]
        for j, rows in enumerate(micro):
            last = j == len(micro) - 1
            with self.acc.no_sync(self.policy) if not last else contextlib.nullcontext():
                if rows:
                    loss, st = self._micro_loss(episodes, rows, adv, mask, old_lp, normalizer)
                else:
                    loss, st = self._empty_loss(), {"tokens": 0.0}
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"iteration {it + 1}: loss is {loss.item()} (micro-batch {j + 1} of {len(micro)}); "
                        f"last good checkpoint: {ckpt.latest_checkpoint(self.run_dir)}"
                    )
                self.acc.backward(loss * self.world)  # DDP averages over processes
            weight = st.pop("tokens")
            if st:
                stats.add_all(st, weight=weight)
            if bar is not None:
                bar.update(1)
        self.optimizer.grads_to_master()
        grad_norm = self.optimizer.clip_grad_norm(cfg.optim.grad_clip)
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"iteration {it + 1}: gradient norm is {grad_norm}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        stats.add("grad_norm", grad_norm)

    def _empty_loss(self) -> torch.Tensor:
        pad = self.engine.pad_token_id
        scored = compute_logprobs(self.policy, [[pad]], [[pad]], self.cfg.sampling.temperature, pad_token_id=pad)
        return scored.logprobs.sum() * 0.0

    def _micro_loss(self, episodes, rows, adv, mask, old_lp, normalizer):
        a = self.cfg.algorithm
        batch = [episodes[i] for i in rows]
        width = max(max(len(e.response_ids) for e in batch), 1)
        scored = compute_logprobs(self.policy, [e.prompt_ids for e in batch], [e.response_ids for e in batch],
                                  self.cfg.sampling.temperature, return_entropy=True,
                                  pad_token_id=self.engine.pad_token_id)
        logprobs = scored.logprobs[:, :width]
        m = mask[rows, :width].to(logprobs.device)
        advantages = adv[rows, :width].to(logprobs.device)
        if a.whiten == "micro_batch":
            advantages = masked_whiten(advantages, m) * m
        pg, st = ppo_clip_loss(logprobs, old_lp[rows, :width].to(logprobs.device), advantages, m,
                               clip_eps_low=a.clip_eps, clip_eps_high=a.clip_eps_high)
        per_token = pg
        kl_value = 0.0
        if self.ref is not None:
            with torch.no_grad():
                ref_lp = compute_logprobs(self.ref, [e.prompt_ids for e in batch], [e.response_ids for e in batch],
                                          self.cfg.sampling.temperature, pad_token_id=self.engine.pad_token_id)
            kl = kl_k3(logprobs, ref_lp.logprobs[:, :width])
            per_token = per_token + a.kl_coef * kl
            kl_value = float((kl.detach() * m).sum() / m.sum().clamp(min=1))
        loss = aggregate_loss(per_token, m, a.loss_agg, normalizer=normalizer)
        tokens = float(m.sum())
        ent = scored.entropy[:, :width].detach()
        resp = scored.mask[:, :width].float()
        stats = {
            "tokens": tokens,
            "policy_loss": float(aggregate_loss(pg.detach(), m, "token_mean")),
            "kl": kl_value,
            "clip_frac": float(st["clip_frac"]),
            "approx_kl": float(st["approx_kl"]),
            "entropy": float((ent * resp).sum() / resp.sum().clamp(min=1)),
        }
        return loss, stats

    def _iteration_record(self, it, episodes, responses, generated, stats, timings) -> dict[str, Any]:
        """Metrics of one iteration over all processes. `responses`: (reward, length,
        truncated) of each complete response sampled (SPO-tree: each leaf's path);
        `generated`: tokens sampled for them (a tree shares its prefixes)."""
        rows = gather_object(responses)
        counted = self._global_sum(sum(sum(e.loss_mask) for e in episodes))
        trained_tokens = self._global_sum(sum(len(e.response_ids) for e in episodes))
        rewards = [r for r, _, _ in rows]
        lengths = [n for _, n, _ in rows]
        record: dict[str, Any] = {
            "iteration": it + 1,
            "reward_mean": sum(rewards) / len(rewards),
            "accuracy": sum(r >= 1.0 for r in rewards) / len(rewards),
            "response_len_mean": sum(lengths) / len(lengths),
            "truncated_frac": sum(t for _, _, t in rows) / len(rows),
            "tokens_generated": int(self._global_sum(generated)),
            "loss_tokens_frac": counted / max(trained_tokens, 1),
            "episodes": int(self._global_sum(len(episodes))),
        }
        record.update(stats)
        for key, value in self.counts.items():  # SPO's extra work (MC states, tree nodes), all processes
            total = self._global_sum(value)
            record[key] = int(total) if isinstance(value, int) else total
        record["tokens_generated_total"] = record["tokens_generated"] + record.get("mc_tokens", 0)
        # sequences sampled from the policy: responses (tree: nodes) and MC continuations
        sequences = record["tree_nodes"] if "tree_nodes" in record else len(rows)
        record["samples_generated"] = sequences + record.get("mc_continuations", 0)
        record.update({f"time_{k}": v for k, v in timings.items()})
        record["time_total"] = sum(timings.values())
        return record

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, iteration: int, progress: Progress) -> None:
        cfg = self.cfg
        if not self.eval_problems:
            return
        e = cfg.eval
        params = SamplingParams(
            max_new_tokens=e.max_new_tokens or cfg.sampling.max_new_tokens,
            temperature=e.temperature, top_p=e.top_p, seed=sampling_seed(cfg.seed, iteration, self.rank, salt=99),
        )
        local = list(range(self.rank, len(self.eval_problems), self.world))
        with progress.phase(f"eval after iter {iteration}", total=None):
            result = evaluate(self.engine, self.tokenizer, self.task, [self.eval_problems[i] for i in local],
                              params, k=e.samples, prompt_format=cfg.task.prompt_format,
                              system_prompt=cfg.task.system_prompt)
        rows = gather_object(result.per_problem)
        if self.acc.is_main_process:
            from spo.evaluate.evaluator import summarize

            summary = summarize(rows, e.samples)
            record = {"kind": "eval", "iteration": iteration, **summary}
            self.log.log(record)
            progress.write(
                f"eval @ iter {iteration}: " + "  ".join(f"{k}={v:.3f}" for k, v in summary.items() if isinstance(v, float))
            )

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, iteration: int) -> None:
        root = self.run_dir / "checkpoints"
        root.mkdir(exist_ok=True)
        staged = ckpt.staging_dir(root, iteration) if self.acc.is_main_process else root / f".tmp-{ckpt.checkpoint_name(iteration)}"
        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.policy)
        if self.acc.is_main_process:
            if hasattr(model, "merge_and_unload"):  # LoRA: adapter for resuming, merged weights to load
                model.save_pretrained(staged / "adapter")
                import copy as _copy

                _copy.deepcopy(model).merge_and_unload().save_pretrained(staged / "model")
            else:
                model.save_pretrained(staged / "model")
            self.tokenizer.save_pretrained(staged / "model")
            torch.save(self.optimizer.state_dict(), staged / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), staged / "scheduler.pt")
        torch.save(ckpt.rng_state(), staged / f"rng_rank{self.rank}.pt")
        if self.replay is not None:  # SPO-tree's parked edges, per process
            state = self.replay.state(dataclasses.asdict)
            (staged / f"replay_rank{self.rank}.json").write_text(json.dumps(state))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.write_state(staged, {"iteration": iteration, "world_size": self.world,
                                      "config": to_dict(self.cfg)})
            final = ckpt.commit_checkpoint(root, staged, iteration, self.cfg.keep_checkpoints)
            log.info("saved checkpoint %s", final)
        self.acc.wait_for_everyone()

    def _load_checkpoint(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume {self.run_dir}: no complete checkpoint under {self.run_dir}/checkpoints")
        state = ckpt.read_state(path)
        model = self.acc.unwrap_model(self.policy)
        if hasattr(model, "merge_and_unload"):
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(path / "adapter" / "adapter_model.safetensors")))
        else:
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(path / "model", dtype=next(model.parameters()).dtype)
            model.load_state_dict(loaded.state_dict())
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng_file = path / f"rng_rank{self.rank}.pt"
        if rng_file.exists():
            ckpt.set_rng_state(torch.load(rng_file, weights_only=False))
        replay_file = path / f"replay_rank{self.rank}.json"
        if self.replay is not None and replay_file.exists():
            self.replay.load_state(json.loads(replay_file.read_text()), lambda d: Episode(**d))
        self.start_iteration = int(state["iteration"])
        if self.log:
            self.log.truncate_after(self.start_iteration)
        logged = read_metrics(self.run_dir) if (self.run_dir / "metrics.jsonl").exists() else []
        done = [r for r in logged if r["iteration"] <= self.start_iteration]
        if done:
            self.spent = {k: done[-1].get(f"{k}_cumulative", 0) for k in ("tokens", "samples", "seconds")}
        log.info("resumed from %s (iteration %d)", path, self.start_iteration)


def prepare_run_dir(output_dir: str | None) -> Path:
    if output_dir is None:
        output_dir = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(cfg: RunConfig, resume_dir: str | None = None) -> Path:
    """Run (or resume) training; returns the run folder."""
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        return Trainer(cfg, run_dir, resume=True).train()
    return Trainer(cfg, prepare_run_dir(cfg.output_dir)).train()
