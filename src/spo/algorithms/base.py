"""What every algorithm shares: the samples it hands the update, the batch, and the
context it works in.

An algorithm turns one iteration's prompts into a `Batch`:

    batch = algorithm.collect(iteration, progress)      # sample -> score -> ... -> advantages
    stats = update(batch.samples, iteration, progress)  # PPO-clip (spo.optimize.update)

`collect` is where a method's steps are written out in the paper's order; everything
else (the update, logging, evaluation, checkpoints) is the loop's. An algorithm owns its
state across iterations (SPO-tree's replay buffer) and saves it with `state_dict`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spo.config import RunConfig
from spo.estimate.registry import EstimatorInputs
from spo.optimize.logprobs import compute_logprobs
from spo.optimize.losses import probability_mask
from spo.optimize.update import pad_rows
from spo.sample.engine import RolloutEngine, SamplingParams
from spo.seeds import SALT_SAMPLE, derive_seed, iteration_prompts
from spo.tasks.problems import Problem
from spo.tasks.scoring import decode_and_score


# ---------------------------------------------------------------------------------------
# What the update trains on.

@dataclass(kw_only=True)
class TrainSample:
    """One sequence for the update: a context, a response, and per-token data."""

    prompt_ids: list[int]  # the context: the prompt (SPO-tree: prompt + parent's prefix)
    response_ids: list[int]
    logprobs: list[float]  # old log-probs, one per response token
    advantages: list[float] = field(default_factory=list)  # per token, before whitening
    loss_mask: list[int] = field(default_factory=list)  # 1 where the token counts in the loss

    def log_record(self) -> dict[str, Any]:
        """Its line in the episode log."""
        raise NotImplementedError


@dataclass(kw_only=True)
class Response(TrainSample):
    """A complete response to a prompt, scored (outcome methods, SPO-chain).

    `details` is the method's own typed record of it (SPO-chain: its segments); its
    fields lead the response's line in the episode log."""

    problem_index: int
    group_id: int  # the prompt's position in the iteration: unique even if a problem repeats
    finish_reason: str
    reward: float = 0.0
    text: str = ""
    details: Any = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def log_record(self) -> dict[str, Any]:
        return {
            # a details field left None (an option that is off) is not logged
            **({k: v for k, v in dataclasses.asdict(self.details).items() if v is not None}
               if self.details is not None else {}),
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


@dataclass
class Batch:
    """One iteration's output of an algorithm on one process."""

    samples: list[TrainSample]
    """What the update trains on."""
    episode_log: list[dict[str, Any]]
    """Lines of episodes/iter_N.jsonl."""
    responses: list[tuple[float, int, bool]]
    """(reward, length, truncated) of every complete response sampled (SPO-tree: each
    leaf's path from the root): the iteration's reward, accuracy and length metrics."""
    tokens_generated: int
    """Tokens sampled for those responses (a tree counts each shared prefix once)."""
    sequences_generated: int
    """Sequences sampled from the policy: responses or tree nodes, plus MC continuations."""
    work: dict[str, int | float] = field(default_factory=dict)
    """Extra work (MC states and tokens, tree nodes and edges): summed over processes and logged."""
    extra_tokens: int = 0
    """Tokens sampled beyond `tokens_generated` (MC continuations); in the token budget."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of `collect`."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Anything the algorithm's `finish_record` needs from its own collect."""


def iteration_metrics(iteration: int, batch: Batch, stats: dict[str, float], dist: Any) -> dict[str, Any]:
    """The common metrics of an iteration over all processes (collective: every process
    calls it): rewards and lengths of the responses sampled, what the update trained on and
    its `stats`, the work done, seconds per phase."""
    total = dist.global_sum
    rows = dist.gather(batch.responses)
    counted = total(sum(sum(s.loss_mask) for s in batch.samples))
    trained_tokens = total(sum(len(s.response_ids) for s in batch.samples))
    rewards = [r for r, _, _ in rows]
    lengths = [n for _, n, _ in rows]
    record: dict[str, Any] = {
        "iteration": iteration + 1,
        "reward_mean": sum(rewards) / len(rewards),
        "accuracy": sum(r >= 1.0 for r in rewards) / len(rewards),
        "response_len_mean": sum(lengths) / len(lengths),
        "truncated_frac": sum(t for _, _, t in rows) / len(rows),
        "tokens_generated": int(total(batch.tokens_generated)),
        "loss_tokens_frac": counted / max(trained_tokens, 1),
        "episodes": int(total(len(batch.samples))),
        **stats,
    }
    for key, value in batch.work.items():
        record[key] = int(total(value)) if isinstance(value, int) else total(value)
    record["tokens_generated_total"] = record["tokens_generated"] + int(total(batch.extra_tokens))
    record["samples_generated"] = int(total(batch.sequences_generated))
    record.update({f"time_{k}": v for k, v in batch.timings.items()})
    record["time_total"] = sum(batch.timings.values())
    return record


# ---------------------------------------------------------------------------------------
# The context an algorithm works in.

@dataclass
class Context:
    """The run's pieces an algorithm uses: config, engine, task, training problems, the
    policy (for recomputed old log-probs) and the process group."""

    cfg: RunConfig
    engine: RolloutEngine
    tokenizer: Any
    task: Any
    problems: list[Problem]
    policy: Any  # the unwrapped model being trained
    dist: Any  # spo.distributed.Dist
    pad_token_id: int
    reference: Any = None  # the frozen reference model (None when kl_coef = 0)
    _prompt_cache: dict[int, list[int]] = field(default_factory=dict)

    def prompts(self, iteration: int) -> list[tuple[int, int]]:
        """This process's share of the iteration's prompts: (problem index, group id)."""
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world
        indices = iteration_prompts(len(self.problems), cfg.sampling.prompts_per_iteration, iteration, cfg.seed,
                                    with_replacement=cfg.sampling.prompts_with_replacement)
        return list(zip(indices[rank::world], range(rank, len(indices), world)))

    def prompt_ids(self, problem_index: int) -> list[int]:
        if problem_index not in self._prompt_cache:
            t = self.cfg.task
            self._prompt_cache[problem_index] = self.task.prompt_ids(
                self.tokenizer, self.problems[problem_index], t.prompt_format, t.system_prompt, t.prompt_template)
        return self._prompt_cache[problem_index]

    def sampling_params(self, iteration: int, salt: str) -> SamplingParams:
        """The policy's sampling settings, seeded for one stream of this iteration."""
        s = self.cfg.sampling
        return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                              top_k=s.top_k, seed=derive_seed(self.cfg.seed, iteration, self.dist.rank, salt),
                              stop=tuple(s.stop))

    def score(self, problem_indices: Sequence[int], responses: Sequence[Sequence[int]],
              truncated: Sequence[bool]) -> tuple[list[str], list[float]]:
        """Texts and rewards of full responses to the given training problems."""
        return decode_and_score(self.tokenizer, self.task, [self.problems[i] for i in problem_indices],
                                responses, truncated)

    def recomputes_old_logprobs(self) -> bool:
        """Whether the PPO's old log-probs are the trainer's (a forward pass) rather than the
        engine's: `algorithm.old_logprobs: recompute`, or `auto` with a policy that is not
        float32 (whose engine's log-probs are rounded differently from the trainer's)."""
        choice = self.cfg.algorithm.old_logprobs
        if choice == "auto":
            weight = next(iter(self.policy.parameters()), None) if self.policy is not None else None
            return weight is not None and weight.dtype != torch.float32
        return choice == "recompute"

    @torch.no_grad()
    def recompute_logprobs(self, samples: Sequence[TrainSample]) -> None:
        """Replace the engine's old log-probs by a forward pass of the policy
        (`algorithm.old_logprobs: recompute`)."""
        model = self.policy
        was_training = model.training
        model.eval()
        scored = compute_logprobs(model, [s.prompt_ids for s in samples], [s.response_ids for s in samples],
                                  self.cfg.sampling.temperature, self.cfg.algorithm.micro_batch_size,
                                  pad_token_id=self.pad_token_id, packing=self.cfg.algorithm.packing,
                                  micro_batch_tokens=self.cfg.algorithm.micro_batch_tokens)
        model.train(was_training)
        for s, lp in zip(samples, scored.to_lists()):
            s.logprobs = lp


