"""The general dataset task (task.name: dataset) and user rewards (spo.tasks.user_rewards):
every file format, templates, splits, the hub path (stubbed), bad rows, and rewards that
raise, hang, allocate without bound or return NaN/inf/strings."""

from __future__ import annotations

import json
import math
import sqlite3
import textwrap
import time

import pytest

from spo.tasks.dataset import DatasetTask
from spo.tasks.problems import DataError
from spo.tasks.registry import build_task
from spo.tasks.user_rewards import RewardError, build_reward, exact_match, numeric, regex

ROWS = [{"q": f"What is {i} + {i}?", "answer": str(2 * i), "topic": "add"} for i in range(20)]


def write(tmp_path, name, rows=ROWS):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        import datasets

        ds = datasets.Dataset.from_list(rows)
        ds.to_parquet(str(path)) if name.endswith(".parquet") else ds.to_csv(str(path), index=False)
    return str(path)


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.parquet", "rows.csv"])
def test_every_file_format_gives_the_same_problems(tmp_path, name):
    task = build_task("dataset", path=write(tmp_path, name), prompt="Q: {q} ({topic})", eval_size=5,
                      reward="exact_match")
    train, evals = task.problems("train"), task.problems("eval")
    assert len(train) == 15 and len(evals) == 5
    assert {p.question for p in train + evals} == {f"Q: What is {i} + {i}? (add)" for i in range(20)}
    p = train[0]
    assert p.answer == str(p.meta["row"]["answer"]) and int(p.answer) % 2 == 0
    assert task.reward(p, f"so\n#### {p.answer}", truncated=False) == 1.0
    assert task.reward(p, "#### 999", truncated=False) == 0.0


def test_the_hash_split_is_deterministic_and_a_fraction_works(tmp_path):
    path = write(tmp_path, "rows.jsonl")
    a = build_task("dataset", path=path, prompt="{q}", eval_size=0.25)
    b = build_task("dataset", path=path, prompt="{q}", eval_size=0.25)
    assert [p.id for p in a.problems("eval")] == [p.id for p in b.problems("eval")]
    assert len(a.problems("eval")) == 5


def test_eval_from_its_own_file_and_overlap_is_an_error_or_dropped(tmp_path):
    train = write(tmp_path, "train.jsonl", ROWS[:15])
    evals = write(tmp_path, "eval.jsonl", ROWS[14:])
    task = build_task("dataset", path=train, eval_path=evals, prompt="{q}")
    with pytest.raises(DataError, match=r"eval.jsonl:1: .*also a training row .*train.jsonl:15"):
        task.problems("train")
    task = build_task("dataset", path=train, eval_path=evals, prompt="{q}", on_overlap="drop")
    assert len(task.problems("train")) == 15 and len(task.problems("eval")) == 5


def test_missing_fields_bad_templates_and_empty_splits_are_named(tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[3]["topic"]
    path = write(tmp_path, "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"rows.jsonl:4: missing field 'topic'"):
        build_task("dataset", path=path, prompt="{q} {topic}").problems("train")
    with pytest.raises(DataError, match=r"rows.jsonl:1: missing field 'gold'"):
        build_task("dataset", path=path, prompt="{q}", answer_field="gold").problems("train")
    with pytest.raises(DataError, match=r"task.options.prompt"):
        build_task("dataset", path=path, prompt="{q")
    with pytest.raises(DataError, match=r"eval_size=20 leaves no training rows"):
        build_task("dataset", path=path, prompt="{q}", eval_size=20).problems("train")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no data rows"):
        build_task("dataset", path=str(empty)).problems("train")
    with pytest.raises(DataError, match="task.options.path"):
        build_task("dataset")


def test_a_hub_id_goes_to_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ROWS[:10] if split == "train" else ROWS[10:])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = build_task("dataset", path="someone/puzzles", hub_config="easy", eval_split="test", prompt="{q}")
    assert len(task.problems("train")) == 10 and len(task.problems("eval")) == 10
    assert calls == [("someone/puzzles", "easy", "train"), ("someone/puzzles", "easy", "test")]
    assert task.problems("train")[0].meta["where"] == "someone/puzzles[train] row 1"


# --------------------------------------------------------------------------------------
# Rewards

REWARDS_PY = textwrap.dedent('''
    import math, time

    def length_penalty(prompt, response, problem, finish_reason):
        return -0.01 * len(response) + (0.5 if finish_reason == "stop" else 0.0)

    def three_args(prompt, response, problem):
        return float(problem["answer"] in response)

    def raises(prompt, response, problem, finish_reason):
        return 1 / 0

    def hangs(prompt, response, problem, finish_reason):
        while True:
            pass

    def sleeps(prompt, response, problem, finish_reason):
        time.sleep(60)

    def allocates(prompt, response, problem, finish_reason):
        blocks = []
        while True:
            blocks.append(bytearray(1 << 26))

    def nan(prompt, response, problem, finish_reason):
        return math.nan

    def inf(prompt, response, problem, finish_reason):
        return -math.inf

    def text(prompt, response, problem, finish_reason):
        return "1.0"
''')

ARGS = ("What is 1 + 1?", "#### 2", {"answer": "2"}, "stop")


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS_PY)
    return str(path)


