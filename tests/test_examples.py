"""The worked examples under examples/ run end to end on the tiny model, and the countdown
reward's expression evaluator is safe (never eval: only integers, + - * / and parentheses)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from spo.cli import main

ROOT = Path(__file__).resolve().parents[1]
COUNTDOWN = ROOT / "examples" / "countdown"
# Seconds, not minutes: one iteration, short responses, few segments.
FAST = {"iterations": 1, "sampling.max_new_tokens": 8, "algorithm.max_segments": 2, "eval.at_end": True,
        "task.eval_limit": 2}


@pytest.fixture
def countdown(monkeypatch):
    monkeypatch.syspath_prepend(str(COUNTDOWN))
    import countdown

    return countdown


def test_the_evaluator_accepts_arithmetic_only(countdown):
    assert countdown.evaluate_expression("(8 - 2) * (5 - 1)")[0] == 24
    assert countdown.evaluate_expression("8 / 3 * 3")[0] == 8  # exact fractions
    for hostile in ["__import__('os').system('true')", "2 ** 10", "9 ** 9 ** 9", "-3 + 27", "x + 1", "1 / 0",
                    "(" * 500 + "1" + ")" * 500, "1.5 * 16", "open('f')", "[1, 2]", ""]:
        assert countdown.evaluate_expression(hostile) is None, hostile


def test_the_reward(countdown):
    problem = {"numbers": [2, 5, 8, 1], "target": 24}
    assert countdown.reward("", "so\n#### (8 - 2) * (5 - 1)", problem, "stop") == 1.0
    assert countdown.reward("", "#### (8 + 2) * (5 - 1)", problem, "stop") == 0.1  # right numbers, wrong value
    assert countdown.reward("", "#### (8 - 2) * 4", problem, "stop") == 0.0  # not the given numbers
    assert countdown.reward("", "#### (8 - 2) * (5 - 1)", problem, "length") == 0.0
    rows = [json.loads(line) for line in (COUNTDOWN / "puzzles.jsonl").read_text().splitlines()]
    assert rows == countdown.make_puzzles(len(rows))  # the shipped file is what the generator writes
    assert all(countdown.reward("", f"#### {r['answer']}", r, "stop") == 1.0 for r in rows)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_python_api_example(tmp_path, countdown, monkeypatch):
    monkeypatch.syspath_prepend(str(COUNTDOWN))
    import train_countdown

    import spo

    cfg = train_countdown.countdown_config("tiny", iterations=1)
    cfg = spo.make_config(None, FAST, base=cfg)
    run_dir = spo.train(cfg, reward=countdown.reward, output_dir=tmp_path / "api")
    rows = read_metrics(run_dir)
    assert rows[0]["reward_errors"] == 0 and rows[0]["episodes"] == 16
    assert rows[-1]["kind"] == "eval"
    assert "spo_chain" in (run_dir / "config.yaml").read_text()


def test_the_yaml_example_with_a_module_function_reward(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the preset's paths are relative to the repository root
    overrides = [f"{k}={json.dumps(v)}" for k, v in FAST.items()]
    assert main(["train", "--config", "examples/countdown/countdown-spo-chain.yaml", "--output-dir",
                 str(tmp_path / "yaml"), *overrides]) == 0
    rows = read_metrics(tmp_path / "yaml")
    assert rows[0]["reward_errors"] == 0 and rows[-1]["kind"] == "eval"
    episode = json.loads((tmp_path / "yaml" / "episodes" / "iter_000001.jsonl").read_text().splitlines()[0])
    assert "reward" in episode


def test_the_script_runs_as_a_script(tmp_path):
    """`python examples/countdown/train_countdown.py --help` works (imports resolve)."""
    import subprocess

    out = subprocess.run([sys.executable, str(COUNTDOWN / "train_countdown.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--iterations" in out.stdout
