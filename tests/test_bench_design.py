"""The third round's bench design (issue 22): the axes (start model x update structure)
expand into the right runs, the lr rule picks the mean-best with ties to the smaller lr
(on a scripted trainer: no real training), and the map draws the numbers it is given."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

import spo.commands.bench as bench_module
from spo.commands.bench import load_bench_config, run_bench, run_config
from spo.config import ConfigError, build_config
from spo.config_io import save_config
from spo.evaluate.bench_design import (
    Cell,
    LrSweep,
    UpdateStructure,
    bench_cells,
    cell_overrides,
    check_lr_grid,
    choose_by_mean,
    mini_batch_size_for,
)
from spo.evaluate.bench_map import DeltaBar, delta_map_data, draw_delta_map, save_delta_map
from spo.presets import resolve_preset
from spo.train.run_log import METRICS_FILE

AXES = ["bench.starts={weak: smollm2-135m-instruct, mid: smollm2-135m-instruct}",
        "bench.updates=[{mini_batches: 1, epochs: 1}, {mini_batches: 4, epochs: 2}]"]


# --- the lr rule ----------------------------------------------------------------------

def test_the_choice_is_the_best_mean_not_the_best_seed():
    scores = {1e-5: {0: 0.30, 1: 0.30, 2: 0.30},
              2e-5: {0: 0.90, 1: 0.10, 2: 0.10},   # the best single seed, mean 0.367
              4e-5: {0: 0.40, 1: 0.42, 2: 0.41}}   # mean 0.41
    c = choose_by_mean(scores, [1e-5, 2e-5, 4e-5])
    assert c.chosen == 4e-5 and c.seeds == [0, 1, 2]
    assert c.means[2e-5] == pytest.approx(1.1 / 3)


def test_ties_go_to_the_smaller_lr_also_within_rounding():
    exact = {2e-5: {0: 0.5, 1: 0.3}, 1e-5: {0: 0.3, 1: 0.5}, 4e-5: {0: 0.1, 1: 0.1}}
    assert choose_by_mean(exact, [1e-5, 2e-5, 4e-5]).chosen == 1e-5
    # (0.1 + 0.2 + 0.3) / 3 != 0.2 in floating point, but it is a tie
    rounded = {1e-5: {0: 0.2, 1: 0.2, 2: 0.2}, 2e-5: {0: 0.1, 1: 0.2, 2: 0.3}}
    assert choose_by_mean(rounded, [1e-5, 2e-5]).chosen == 1e-5
    assert choose_by_mean({1e-5: {0: 0.2}, 2e-5: {0: 0.2 + 1e-6}}, [1e-5, 2e-5]).chosen == 2e-5


def test_the_choice_refuses_unequal_seeds_and_nan():
    with pytest.raises(ValueError, match="seeds"):
        choose_by_mean({1e-5: {0: 0.2, 1: 0.3}, 2e-5: {0: 0.9}}, [1e-5, 2e-5])
    with pytest.raises(ValueError, match="NaN"):
        choose_by_mean({1e-5: {0: math.nan}, 2e-5: {0: 0.9}}, [1e-5, 2e-5])


@pytest.mark.parametrize("grid, seeds, match", [
    ([1e-5, 3e-5], [10, 11, 12], "2.* apart"),
    ([2e-5, 1e-5], [10, 11, 12], "ascending"),
    ([1e-5], [10, 11, 12], "at least two"),
    ([1e-5, 2e-5], [10, 11], "at least 3"),
    ([1e-5, 2e-5], [10, 11, 0], "also bench seeds"),
])
def test_the_sweep_rules_are_enforced(grid, seeds, match):
    with pytest.raises(ConfigError, match=match):
        check_lr_grid(LrSweep(grid, seeds), bench_seeds=[0, 1])
    check_lr_grid(LrSweep([1e-5, 2e-5, 4e-5], [10, 11, 12]), bench_seeds=[0, 1])  # a valid one


# --- the axes -------------------------------------------------------------------------

def test_axes_expand_into_cells_and_overrides():
    u1, u8 = UpdateStructure(1, 1), UpdateStructure(4, 2)
    cells = bench_cells({"weak": "sft:w", "mid": "sft:m"}, [u1, u8])
    assert [c.label for c in cells] == ["weak-1x1", "weak-4x2", "mid-1x1", "mid-4x2"]
    assert u8.updates == 8 and u1.updates == 1
    assert cell_overrides(cells[1], 64) == ["model.name_or_path=sft:w", "algorithm.mini_batch_size=16",
                                            "algorithm.epochs=2"]
    assert bench_cells({}, []) == [Cell()] and Cell().label == ""
    assert [c.label for c in bench_cells({}, [u8])] == ["4x2"]
    assert mini_batch_size_for(64, 8) == 8 and mini_batch_size_for(10, 4) == 3 and mini_batch_size_for(128, 4) == 32
    with pytest.raises(ConfigError, match="exactly 6"):
        mini_batch_size_for(10, 6)  # ceil(10/6) = 2 would make 5 steps


def test_bench_config_gives_each_method_its_mini_batch_size():
    cfg = load_bench_config(resolve_preset("bench-smoke"), [*AXES, "run.sampling.prompts_per_iteration=4",
                                                            'bench.methods.spo_tree=[algorithm.estimator=spo_tree, '
                                                            '"algorithm.tree_branching=[2, 2]", '
                                                            'algorithm.max_edges_per_prompt=8]'])
    cells = bench_cells(cfg.bench.starts, cfg.bench.updates)
    assert len(cells) == 4
    grpo = run_config(cfg, "grpo", 0, cells[1])  # 4 prompts x 4 samples = 16 -> 4 mini-batches of 4, 2 epochs
    tree = run_config(cfg, "spo_tree", 0, cells[1])  # 4 prompts x 8 edges = 32 -> 4 mini-batches of 8
    assert (grpo.algorithm.mini_batch_size, grpo.algorithm.epochs) == (4, 2)
    assert (tree.algorithm.mini_batch_size, tree.algorithm.epochs) == (8, 2)
    one = run_config(cfg, "grpo", 0, cells[0])
    assert (one.algorithm.mini_batch_size, one.algorithm.epochs) == (16, 1)


@pytest.mark.parametrize("override, match", [
    ("bench.updates=[{mini_batches: 0, epochs: 1}]", "bench.updates"),
    ("bench.updates=[{mini_batches: 2, epochs: 1}, {mini_batches: 2, epochs: 1}]", "at most once"),
    ("bench.updates=[{mini_batches: 2, epochs: 1, clip: 3}]", "bench.updates"),
    ("bench.starts={a-b: smollm2-135m-instruct}", "bench.starts"),
    ("bench.updates=[{mini_batches: 6, epochs: 1}]", "grpo.*exactly 6"),  # 8 samples cannot make 6 steps
    ("bench.lr_sweep={grid: [1.0e-5, 4.0e-5], seeds: [10, 11, 12]}", "apart"),
])
def test_bad_axes_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_bench_config(resolve_preset("bench-smoke"), [override])


@pytest.mark.parametrize("axis, owned", [
    ("bench.lr_sweep={grid: [1.0e-5, 2.0e-5], seeds: [10, 11, 12]}", "optim.lr=1.0e-5"),
    ("bench.updates=[{mini_batches: 2, epochs: 1}]", "algorithm.epochs=3"),
    ("bench.updates=[{mini_batches: 2, epochs: 1}]", "algorithm.mini_batch_size=4"),
    ("bench.starts={a: smollm2-135m-instruct}", "model.name_or_path=smollm2-135m-instruct"),
])
def test_a_method_may_not_set_what_an_axis_sets(axis, owned):
    methods = f"bench.methods={{grpo: [algorithm.estimator=grpo, {owned}]}}"
    with pytest.raises(ConfigError, match=f"grpo: sets {owned.split('=')[0]}"):
        load_bench_config(resolve_preset("bench-smoke"), [axis, methods])
    load_bench_config(resolve_preset("bench-smoke"), [methods])  # without the axis it is the method's own


# --- a whole bench on a scripted trainer --------------------------------------------------

def scripted_accuracy(rc) -> float:
    """Final accuracy the scripted trainer reports: lr 2e-5 is best on average for grpo on the
    sweep seeds but one seed favours 4e-5; rloo ties 1e-5 and 2e-5."""
    seed, lr, method = rc.seed, rc.optim.lr, rc.algorithm.estimator
    if rc.eval.split == "eval":  # the bench runs: a method- and cell-dependent, seed-paired result
        return 0.4 + 0.01 * seed + (0.05 if method == "rloo" else 0.0) + 0.1 * (rc.algorithm.epochs - 1)
    if method == "grpo":
        table = {1e-5: 0.30, 2e-5: 0.50, 4e-5: 0.20, 5e-6: 0.60}
        acc = table[lr] + (0.60 if (lr == 4e-5 and seed == 10) else 0.0)  # 4e-5: 0.80, 0.20, 0.20 -> mean 0.40
    elif method == "rloo":
        acc = {1e-5: 0.45, 2e-5: 0.45, 4e-5: 0.10, 5e-6: 0.0}[lr]
    else:
        acc = 0.1
    return acc


@pytest.fixture
def scripted(monkeypatch):
    """Replace training by a script: a metrics.jsonl of 2 iterations whose last evaluation is
    `scripted_accuracy(rc)`; every run's config is recorded."""
    runs = []

    def fake_train(rc, resume_dir=None, rerun=None):
        from pathlib import Path

        runs.append(rc)
        out = Path(rc.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"kind": "eval", "iteration": 0, "accuracy": 0.2}]
        for it in (1, 2):
            rows.append({"iteration": it, "tokens_generated_total": 100 * rc.algorithm.epochs,
                         "samples_generated": 8, "time_total": 1.0})
        rows.append({"kind": "eval", "iteration": 2, "accuracy": scripted_accuracy(rc)})
        (out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        save_config(rc, out / "config.yaml")  # as spo.train.loop does: the bench checks it before reusing a run

    monkeypatch.setattr(bench_module, "train", fake_train)
    return runs


def test_sweep_then_grid_on_a_scripted_trainer(scripted, tmp_path):
    cfg = load_bench_config(resolve_preset("bench-smoke"), [
        *AXES, "bench.seeds=[0, 1, 2]",
        "bench.methods={grpo: [algorithm.estimator=grpo], rloo: [algorithm.estimator=rloo]}",
        "bench.lr_sweep={grid: [1.0e-5, 2.0e-5, 4.0e-5], seeds: [10, 11, 12]}"])
    run_bench(cfg, tmp_path)
    cells = ["weak-1x1", "weak-4x2", "mid-1x1", "mid-4x2"]
    sweep = [r for r in scripted if r.eval.split == "validation"]
    grid = [r for r in scripted if r.eval.split == "eval"]
    # every (cell, method, lr, sweep seed) once, then every (cell, method, bench seed) once
    assert len(sweep) == 4 * 2 * 3 * 3 and len(grid) == 4 * 2 * 3
    assert {r.seed for r in sweep} == {10, 11, 12} and {r.seed for r in grid} == {0, 1, 2}
    assert sorted({r.output_dir.split(str(tmp_path))[1].split("/")[1] for r in scripted}) == sorted(cells)
    for cell in cells:
        choice = json.loads((tmp_path / cell / "lr_sweep.json").read_text())
        assert choice["grpo"]["chosen"] == 2e-5  # mean 0.50 beats 4e-5's 0.40 despite its 0.80 seed
        assert choice["rloo"]["chosen"] == 1e-5  # tie with 2e-5: the smaller
        assert "**0.500**" in (tmp_path / cell / "lr_sweep.md").read_text()
    assert {r.optim.lr for r in grid if r.algorithm.estimator == "grpo"} == {2e-5}
    assert {r.optim.lr for r in grid if r.algorithm.estimator == "rloo"} == {1e-5}
    assert {(r.algorithm.mini_batch_size, r.algorithm.epochs) for r in grid} == {(8, 1), (2, 2)}
    # each cell is a bench of its own, and the map shows rloo - grpo at equal tokens: +0.05 everywhere
    for cell in cells:
        res = json.loads((tmp_path / cell / "results.json").read_text())
        rloo = next(r for r in res["equal_spend"] if r["method"] == "rloo")
        assert rloo["vs_baseline"]["tokens"]["mean"] == pytest.approx(0.05)
    assert (tmp_path / "map.png").stat().st_size > 1000
    drawn = json.loads((tmp_path / "map.json").read_text())["bars"]
    assert [(b["cell"], b["method"]) for b in drawn] == [(c, "rloo") for c in cells]
    assert [b["mean"] for b in drawn] == pytest.approx([0.05] * 4)
    # run again: nothing is retrained, the same choices come out
    n = len(scripted)
    run_bench(cfg, tmp_path)
    assert len(scripted) == n
    run_bench(cfg, tmp_path, only_report=True)  # tables, sweep choices and map from the finished runs
    assert len(scripted) == n and json.loads((tmp_path / "mid-4x2" / "lr_chosen.json").read_text())["lr"] == {
        "grpo": 2e-5, "rloo": 1e-5}


def test_sweep_on_one_start_with_a_grid_per_update_structure(scripted, tmp_path):
    """`on_start: mid`: only the mid cells sweep, the weak cells take their lrs; the 4x2 cells
    sweep their own grid."""
    cfg = load_bench_config(resolve_preset("bench-smoke"), [
        *AXES, "bench.seeds=[0]",
        "bench.methods={grpo: [algorithm.estimator=grpo], rloo: [algorithm.estimator=rloo]}",
        "bench.lr_sweep={grid: [1.0e-5, 2.0e-5, 4.0e-5], grid_by_updates: {4x2: [5.0e-6, 1.0e-5]}, "
        "seeds: [10, 11, 12], on_start: mid}"])
    run_bench(cfg, tmp_path)
    sweep = [r for r in scripted if r.eval.split == "validation"]
    assert len(sweep) == 2 * 3 * 3 + 2 * 2 * 3  # mid-1x1: 3 lrs, mid-4x2: 2 lrs; 2 methods, 3 seeds
    assert {r.model.name_or_path for r in sweep} == {"smollm2-135m-instruct"}
    assert {Path(r.output_dir).relative_to(tmp_path).parts[0] for r in sweep} == {"mid-1x1", "mid-4x2"}
    chosen = {c: json.loads((tmp_path / c / "lr_chosen.json").read_text())
              for c in ("weak-1x1", "weak-4x2", "mid-1x1", "mid-4x2")}
    assert chosen["weak-1x1"] == {"swept_in": "mid-1x1", "lr": {"grpo": 2e-5, "rloo": 1e-5}}
    assert chosen["weak-4x2"] == {"swept_in": "mid-4x2", "lr": {"grpo": 5e-6, "rloo": 1e-5}}
    grid = [r for r in scripted if r.eval.split == "eval"]
    assert {(Path(r.output_dir).relative_to(tmp_path).parts[0], r.algorithm.estimator, r.optim.lr) for r in grid} == {
        (c, m, chosen[c]["lr"][m]) for c in chosen for m in ("grpo", "rloo")}
    with pytest.raises(ConfigError, match="on_start"):
        load_bench_config(resolve_preset("bench-smoke"), [*AXES, "bench.lr_sweep={grid: [1.0e-5, 2.0e-5], "
                                                                 "seeds: [10, 11, 12], on_start: strong}"])
    with pytest.raises(ConfigError, match="grid_by_updates.8x1"):
        load_bench_config(resolve_preset("bench-smoke"), [*AXES, "bench.lr_sweep={grid: [1.0e-5, 2.0e-5], "
                                                                 "grid_by_updates: {8x1: [1.0e-5, 2.0e-5]}, "
                                                                 "seeds: [10, 11, 12]}"])


def test_a_selection_bench_names_the_mean_best_method_ties_to_the_first(scripted, tmp_path, monkeypatch):
    """Runs judged on validation problems (bench-map-chain's design): results.json's `choice`."""
    finals = {("rloo", 10): 0.5, ("rloo", 11): 0.3, ("grpo", 10): 0.3, ("grpo", 11): 0.5,
              ("spo_chain", 10): 0.9, ("spo_chain", 11): 0.0}  # means: rloo 0.4, grpo 0.4, spo_chain 0.45
    monkeypatch.setattr(sys.modules[__name__], "scripted_accuracy",
                        lambda rc: finals[(rc.algorithm.estimator, rc.seed)])
    methods = ("bench.methods={later: [algorithm.estimator=rloo], first: [algorithm.estimator=grpo], "
               "chain: [algorithm.estimator=spo_chain, algorithm.mc_samples=2]}")
    cfg = load_bench_config(resolve_preset("bench-smoke"), [methods, "bench.seeds=[10, 11]", "run.eval.split=validation"])
    run_bench(cfg, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "results.json").read_text())["choice"] == "chain"  # mean 0.45 > 0.40
    finals[("spo_chain", 11)] = -0.1  # now mean 0.40: a three-way tie, the first listed wins
    cfg = load_bench_config(resolve_preset("bench-smoke"), [methods, "bench.seeds=[10, 11]", "run.eval.split=validation"])
    run_bench(cfg, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "results.json").read_text())["choice"] == "later"
    assert "**later**" in (tmp_path / "b" / "results.md").read_text()
    cfg = load_bench_config(resolve_preset("bench-smoke"), [methods, "bench.seeds=[10, 11]"])
    run_bench(cfg, tmp_path / "c")  # judged on the eval split: no choice made there
    assert json.loads((tmp_path / "c" / "results.json").read_text())["choice"] is None


