"""Rollout engines by name (`sampling.engine`): the trainer never names an engine class.

An engine factory takes the sampling options, the policy (a model the trainer updates in
place) and its tokenizer, and returns a `RolloutEngine`. After every update the trainer
calls `engine.sync_weights()` (and before it `engine.release_memory()`); an engine that shares the policy's weights (HF) does
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
    return HFEngine(model, tokenizer, batch_size=cfg.batch_size, max_context=cfg.max_context)


def _vllm_engine(cfg: SamplingConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    # imported here: vLLM is optional, and spo.sample.vllm_engine imports it only when an
    # engine is built (a ConfigError saying how to install it when it is missing)
    from spo.sample.vllm_engine import VLLMEngine

    return VLLMEngine(model, tokenizer, max_context=cfg.max_context, max_num_seqs=cfg.batch_size,
                      block_size=cfg.vllm_block_size, kv_cache_gb=cfg.vllm_kv_cache_gb,
                      gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                      enforce_eager=cfg.vllm_enforce_eager, sleep=cfg.vllm_sleep)


ENGINES: dict[str, Callable[[SamplingConfig, Any, Any], RolloutEngine]] = {"hf": _hf_engine, "vllm": _vllm_engine}


def build_engine(cfg: SamplingConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    """The engine `cfg.engine` names, sampling from `model`."""
    try:
        factory = ENGINES[cfg.engine]
    except KeyError:
        raise ConfigError(f"sampling.engine: unknown engine {cfg.engine!r}; known: {', '.join(ENGINES)}") from None
    return factory(cfg, model, tokenizer)
