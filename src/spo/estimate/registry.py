"""The advantage-estimator registry (verl `core_algos.py` style).

An advantage estimator is a pure tensor function registered under a name:

    @register_estimator("my_estimator")
    def my_estimator(inputs: EstimatorInputs, *, some_option: float = 1.0) -> Tensor:
        ...  # returns per-token advantages [B, T]

and the trainer calls it as

    advantages = get_estimator(name)(inputs, **options)

Contract shared by every estimator
----------------------------------
* Input: one `EstimatorInputs` (below) plus keyword-only options with defaults.
* Output: per-token advantages `Tensor[B, T]`, float, on the device of
  `inputs.response_mask`, equal to 0 wherever `response_mask == 0`.
  Trajectory-level estimators (GRPO, RLOO, ...) compute one number per sequence and
  broadcast it over the response tokens; segment-level estimators (SPO-chain,
  SPO-tree) give every token of segment k the segment's advantage A_k.
* Layout: the [B, T] tensors are response-aligned: column t holds response token t
  (0-based) of sample i; rows are right-padded and `response_mask` marks real
  tokens. `boundaries` use the same coordinates.
* Pure: no I/O, no model calls, no mutation of the inputs. Anything expensive
  (MC rollouts for segment values) is done before, by the caller, and passed in
  `values`.
* Probability masking, whitening and loss aggregation are NOT the estimator's job;
  they happen in `spo.optimize.losses`.

Adding an estimator: write one decorated function in a module of this package and add
that module to `_BUILTIN_MODULES` so `get_estimator` finds it without an explicit import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "EstimatorFn",
    "EstimatorInputs",
    "UnknownEstimatorError",
    "available_estimators",
    "get_estimator",
    "register_estimator",
]


@dataclass
class EstimatorInputs:
    """Everything an advantage estimator may look at (B samples, T response columns).

    rewards:       Tensor[B] float. Final reward r(x, y_i) of each sample.
    group_ids:     Tensor[B] long. Samples answering the same prompt share an id; groups
                   may have different sizes and ids need not be contiguous or sorted.
    response_mask: Tensor[B, T] (bool or 0/1). 1 on real response tokens.
    boundaries:    optional, per sample, the segment boundaries
                   0 = t_0 < t_1 < ... < t_K = T_i (response positions; segment k covers
                   tokens t_{k-1} .. t_k - 1 in 0-based columns). Used by SPO-chain.
    values:        optional, per sample, Tensor[K + 1] of the value estimates
                   V(t_0), ..., V(t_K) at those boundaries (V(t_K) = reward).
    extras:        free-form per-estimator data (e.g. SPO-tree parent values), so new
                   estimators need no change to this class.
    """

    rewards: Tensor
    group_ids: Tensor
    response_mask: Tensor
    boundaries: list[list[int]] | None = None
    values: list[Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rewards.dim() != 1:
            raise ValueError(f"rewards must be 1-D [B], got shape {tuple(self.rewards.shape)}")
        b = self.rewards.shape[0]
        if tuple(self.group_ids.shape) != (b,):
            raise ValueError(
                f"group_ids must have shape [B]={b}, got {tuple(self.group_ids.shape)}"
            )
        if self.response_mask.dim() != 2 or self.response_mask.shape[0] != b:
            raise ValueError(
                f"response_mask must be [B={b}, T], got {tuple(self.response_mask.shape)}"
            )
        for name in ("boundaries", "values"):
            seq = getattr(self, name)
            if seq is not None and len(seq) != b:
                raise ValueError(f"{name} must have one entry per sample ({b}), got {len(seq)}")

    @property
    def batch_size(self) -> int:
        return int(self.rewards.shape[0])


EstimatorFn = Callable[..., Tensor]
"""`fn(inputs: EstimatorInputs, **options) -> Tensor[B, T]` (see module docstring)."""

ADVANTAGE_ESTIMATORS: dict[str, EstimatorFn] = {}

# Modules whose import registers the built-in estimators (imported lazily by
# `get_estimator` / `available_estimators` to avoid an import cycle).
_BUILTIN_MODULES: tuple[str, ...] = ("spo.estimate.outcome", "spo.estimate.segment", "spo.estimate.tree",
                                     "spo.estimate.gae", "spo.estimate.reinforce_pp")


class UnknownEstimatorError(KeyError, ValueError):
    """Raised by `get_estimator` for an unregistered name (catchable as either type)."""

    def __str__(self) -> str:  # KeyError would show the message with quotes
        return str(self.args[0]) if self.args else ""


def register_estimator(name: str) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator: register `fn` under `name`. Re-registering a different function raises."""
    if not isinstance(name, str) or not name:
        raise ValueError("estimator name must be a non-empty string")

    def decorator(fn: EstimatorFn) -> EstimatorFn:
        existing = ADVANTAGE_ESTIMATORS.get(name)
        if existing is not None and existing is not fn and (
            getattr(existing, "__qualname__", None) != getattr(fn, "__qualname__", None)
            or getattr(existing, "__module__", None) != getattr(fn, "__module__", None)
        ):
            raise ValueError(
                f"advantage estimator {name!r} is already registered "
                f"({existing.__module__}.{existing.__qualname__})"
            )
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_estimators() -> list[str]:
    """Sorted names of all registered estimators (built-ins included)."""
    _load_builtins()
    return sorted(ADVANTAGE_ESTIMATORS)


def get_estimator(name: str) -> EstimatorFn:
    """The estimator registered as `name`; `UnknownEstimatorError` lists the known names."""
    _load_builtins()
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS)) or "(none)"
        raise UnknownEstimatorError(
            f"unknown advantage estimator {name!r}; known estimators: {known}"
        ) from None
