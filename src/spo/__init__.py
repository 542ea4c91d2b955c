"""spo: Segment Policy Optimization (arXiv 2505.23564) and its baselines.

Data flow, one folder per stage:
    tasks -> sample -> partition -> estimate -> optimize -> evaluate
    (train/ holds the loop that runs them; config.py holds every option; commands/ the `spo`
    commands, thin layers over spo.api).

The library's public names are importable from here (docs/own-task.md):

    import spo
    cfg = spo.make_config("smoke", {"iterations": 3})
    run_dir = spo.train(cfg)                              # or spo.train(cfg, reward=my_fn)
    report = spo.evaluate(run_dir)

They load on first use, so `import spo` stays cheap (no torch until a name needs it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # running: configs, training, evaluation
    "make_config": "spo.api", "make_task": "spo.api",
    "EvalReport": "spo.api", "RunConfig": "spo.config", "ConfigError": "spo.config",
    # tasks and rewards
    "Task": "spo.tasks.base", "Problem": "spo.tasks.problems", "DataError": "spo.tasks.problems",
    "DatasetTask": "spo.tasks.dataset", "build_task": "spo.tasks.registry",
    "build_reward": "spo.tasks.user_rewards", "RewardError": "spo.tasks.user_rewards",
    "exact_match": "spo.tasks.user_rewards", "numeric": "spo.tasks.user_rewards",
    "math_verify": "spo.tasks.user_rewards", "regex": "spo.tasks.user_rewards",
    # the pure pieces: segment partitions, SPO-chain values, advantage estimators
    "cutpoint_boundaries": "spo.partition.segments", "fixed_boundaries": "spo.partition.segments",
    "delimiter_boundaries": "spo.partition.segments", "partition_response": "spo.partition.segments",
    "estimate_chain_values": "spo.estimate.chain_values", "segment_advantages": "spo.estimate.segment",
    "node_values": "spo.estimate.tree", "edge_advantages": "spo.estimate.tree",
    "grpo_advantages": "spo.estimate.outcome", "rloo_advantages": "spo.estimate.outcome",
    "EstimatorInputs": "spo.estimate.registry", "get_estimator": "spo.estimate.registry",
    "available_estimators": "spo.estimate.registry",
}
__all__ = sorted([*_EXPORTS, "train", "evaluate"])


# `spo.train` and `spo.evaluate` are also the names of two stage packages, and importing a
# subpackage for the first time sets it as an attribute of its parent. Importing both now
# (their __init__ files import nothing) and binding the functions after keeps `spo.train`
# the function; their modules stay importable by full name (`spo.train.loop`).
import spo.evaluate  # noqa: E402,F401
import spo.train  # noqa: E402,F401


def train(*args: Any, **kwargs: Any) -> Path:
    """Train or resume a run and return its folder: spo.api.train(config, *, task=None,
    reward=None, output_dir=None, resume=None), documented there."""
    from spo.api import train as train_

    return train_(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> EvalReport:
    """Evaluate a run folder or a model on the held-out split: spo.api.evaluate(model,
    config=None, overrides=(), *, task=None, reward=None, samples=None, temperature=None,
    max_new_tokens=None, limit=None), documented there."""
    from spo.api import evaluate as evaluate_

    return evaluate_(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from spo.api import EvalReport, make_config, make_task
    from spo.config import ConfigError, RunConfig
    from spo.estimate.chain_values import estimate_chain_values
    from spo.estimate.outcome import grpo_advantages, rloo_advantages
    from spo.estimate.registry import EstimatorInputs, available_estimators, get_estimator
    from spo.estimate.segment import segment_advantages
    from spo.estimate.tree import edge_advantages, node_values
    from spo.partition.segments import (
        cutpoint_boundaries,
        delimiter_boundaries,
        fixed_boundaries,
        partition_response,
    )
    from spo.tasks.base import Task
    from spo.tasks.dataset import DatasetTask
    from spo.tasks.problems import DataError, Problem
    from spo.tasks.registry import build_task
    from spo.tasks.user_rewards import RewardError, build_reward, exact_match, math_verify, numeric, regex
