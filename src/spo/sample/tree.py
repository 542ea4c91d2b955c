"""SPO-tree rollouts: a tree of segments per prompt, sampled one level at a time.

Level d (1-based) of a tree with branching [b_1, ..., b_D] gives every open node of level
d-1 b_d children. Levels 1..D-1 generate exactly `segment_length` (M) new tokens per
node; the last level runs to the end of the answer. Every node is bounded by the
response budget `max_new_tokens` counted from the prompt, so a path is never longer
than a chain response would be.

A node is a leaf when it
  * ended with a stop token or stop string (finish "eos" / "stop"), even before M tokens:
    an early leaf;
  * is at the last level; or
  * used up the response budget: a truncated leaf, which scores 0 like any truncated
    response (the reference grades such leaves on their last segment only).

All open nodes of one level, across all prompts, go to the engine in one call, with
`n = b_d`: the engine encodes each parent's prefix once and samples its b_d children
from that cached state. Children continue from the parent's exact token ids.

Only sampling lives here; scoring and values are the caller's (`spo.estimate.tree`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from spo.sample.engine import RolloutEngine, SamplingParams


@dataclass
class TreeNode:
    id: int  # position in Tree.nodes; parents always come before their children
    parent: int | None  # None for the root (the prompt itself)
    depth: int  # root 0, first segment 1, ...
    token_ids: list[int] = field(default_factory=list)  # this node's own segment
    logprobs: list[float] = field(default_factory=list)  # old log-probs of token_ids
    finish_reason: str = ""  # the engine's: "eos" or "length" ("" for the root)
    leaf: bool = False
    truncated: bool = False  # a leaf cut by the response budget: reward 0
    children: list[int] = field(default_factory=list)


@dataclass
class Tree:
    prompt_ids: list[int]
    nodes: list[TreeNode]

    def prefix(self, node_id: int) -> list[int]:
        """Response tokens from the root down to and including `node_id`'s segment."""
        parts = []
        node: TreeNode | None = self.nodes[node_id]
        while node is not None:
            parts.append(node.token_ids)
            node = self.nodes[node.parent] if node.parent is not None else None
        return [t for seg in reversed(parts) for t in seg]

    def leaves(self) -> list[TreeNode]:
        return [n for n in self.nodes if n.leaf]

    @property
    def generated_tokens(self) -> int:
        return sum(len(n.token_ids) for n in self.nodes)


def sample_trees(
    engine: RolloutEngine,
    prompts: Sequence[list[int]],
    params: SamplingParams,
    branching: Sequence[int],
    segment_length: int,
) -> list[Tree]:
    """One tree per prompt; `params.max_new_tokens` is the whole response budget."""
    if not branching or any(b < 1 for b in branching):
        raise ValueError(f"branching must be a non-empty list of integers >= 1, got {list(branching)}")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    budget = params.max_new_tokens
    trees = [Tree(list(p), [TreeNode(id=0, parent=None, depth=0)]) for p in prompts]
    open_nodes: list[tuple[int, int, int]] = [(t, 0, 0) for t in range(len(trees))]  # (tree, node, prefix len)
    depth_total = len(branching)
    for depth, n_children in enumerate(branching, start=1):
        if not open_nodes:
            break
        last_level = depth == depth_total
        contexts, limits = [], []
        for t, node_id, used in open_nodes:
            contexts.append(trees[t].prompt_ids + trees[t].prefix(node_id))
            left = budget - used
            limits.append(left if last_level else min(segment_length, left))
        level_params = replace(params, seed=None if params.seed is None else params.seed + depth)
        results = engine.generate(contexts, level_params, n=n_children, max_new_tokens=limits)
        next_open = []
        for (t, node_id, used), rollouts in zip(open_nodes, results):
            tree = trees[t]
            for r in rollouts:
                child = TreeNode(id=len(tree.nodes), parent=node_id, depth=depth, token_ids=list(r.response_ids),
                                 logprobs=list(r.logprobs), finish_reason=r.finish_reason)
                length = used + len(child.token_ids)
                child.truncated = r.finish_reason == "length" and (last_level or length >= budget)
                child.leaf = r.finish_reason in ("eos", "stop") or last_level or child.truncated
                tree.nodes.append(child)
                tree.nodes[node_id].children.append(child.id)
                if not child.leaf:
                    next_open.append((t, child.id, length))
        open_nodes = next_open
    return trees
