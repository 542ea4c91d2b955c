"""`spo sft`: supervised fine-tuning of a tiny character-level Llama on `arith_steps`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from spo.cli import main
from spo.config import ConfigError, load_config
from spo.config_io import to_dict
from spo.train.sft_config import build_sft_config, load_sft_config
from spo.presets import PRESETS_DIR

TINY = {
    "model": {
        "name_or_path": "tiny-char-llama",
        "random_init": True,
        "dtype": "float32",
        "config_overrides": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "num_key_value_heads": 2},
    },
    "task": {
        "name": "arith_steps",
        "options": {"min_terms": 2, "max_terms": 2, "max_operand": 9, "train_size": 64, "eval_size": 8},
        "prompt_format": "plain",
        "eval_limit": 8,
    },
    "optim": {"lr": 3.0e-3, "warmup_ratio": 0.0},
    "max_steps": 30,
    "val_size": 8,
    "batch_size": 16,
    "eval_every": 0,
    "max_new_tokens": 16,
    "log_every": 5,
}


def tiny_cfg(*overrides: str):
    return build_sft_config(TINY, list(overrides))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("spo-cache")


@pytest.fixture()
def in_cache(cache, monkeypatch):
    monkeypatch.setenv("SPO_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def trained(cache):
    from spo.train.sft import run_sft

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPO_CACHE_DIR", str(cache))
        return run_sft(tiny_cfg())


def test_loss_decreases_and_metrics_are_recorded(trained):
    assert not trained.cached
    m = trained.metrics
    losses = [row["loss"] for row in m["losses"]]
    assert [row["step"] for row in m["losses"]] == [5, 10, 15, 20, 25, 30]
    assert losses[-1] < 0.8 * losses[0]
    assert m["steps"] == 30 and m["stopped_by"] == "max_steps"
    assert [e["step"] for e in m["evals"]] == [30]  # eval_every 0: after the last step only
    assert 0.0 <= m["eval_accuracy"] <= 1.0 and m["eval_problems"] == 8
    assert m["wall_seconds"] > 0


def test_output_is_a_complete_model_folder_in_the_cache(trained, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spo.train.sft import config_hash

    path = trained.path
    assert path == cache / "sft" / config_hash(tiny_cfg())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sft_config.yaml", "sft_metrics.json",
                 "sft_eval.jsonl"):
        assert (path / name).is_file(), name
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 1 and len(tok) == model.config.vocab_size
    assert to_dict(load_sft_config(path / "sft_config.yaml")) == to_dict(tiny_cfg())
    rows = [json.loads(line) for line in (path / "sft_eval.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"question", "gold", "responses", "correct"} <= set(rows[0])


def test_second_call_is_a_cache_hit(trained, in_cache, capsys):
    from spo.train.sft import ensure_sft_model, run_sft

    stamp = (trained.path / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = run_sft(tiny_cfg("log_every=1"))  # logging does not change the model: same folder
    assert again.cached and again.path == trained.path and again.metrics == trained.metrics
    assert time.perf_counter() - t0 < 1.0
    assert ensure_sft_model(tiny_cfg()) == trained.path
    assert (trained.path / "model.safetensors").stat().st_mtime_ns == stamp
    from spo.train.sft import config_hash

    assert config_hash(tiny_cfg("seed=1")) != config_hash(tiny_cfg())
    assert config_hash(tiny_cfg(f"output_dir={in_cache}")) == config_hash(tiny_cfg())


def test_cli_reports_a_cached_model(trained, in_cache, tmp_path, capsys):
    preset = tmp_path / "tiny-sft.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    assert main(["sft", "--config", str(preset)]) == 0
    out = capsys.readouterr().out
    assert "cached SFT model" in out and str(trained.path) in out


def test_sft_prefix_names_the_trained_model(trained, in_cache, tmp_path):
    from spo.models import load_tokenizer, resolve_model_path
    from spo.train.sft import resolve_model_name

    preset = tmp_path / "tiny-sft.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    assert resolve_model_name(f"sft:{preset}") == str(trained.path)
    assert load_tokenizer(resolve_model_name(f"sft:{preset}")).eos_token_id is not None
    assert resolve_model_name("tiny-char-llama") == "tiny-char-llama"  # other names: unchanged
    with pytest.raises(ValueError, match="spo.train.sft.resolve_model_name"):
        resolve_model_path(f"sft:{preset}")  # the model loader does not train models


def test_same_config_trains_the_same_weights(trained, tmp_path):
    from safetensors.torch import load_file

    from spo.train.sft import run_sft

    again = run_sft(tiny_cfg(f"output_dir={tmp_path / 'again'}"))
    assert not again.cached
    assert [r["loss"] for r in again.metrics["losses"]] == [r["loss"] for r in trained.metrics["losses"]]
    a, b = load_file(trained.path / "model.safetensors"), load_file(again.path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_output_dir_of_another_config_is_refused(trained, tmp_path):
    from spo.train.sft import run_sft

    with pytest.raises(ConfigError, match="output_dir: .* another SFT config"):
        run_sft(tiny_cfg(f"output_dir={trained.path}", "max_steps=31"))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an SFT model folder"):
        run_sft(tiny_cfg(f"output_dir={junk}"))


def test_training_stops_when_held_out_accuracy_is_reached(tmp_path, monkeypatch):
    from spo.train import sft

    calls = []

    def fake_eval(engine, tokenizer, task, problems, cfg):
        calls.append(1)
        accuracy = 0.25 * len(calls)
        return {"accuracy": accuracy, "response_len_mean": 5.0, "truncated_frac": 0.0}, []

    monkeypatch.setattr(sft, "held_out_eval", fake_eval)
    result = sft.run_sft(tiny_cfg("eval_every=4", "stop_at_accuracy=0.5", f"output_dir={tmp_path / 'out'}"))
    assert result.metrics["steps"] == 8 and result.metrics["stopped_by"] == "stop_at_accuracy"
    assert [e["step"] for e in result.metrics["evals"]] == [4, 8]
    assert result.metrics["val_accuracy"] == 0.5
    assert result.metrics["eval_accuracy"] == 0.75 and len(calls) == 3  # the eval split, once, at the end


def test_prompt_tokens_are_masked_and_eos_ends_each_target():
    from spo.models import load_tokenizer
    from spo.tasks import build_task
    from spo.train.sft import IGNORE_INDEX, collate, encode_example

    tok = load_tokenizer("tiny-char-llama")
    task = build_task("arith_steps", train_size=4, eval_size=0)
    examples = [encode_example(tok, task, p, "plain", None) for p in task.problems("train")]
    batch = collate(examples, tok.pad_token_id, torch.device("cpu"))
    for row, (ids, prompt_len) in enumerate(examples):
        assert ids[:prompt_len] == task.prompt_ids(tok, task.problems("train")[row], "plain")
        assert tok.decode(ids[prompt_len:]) == "\n" + task.problems("train")[row].solution + tok.eos_token
        labels = batch["labels"][row].tolist()
        assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
        assert labels[prompt_len:len(ids)] == ids[prompt_len:]
        assert set(labels[len(ids):]) <= {IGNORE_INDEX}
        assert batch["attention_mask"][row].sum().item() == len(ids)


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_steps=0", "max_steps: must be >= 1"),
        ("batch_size=many", "batch_size: expected an integer"),
        ("stop_at_accuracy=1.5", "stop_at_accuracy: must be in (0, 1]"),
        ("eval_every=-1", "eval_every: must be >= 0"),
        ("log_every=0", "log_every: must be >= 1"),
        ("optim.lr=0", "optim.lr: must be > 0"),
        ("task.options={bogus: 1}", "task.options: unknown option 'bogus'"),
        ("task.eval_limit=0", "task.eval_limit: must be >= 1"),
        ("iterations=3", "unknown option iterations"),
        ("model.dtype=int8", "model.dtype: must be one of"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        tiny_cfg(override)
    assert message in str(err.value)


def test_sections_keep_sft_defaults_when_partly_given():
    cfg = build_sft_config({"model": {"config_overrides": {"hidden_size": 64}}}, ["optim.lr=0.01"])
    assert cfg.model.name_or_path == "tiny-char-llama" and cfg.model.random_init and cfg.model.dtype == "float32"
    assert cfg.optim.lr == 0.01 and cfg.optim.schedule == "cosine" and cfg.optim.weight_decay == 0.1
    assert cfg.task.name == "arith_steps"


def _run_section(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    return data.get("run", data)  # `spo bench` presets hold the run under `run:`


SFT_USERS = sorted(p.name for p in PRESETS_DIR.glob("*.yaml")
                   if str(_run_section(p).get("model", {}).get("name_or_path", "")).startswith("sft:"))


def test_arith_grpo_starts_from_the_sft_preset():
    assert "arith-grpo.yaml" in SFT_USERS
    assert load_config(PRESETS_DIR / "arith-grpo.yaml").model.name_or_path == "sft:sft-arith"


@pytest.mark.parametrize("preset", SFT_USERS)
def test_presets_train_on_the_task_their_sft_model_was_made_for(preset):
    run = _run_section(PRESETS_DIR / preset)
    sft_preset = run["model"]["name_or_path"].removeprefix("sft:")
    sft_cfg = load_sft_config(PRESETS_DIR / f"{sft_preset}.yaml")
    task = run["task"]
    assert task["name"] == sft_cfg.task.name and task.get("options", {}) == sft_cfg.task.options
    assert task.get("prompt_format", "chat") == sft_cfg.task.prompt_format


def test_sft_doc_is_current(capsys):
    doc = Path(__file__).parents[1] / "docs" / "sft.md"
    main(["options", "--sft", "--markdown"])
    table = capsys.readouterr().out
    assert table.strip() in doc.read_text(), "docs/sft.md is stale: regenerate it with `spo options --sft --markdown`"


def test_validation_is_carved_from_the_train_split_not_the_eval_split(tmp_path):
    """The SFT model is chosen on held-back training problems; the eval split RL reports on
    is only evaluated once at the end, for the record."""
    from spo.train.sft import train_sft

    m = train_sft(tiny_cfg("max_steps=2", "eval_every=1"), tmp_path / "out")
    assert m["val_problems"] == 8 and m["train_examples"] == 64 - 8
    assert m["eval_problems"] == 8 and len(m["evals"]) == 2
    with pytest.raises(ValueError, match="val_size"):
        train_sft(tiny_cfg("val_size=64"), tmp_path / "bad")


SLOW_SFT = ("import sys, time; from spo.train import sft; draw = sft.shuffled_positions; "
            "sft.shuffled_positions = lambda *a: (time.sleep(0.1), draw(*a))[1]; "
            "from spo.cli import main; sys.exit(main())")
"""`spo sft` with every step slowed by 0.1 s (the draw of its batch), so that a signal lands mid-run."""


def test_sigterm_checkpoints_exits_75_and_the_same_command_continues_to_the_same_weights(tmp_path):
    """A real SIGTERM to a real `spo sft` after its third step: it checkpoints the step it is
    in into the partial folder and exits 75 saying to run the same command again; that command
    continues from the checkpoint and ends with the weights (bit for bit) and metrics of an
    uninterrupted run (one thread per process, as in tests/test_preemption.py)."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    from spo.train.checkpoint import verify_checkpoint
    from spo.train.preemption import EXIT_PREEMPTED
    from spo.train.sft import partial_path

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "eval_every": 10, "log_every": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ref, out = tmp_path / "ref", tmp_path / "out"

    def start(folder: Path, log: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-c", SLOW_SFT, "sft", "--config", str(config), "--output-dir", str(folder)]
        return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    reference = start(ref, tmp_path / "ref.log")
    run = start(out, tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 300
        while "sft step 3/" not in (tmp_path / "run.log").read_text():
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no third step within 300 s"
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    log = (tmp_path / "run.log").read_text()
    assert code == EXIT_PREEMPTED, log[-3000:]
    assert "spo: SIGTERM received during sft step" in log, log[-3000:]
    stopped = re.search(r"^spo: preempted \(SIGTERM\) after step (\d+), checkpoint ([^;]+); to continue, run the same "
                        r"`spo sft` command again \(it continues from that checkpoint\)$", log, re.MULTILINE)
    assert stopped, log[-3000:]
    step, checkpoint = int(stopped[1]), Path(stopped[2])
    assert 3 <= step < 30 and f"sft step {step + 1}/" not in log
    assert checkpoint.parent.parent == partial_path(out) and verify_checkpoint(checkpoint) is None
    assert not out.exists()

    again = start(out, tmp_path / "again.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert f"continuing from {checkpoint} (step {step})" in (tmp_path / "again.log").read_text()
    assert reference.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    assert not partial_path(out).exists()
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((folder / "sft_metrics.json").read_text()) for folder in (ref, out))
    assert [(r["step"], r["loss"], r["lr"]) for r in ma["losses"]] == [(r["step"], r["loss"], r["lr"]) for r in mb["losses"]]
    assert [(r["step"], r["accuracy"]) for r in ma["evals"]] == [(r["step"], r["accuracy"]) for r in mb["evals"]]
    assert (ma["steps"], ma["eval_accuracy"], ma["config_hash"]) == (mb["steps"], mb["eval_accuracy"], mb["config_hash"])