def test_the_map_presets_agree_with_their_sft_presets():
    """The weak start is sft-arith-long stopped earlier, nothing else; the map's task is the
    SFT task; the SPO-chain selection bench shares the map's run settings."""
    from spo.config_io import load_yaml

    weak, mid = load_yaml(resolve_preset("sft-arith-long-weak")), load_yaml(resolve_preset("sft-arith-long"))
    assert {k for k in weak.keys() | mid.keys() if weak.get(k) != mid.get(k)} == {"stop_at_accuracy"}
    assert 0.10 <= weak["stop_at_accuracy"] <= 0.20
    grid, chain = load_yaml(resolve_preset("bench-map")), load_yaml(resolve_preset("bench-map-chain"))
    assert grid["run"]["task"] == mid["task"] == chain["run"]["task"]
    assert grid["bench"]["starts"] == {"weak": "sft:sft-arith-long-weak", "mid": "sft:sft-arith-long"}
    assert chain["run"]["eval"].pop("split") == "validation"
    assert chain["run"] == grid["run"]
    cfg = load_bench_config(resolve_preset("bench-map"))
    assert [u.updates for u in cfg.bench.updates] == [1, 8] and cfg.bench.seeds == [0, 1, 2, 3, 4]
    assert cfg.bench.lr_sweep.seeds == [10, 11, 12] and not set(cfg.bench.lr_sweep.seeds) & set(cfg.bench.seeds)
    assert build_config(cfg.run).max_tokens == 200_000  # 2x bench-arith-long's budget