def test_builtins_are_building_blocks():
    assert exact_match()(*ARGS) == 1.0 and exact_match()(*ARGS[:3], "length") == 0.0
    assert numeric()("", "#### 2.0 apples", {"answer": "2"}, "stop") == 1.0
    assert regex(r"^#### {answer}$")(*ARGS) == 1.0 and regex(r"^#### {answer}$")("", "#### 21", {"answer": "2"},
                                                                                   "stop") == 0.0


def test_weighted_sum_of_a_file_function_and_a_builtin(rewards_file):
    reward = build_reward([{"function": f"{rewards_file}:length_penalty", "weight": 2.0},
                           {"function": "numeric", "weight": 0.5}, f"{rewards_file}:three_args"])
    expected = 2.0 * (-0.01 * len("#### 2") + 0.5) + 0.5 * 1.0 + 1.0
    assert reward(*ARGS) == pytest.approx(expected)
    assert reward.errors == 0


def test_python_callables_in_process_and_in_a_worker():
    reward = build_reward([lambda p, r, problem, f: 0.25, numeric()], isolation="inprocess")
    assert reward(*ARGS) == 1.25
    bonus = 0.5
    in_worker = build_reward(lambda p, r, problem, f: bonus + len(problem["answer"]))  # sent by value (dill)
    assert in_worker(*ARGS) == 1.5
    assert in_worker.components[0][0].pool is not None
    connection = sqlite3.connect(":memory:")  # cannot be serialised
    with pytest.raises(DataError, match="cannot send this function to a worker process"):
        build_reward(lambda p, r, problem, f: float(connection is None))


def test_a_reward_module_that_trains_when_imported_cannot_recurse(tmp_path):
    script = tmp_path / "careless.py"
    script.write_text("import spo\n\ndef reward(p, r, problem, f):\n    return 1.0\n\nspo.train('smoke')\n")
    reward = build_reward(f"{script}:reward", timeout_s=5.0)
    with pytest.raises(DataError, match=r"inside a reward worker process.*__name__"):
        reward(*ARGS)


@pytest.mark.parametrize("isolation", ["process", "inprocess"])
@pytest.mark.parametrize("name, why", [("raises", "ZeroDivisionError"), ("hangs", "timed out|overran"),
                                       ("nan", "not a finite number"), ("inf", "not a finite number"),
                                       ("text", "returned str")])
def test_broken_rewards_score_zero_and_are_counted(rewards_file, name, why, isolation):
    reward = build_reward([f"{rewards_file}:{name}", "exact_match"], timeout_s=1.0, isolation=isolation)
    assert reward(*ARGS) == 1.0  # the broken part scores 0, the rest counts
    assert reward.errors == 1


def test_a_reward_that_allocates_without_bound_hits_the_memory_cap(rewards_file):
    reward = build_reward(f"{rewards_file}:allocates", timeout_s=20.0, memory_mb=600)
    t0 = time.perf_counter()
    assert reward(*ARGS) == 0.0 and reward.errors == 1
    assert time.perf_counter() - t0 < 30
    assert build_reward(f"{rewards_file}:length_penalty", memory_mb=600)(*ARGS) == pytest.approx(0.44)


def test_a_reward_stuck_in_c_code_is_killed_and_the_worker_restarted(rewards_file):
    reward = build_reward(f"{rewards_file}:sleeps", timeout_s=0.5)
    t0 = time.perf_counter()
    assert reward(*ARGS) == 0.0 and reward(*ARGS) == 0.0
    assert reward.errors == 2 and time.perf_counter() - t0 < 40


