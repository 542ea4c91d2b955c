"""Stage 1: sample responses (and continuations from exact token prefixes)."""

from spo.sample.engine import Rollout, RolloutEngine, SamplingParams

__all__ = ["Rollout", "RolloutEngine", "SamplingParams"]