def test_a_gap_compared_between_two_cells_seed_by_seed():
    """H3's test: method-minus-GRPO at equal tokens in cell A and in cell B, per seed, then
    the paired difference of the two."""
    from spo.evaluate.learning_curves import CurvePoint, differences_at_equal_spend, paired_comparison

    def c(end_tokens, end_acc):
        return [CurvePoint(0, 0, 0, 0, 0.2), CurvePoint(4, end_tokens, 0, 0, end_acc)]

    grpo_a = {0: c(100, 0.5), 1: c(100, 0.6)}
    spo_a = {0: c(200, 0.4), 1: c(200, 0.5)}  # at 100 tokens: 0.3, 0.35 -> gaps -0.2, -0.25
    grpo_b = {0: c(100, 0.5), 1: c(100, 0.5)}
    spo_b = {0: c(100, 0.45), 1: c(100, 0.5)}  # gaps -0.05, 0.0
    gap_a = differences_at_equal_spend(spo_a, grpo_a, "tokens")
    gap_b = differences_at_equal_spend(spo_b, grpo_b, "tokens")
    assert gap_a == {0: pytest.approx(-0.2), 1: pytest.approx(-0.25)}
    assert gap_b == {0: pytest.approx(-0.05), 1: 0.0}
    d = paired_comparison(gap_b, gap_a)  # B's gap minus A's: +0.15, +0.25
    assert (d.n, d.mean) == (2, pytest.approx(0.2))


