"""SPO-tree values and advantages (SPO section 2, "SPO-tree").

A tree's nodes are given as parallel lists indexed by node id, parents before children
(id 0 is the root, the prompt itself):

    V(leaf)     = r(leaf's full response)                    (0 for a truncated leaf)
    V(node)     = mean over children c of V(c)                (bottom-up)
    A(p -> c)   = V(c) - V(p)                                 (siblings' mean as baseline)
    A(p -> c)   = (V(c) - V(p)) / (std_siblings + eps)        (with sibling_std)

Every edge p -> c is one training sample (context = prompt + p's prefix, response = c's
segment) whose tokens all carry A(p -> c). Edges with A = 0 carry no signal and are
not trained. Pure functions: no I/O, no engine.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from spo.estimate.registry import EstimatorInputs, register_estimator

__all__ = ["edge_advantages", "node_values", "spo_tree"]


def node_values(parents: Sequence[int | None], leaf_rewards: Sequence[float | None]) -> list[float]:
    """V for every node: a leaf's reward (non-None entry), else the mean of its children's V."""
    n = len(parents)
    if len(leaf_rewards) != n:
        raise ValueError(f"{n} parents but {len(leaf_rewards)} rewards")
    children: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(parents):
        if p is not None:
            if not 0 <= p < i:
                raise ValueError(f"node {i}: parent {p} must come before it")
            children[p].append(i)
    values = [0.0] * n
    for i in reversed(range(n)):  # children have larger ids, so they are done first
        if leaf_rewards[i] is not None:
            if children[i]:
                raise ValueError(f"node {i} has a reward but also children")
            values[i] = float(leaf_rewards[i])
        elif children[i]:
            values[i] = sum(values[c] for c in children[i]) / len(children[i])
        else:
            raise ValueError(f"node {i} is neither a leaf (no reward) nor has children")
    return values


def edge_advantages(
    parents: Sequence[int | None], values: Sequence[float], *, sibling_std: bool = False, eps: float = 1e-6
) -> list[float | None]:
    """A(parent -> node) for every node (None for the root).

    The siblings' std is the unbiased one (divide by n - 1), as GRPO's; a single child
    has advantage 0 either way."""
    siblings: dict[int, list[float]] = {}
    for i, p in enumerate(parents):
        if p is not None:
            siblings.setdefault(p, []).append(values[i])
    out: list[float | None] = []
    for i, p in enumerate(parents):
        if p is None:
            out.append(None)
            continue
        a = values[i] - values[p]
        if sibling_std:
            vs = siblings[p]
            mean = sum(vs) / len(vs)
            std = math.sqrt(sum((v - mean) ** 2 for v in vs) / max(len(vs) - 1, 1))
            a = a / (std + eps)
        out.append(a)
    return out


@register_estimator("spo_tree")
def spo_tree(inputs: EstimatorInputs) -> Tensor:
    """Token advantages [B, T] of edge samples: each edge's A broadcast over its segment.

    `inputs.extras["edge_advantages"]` (Tensor[B]) holds A(parent -> child) per edge,
    computed by `edge_advantages` on the sampled trees."""
    if "edge_advantages" not in inputs.extras:
        raise ValueError("spo_tree needs extras['edge_advantages'] (see spo.estimate.tree.edge_advantages)")
    mask = inputs.response_mask.to(torch.float32)
    adv = torch.as_tensor(inputs.extras["edge_advantages"], dtype=torch.float32, device=mask.device)
    return adv[:, None] * mask
