"""SPO-chain (SPO section 2, short chain-of-thought): segment advantages from Monte-Carlo
values at the segment boundaries of each sampled response.

    1. sample     G responses per prompt, and score them
    2. partition  boundaries 0 = t_0 < ... < t_K = T: before every `interval`-th cutpoint
                  (a token sampled with probability < rho), or every M tokens
    3. values     V(t_k) = mean reward of N continuations from the EXACT token prefix
                  x + y_1..y_{t_k} (0 < k < K); V(t_K) = r; V(t_0) = the group's mean reward
    4. advantages every token of segment k gets A_k = V(t_k) - V(t_{k-1})
    5. mask       with the probability mask, only cutpoint tokens count in the loss

With `algorithm.train_on_continuations` the MC continuations of step 3 are trained on too
(each from its state s_k, every token's advantage r - V(s_k)): see docs/algorithms.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spo.algorithms.base import (
    Algorithm,
    Batch,
    Response,
    Timer,
    estimator_inputs,
    response_batch,
    sample_and_score,
    set_advantages,
)
from spo.algorithms.registry import register_algorithm
from spo.estimate.chain_values import estimate_chain_values
from spo.estimate.mc_allocation import Allocator, adaptive_allocation
from spo.estimate.segment import spo_chain
from spo.partition.segments import partition_response
from spo.seeds import SALT_MC


@dataclass
class Segments:
    """SPO-chain's record of one response (its fields in the episode log)."""

    boundaries: list[int]
    values: list[float]  # V(t_0) .. V(t_K)
    value_samples: list[int]  # samples behind each V (the group size for V(t_0), 0 for V(t_K))
    cutpoints: list[int]
    value_group_samples: list[int] | None = None
    """With `algorithm.mc_group_samples`: how many of each V's samples are the group's own
    responses (the rest, value_samples minus these, are fresh continuations)."""


@dataclass
class Continuation:
    """A recycled MC continuation's record (`algorithm.train_on_continuations`): where it
    comes from. Its line in the episode log follows the response whose state it continues."""

    kind: str  # "continuation"
    state_episode: int  # that response's position among the iteration's responses (this process)
    state_tokens: int  # t: it continues the response's first t tokens
    state_value: float  # V(s_k), its baseline