# --- the map --------------------------------------------------------------------------

def _row(method, mean, low, high, n=3):
    return {"method": method, "vs_baseline": {} if method == "grpo" else
            {"tokens": {"n": n, "mean": mean, "std": 0.0, "low": low, "high": high, "confidence": 0.95},
             "iteration": {"n": n, "mean": -mean, "std": 0.0, "low": -1.0, "high": 1.0, "confidence": 0.95}}}


EQUAL = {"weak-1x1": [_row("grpo", 0, 0, 0), _row("spo_chain", 0.05, 0.01, 0.09), _row("rloo", -0.01, -0.03, 0.01)],
         "mid-4x2": [_row("grpo", 0, 0, 0), _row("spo_chain", -0.02, -0.06, 0.02),
                     _row("rloo", 0.03, math.nan, math.nan, n=1)]}


def test_map_data_are_the_given_differences():
    bars = delta_map_data(EQUAL, "grpo")
    assert bars[:3] == [DeltaBar("weak-1x1", "spo_chain", 0.05, 0.01, 0.09, 3),
                        DeltaBar("weak-1x1", "rloo", -0.01, -0.03, 0.01, 3),
                        DeltaBar("mid-4x2", "spo_chain", -0.02, -0.06, 0.02, 3)]
    assert (bars[3].cell, bars[3].method, bars[3].mean, bars[3].n) == ("mid-4x2", "rloo", 0.03, 1)
    assert math.isnan(bars[3].low) and math.isnan(bars[3].high)  # one seed: no interval
    assert [b.mean for b in delta_map_data(EQUAL, "grpo", key="iteration")] == [-0.05, 0.01, 0.02, -0.03]
    with pytest.raises(ValueError, match="seconds"):
        delta_map_data(EQUAL, "grpo", key="seconds")


