"""SPO-tree end to end on the tiny random model: episode logs obey the method's rules,
the replay buffer works across iterations, and an interrupted run resumes exactly.

A random model almost never answers correctly, so these runs swap the task's reward for
a deterministic function of the response text (about one leaf in seven scores 1, so some trees carry no signal and leave room for replay):
the point here is the trainer's bookkeeping, not learning."""

from __future__ import annotations

import json
import shutil
import zlib

import pytest
from conftest import assert_same_metrics, resume_after_crash
from tree_rules import check_edge, check_tree_record

from spo.cli import main
from spo.tasks.registry import Task
from spo.train.checkpoint import write_manifest
from spo.train.run_log import read_metrics

BRANCHING, M, BUDGET, MAX_AGE = [3, 2, 2], 4, 16, 2
ARGS = ["sampling.max_new_tokens=16", "algorithm.max_edges_per_prompt=8", "iterations=3",
        "task.eval_limit=4", "save_every=1", "keep_checkpoints=4"]


def text_reward(self, problem, text, truncated):
    return 1.0 if zlib.crc32(text.encode()) % 7 == 0 else 0.0


@pytest.fixture(scope="module")
def patched_reward():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "reward", text_reward)
        yield


@pytest.fixture(scope="module")
def tree_run(tmp_path_factory, patched_reward):
    out = tmp_path_factory.mktemp("tree")
    assert main(["train", "--config", "smoke-spo-tree", "--output-dir", str(out), *ARGS]) == 0
    return out


def lines(run, it):
    return [json.loads(x) for x in (run / "episodes" / f"iter_{it:06d}.jsonl").read_text().splitlines()]


def test_episode_logs_follow_the_spo_tree_rules(tree_run):
    trained = 0
    for it in (1, 2, 3):
        records = lines(tree_run, it)
        trees = [r for r in records if r["kind"] == "tree"]
        assert len(trees) == 4  # prompts_per_iteration
        for tree in trees:
            check_tree_record(tree, BRANCHING, M, BUDGET, truncated_scores_zero=False)
            assert len(tree["edges"]) <= 8  # max_edges_per_prompt fresh edges
            nonzero = [n for n in tree["nodes"][1:] if abs(n["advantage"]) >= 1e-9]
            assert len(tree["edges"]) == min(8, len(nonzero))
            for edge in tree["edges"]:
                check_edge(edge, tree)
                assert not edge["replayed"] and edge["age"] == 0
            trained += len(tree["edges"])
        for edge in (r for r in records if r["kind"] == "replayed_edge"):
            check_edge(edge)
            assert edge["replayed"] and 1 <= edge["age"] < MAX_AGE  # younger than the maximum age
            assert edge["sampled_iteration"] == it - edge["age"]
    assert trained > 0


def test_metrics_count_tree_work_and_replay(tree_run):
    rows = read_metrics(tree_run)
    for r in rows:
        it = r["iteration"]
        records = lines(tree_run, it)
        trees = [x for x in records if x["kind"] == "tree"]
        replayed = [x for x in records if x["kind"] == "replayed_edge"]
        nodes = [n for t in trees for n in t["nodes"][1:]]
        assert r["tree_nodes"] == len(nodes)
        assert r["tokens_generated"] == sum(len(n["token_ids"]) for n in nodes)
        assert r["edges_replayed"] == len(replayed)
        assert r["episodes"] == r["edges_fresh"] + r["edges_replayed"] <= 4 * 8
        assert r["replay_frac"] == pytest.approx(len(replayed) / max(r["episodes"], 1))
        leaves = [n for n in nodes if n["leaf"]]
        assert r["leaf_accuracy"] == pytest.approx(sum(n["reward"] >= 1 for n in leaves) / len(leaves))
        assert r["reward_mean"] == pytest.approx(sum(t["nodes"][0]["value"] for t in trees) / len(trees))
    assert any(r["edges_replayed"] > 0 for r in rows), "the replay buffer was never used"
    assert any(r["edges_parked"] > 0 for r in rows)


def test_spo_tree_resume_matches(tree_run, tmp_path, patched_reward):
    crashed = resume_after_crash(tree_run, tmp_path, last_good=1)
    assert_same_metrics(read_metrics(tree_run), read_metrics(crashed))
    for it in (2, 3):
        assert lines(tree_run, it) == lines(crashed, it)  # the replay buffer came back too


def test_resume_reads_the_replay_buffer_of_older_checkpoints(tree_run, tmp_path, patched_reward):
    """Checkpoints written before the algorithm modules kept the buffer in replay_rank{r}.json,
    each edge with its method fields in a `segments` dict and its value in `reward`."""
    old = tmp_path / "old"
    shutil.copytree(tree_run, old)
    states = {k: json.loads((old / "checkpoints" / f"iter_{k:06d}" / "algorithm_rank0.json").read_text())
              for k in (1, 2)}
    last_good = next((k for k in (1, 2) if states[k]["replay"]), None)
    assert last_good, "no edge was parked: nothing to check"
    ckpt, state = old / "checkpoints" / f"iter_{last_good:06d}", states[last_good]
    own = ("node", "parent", "depth", "value", "parent_value", "edge_advantage", "sampled_iteration", "replayed", "age")
    legacy = [[born, {**{k: v for k, v in e.items() if k not in own}, "reward": e["value"],
                      "segments": {k: e[k] for k in own}}] for born, e in state["replay"]]
    (ckpt / "replay_rank0.json").write_text(json.dumps(legacy))
    (ckpt / "algorithm_rank0.json").unlink()
    write_manifest(ckpt)  # as an old spo wrote it: whole, not damaged (else an older checkpoint is used)
    resumed = resume_after_crash(old, tmp_path / "x", last_good=last_good)
    for it in range(last_good + 1, 4):
        assert lines(tree_run, it) == lines(resumed, it)


DDP_SCRIPT = '''
import sys, zlib
import torch.distributed as dist
from spo.tasks.registry import Task

def reward(self, problem, text, truncated):
    if dist.is_initialized() and dist.get_rank() == 1:  # this process's trees carry no signal
        return 0.0
    return 1.0 if zlib.crc32(text.encode()) % 7 == 0 else 0.0

Task.reward = reward
from spo.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_two_processes_where_one_has_no_edges(tmp_path):
    """Under DDP every process takes the same optimizer steps; one whose trees all carry
    no signal joins each step with a zero-weight micro-batch instead of hanging."""
    import subprocess
    import sys

    script = tmp_path / "run_tree.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), "train",
           "--config", "smoke-spo-tree", "--output-dir", str(out), *ARGS[:2], "iterations=2", "eval.at_end=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out)
    assert len(rows) == 2 and any(r["episodes"] > 0 for r in rows)
    assert (out / "checkpoints" / "iter_000002" / "algorithm_rank1.json").is_file()  # two processes ran
    for it in (1, 2):
        trees = [r for r in lines(out, it) if r["kind"] == "tree"]
        assert len(trees) == 4
        quiet = [t for t in trees if t["group_id"] % 2 == 1]  # rank 1's prompts
        assert quiet and all(not t["edges"] for t in quiet)
