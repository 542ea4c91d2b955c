"""SPO-tree (SPO section 2, long chain-of-thought): one tree of segments per prompt, whose
every edge parent -> child is a training sample with the advantage V(child) - V(parent).

    1. sample trees   levels 1..D-1 add `segment_length` tokens per node, the last level
                      runs to the end; children continue from the parent's exact tokens
    2. leaf rewards   each leaf's full response (root to leaf) graded; truncated = 0
    3. values         bottom-up: V(leaf) = reward, V(node) = mean of its children's V
    4. advantages     A(p -> c) = V(c) - V(p) (the siblings' mean as baseline); edges with
                      A = 0 carry no signal and are dropped
    5. select, replay at most `max_edges_per_prompt` fresh edges per prompt now; the
                      surplus waits in a replay buffer and tops up later iterations (or the
                      reference's uniform draw); optionally cut or padded to `tree_episodes`
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch

from spo.algorithms.base import Algorithm, Batch, Timer, TrainSample, estimator_inputs, set_advantages
from spo.algorithms.registry import register_algorithm
from spo.config import ConfigError
from spo.estimate.tree import edge_advantages, node_values, spo_tree
from spo.optimize.replay import ReplayBuffer, fit_to_size, select_edges, select_edges_uniform
from spo.sample.tree import Tree, sample_trees
from spo.seeds import SALT_EDGES, SALT_SAMPLE, derive_seed


@dataclass(kw_only=True)
class TreeEdge(TrainSample):
    """One edge parent -> child: context = prompt + the parent's prefix, response = the
    child's segment, every token's advantage A = V(child) - V(parent)."""

    problem_index: int
    group_id: int
    finish_reason: str
    text: str
    node: int
    parent: int
    depth: int
    value: float  # V(child)
    parent_value: float  # V(parent)
    edge_advantage: float
    sampled_iteration: int  # 1-based iteration whose tree it comes from
    replayed: bool = False
    age: int = 0  # iterations since it was sampled, when replayed

    def log_record(self) -> dict[str, Any]:
        return {
            "node": self.node, "parent": self.parent, "depth": self.depth, "value": self.value,
            "parent_value": self.parent_value, "edge_advantage": self.edge_advantage,
            "sampled_iteration": self.sampled_iteration, "replayed": self.replayed, "age": self.age,
            "problem_index": self.problem_index, "group_id": self.group_id, "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids, "logprobs": self.logprobs, "finish_reason": self.finish_reason,
            "reward": self.value,  # the episode log's name for the child's value
            "advantages": self.advantages, "loss_mask": self.loss_mask, "response": self.text,
        }


@register_algorithm("spo_tree")
class SPOTree(Algorithm):
    def __init__(self, ctx):
        super().__init__(ctx)
        a = self.cfg.algorithm
        self.replay: ReplayBuffer[TreeEdge] = ReplayBuffer(a.replay_max_age)
        if a.tree_episodes is not None and a.tree_episodes % ctx.dist.world:
            raise ConfigError(f"algorithm.tree_episodes={a.tree_episodes} must be divisible by the number of "
                              f"processes ({ctx.dist.world})")

    @classmethod
    def max_samples_per_iteration(cls, cfg) -> int:
        a = cfg.algorithm
        return a.tree_episodes or cfg.sampling.prompts_per_iteration * a.max_edges_per_prompt

    def collect(self, iteration: int, progress: Any) -> Batch:
        ctx, cfg, a = self.ctx, self.cfg, self.cfg.algorithm
        timer = Timer()
        prompts = ctx.prompts(iteration)
        with timer("sample"):  # 1.
            trees = self.sample(prompts, iteration, progress)
        with timer("score"):  # 2.
            leaf_rewards = [self.leaf_rewards(tree, pi) for tree, (pi, _) in zip(trees, prompts)]

        with timer("estimate"):
            groups, tree_logs = [], []
            for tree, (pi, gid), rewards in zip(trees, prompts, leaf_rewards):  # 3. and 4.
                edges, record = self.tree_edges(tree, pi, gid, rewards, iteration)
                groups.append(edges)
                tree_logs.append(record)
            rng = random.Random(derive_seed(cfg.seed, iteration, ctx.dist.rank, SALT_EDGES))  # 5.
            if a.replay_draw == "uniform":
                chosen = select_edges_uniform(groups, self.replay, a.max_edges_per_prompt, iteration, rng,
                                              question=lambda e: e.problem_index)
            else:
                chosen = select_edges(groups, self.replay, a.max_edges_per_prompt, iteration, rng)
            for born, edge in chosen.replayed:
                edge.replayed, edge.age = True, iteration - born
            if ctx.recomputes_old_logprobs():  # replayed edges keep the log-probs they were sampled with
                ctx.recompute_logprobs(chosen.fresh)
            samples = chosen.fresh + [e for _, e in chosen.replayed]
            selected = len(samples)
            if a.tree_episodes is not None:  # the reference's fixed batch: cut (dropped) or padded with repeats
                samples = fit_to_size(samples, a.tree_episodes // ctx.dist.world, rng)
            trained = {id(e) for e in samples}
            if samples:
                inputs = estimator_inputs(samples, [e.value for e in samples], [e.group_id for e in samples],
                                          extras={"edge_advantages": torch.tensor([e.edge_advantage for e in samples])})
                set_advantages(samples, spo_tree(inputs), cfg)

        # Each tree is logged with the fresh edges it trained, then come the replayed edges.
        for record in tree_logs:
            record["edges"] = [e.log_record() for e in chosen.fresh
                               if e.group_id == record["group_id"] and id(e) in trained]
        episode_log = tree_logs + [{"kind": "replayed_edge", **e.log_record()}
                                   for _, e in chosen.replayed if id(e) in trained]
        nodes = [n for tree in trees for n in tree.nodes[1:]]
        nonzero = sum(len(g) for g in groups)
        return Batch(
            samples=samples,
            episode_log=episode_log,
            responses=[(rewards[n.id], len(tree.prefix(n.id)), n.truncated)
                       for tree, rewards in zip(trees, leaf_rewards) for n in tree.nodes if n.leaf],
            tokens_generated=sum(tree.generated_tokens for tree in trees),
            sequences_generated=len(nodes),
            work={
                "tree_nodes": len(nodes),
                "tree_leaves": sum(n.leaf for n in nodes),
                "edges_nonzero": nonzero,
                "edges_zero_dropped": len(nodes) - nonzero,
                "edges_fresh": len(chosen.fresh),
                "edges_replayed": len(chosen.replayed),
                "edges_parked": chosen.parked,
                "edges_expired": chosen.expired,
                "replay_buffer": len(self.replay),
                **({"edges_cut": selected - len(trained), "edges_repeated": len(samples) - len(trained)}
                   if a.tree_episodes is not None else {}),
            },
            timings=timer.seconds,
            extras={"root_value_sum": sum(t["nodes"][0]["value"] for t in tree_logs), "trees": len(tree_logs)},
        )

    def sample(self, prompts: list[tuple[int, int]], iteration: int, progress: Any) -> list[Tree]:
        """One tree per (problem index, group id), sampled with the iteration's seed."""
        a = self.cfg.algorithm
        with progress.phase(f"iter {iteration + 1} sample tree", total=None):
            return sample_trees(self.ctx.engine, [self.ctx.prompt_ids(pi) for pi, _ in prompts],
                                self.ctx.sampling_params(iteration, SALT_SAMPLE), a.tree_branching, a.segment_length)

    def tree_values(self, tree: Tree, rewards: list[float | None]) -> tuple[list[float], list[float | None]]:
        """(V of every node, A of every edge into it; None at the root): steps 3 and 4."""
        parents = [n.parent for n in tree.nodes]
        values = node_values(parents, rewards)
        return values, edge_advantages(parents, values, sibling_std=self.cfg.algorithm.sibling_std)

    def leaf_rewards(self, tree: Tree, problem_index: int) -> list[float | None]:
        """Reward of every leaf's full response (None for internal nodes); truncated leaves score 0."""
        rewards: list[float | None] = [None] * len(tree.nodes)
        leaves = tree.leaves()
        _, scores = self.ctx.score([problem_index] * len(leaves), [tree.prefix(n.id) for n in leaves],
                                   [n.truncated for n in leaves])
        for n, r in zip(leaves, scores):
            rewards[n.id] = r
        return rewards

    def tree_edges(self, tree: Tree, problem_index: int, group_id: int, rewards: list[float | None],
                   iteration: int) -> tuple[list[TreeEdge], dict[str, Any]]:
        """Edges with nonzero advantage, and the tree's log record (nodes with V and A)."""
        values, advantages = self.tree_values(tree, rewards)
        edges = []
        for n in tree.nodes[1:]:
            if abs(advantages[n.id]) < 1e-9:  # all siblings scored alike: no signal
                continue
            edges.append(TreeEdge(
                problem_index=problem_index, group_id=group_id,
                prompt_ids=tree.prompt_ids + tree.prefix(n.parent), response_ids=n.token_ids,
                logprobs=n.logprobs, finish_reason=n.finish_reason,
                text=self.ctx.tokenizer.decode(n.token_ids, skip_special_tokens=True),
                node=n.id, parent=n.parent, depth=n.depth, value=values[n.id], parent_value=values[n.parent],
                edge_advantage=advantages[n.id], sampled_iteration=iteration + 1,
            ))
        nodes = [
            {"id": n.id, "parent": n.parent, "depth": n.depth, "token_ids": n.token_ids, "logprobs": n.logprobs,
             "finish_reason": n.finish_reason, "leaf": n.leaf, "truncated": n.truncated,
             "reward": rewards[n.id], "value": values[n.id], "advantage": advantages[n.id]}
            for n in tree.nodes
        ]
        record = {"kind": "tree", "problem_index": problem_index, "group_id": group_id,
                  "prompt_ids": tree.prompt_ids, "nodes": nodes}
        return edges, record

    def finish_record(self, record: dict[str, Any], batch: Batch) -> None:
        record["replay_frac"] = record["edges_replayed"] / max(record["edges_fresh"] + record["edges_replayed"], 1)
        record["leaf_accuracy"] = record["accuracy"]
        # A leaf-weighted mean over-weights paths that branched more (longer ones); the root's
        # value weights each path by its probability, so it estimates the policy's mean reward.
        global_sum = self.ctx.dist.global_sum
        record["reward_mean"] = global_sum(batch.extras["root_value_sum"]) / global_sum(batch.extras["trees"])

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.replay.state(dataclasses.asdict)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay.load_state(state.get("replay", []), _edge_from_state)


def _edge_from_state(d: dict[str, Any]) -> TreeEdge:
    """A buffered edge from a checkpoint; also reads the layout of checkpoints written
    before TreeEdge existed (method fields in a `segments` dict, the value in `reward`)."""
    if "segments" in d:
        d = {**{k: v for k, v in d.items() if k not in ("segments", "reward")}, **d["segments"]}
    return TreeEdge(**d)