def test_on_error_raise_stops_with_the_users_traceback(rewards_file):
    reward = build_reward(f"{rewards_file}:raises", on_error="raise")
    with pytest.raises(RewardError) as err:
        reward(*ARGS, where="rows/3 (rows.jsonl:4)")
    text = str(err.value)
    assert "my_rewards.py" in text and "1 / 0" in text and "ZeroDivisionError" in text and "rows.jsonl:4" in text


@pytest.mark.parametrize("spec, match", [("nope", "unknown reward 'nope'"), ("no_such_module_xyz:f", "cannot import"),
                                          ("math:no_such_fn", "has no attribute"),
                                          ({"function": "numeric", "weight": "x"}, r"reward.weight"),
                                          ({"function": "numeric", "options": {"bogus": 1}}, "bogus"),
                                          ("/nowhere/r.py:f", "file not found")])
def test_bad_reward_specs_are_named(spec, match):
    with pytest.raises(DataError, match=match):
        build_reward(spec)


def test_a_reward_with_the_wrong_signature_is_named(rewards_file, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def two(prompt, response):\n    return 1.0\n")
    with pytest.raises(DataError, match=r"takes \(prompt, response\)"):
        build_reward(f"{bad}:two", isolation="inprocess")


def test_dataset_task_passes_the_row_and_finish_reason(tmp_path, rewards_file):
    task = DatasetTask(path=write(tmp_path, "rows.jsonl"), prompt="{q}", eval_size=0,
                       reward=f"{rewards_file}:length_penalty")
    p = task.problems("train")[0]
    assert task.reward(p, "abc", truncated=False) == pytest.approx(0.47)
    assert task.reward(p, "abc", truncated=True) == pytest.approx(-0.03)
    assert math.isfinite(task.reward(p, "", truncated=False)) and task.reward_errors == 0


# --------------------------------------------------------------------------------------
# The command line: misuse exits 2 naming the place; a failing reward leaves the run resumable

FLAKY_PY = textwrap.dedent('''
    import os

    def reward(prompt, response, problem, finish_reason):
        if os.path.exists(os.environ["SPO_TEST_BREAK"]):
            raise ValueError("the verifier is broken")
        return 0.5
''')


def tiny_dataset_run(tmp_path, rows, reward, *extra):
    opts = "{path: %s, prompt: '{q}', eval_size: 2, reward: '%s', reward_on_error: raise}" % (rows, reward)
    return ["train", "--config", "smoke", "eval.at_end=false", "sampling.max_new_tokens=4", "task.name=dataset",
            f"task.options={opts}", *extra]


def test_cli_misuse_exits_2_naming_the_place(tmp_path, capsys, rewards_file):
    from spo.cli import main

    rows = [dict(r) for r in ROWS]
    del rows[5]["q"]
    bad_rows = write(tmp_path, "bad.jsonl", rows)
    assert main(tiny_dataset_run(tmp_path, bad_rows, "exact_match", "--output-dir", str(tmp_path / "a"))) == 2
    assert "bad.jsonl:6: missing field 'q'" in capsys.readouterr().err
    good = write(tmp_path, "rows.jsonl")
    assert main(tiny_dataset_run(tmp_path, good, f"{rewards_file}:nope", "--output-dir", str(tmp_path / "b"))) == 2
    assert "has no attribute 'nope'" in capsys.readouterr().err
    assert main(tiny_dataset_run(tmp_path, good, f"{rewards_file}:raises", "--output-dir", str(tmp_path / "c"))) == 2
    err = capsys.readouterr().err
    assert "reward" in err and "my_rewards.py" in err and "ZeroDivisionError" in err and "rows.jsonl:" in err
    assert "Traceback" in err  # the user's function's traceback, not spo's


def test_a_reward_that_breaks_mid_run_leaves_the_run_resumable(tmp_path, capsys, monkeypatch):
    from spo.cli import main

    (tmp_path / "flaky.py").write_text(FLAKY_PY)
    marker = tmp_path / "broken"
    monkeypatch.setenv("SPO_TEST_BREAK", str(marker))
    run = tmp_path / "run"
    args = tiny_dataset_run(tmp_path, write(tmp_path, "rows.jsonl"), f"{tmp_path / 'flaky.py'}:reward")
    assert main([*args, "iterations=1", "--output-dir", str(run)]) == 0
    marker.touch()
    assert main(["train", "--resume", str(run), "iterations=2"]) == 2
    assert "the verifier is broken" in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_000001"
    marker.unlink()
    assert main(["train", "--resume", str(run), "iterations=2"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and all(r["reward_mean"] == 0.5 for r in rows)
