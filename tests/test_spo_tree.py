"""SPO-tree building blocks on hand-built trees: values, advantages, sampler, replay buffer."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from tree_rules import check_tree_record

from spo.estimate.registry import EstimatorInputs, get_estimator
from spo.estimate.tree import edge_advantages, node_values
from spo.optimize.replay import ReplayBuffer, select_edges
from spo.sample.engine import Rollout
from spo.sample.tree import sample_trees
from spo.sample.engine import SamplingParams

# An uneven tree with an early leaf, a mixed subtree and an all-wrong subtree:
#            0
#     1(r=1) 2       3
#          4 5 6    7 8
#        r=0 1 1  r=0 0
PARENTS = [None, 0, 0, 0, 2, 2, 2, 3, 3]
REWARDS = [None, 1.0, None, None, 0.0, 1.0, 1.0, 0.0, 0.0]


def test_values_are_bottom_up_means():
    v = node_values(PARENTS, REWARDS)
    assert v[4:] == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert v[1] == 1.0 and v[2] == pytest.approx(2 / 3) and v[3] == 0.0
    assert v[0] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_advantages_are_child_minus_parent():
    v = node_values(PARENTS, REWARDS)
    a = edge_advantages(PARENTS, v)
    expected = [None, 4 / 9, 1 / 9, -5 / 9, -2 / 3, 1 / 3, 1 / 3, 0.0, 0.0]
    assert a[0] is None
    assert a[1:] == pytest.approx(expected[1:])
    # siblings' advantages sum to zero: V(parent) is their mean
    assert sum(a[1:4]) == pytest.approx(0.0, abs=1e-12)


def test_sibling_std_scaling():
    v = node_values(PARENTS, REWARDS)
    a = edge_advantages(PARENTS, v, sibling_std=True)
    sd_root = statistics.stdev([v[1], v[2], v[3]])
    sd_2 = statistics.stdev([0.0, 1.0, 1.0])
    assert a[1] == pytest.approx((v[1] - v[0]) / (sd_root + 1e-6))
    assert a[4] == pytest.approx(-2 / 3 / (sd_2 + 1e-6))
    assert a[7] == 0.0 and a[8] == 0.0  # all-wrong siblings: std 0, advantage 0


def test_all_correct_and_all_wrong_trees_have_no_signal():
    for r in (0.0, 1.0):
        rewards = [None, None, None, r, r, r, r]
        parents = [None, 0, 0, 1, 1, 2, 2]
        v = node_values(parents, rewards)
        assert v == [r] * 7
        assert edge_advantages(parents, v)[1:] == [0.0] * 6


def test_bad_trees_are_rejected():
    with pytest.raises(ValueError, match="neither a leaf"):
        node_values([None, 0], [None, None])
    with pytest.raises(ValueError, match="also children"):
        node_values([None, 0, 1], [None, 1.0, 0.0])
    with pytest.raises(ValueError, match="must come before"):
        node_values([None, 2, 0], [None, 1.0, None])


def test_spo_tree_estimator_broadcasts_edge_advantages():
    est = get_estimator("spo_tree")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    inputs = EstimatorInputs(rewards=torch.zeros(2), group_ids=torch.zeros(2, dtype=torch.long), response_mask=mask,
                             extras={"edge_advantages": torch.tensor([0.5, -0.25])})
    assert est(inputs).tolist() == [[0.5, 0.5, 0.0], [-0.25, -0.25, -0.25]]
    with pytest.raises(ValueError, match="edge_advantages"):
        est(EstimatorInputs(rewards=torch.zeros(2), group_ids=torch.zeros(2, dtype=torch.long), response_mask=mask))


# ---------------------------------------------------------------------------------- sampler

class ScriptedEngine:
    """Each continuation is a deterministic function of (context, sample index): it emits
    tokens 10 + (hash % 50) and stops (EOS = 2) after a context-dependent length."""

    eos = 2

    def __init__(self):
        self.calls = []

    def generate(self, contexts, params, n=1, max_new_tokens=None):
        self.calls.append((list(map(list, contexts)), n, list(max_new_tokens)))
        out = []
        for ctx, limit in zip(contexts, max_new_tokens):
            group = []
            for j in range(n):
                rng = random.Random(hash((tuple(ctx), j)))
                stop_at = rng.randint(1, 12)  # EOS as token number stop_at, if within the limit
                ids = [rng.randint(10, 60) for _ in range(min(limit, stop_at))]
                finish = "length"
                if stop_at <= limit:
                    ids[-1] = self.eos
                    finish = "eos"
                group.append(Rollout(list(ctx), ids, [-0.1 * (k + 1) for k in range(len(ids))], finish))
            out.append(group)
        return out


def _as_record(tree, rewards):
    parents = [n.parent for n in tree.nodes]
    v = node_values(parents, rewards)
    a = edge_advantages(parents, v)
    return {"prompt_ids": tree.prompt_ids, "nodes": [
        {"id": n.id, "parent": n.parent, "depth": n.depth, "token_ids": n.token_ids, "logprobs": n.logprobs,
         "finish_reason": n.finish_reason, "leaf": n.leaf, "truncated": n.truncated, "reward": rewards[n.id],
         "value": v[n.id], "advantage": a[n.id]} for n in tree.nodes]}


@pytest.mark.parametrize("budget", [7, 9, 40])
def test_sampler_builds_trees_by_the_rules(budget):
    engine = ScriptedEngine()
    prompts = [[1, 5, 7], [1, 9]]
    branching, M = [3, 2, 2], 3
    trees = sample_trees(engine, prompts, SamplingParams(max_new_tokens=budget, seed=0), branching, M)
    # one engine call per level with n = that level's branch factor, all prompts together
    assert [n for _, n, _ in engine.calls] == branching[: len(engine.calls)]
    assert len(engine.calls[0][0]) == 2
    for tree, prompt in zip(trees, prompts):
        # every context the engine saw for a child is exactly prompt + parent's prefix
        rewards = [(1.0 if len(tree.prefix(n.id)) % 2 else 0.0) if n.leaf and not n.truncated else
                   (0.0 if n.leaf else None) for n in tree.nodes]
        check_tree_record(_as_record(tree, rewards), branching, M, budget)
        for n in tree.nodes[1:]:
            parent_ctx = prompt + tree.prefix(n.parent)
            assert any(parent_ctx in ctxs for ctxs, _, _ in engine.calls)
    flat = [n for t in trees for n in t.nodes[1:]]
    assert any(n.leaf and n.finish_reason == "eos" and n.depth < 3 for n in flat)  # early leaves occur
    if budget == 7:
        assert any(n.truncated for n in flat)  # the budget cuts some paths


def test_sampler_limits_each_level():
    engine = ScriptedEngine()
    sample_trees(engine, [[1, 2, 3]], SamplingParams(max_new_tokens=10), [2, 2], 4)
    assert engine.calls[0][2] == [4]  # level 1: M tokens
    for ctxs, _, limits in engine.calls[1:]:  # last level: what is left of the budget
        assert all(lim == 10 - (len(c) - 3) for c, lim in zip(ctxs, limits))


def test_sampler_rejects_bad_shapes():
    with pytest.raises(ValueError, match="branching"):
        sample_trees(ScriptedEngine(), [[1]], SamplingParams(), [], 3)
    with pytest.raises(ValueError, match="segment_length"):
        sample_trees(ScriptedEngine(), [[1]], SamplingParams(), [2], 0)


# ---------------------------------------------------------------------------------- replay

def test_replay_buffer_ages_and_takes_newest_first():
    buf = ReplayBuffer(max_age=3)
    buf.add(["a0", "b0"], iteration=0)
    buf.add(["a1"], iteration=1)
    buf.add(["a2"], iteration=2)
    assert buf.expire(2) == 0 and len(buf) == 4
    assert buf.expire(3) == 2  # born at 0: 3 iterations old = max_age
    assert buf.take(1) == [(2, "a2")]
    assert buf.take(5) == [(1, "a1")]
    assert len(buf) == 0 and buf.take(3) == []


def test_replay_buffer_state_round_trip_and_no_replay():
    buf = ReplayBuffer(max_age=4)
    buf.add([{"x": 1}, {"x": 2}], iteration=5)
    other = ReplayBuffer(max_age=4)
    other.load_state(buf.state(dict), dict)
    assert other.items == buf.items
    off = ReplayBuffer(max_age=0)
    off.add(["a"], iteration=0)
    assert len(off) == 0


def test_select_edges_caps_each_prompt_and_tops_up_from_the_buffer():
    buf = ReplayBuffer(max_age=2)
    rng = random.Random(0)
    # iteration 0: prompt A has 5 edges, prompt B 1; cap 3 per prompt -> 4 trained, 2 parked
    sel = select_edges([["A1", "A2", "A3", "A4", "A5"], ["B1"]], buf, 3, 0, rng)
    assert len(sel.fresh) == 4 and sel.replayed == [] and sel.parked == 2
    assert sum(e.startswith("A") for e in sel.fresh) == 3
    parked = {x for _, x in buf.items}
    assert parked | {e for e in sel.fresh if e.startswith("A")} == {"A1", "A2", "A3", "A4", "A5"}
    # iteration 1: only 2 fresh edges, room for 4 more: both parked edges are replayed (age 1)
    sel = select_edges([["C1"], ["D1"]], buf, 3, 1, rng)
    assert sorted(sel.fresh) == ["C1", "D1"]
    assert sorted(x for _, x in sel.replayed) == sorted(parked)
    assert all(1 - born == 1 for born, _ in sel.replayed)
    # iteration 2: parked edges from iteration 0 have expired before they could be used
    buf2 = ReplayBuffer(max_age=2)
    select_edges([["A1", "A2"]], buf2, 1, 0, rng)
    sel = select_edges([[], []], buf2, 1, 2, rng)
    assert sel.expired == 1 and sel.replayed == []
