"""`spo bench` bookkeeping: learning curves, budgets, token counting, aggregation over
seeds, the results folder, and config errors (on synthetic logs and the tiny preset)."""

from __future__ import annotations

import json
import math
import os

import pytest

from spo.commands.bench import DONE_FILE, load_bench_config
from spo.cli import main
from spo.config import ConfigError
from spo.evaluate.learning_curves import (
    CurvePoint,
    common_spend,
    equal_spend,
    equal_spend_table,
    first_reaching,
    learning_curve,
    markdown_table,
    paired_comparison,
    paired_t_interval,
    summarize_method,
    t_quantile,
    value_at,
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


def test_value_at_interpolates_between_evaluations_and_common_spend_is_the_least_reached():
    a = learning_curve(ROWS)  # (iteration, tokens, acc): (0, 0, 0.1), (2, 150, 0.4), (3, 220, 0.3)
    assert value_at(a, "iteration", 2) == 0.4 and value_at(a, "iteration", 1) == pytest.approx(0.25)
    assert value_at(a, "tokens", 185) == pytest.approx(0.35)  # halfway from 150 (0.4) to 220 (0.3)
    assert value_at(a, "tokens", 220) == 0.3 and value_at(a, "tokens", 0) == 0.1
    assert math.isnan(value_at(a, "tokens", 221))  # past the run's end: nothing measured there
    b = [CurvePoint(0, 0, 0, 0, 0.2), CurvePoint(4, 600, 80, 20.0, 0.6)]
    assert common_spend([a, b], "iteration") == 3 and common_spend([a, b], "tokens") == 220
    assert common_spend([a, b], "seconds") == 4.5
    with pytest.raises(ValueError, match="key"):
        value_at(a, "minutes", 1)


def test_student_t_quantiles_match_the_tables():
    for df, t in [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (10, 2.228138852), (30, 2.042272456)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-8)
    assert t_quantile(0.95, 4) == pytest.approx(2.131846786, abs=1e-8)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776445105, abs=1e-8)


def test_paired_t_interval_by_hand():
    # d = 0.1, 0.2, 0.3: mean 0.2, sample std 0.1, n 3, t(0.975, 2) = 4.302653:
    # half width 4.302653 * 0.1 / sqrt(3) = 0.248414
    d = paired_t_interval([0.1, 0.2, 0.3])
    assert (d.n, d.mean, d.std) == (3, pytest.approx(0.2), pytest.approx(0.1))
    assert (d.low, d.high) == (pytest.approx(-0.048414, abs=1e-6), pytest.approx(0.448414, abs=1e-6))
    # 90%: t(0.95, 2) = 2.919986, half width 0.168585
    assert paired_t_interval([0.1, 0.2, 0.3], 0.9).high == pytest.approx(0.368585, abs=1e-6)
    one = paired_t_interval([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low)
    # pairing by seed: only the seeds both have, and the differences, not the two means' spread
    p = paired_comparison({0: 0.5, 1: 0.6, 2: 0.7, 7: 0.9}, {0: 0.4, 1: 0.4, 2: 0.4})
    assert p.n == 3 and p.mean == pytest.approx(0.2) and p.high == pytest.approx(0.448414, abs=1e-6)


def test_equal_spend_pairs_each_method_with_the_baseline_at_their_common_iterations_and_tokens():
    def c(*pts):  # (iteration, tokens, accuracy); samples and seconds follow tokens
        return [CurvePoint(i, t, t / 10, t / 100, acc) for i, t, acc in pts]

    curves = {
        "grpo": {0: c((0, 0, 0.2), (2, 100, 0.4), (4, 200, 0.5)), 1: c((0, 0, 0.3), (2, 110, 0.3), (4, 210, 0.6))},
        "spo": {0: c((0, 0, 0.2), (1, 120, 0.5), (2, 240, 0.6)), 1: c((0, 0, 0.3), (1, 100, 0.3), (2, 200, 0.5))},
        "cheap": {0: c((0, 0, 0.2), (4, 220, 0.5))},  # only seed 0
    }
    grpo, spo, cheap = equal_spend(curves, "grpo")
    assert grpo.vs_baseline == {} and grpo.spend == {"iteration": 4, "tokens": 200, "seconds": 2.0}
    assert spo.spend == {"iteration": 2, "tokens": 200, "seconds": 2.0}
    assert cheap.spend == {"iteration": 4, "tokens": 200, "seconds": 2.0}  # its pair, not spo's iteration 2
    # at iteration 2: grpo 0.4, 0.3; spo 0.6, 0.5 -> differences 0.2, 0.2
    assert spo.at["iteration"] == pytest.approx(0.55) and spo.baseline_at["iteration"] == pytest.approx(0.35)
    assert spo.vs_baseline["iteration"].mean == pytest.approx(0.2)
    assert spo.vs_baseline["iteration"].std == pytest.approx(0, abs=1e-12)
    # at 200 tokens: grpo seed0 0.5, seed1 0.3 + 0.3 * 90/100 = 0.57; spo seed0 0.5 + 0.1 * 80/120, seed1 0.5
    g0, g1, s0, s1 = 0.5, 0.57, 0.5 + 0.1 * 80 / 120, 0.5
    assert spo.baseline_at["tokens"] == pytest.approx((g0 + g1) / 2) and spo.at["tokens"] == pytest.approx((s0 + s1) / 2)
    d = spo.vs_baseline["tokens"]
    assert d.mean == pytest.approx(((s0 - g0) + (s1 - g1)) / 2) and d.n == 2
    half = 12.706204736 * d.std / math.sqrt(2)
    assert (d.low, d.high) == (pytest.approx(d.mean - half), pytest.approx(d.mean + half))
    assert spo.vs_baseline["final"].mean == pytest.approx(((0.6 - 0.5) + (0.5 - 0.6)) / 2)
    # one seed in common: the difference without an interval
    assert cheap.vs_baseline["tokens"].n == 1 and cheap.vs_baseline["tokens"].mean == pytest.approx(0.5 * 200 / 220 + 0.2 * 20 / 220 - 0.5)
    assert math.isnan(cheap.vs_baseline["tokens"].low)
    table = equal_spend_table([grpo, spo, cheap], "grpo")
    assert "| spo | 2 | 2 | 0.550 (0.350) | +0.200 [+0.200, +0.200] | 200 |" in table
    assert "(n=1)" in table and "95% paired t interval" in table


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
    assert res["baseline"] == "grpo" and res["seeds"]["rloo"] == [0, 1]
    assert [r["method"] for r in res["equal_spend"]] == ["grpo", "rloo", "spo_chain", "spo_tree"]
    assert res["equal_spend"][1]["vs_baseline"]["tokens"]["n"] == 2
    rloo_tokens = res["equal_spend"][1]["spend"]["tokens"]
    assert rloo_tokens == min(c[-1]["tokens"] for m in ("grpo", "rloo") for c in res["curves"][m])
    assert "paired t interval" in (bench_dir / "results.md").read_text()
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
    ("bench.baseline=ppo", "bench.baseline"),
    ("bench.confidence=1.0", "bench.confidence"),
])
def test_bad_bench_configs_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_bench_config(resolve_preset("bench-smoke"), [override])