# ---------------------------------------------------------------------------------------
# Steps several algorithms share.

def estimator_inputs(samples: Sequence[TrainSample], rewards: Sequence[float], group_ids: Sequence[int],
                     **fields: Any) -> EstimatorInputs:
    """The registry estimators' input for these samples (response-aligned [B, T])."""
    width = max(len(s.response_ids) for s in samples)
    return EstimatorInputs(
        rewards=torch.tensor(list(rewards), dtype=torch.float32),
        group_ids=torch.tensor(list(group_ids), dtype=torch.long),
        response_mask=pad_rows([[1.0] * len(s.response_ids) for s in samples], width),
        **fields,
    )


def set_advantages(samples: Sequence[TrainSample], advantages: torch.Tensor, cfg: RunConfig) -> None:
    """Store each sample's token advantages and its loss mask: every response token, or
    with SPO's probability mask only those whose old probability is below rho."""
    a = cfg.algorithm
    width = advantages.shape[1]
    response_mask = pad_rows([[1.0] * len(s.response_ids) for s in samples], width)
    old_logprobs = pad_rows([s.logprobs for s in samples], width)
    rho = (a.mask_rho if a.mask_rho is not None else a.rho) if a.prob_mask else None
    loss_mask = probability_mask(old_logprobs, response_mask, rho)
    for i, s in enumerate(samples):
        n = len(s.response_ids)
        s.advantages = advantages[i, :n].tolist()
        s.loss_mask = loss_mask[i, :n].int().tolist()


