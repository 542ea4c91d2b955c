"""Rollout engines by name (`sampling.engine`): the trainer never names an engine class.

An engine factory takes the sampling options, the policy (a model the trainer updates in
place) and its tokenizer, and returns a `RolloutEngine`. After every update the trainer
calls `engine.sync_weights()`; an engine that shares the policy's weights (HF) does
nothing there, one that holds its own copy (vLLM) pushes the new weights into it.

Adding an engine: write a factory and add it to `ENGINES`, and its name to the
`sampling.engine` option's type in spo.config.
"""

from __future__ import annotations

from typing import Any, Callable

from spo.config import ConfigError, SamplingConfig
from spo.sample.engine import RolloutEngine
from spo.sample.hf_engine import HFEngine


def _hf_engine(cfg: SamplingConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    return HFEngine(model, tokenizer, batch_size=cfg.batch_size)


ENGINES: dict[str, Callable[[SamplingConfig, Any, Any], RolloutEngine]] = {"hf": _hf_engine}


def build_engine(cfg: SamplingConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    """The engine `cfg.engine` names, sampling from `model`."""
    try:
        factory = ENGINES[cfg.engine]
    except KeyError:
        raise ConfigError(f"sampling.engine: unknown engine {cfg.engine!r}; known: {', '.join(ENGINES)}") from None
    return factory(cfg, model, tokenizer)
