"""Algorithms by name (`algorithm.name`): a new method is a module with one
decorated class, and its module in `BUILTIN_MODULES`; the training loop does not change.

    @register_algorithm("my_method")
    class MyMethod(Algorithm):
        def collect(self, iteration, progress) -> Batch: ...
"""

from __future__ import annotations

import importlib
from typing import Callable

from spo.config import ConfigError

ALGORITHMS: dict[str, type] = {}

# Modules whose import registers the built-in algorithms, imported when one is looked up
# (they import this module, so it cannot import them at the top).
BUILTIN_MODULES: tuple[str, ...] = (
    "spo.algorithms.outcome",
    "spo.algorithms.spo_chain",
    "spo.algorithms.spo_tree",
    "spo.algorithms.reinforce_pp",
    "spo.algorithms.vineppo",
    "spo.algorithms.ppo",
)


def register_algorithm(*names: str) -> Callable[[type], type]:
    """Class decorator: the algorithm runs under each of `names`."""

    def decorator(cls: type) -> type:
        for name in names:
            existing = ALGORITHMS.get(name)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ValueError(f"algorithm {name!r} is already registered ({existing.__qualname__})")
            ALGORITHMS[name] = cls
        return cls

    return decorator


def available_algorithms() -> list[str]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(ALGORITHMS)


def algorithm_class(name: str) -> type:
    """The class registered as `name`; a ConfigError naming the known ones otherwise."""
    known = available_algorithms()
    if name not in ALGORITHMS:
        raise ConfigError(f"algorithm.name: unknown algorithm {name!r}; known: {', '.join(known)}")
    return ALGORITHMS[name]