def sample_responses(ctx: Context, iteration: int, progress: Any,
                     prompts: Sequence[tuple[int, int]] | None = None) -> list[Response]:
    """G responses to each of this process's prompts of the iteration (or to the given
    (problem index, group id) pairs, sampled with the iteration's seed)."""
    prompts = ctx.prompts(iteration) if prompts is None else list(prompts)
    contexts = [ctx.prompt_ids(problem_index) for problem_index, _ in prompts]
    params = ctx.sampling_params(iteration, SALT_SAMPLE)
    with progress.phase(f"iter {iteration + 1} sample", total=None):
        rollouts = ctx.engine.generate(contexts, params, n=ctx.cfg.sampling.group_size)
    return [
        Response(problem_index=pi, group_id=gid, prompt_ids=r.context_ids, response_ids=r.response_ids,
                 logprobs=r.logprobs, finish_reason=r.finish_reason)
        for (pi, gid), group in zip(prompts, rollouts) for r in group
    ]


def score_responses(ctx: Context, responses: Sequence[Response]) -> None:
    """Fill each response's text and reward."""
    texts, rewards = ctx.score([r.problem_index for r in responses], [r.response_ids for r in responses],
                               [r.truncated for r in responses])
    for r, text, reward in zip(responses, texts, rewards):
        r.text, r.reward = text, reward


def sample_and_score(ctx: Context, iteration: int, progress: Any, timer: "Timer") -> list[Response]:
    """G scored responses per prompt (phases "sample" and "score"), with their old
    log-probs recomputed by the policy when `Context.recomputes_old_logprobs`."""
    with timer("sample"):
        responses = sample_responses(ctx, iteration, progress)
    with timer("score"):
        score_responses(ctx, responses)
    if ctx.recomputes_old_logprobs():
        with timer("old_logprobs"):
            ctx.recompute_logprobs(responses)
    return responses


def response_batch(responses: list[Response], **fields: Any) -> Batch:
    """The batch of methods that train on complete responses."""
    fields.setdefault("sequences_generated", len(responses))
    return Batch(
        samples=list(responses),
        episode_log=[r.log_record() for r in responses],
        responses=[(r.reward, len(r.response_ids), r.truncated) for r in responses],
        tokens_generated=sum(len(r.response_ids) for r in responses),
        **fields,
    )


class Timer:
    """Seconds per named phase, in the order the phases ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


class Algorithm:
    """Base class of the registered algorithms (see spo.algorithms.registry)."""

    kl_in_loss: bool = True
    """Whether the update adds kl_coef * k3(pi || ref) to the loss (False for methods that
    fold the KL into the reward instead)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.cfg = ctx.cfg

    @classmethod
    def max_samples_per_iteration(cls, cfg: RunConfig) -> int:
        """The most samples the update gets per iteration, all processes together (sizes
        the lr schedule)."""
        return cfg.sampling.prompts_per_iteration * cfg.sampling.group_size

    def collect(self, iteration: int, progress: Any) -> Batch:
        raise NotImplementedError

    def advantages(self, responses: list[Response], iteration: int, progress: Any, timer: Timer) -> dict[str, int]:
        """The advantages step of `collect` on given scored responses: sets each one's
        advantages, loss mask and details; returns the extra sampling it did (MC states,
        continuations, tokens: `Batch.work` keys). `spo credit` calls it on its own
        responses, so what it measures is what training computes. Methods that train on
        something else than complete responses (SPO-tree's edges) do not have one."""
        raise NotImplementedError(f"{type(self).__name__} has no advantages step on given responses")

    def finish_record(self, record: dict[str, Any], batch: Batch) -> None:
        """Add method-specific metrics to the iteration's record (all processes' numbers)."""

    def state_dict(self) -> dict[str, Any]:
        """State carried across iterations (this process's), saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def save_files(self, folder: Path) -> None:
        """Write what `state_dict` cannot hold (weights of models it trains, their optimizer)
        into `folder` of a checkpoint; called on the main process only. Create `folder`
        only when there is something to write."""

    def load_files(self, folder: Path) -> None:
        """Read what `save_files` wrote (every process; `folder` may not exist)."""