def test_map_draws_those_numbers_and_writes_the_png(tmp_path):
    import matplotlib.pyplot as plt

    bars = delta_map_data(EQUAL, "grpo")
    fig = draw_delta_map(bars, "grpo")
    ax = fig.axes[0]
    heights = [round(p.get_height(), 9) for p in ax.patches]
    assert heights == [0.05, -0.02, -0.01, 0.03]  # drawn method by method: spo_chain, then rloo
    assert [t.get_text() for t in ax.get_xticklabels()] == ["weak-1x1", "mid-4x2"]
    # the interval of the first bar: from its low to its high
    segments = [c for c in ax.collections if hasattr(c, "get_segments")]
    spans = sorted(tuple(round(v, 9) for v in sorted((s[0][1], s[1][1]))) for c in segments for s in c.get_segments())
    assert (0.01, 0.09) in spans and (-0.06, 0.02) in spans and (-0.03, 0.01) in spans
    assert (0.03, 0.03) in spans  # one seed: no interval drawn
    plt.close(fig)
    path = save_delta_map(EQUAL, tmp_path / "map.png", "grpo")
    assert path == tmp_path / "map.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- end to end on the tiny smoke model (real training, seconds per run) -------------------

def test_update_axis_end_to_end_on_the_smoke_model(tmp_path):
    """Two cells (1x1 and 2x2 updates per iteration), two methods, real runs: each cell is a
    bench folder, the runs took the cell's number of AdamW steps, and the map is drawn."""
    import torch

    from spo.cli import main

    assert main(["bench", "--config", "bench-smoke", "--output-dir", str(tmp_path), "bench.seeds=[0]",
                 "bench.methods={grpo: [algorithm.estimator=grpo], spo_chain: [algorithm.estimator=spo_chain, "
                 "algorithm.mc_samples=2, algorithm.interval=2]}",
                 "bench.updates=[{mini_batches: 1, epochs: 1}, {mini_batches: 2, epochs: 2}]"]) == 0
    assert (tmp_path / "map.png").is_file()
    for cell, steps_per_iteration in (("1x1", 1), ("2x2", 4)):
        res = json.loads((tmp_path / cell / "results.json").read_text())
        assert [s["method"] for s in res["summaries"]] == ["grpo", "spo_chain"]
        for method in ("grpo", "spo_chain"):
            run = tmp_path / cell / "runs" / method / "seed0"
            ckpt = run / "checkpoints" / "iter_000002" / "optimizer.pt"
            state = torch.load(ckpt, weights_only=False)["adamw"]["state"]
            steps = {float(s["step"]) for s in state.values()}
            assert steps == {2.0 * steps_per_iteration}, (cell, method, steps)  # 2 iterations


