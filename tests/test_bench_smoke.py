"""Keeps benchmarks/bench_iteration.py from rotting: its spo part, its TRL settings mapping,
and the whole script end to end, on the tiny smoke preset (seconds, not minutes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_iteration.py"
TINY = ["sampling.max_new_tokens=8", "task.eval_limit=4"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_iteration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_iteration"] = module
    spec.loader.exec_module(module)
    return module


def test_spo_part_one_iteration(bench):
    cfg, _ = bench.build_run_config("smoke", TINY)
    res = bench.run_spo(cfg, iterations=1, warmup=False)
    (row,) = res["iterations"]
    for k in bench.PHASES:
        assert row[k] >= 0.0
    assert row["wall"] >= sum(row[k] for k in bench.PHASES) - 1e-6
    assert row["tokens"] >= cfg.sampling.prompts_per_iteration * cfg.sampling.group_size  # >= 1 token each
    assert row["tokens"] <= cfg.sampling.prompts_per_iteration * cfg.sampling.group_size * 8
    assert res["memory"]["total_gb"] > 0.05

    results = {"timed_iterations": 1, "warmup": False, "config": "smoke", "spo": res}
    text = bench.report(results, max_rss_gb=12.0)
    assert "PASS: spo peak RSS" in text
    assert results["memory_check"]["pass"] is True
    assert "FAIL" in bench.report(dict(results), max_rss_gb=1e-6)


def test_trl_settings_match_spo(bench, tokenizer):
    from trl import GRPOConfig

    from spo.tasks.registry import build_task
    from spo.seeds import iteration_prompts

    cfg, _ = bench.build_run_config("smoke", TINY + ["algorithm.kl_coef=0.0"])
    kw, diffs = bench.trl_config_kwargs(cfg, total_iterations=2, output_dir="unused")
    args = GRPOConfig(**kw)
    s, a = cfg.sampling, cfg.algorithm
    assert args.num_generations == s.group_size
    assert args.generation_batch_size == s.prompts_per_iteration * s.group_size
    assert args.per_device_train_batch_size == a.micro_batch_size
    assert args.gradient_accumulation_steps == a.mini_batch_size // a.micro_batch_size
    assert args.max_completion_length == s.max_new_tokens
    assert args.max_steps == 2 * bench.steps_per_iteration(cfg)
    assert (args.temperature, args.top_p, args.top_k) == (s.temperature, s.top_p, s.top_k)
    assert args.beta == 0.0 and args.loss_type == "dapo" and args.learning_rate == cfg.optim.lr
    assert args.shuffle_dataset is False and not args.use_vllm and not args.gradient_checkpointing
    assert any("RNG" in d for d in diffs)

    # Same prompts, same order, same token ids as spo's iterations 0 and 1.
    task = build_task(cfg.task.name, **cfg.task.options)
    problems = task.problems("train", cfg.task.train_limit)
    rows, chat = bench.trl_prompts(cfg, task, tokenizer, problems, iterations=2)
    expected = [i for it in range(2) for i in iteration_prompts(len(problems), s.prompts_per_iteration, it, cfg.seed)]
    assert [r["problem_index"] for r in rows] == expected
    assert chat
    for r in rows:
        spo_ids = task.prompt_ids(tokenizer, problems[r["problem_index"]], cfg.task.prompt_format)
        assert bench._trl_prompt_ids(tokenizer, r["prompt"], chat) == spo_ids


def test_script_end_to_end(bench, tmp_path):
    """Both parts, each in its own subprocess, then the table and the JSON file."""
    out = tmp_path / "iteration.json"
    res = bench.main(["--config", "smoke", "--no-warmup", "--output", str(out), *TINY, "algorithm.kl_coef=0.0"])
    saved = json.loads(out.read_text())
    assert saved["memory_check"]["pass"] is True
    for part in ("spo", "trl"):
        assert saved[part]["mean"]["wall"] > 0
        assert saved[part]["mean"]["tokens"] > 0
    assert saved["trl"]["prompt_ids_identical"] is True
    assert saved["ratio_spo_over_trl"] == pytest.approx(res["spo"]["mean"]["wall"] / res["trl"]["mean"]["wall"])


def test_bench_mc_runs_on_the_smoke_preset(tmp_path):
    """The MC benchmark script (both parts) on the tiny SPO-chain preset, so it does not rot."""
    import subprocess
    import sys

    out = tmp_path / "mc.json"
    script = Path(__file__).parents[1] / "benchmarks" / "bench_mc.py"
    proc = subprocess.run([sys.executable, str(script), "--config", "smoke-spo-chain", "--output", str(out),
                           "sampling.max_new_tokens=8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mc"]["states"] > 0
    assert res["mc"]["shared_prefill"]["prefill_tokens"] * res["mc"]["mc_samples"] == \
        res["mc"]["re_encoded"]["prefill_tokens"]
    assert res["spo_chain"]["mc_tokens"] > 0 and res["grpo"]["mc_tokens"] == 0


def test_bench_tree_runs_on_the_smoke_presets(tmp_path):
    """The SPO-tree benchmark (both parts) on the tiny presets: counts add up, and prefix
    reuse changes the speed, never the sampled tokens."""
    import subprocess
    import sys

    out = tmp_path / "tree.json"
    script = Path(__file__).parents[1] / "benchmarks" / "bench_tree.py"
    proc = subprocess.run([sys.executable, str(script), "--tree-config", "smoke-spo-tree", "--chain-config",
                           "smoke-spo-chain", "--json", str(out), "sampling.max_new_tokens=8"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    tree, chain = res["tree"], res["chain"]
    assert tree["segment_samples"] <= 4 * (3 + 6 + 12) and tree["tokens"] <= 4 * (3 * 4 + 6 * 4 + 12 * 8)
    assert chain["complete_responses"] == 4 * 4 and chain["tokens"] > chain["mc_tokens"] > 0
    ratio = res["segment_samples_per_1k_tokens"]
    assert ratio["tree"] == pytest.approx(1000 * tree["segment_samples"] / tree["tokens"])
    assert res["throughput"]["same_tokens"] is True