@register_algorithm("spo_chain")
class SPOChain(Algorithm):
    partition_rule: str | None = None  # None: `algorithm.partition`

    @property
    def rule(self) -> str:
        """The partition rule in force (VinePPO: always "step")."""
        return self.partition_rule or self.cfg.algorithm.partition

    def partition(self, response: Response) -> tuple[list[int], list[int]]:
        """(boundaries, cutpoints) of one response."""
        a = self.cfg.algorithm
        texts = None
        if self.rule == "step":  # each token's own text, to find the step delimiter in
            texts = self.ctx.tokenizer.batch_decode([[t] for t in response.response_ids])
        return partition_response(response.logprobs, rule=self.rule, rho=a.rho, interval=a.interval,
                                  segment_length=a.segment_length, max_segments=a.max_segments,
                                  token_texts=texts, delimiter=a.step_delimiter, probe_points=a.probe_points)

    def allocation(self) -> Allocator | None:
        """The fresh-continuation rule (None: N per state, `estimate_chain_values`'s default)."""
        a = self.cfg.algorithm
        if a.mc_allocation == "adaptive":
            return adaptive_allocation(a.mc_samples, a.mc_budget, a.mc_min_samples, a.mc_stop_samples)
        return None

    def collect(self, iteration: int, progress: Any) -> Batch:
        timer = Timer()
        responses = sample_and_score(self.ctx, iteration, progress, timer)  # 1.
        work = self.advantages(responses, iteration, progress, timer)  # 2. - 5.
        batch = response_batch(
            responses, timings=timer.seconds, work=work,
            extra_tokens=work["mc_tokens"], sequences_generated=len(responses) + work["mc_continuations"],
        )
        if self.cfg.algorithm.train_on_continuations:  # trained, and logged under their state's response
            recycled = self.recycled
            if self.cfg.algorithm.old_logprobs == "recompute" and recycled:
                with timer("old_logprobs"):
                    self.ctx.recompute_logprobs(recycled)
            batch.samples += recycled
            under: dict[int, list[Response]] = {}
            for c in recycled:
                under.setdefault(c.details.state_episode, []).append(c)
            batch.episode_log = [line for k, r in enumerate(responses)
                                 for line in [r.log_record()] + [c.log_record() for c in under.get(k, [])]]
        return batch

    def advantages(self, responses: list[Response], iteration: int, progress: Any, timer: Timer) -> dict[str, int]:
        ctx, a = self.ctx, self.cfg.algorithm
        with timer("partition"):  # 2.
            parts = [self.partition(r) for r in responses]
            boundaries = [b for b, _ in parts]

        with timer("values"), progress.phase(f"iter {iteration + 1} MC values", total=None):  # 3.
            def score(i: int, response_ids: list[int], truncated: bool) -> float:
                return ctx.score([responses[i].problem_index], [response_ids], [truncated])[1][0]

            chain = estimate_chain_values(
                ctx.engine, [r.prompt_ids for r in responses], [r.response_ids for r in responses],
                [r.reward for r in responses], [r.group_id for r in responses], boundaries, score,
                num_samples=a.mc_samples, params=ctx.sampling_params(iteration, SALT_MC), start_value=a.start_value,
                group_samples=a.mc_group_samples, allocate=self.allocation(),
                keep_draws=a.train_on_continuations,
            )

        with timer("estimate"):  # 4. and 5.
            for k, (r, (b, cuts), v, n) in enumerate(zip(responses, parts, chain.values, chain.value_samples)):
                r.details = Segments(boundaries=b, values=v, value_samples=n, cutpoints=cuts,
                                     value_group_samples=None if chain.group_samples is None else chain.group_samples[k])
            inputs = estimator_inputs(responses, [r.reward for r in responses], [r.group_id for r in responses],
                                      boundaries=boundaries,
                                      values=[torch.tensor(v, dtype=torch.float32) for v in chain.values])
            set_advantages(responses, spo_chain(inputs), self.cfg)
            self.recycled = self.recycle(responses, chain) if a.train_on_continuations else []

        work = {"mc_states": chain.states, "mc_tokens": chain.continuation_tokens,
                "mc_continuations": chain.continuations}
        if a.mc_allocation == "adaptive":
            work["mc_engine_calls"] = chain.engine_calls
        if a.train_on_continuations:
            work["continuations_trained"] = len(self.recycled)
            work["continuation_tokens_trained"] = sum(len(c.response_ids) for c in self.recycled)
        if a.mc_group_samples:  # states none of whose samples had to be drawn, and the group samples used
            work["mc_states_free"] = chain.states_free
            work["mc_group_samples"] = chain.free_samples
        return work

    def recycle(self, responses: list[Response], chain: Any) -> list[Response]:
        """Every fresh continuation as a training sample: context = prompt + the state's
        prefix, response = the continuation, every token's advantage r - V(s_k) (V as the
        state's first episode sees it, this continuation among its samples), the loss mask
        by the same rule as the responses'."""
        position = {id(r): k for k, r in enumerate(responses)}
        out = []
        for i, t, rollout, reward in chain.draws:
            if not rollout.response_ids:  # nothing to train on
                continue
            owner = responses[i]
            sid_value = chain.values[i][owner.details.boundaries.index(t)]
            out.append(Response(
                problem_index=owner.problem_index, group_id=owner.group_id,
                prompt_ids=list(owner.prompt_ids) + list(owner.response_ids[:t]),
                response_ids=list(rollout.response_ids), logprobs=list(rollout.logprobs),
                finish_reason=rollout.finish_reason, reward=reward,
                text=self.ctx.tokenizer.decode(rollout.response_ids, skip_special_tokens=True),
                details=Continuation(kind="continuation", state_episode=position[id(owner)], state_tokens=t,
                                     state_value=sid_value),
            ))
        if out:
            width = max(len(c.response_ids) for c in out)
            advantages = torch.zeros(len(out), max(width, 1))
            for k, c in enumerate(out):
                advantages[k, : len(c.response_ids)] = c.reward - c.details.state_value
            set_advantages(out, advantages, self.cfg)
        return out