def test_a_scaled_update_structure_takes_the_swept_lrs_divided_and_runs_no_sweep(scripted, tmp_path):
    """docs/bench.md's cut 4: `scaled_by_updates: {4x2: 1x1/4}`: no 4x2 sweep; every method's
    4x2 lr is its 1x1 choice / 4, in both starts (with `on_start: mid`)."""
    cfg = load_bench_config(resolve_preset("bench-smoke"), [
        *AXES, "bench.seeds=[0]",
        "bench.methods={grpo: [algorithm.estimator=grpo], rloo: [algorithm.estimator=rloo]}",
        "bench.lr_sweep={grid: [1.0e-5, 2.0e-5, 4.0e-5], scaled_by_updates: {4x2: 1x1/4}, "
        "seeds: [10, 11, 12], on_start: mid}"])
    run_bench(cfg, tmp_path)
    sweep = [r for r in scripted if r.eval.split == "validation"]
    assert len(sweep) == 2 * 3 * 3  # mid-1x1 only
    assert {Path(r.output_dir).relative_to(tmp_path).parts[0] for r in sweep} == {"mid-1x1"}
    chosen = {c: json.loads((tmp_path / c / "lr_chosen.json").read_text())
              for c in ("weak-1x1", "weak-4x2", "mid-1x1", "mid-4x2")}
    assert chosen["mid-1x1"] == {"swept_in": "mid-1x1", "lr": {"grpo": 2e-5, "rloo": 1e-5}}
    for cell in ("weak-4x2", "mid-4x2"):
        assert chosen[cell] == {"swept_in": "mid-1x1", "divided_by": 4.0, "lr": {"grpo": 5e-6, "rloo": 2.5e-6}}
    grid = [r for r in scripted if r.eval.split == "eval"]
    assert {(Path(r.output_dir).relative_to(tmp_path).parts[0], r.algorithm.estimator, r.optim.lr) for r in grid} == {
        (c, m, chosen[c]["lr"][m]) for c in chosen for m in ("grpo", "rloo")}


