"""SPO-tree's reference options: the fixed number of episodes per iteration (cut at random
or padded with repeats) and the uniform replay draw, by hand and in a smoke run."""

import json
import random
import zlib

import pytest

from spo.cli import main
from spo.optimize.replay import ReplayBuffer, fit_to_size, select_edges_uniform
from spo.tasks.registry import Task
from spo.train.run_log import read_metrics


def test_fit_to_size_cuts_without_repeats_and_pads_with_repeats():
    items = list("abcdef")
    cut = fit_to_size(items, 4, random.Random(0))
    assert len(cut) == 4 and len(set(cut)) == 4 and set(cut) <= set(items)
    assert [x for x in items if x in cut] == cut  # kept in their order
    padded = fit_to_size(items[:2], 5, random.Random(0))
    assert padded[:2] == ["a", "b"] and len(padded) == 5 and set(padded[2:]) <= {"a", "b"}
    assert fit_to_size([], 3, random.Random(0)) == []
    assert fit_to_size(items, 6, random.Random(0)) == items


def test_uniform_draw_by_hand():
    buf: ReplayBuffer = ReplayBuffer(max_age=2)
    q = lambda e: e[0]  # noqa: E731
    # iteration 0: question A has 3 fresh edges, B has 1; at most 2 per question
    sel = select_edges_uniform([[("A", 1), ("A", 2), ("A", 3)], [("B", 4)]], buf, 2, 0, random.Random(0), q)
    assert len(sel.fresh) == 3 and ("B", 4) in sel.fresh and sel.replayed == [] and sel.parked == 1
    left = [e for _, e in buf.items]
    assert len(left) == 1 and left[0][0] == "A"  # A's undrawn edge waits in the buffer
    # iteration 1: A's buffered edge competes with A's new one; both are drawn (2 allowed)
    sel = select_edges_uniform([[("A", 5)]], buf, 2, 1, random.Random(0), q)
    assert sel.fresh == [("A", 5)] and [e for _, e in sel.replayed] == left and sel.parked == 0
    assert buf.items == []
    # iteration 3: an edge parked at iteration 1 is 2 iterations old: expired
    buf.add([("C", 6)], 1)
    sel = select_edges_uniform([], buf, 2, 3, random.Random(0), q)
    assert sel.expired == 1 and sel.fresh == [] and sel.replayed == []


def text_reward(self, problem, text, truncated):
    return 1.0 if zlib.crc32(text.encode()) % 5 == 0 else 0.0


@pytest.mark.parametrize("episodes, draw", [(12, "uniform"), (40, "newest_first")])
def test_smoke_run_trains_exactly_the_set_number_of_episodes(tmp_path, episodes, draw):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "reward", text_reward)
        assert main(["train", "--config", "smoke-spo-tree", "--output-dir", str(tmp_path), "iterations=3",
                     f"algorithm.tree_episodes={episodes}", f"algorithm.replay_draw={draw}",
                     "algorithm.max_edges_per_prompt=4", "eval.at_end=false"]) == 0
    for r in read_metrics(tmp_path):
        selected = r["edges_fresh"] + r["edges_replayed"]
        if selected == 0:
            assert r["episodes"] == 0
            continue
        assert r["episodes"] == episodes
        assert r["edges_cut"] == max(selected - episodes, 0)
        assert r["edges_repeated"] == max(episodes - selected, 0)
        lines = [json.loads(x) for x in (tmp_path / "episodes" / f"iter_{r['iteration']:06d}.jsonl").read_text()
                 .splitlines()]
        logged = sum(len(t["edges"]) for t in lines if t["kind"] == "tree") + sum(
            t["kind"] == "replayed_edge" for t in lines)
        assert logged == selected - r["edges_cut"]  # each distinct trained edge logged once
