"""SPO-chain with `algorithm.train_on_continuations`: every MC continuation is trained on
with advantage r - V(s_k), its tokens count in the loss, the iteration keeps its planned
optimizer steps, and the episode log shows each continuation under its state's response."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from golden_runs import text_reward

from spo.cli import main
from spo.optimize.update import PolicyUpdate
from spo.tasks.registry import Task
from spo.train.run_log import read_metrics


@pytest.fixture(scope="module")
def recycled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recycled")
    seen = []
    original = PolicyUpdate._optimizer_step

    def spy(self, samples, mb, micro, adv, mask, old_lp, iteration, stats, bar):
        seen.append((iteration, float(mask[mb].sum()), len(mb), self.steps_per_iteration))
        return original(self, samples, mb, micro, adv, mask, old_lp, iteration, stats, bar)

    with mock.patch.object(Task, "reward", text_reward), mock.patch.object(PolicyUpdate, "_optimizer_step", spy):
        assert main(["train", "--config", "smoke-spo-chain", "--output-dir", str(out), "iterations=2",
                     "task.eval_limit=2", "algorithm.train_on_continuations=true"]) == 0
    return out, seen


def lines(run, it):
    return [json.loads(x) for x in (run / "episodes" / f"iter_{it:06d}.jsonl").read_text().splitlines()]


def test_continuations_train_with_r_minus_v_under_their_state(recycled_run):
    run, _ = recycled_run
    rows = lines(run, 1) + lines(run, 2)
    continuations = [r for r in rows if r.get("kind") == "continuation"]
    assert continuations and any(c["reward"] != c["state_value"] for c in continuations)
    owner = None
    positions = {}
    for it in (1, 2):
        responses = [r for r in lines(run, it) if r.get("kind") != "continuation"]
        for r in lines(run, it):
            if r.get("kind") != "continuation":
                owner = r
                continue
            assert owner == responses[r["state_episode"]]  # logged under its state's response
            t = r["state_tokens"]
            assert r["prompt_ids"] == owner["prompt_ids"] + owner["response_ids"][:t]  # the exact state
            assert r["state_value"] == owner["values"][owner["boundaries"].index(t)]
            assert r["advantages"] == pytest.approx([r["reward"] - r["state_value"]] * len(r["response_ids"]))
            positions[(it, r["state_episode"], t)] = positions.get((it, r["state_episode"], t), 0) + 1
    # N = 2 continuations per state (none was empty here)
    assert set(positions.values()) == {2}


def test_their_tokens_count_in_the_loss_and_the_steps_stay_planned(recycled_run):
    run, seen = recycled_run
    metrics = read_metrics(run)
    for it, m in zip((1, 2), metrics):
        rows = lines(run, it)
        assert m["episodes"] == len(rows) == 16 + m["continuations_trained"]
        assert m["continuations_trained"] == m["mc_continuations"]
        assert m["continuation_tokens_trained"] == m["mc_tokens"]
        counted = sum(sum(r["loss_mask"]) for r in rows)
        steps = [s for s in seen if s[0] == it - 1]
        assert sum(s[1] for s in steps) == counted  # every counted token, continuations' included, is in a step
        assert len(steps) == steps[0][3] == 2  # 16 responses / mini-batch 8: the continuations widen the steps
        assert sum(s[2] for s in steps) == len(rows)
