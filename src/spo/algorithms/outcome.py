"""Outcome-reward methods: GRPO, Dr.GRPO, RLOO, REINFORCE.

Every response gets one advantage, from its reward and its group's (the G responses to
the same prompt; formulas in spo.estimate.outcome), on all of its tokens:

    1. sample  G responses per prompt
    2. score   reward of each response (the task's grader)
    3. estimate  A_i from the group's rewards; the loss mask (SPO's probability mask, if on)
"""

from __future__ import annotations

from typing import Any

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
from spo.config import AlgorithmConfig
from spo.estimate.registry import get_estimator


def estimator_options(a: AlgorithmConfig) -> dict[str, Any]:
    """The config options an outcome estimator takes."""
    return {"scale_by_std": a.scale_by_std, "eps": a.std_eps} if a.name == "grpo" else {}


@register_algorithm("grpo", "rloo", "reinforce")
class OutcomeReward(Algorithm):
    def collect(self, iteration: int, progress: Any) -> Batch:
        timer = Timer()
        responses = sample_and_score(self.ctx, iteration, progress, timer)  # 1. and 2.
        self.advantages(responses, iteration, progress, timer)  # 3.
        return response_batch(responses, timings=timer.seconds)

    def advantages(self, responses: list[Response], iteration: int, progress: Any, timer: Timer) -> dict[str, int]:
        a = self.cfg.algorithm
        with timer("estimate"):
            inputs = estimator_inputs(responses, [r.reward for r in responses], [r.group_id for r in responses])
            set_advantages(responses, get_estimator(a.name)(inputs, **estimator_options(a)), self.cfg)
        return {}