@pytest.mark.parametrize("rule, match", [
    ("{4x2: 8x1/4}", "another of bench.updates"),
    ("{4x2: 4x2/4}", "another of bench.updates"),
    ("{4x2: 1x1/0}", "positive divisor"),
    ("{4x2: 1x1}", "positive divisor"),
    ("{8x1: 1x1/4}", "not one of bench.updates"),
    ("{4x2: 1x1/4, 1x1: 4x2/0.25}", "not swept itself"),
])
def test_bad_scaled_lr_rules_name_the_key(rule, match):
    with pytest.raises(ConfigError, match=match):
        load_bench_config(resolve_preset("bench-smoke"), [
            *AXES, f"bench.lr_sweep={{grid: [1.0e-5, 2.0e-5], scaled_by_updates: {rule}, seeds: [10, 11, 12]}}"])


def test_a_report_of_a_sweep_not_run_names_the_missing_run(tmp_path):
    cfg = load_bench_config(resolve_preset("bench-smoke"), [
        *AXES, "bench.methods={grpo: [algorithm.estimator=grpo]}",
        "bench.lr_sweep={grid: [1.0e-5, 2.0e-5], seeds: [10, 11, 12], on_start: mid}"])
    with pytest.raises(FileNotFoundError, match=r"mid-1x1/sweep/grpo/lr1e-05/seed10: lr sweep run not finished"):
        run_bench(cfg, tmp_path, only_report=True)


