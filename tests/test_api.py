"""The Python API (spo.make_config, spo.train, spo.evaluate) and the command line give the
same runs for the same config; callables and Task objects go in from Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_same_metrics

import spo
from spo.cli import main

REWARD_PY = '''
def reward(prompt, response, problem, finish_reason):
    """Partial credit: the gold answer anywhere in the response, minus a length penalty."""
    return (1.0 if problem["answer"] in response else 0.0) - 0.01 * len(response.split())
'''


def fast_run_overrides(rows: Path, reward: str) -> list[str]:
    return ["iterations=2", "eval.at_end=false", "sampling.max_new_tokens=8", "algorithm.mc_samples=2",
            "task.name=dataset", "task.eval_limit=4",
            "task.options={path: %s, prompt: 'Add {a} and {b}.', eval_size: 4, reward: %s}" % (rows, reward)]


@pytest.fixture
def dataset(tmp_path):
    rows = tmp_path / "sums.jsonl"
    rows.write_text("".join(json.dumps({"a": i, "b": i % 5, "answer": str(i + i % 5)}) + "\n" for i in range(24)))
    (tmp_path / "sum_reward.py").write_text(REWARD_PY)
    return rows, f"{tmp_path / 'sum_reward.py'}:reward"


def read_run(run_dir: Path) -> tuple[list[dict], dict[str, str]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    episodes = {p.name: p.read_text() for p in sorted((run_dir / "episodes").glob("*.jsonl"))}
    return rows, episodes


def test_python_api_and_cli_give_the_same_run(tmp_path, dataset):
    rows, reward = dataset
    overrides = fast_run_overrides(rows, reward)
    assert main(["train", "--config", "smoke-spo-chain", "--output-dir", str(tmp_path / "cli"), *overrides]) == 0
    cfg = spo.make_config("smoke-spo-chain", overrides)
    run_dir = spo.train(cfg, output_dir=tmp_path / "api")
    assert run_dir == tmp_path / "api"
    cli_rows, cli_episodes = read_run(tmp_path / "cli")
    api_rows, api_episodes = read_run(run_dir)
    assert_same_metrics(cli_rows, api_rows)
    assert cli_episodes == api_episodes and len(cli_episodes) == 2
    assert all(r["reward_errors"] == 0 for r in api_rows)


def test_a_python_callable_reward_and_evaluate(tmp_path, dataset):
    rows, _ = dataset
    seen = []

    def reward(prompt, response, problem, finish_reason):
        seen.append((prompt, problem["answer"], finish_reason))
        return 0.5

    cfg = spo.make_config("smoke", {"iterations": 1, "eval.at_end": False, "sampling.max_new_tokens": 8,
                                    "task.name": "dataset", "task.eval_limit": 4,
                                    "task.options": {"path": str(rows), "prompt": "Add {a} and {b}.", "eval_size": 4,
                                                     "reward_isolation": "inprocess"}})
    run_dir = spo.train(cfg, reward=reward, output_dir=tmp_path / "run")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["reward_mean"] == 0.5 and len(seen) == 16
    assert seen[0][0].startswith("Add ") and seen[0][2] == "length"
    report = spo.evaluate(run_dir, samples=2, limit=3, reward=reward)
    assert report.summary["problems"] == 3 and len(report.problems) == 3
    assert json.loads(report.to_json())["samples"] == 2


def test_make_config_takes_dicts_lists_and_dataclasses():
    a = spo.make_config("smoke", ["iterations=5", "optim.lr=1e-5"])
    b = spo.make_config("smoke", {"iterations": 5, "optim.lr": 1e-5})
    c = spo.make_config(None, {}, base=b)
    assert a == b == c and a.iterations == 5
    with pytest.raises(spo.ConfigError, match="iterations"):
        spo.make_config("smoke", {"iterations": "many"})
    with pytest.raises(spo.ConfigError, match="reward="):
        spo.make_task(a, reward=lambda *args: 1.0)


def test_the_pure_pieces_are_public():
    assert spo.fixed_boundaries(10, 4) == [0, 4, 8, 10]
    assert "spo_chain" in spo.available_estimators() and callable(spo.get_estimator("grpo"))


def test_reward_errors_are_counted_per_iteration_with_a_running_total(tmp_path, dataset):
    rows, _ = dataset
    calls, failed = [], []

    def reward(prompt, response, problem, finish_reason):  # every third call fails (scored 0, counted)
        calls.append(1)
        if len(calls) % 3 == 0:
            failed.append(len(calls))
            raise ValueError("a broken reward")
        return 0.5

    def expected(lines):  # failures among each training line's own calls (one per response)
        ends = [sum(r["episodes"] for r in lines[:i + 1]) for i in range(len(lines))]
        return [sum(start < c <= end for c in failed) for start, end in zip([0] + ends, ends)]

    options = {"iterations": 2, "eval.at_end": False, "sampling.max_new_tokens": 8, "task.name": "dataset",
               "task.options": {"path": str(rows), "prompt": "Add {a} and {b}.", "eval_size": 4,
                                "reward_isolation": "inprocess"}}
    run_dir = spo.train(spo.make_config("smoke", options), reward=reward, output_dir=tmp_path / "run")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward_errors"] for r in lines] == expected(lines) == [5, 5]  # 16 calls each: 3, 6, ..., 15; 18, ..., 30
    assert [r["reward_errors_cumulative"] for r in lines] == [5, 10]
    spo.train(spo.make_config("smoke", {**options, "iterations": 3}), reward=reward, resume=run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward_errors"] for r in lines] == expected(lines) == [5, 5, 6]  # 33, ..., 48
    assert [r["reward_errors_cumulative"] for r in lines] == [5, 10, 16]  # the total goes on across the resume
