"""Run budgets: a run stops after the iteration that reaches its token or time budget, and
logs running totals of tokens, samples and seconds (what the learning benchmark plots)."""

from __future__ import annotations

import pytest

from spo.cli import main
from spo.config import ConfigError, load_config
from spo.presets import resolve_preset
from spo.train.run_log import read_metrics

TINY = ["sampling.max_new_tokens=8", "task.eval_limit=4", "iterations=5"]


def test_token_budget_stops_the_run_and_totals_add_up(tmp_path):
    # smoke: 4 prompts x 4 samples x <= 8 tokens = <= 128 tokens per iteration
    assert main(["train", "--config", "smoke", "--output-dir", str(tmp_path), *TINY, "max_tokens=150"]) == 0
    rows = read_metrics(tmp_path)
    assert len(rows) == 2  # the first iteration cannot reach 150 tokens, the second must
    total_tokens = total_samples = total_seconds = 0.0
    for r in rows:
        total_tokens += r["tokens_generated_total"]
        total_samples += r["samples_generated"]
        total_seconds += r["time_total"]
        assert r["tokens_cumulative"] == total_tokens
        assert r["samples_cumulative"] == total_samples == 16 * r["iteration"]
        assert r["seconds_cumulative"] == pytest.approx(total_seconds)
    assert rows[0]["tokens_cumulative"] < 150 <= rows[1]["tokens_cumulative"]
    evals = read_metrics(tmp_path, kind="eval")
    assert [e["iteration"] for e in evals] == [2]  # the final evaluation is of the last iteration run
    assert (tmp_path / "checkpoints" / "iter_000002").is_dir()


def test_time_budget_stops_the_run(tmp_path):
    assert main(["train", "--config", "smoke", "--output-dir", str(tmp_path), *TINY,
                 "max_train_seconds=1e-6", "eval.at_end=false"]) == 0
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1]


def test_spo_chain_counts_its_continuations(tmp_path):
    assert main(["train", "--config", "smoke-spo-chain", "--output-dir", str(tmp_path), *TINY, "iterations=1",
                 "eval.at_end=false"]) == 0
    (r,) = read_metrics(tmp_path)
    assert r["samples_generated"] == 16 + r["mc_states"] * 2  # responses + states x mc_samples


@pytest.mark.parametrize("override, key", [("max_tokens=0", "max_tokens"), ("max_train_seconds=-1", "max_train_seconds")])
def test_bad_budgets_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(resolve_preset("smoke"), [override])


def test_validation_split_is_withheld_from_training(tmp_path):
    """eval.split=validation evaluates on the last training problems and never trains on them."""
    from spo.train.loop import Trainer

    cfg = load_config(resolve_preset("smoke"), ["eval.split=validation", "eval.validation_size=8",
                                                "sampling.max_new_tokens=4"])
    trainer = Trainer(cfg, tmp_path)
    full = trainer.task.problems("train", cfg.task.train_limit)
    assert trainer.eval_problems == full[-8:] and trainer.train_problems == full[:-8]
    with pytest.raises(ConfigError, match="validation_size"):
        Trainer(load_config(resolve_preset("smoke"), ["eval.split=validation", f"eval.validation_size={len(full)}"]),
                tmp_path / "x")
