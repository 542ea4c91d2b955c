"""`spo bench` bookkeeping: learning curves, budgets, token counting, aggregation over
seeds, the results folder, and config errors (on synthetic logs and the tiny preset)."""

from __future__ import annotations

import json
import math

import pytest

from spo.bench import DONE_FILE, load_bench_config
from spo.cli import main
from spo.config import ConfigError
from spo.evaluate.compare import (
    CurvePoint,
    first_reaching,
    learning_curve,
    markdown_table,
    summarize_method,
)
from spo.presets import resolve_preset
from spo.train.run_log import read_metrics


def _train(it, tokens, samples, seconds):
    return {"iteration": it, "tokens_generated_total": tokens, "samples_generated": samples, "time_total": seconds}


def _eval(it, acc):
    return {"kind": "eval", "iteration": it, "accuracy": acc}


ROWS = [_eval(0, 0.1), _train(1, 100, 10, 2.0), _train(2, 50, 12, 1.0), _eval(2, 0.4),
        _train(3, 70, 10, 1.5), _eval(3, 0.3)]


def test_learning_curve_pairs_each_evaluation_with_the_spend_so_far():
    c = learning_curve(ROWS)
    assert [(p.iteration, p.tokens, p.samples, p.seconds, p.accuracy) for p in c] == [
        (0, 0, 0, 0, 0.1), (2, 150, 22, 3.0, 0.4), (3, 220, 32, 4.5, 0.3)]
    with pytest.raises(ValueError, match="iteration 5"):
        learning_curve(ROWS + [_eval(5, 0.2)])


def test_first_reaching_and_aggregation_over_seeds():
    a = learning_curve(ROWS)
    b = [CurvePoint(0, 0, 0, 0, 0.2), CurvePoint(2, 300, 40, 10.0, 0.5), CurvePoint(4, 600, 80, 20.0, 0.6)]
    never = [CurvePoint(0, 0, 0, 0, 0.0), CurvePoint(4, 500, 60, 9.0, 0.1)]
    assert first_reaching(a, 0.35, "tokens") == 150 and first_reaching(a, 0.9, "tokens") is None
    assert first_reaching(b, 0.35, "iteration") == 2
    s = summarize_method("m", [a, b, never], target=0.35)
    assert s.seeds == 3 and s.reached == 2
    assert s.final_accuracy == pytest.approx((0.3 + 0.6 + 0.1) / 3)
    assert s.final_accuracy_std == pytest.approx(0.25166114784235827)  # sample std of 0.3, 0.6, 0.1
    assert s.best_accuracy == pytest.approx((0.4 + 0.6 + 0.1) / 3)
    assert s.tokens_to_target == pytest.approx((150 + 300) / 2)  # over the seeds that reached it
    assert s.seconds_to_target == pytest.approx((3.0 + 10.0) / 2)
    assert s.tokens == pytest.approx((220 + 600 + 500) / 3)
    none = summarize_method("n", [never], target=0.35)
    assert none.reached == 0 and math.isnan(none.tokens_to_target) and none.final_accuracy_std == 0.0
    table = markdown_table([s, none], 0.35, "at most 4 iterations")
    assert "at most 4 iterations" in table and "| m | 3 |" in table and "0/1" in table


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--config", "bench-smoke", "--output-dir", str(out), "bench.seeds=[0, 1]",
            "run.max_tokens=100"]
    assert main(args) == 0
    return out


def test_bench_writes_table_plots_and_curves_from_the_runs(bench_dir):
    for name in ("results.md", "results.json", "bench.json", "accuracy_vs_iterations.png",
                 "accuracy_vs_tokens.png", "accuracy_vs_seconds.png"):
        assert (bench_dir / name).is_file(), name
    res = json.loads((bench_dir / "results.json").read_text())
    assert [s["method"] for s in res["summaries"]] == ["grpo", "rloo", "spo_chain", "spo_tree"]
    assert "100 generated tokens" in res["budget"]
    for method, curves in res["curves"].items():
        assert len(curves) == 2
        for seed, curve in zip((0, 1), curves):
            run = bench_dir / "runs" / method / f"seed{seed}"
            train = read_metrics(run)
            assert curve[-1]["tokens"] == sum(r["tokens_generated_total"] for r in train)
            assert curve[-1]["tokens"] == train[-1]["tokens_cumulative"]
            # the token budget: stop after the first iteration that reaches 100 tokens
            assert train[-1]["tokens_cumulative"] >= 100 or train[-1]["iteration"] == 2
            assert all(r["tokens_cumulative"] < 100 for r in train[:-1])
            assert [p["iteration"] for p in curve] == list(range(len(train) + 1))  # eval.every=1, at_start
    # MC continuations count as generated tokens: spo_chain spends more per iteration than grpo
    grpo = read_metrics(bench_dir / "runs" / "grpo" / "seed0")[0]
    chain = read_metrics(bench_dir / "runs" / "spo_chain" / "seed0")[0]
    assert chain["tokens_generated_total"] == chain["tokens_generated"] + chain["mc_tokens"] > grpo["tokens_generated"]


def test_finished_runs_are_reused_and_unfinished_ones_continued(bench_dir):
    done = bench_dir / "runs" / "grpo" / "seed0" / DONE_FILE
    stamp = done.read_text()
    unfinished = bench_dir / "runs" / "rloo" / "seed1"
    (unfinished / DONE_FILE).unlink()  # as if killed after its last checkpoint and evaluation
    logged = read_metrics(unfinished, kind=None)
    assert main(["bench", "--config", "bench-smoke", "--output-dir", str(bench_dir), "bench.seeds=[0, 1]",
                 "run.max_tokens=100"]) == 0
    assert done.read_text() == stamp  # not rerun
    assert (unfinished / DONE_FILE).is_file()
    assert read_metrics(unfinished, kind=None) == logged  # continued (nothing left to do), not redone
    assert main(["bench", "--config", "bench-smoke", "--output-dir", str(bench_dir), "--report-only",
                 "bench.seeds=[0, 1]"]) == 0


@pytest.mark.parametrize("override, match", [
    ("bench.target_accuracy=1.5", "target_accuracy"),
    ("bench.seeds=[]", "seeds"),
    ("bench.colour=red", "bench.colour"),
    ("run.optim.lr=-1", "optim.lr"),
    ("run.eval.every=0", "eval"),
])
def test_bad_bench_configs_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_bench_config(resolve_preset("bench-smoke"), [override])


def test_a_bad_method_override_names_the_method():
    with pytest.raises(ConfigError, match="spo_tree"):
        load_bench_config(resolve_preset("bench-smoke"), ['bench.methods.spo_tree=["algorithm.tree_branching=[0]"]'])