def test_sweep_only_chooses_the_lrs_and_runs_no_bench_run(scripted, tmp_path):
    overrides = [*AXES, "bench.seeds=[0, 1]", "bench.methods={grpo: [algorithm.estimator=grpo]}",
                 "bench.lr_sweep={grid: [1.0e-5, 2.0e-5], seeds: [10, 11, 12], on_start: mid}"]
    cfg = load_bench_config(resolve_preset("bench-smoke"), overrides)
    assert run_bench(cfg, tmp_path, sweep_only=True) == []
    assert scripted and all(r.eval.split == "validation" for r in scripted)
    assert not list(tmp_path.glob("*/runs"))
    assert json.loads((tmp_path / "weak-4x2" / "lr_chosen.json").read_text())["lr"] == {"grpo": 2e-5}
    n = len(scripted)
    run_bench(cfg, tmp_path)  # then the bench: the sweep is reused, only the bench's runs train
    assert len(scripted) == n + 4 * 2 and all(r.eval.split == "eval" for r in scripted[n:])


def test_a_finished_run_of_another_config_is_refused_not_reused(scripted, tmp_path):
    """A bench run again with another lr, budget or method option must not report the old
    runs under the new settings; harmless keys (checkpointing, logging) do not matter."""
    base = ["bench.seeds=[0]", "bench.methods={grpo: [algorithm.estimator=grpo]}"]
    run_bench(load_bench_config(resolve_preset("bench-smoke"), base), tmp_path)
    n = len(scripted)
    run_bench(load_bench_config(resolve_preset("bench-smoke"), [*base, "run.save_every=7", "run.progress=false"]),
              tmp_path)
    assert len(scripted) == n  # reused
    for change, key in [("run.optim.lr=9e-5", "optim.lr: 0.0001 in the run, 9e-05 now"),
                        ("run.max_tokens=50", "max_tokens"),
                        ("bench.methods={grpo: [algorithm.estimator=grpo, algorithm.whiten=global]}",
                         "algorithm.whiten")]:
        cfg = load_bench_config(resolve_preset("bench-smoke"), [*base, change])
        with pytest.raises(ConfigError, match=f"seed0: finished with another config .*{key}"):
            run_bench(cfg, tmp_path)
        assert len(scripted) == n
    (tmp_path / "runs" / "grpo" / "seed0" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="without its config.yaml"):
        run_bench(load_bench_config(resolve_preset("bench-smoke"), base), tmp_path)