def test_a_bad_method_override_names_the_method():
    with pytest.raises(ConfigError, match="spo_tree"):
        load_bench_config(resolve_preset("bench-smoke"), ['bench.methods.spo_tree=["algorithm.tree_branching=[0]"]'])


def test_jobs_train_runs_in_worker_processes_and_report_as_one(tmp_path):
    out = tmp_path / "jobs"
    args = ["bench", "--config", "bench-smoke", "--output-dir", str(out), "--jobs", "2", "bench.seeds=[0, 1]",
            "run.max_tokens=100", 'bench.methods={grpo: [algorithm.estimator=grpo], '
            'spo_chain: [algorithm.estimator=spo_chain, algorithm.mc_samples=2, algorithm.interval=2]}']
    assert main(args) == 0
    done = {(m, s): json.loads((out / "runs" / m / f"seed{s}" / DONE_FILE).read_text())
            for m in ("grpo", "spo_chain") for s in (0, 1)}
    pids = {d["pid"] for d in done.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # trained by the two workers, not here
    assert all(d["torch_threads"] == max(1, (os.cpu_count() or 1) // 2) for d in done.values())
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == {"grpo": [0, 1], "spo_chain": [0, 1]}
    stamps = {k: d["pid"] for k, d in done.items()}
    assert main(args) == 0  # finished runs are reused, whatever trained them
    assert {k: json.loads((out / "runs" / k[0] / f"seed{k[1]}" / DONE_FILE).read_text())["pid"]
            for k in done} == stamps


def test_jobs_a_failing_run_fails_the_bench_with_its_error(tmp_path):
    args = ["bench", "--config", "bench-smoke", "--output-dir", str(tmp_path / "bad"), "--jobs", "2",
            "bench.seeds=[0, 1]", "run.max_tokens=100",
            "bench.methods={grpo: [algorithm.estimator=grpo], missing: [model.name_or_path=/nonexistent/model]}"]
    assert main(args) == 2
    assert not (tmp_path / "bad" / "runs" / "missing" / "seed0" / DONE_FILE).exists()


def test_update_diagnostics_by_hand():
    from spo.evaluate.learning_curves import update_diagnostics, update_diagnostics_table

    rows = {"one_step": {0: [{"clip_frac": 0.0, "approx_kl": 0.0}] * 3, 1: [{"clip_frac": 0.0, "approx_kl": 0.0}]},
            "eight_steps": {0: [{"clip_frac": 0.01, "approx_kl": 0.002}, {"clip_frac": 0.03, "approx_kl": 0.0}],
                            1: [{"clip_frac": 0.0, "approx_kl": 0.0}]}}
    diag = update_diagnostics(rows)
    assert diag["one_step"]["clip_frac"] == {"runs": 2, "min": 0.0, "mean": 0.0, "max": 0.0, "zero_runs": 2}
    assert diag["eight_steps"]["clip_frac"] == pytest.approx(
        {"runs": 2, "min": 0.0, "mean": 0.01, "max": 0.02, "zero_runs": 1})
    assert diag["eight_steps"]["approx_kl"]["mean"] == pytest.approx(0.0005)
    table = update_diagnostics_table(diag)
    assert "| one_step | 0 [0, 0] | 2/2 |" in table and "| eight_steps | 0.01 [0, 0.02] | 1/2 |" in table


def test_the_bench_reports_update_diagnostics(bench_dir):
    res = json.loads((bench_dir / "results.json").read_text())
    grpo = res["update_diagnostics"]["grpo"]["clip_frac"]  # one optimizer step per iteration: ratio 1, no clipping
    assert grpo["runs"] == 2 and grpo["zero_runs"] == 2
    assert "Update diagnostics" in (bench_dir / "results.md").read_text()
