"""Config: defaults, presets, overrides and every kind of bad input."""

from pathlib import Path

import pytest
import yaml

from spo.cli import main
from spo.config import ConfigError, RunConfig, build_config, load_config
from spo.config_io import describe_options, save_config, to_dict
from spo.train.sft_config import load_sft_config
from spo.presets import PRESETS_DIR, resolve_preset


def test_defaults_are_valid():
    cfg = build_config()
    assert cfg.algorithm.name == "grpo"
    assert cfg.algorithm.clip_eps == 0.2


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS_DIR.glob("*.yaml")))
def test_every_shipped_preset_loads(preset):
    if preset.startswith("sft-"):  # presets of `spo sft`
        load_sft_config(PRESETS_DIR / preset)
    elif preset.startswith("bench-"):  # presets of `spo bench`: every method's run config is checked
        from spo.bench import load_bench_config

        load_bench_config(PRESETS_DIR / preset)
    elif preset.startswith("credit-"):  # presets of `spo credit`: every estimator setting is checked
        from spo.credit import load_credit_config

        load_credit_config(PRESETS_DIR / preset)
    else:
        load_config(PRESETS_DIR / preset)


def test_overrides_parse_yaml_values():
    cfg = build_config({}, ["optim.lr=1e-5", "model.lora.enabled=true", "task.options={dataset: products}",
                            "optim.betas=[0.8, 0.9]", "algorithm.clip_eps_high=null"])
    assert cfg.optim.lr == 1e-5
    assert cfg.model.lora.enabled is True
    assert cfg.task.options == {"dataset": "products"}
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.algorithm.clip_eps_high is None


def test_override_replaces_a_dict_option_but_dotted_keys_merge():
    base = {"model": {"config_overrides": {"num_hidden_layers": 2}}, "task": {"options": {"dataset": "products"}}}
    cfg = build_config(base, ["model.config_overrides={}", "task.options.seed=3"])
    assert cfg.model.config_overrides == {}
    assert cfg.task.options == {"dataset": "products", "seed": 3}


def test_override_beats_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("iterations: 5\noptim:\n  lr: 0.001\n")
    cfg = load_config(path, ["iterations=7"])
    assert cfg.iterations == 7 and cfg.optim.lr == 0.001


@pytest.mark.parametrize(
    "override, message",
    [
        ("foo=1", "unknown option foo"),
        ("optim.lrr=1", "unknown option optim.lrr"),
        ("model.lora.rank=3", "unknown option model.lora.rank"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("iterations=2.5", "iterations: expected an integer"),
        ("iterations=true", "iterations: expected an integer"),
        ("model.random_init=1", "model.random_init: expected true/false"),
        ("algorithm.whiten=always", "algorithm.whiten: must be one of"),
        ("sampling.top_p=1.5", "sampling.top_p: must be in (0, 1]"),
        ("sampling.temperature=0", "sampling.temperature: must be > 0"),
        ("optim.lr=-1", "optim.lr: must be > 0"),
        ("algorithm.mask_rho=0", "algorithm.mask_rho"),
        ("optim.betas=[0.9]", "optim.betas: expected a list of 2"),
        ("iterations", "must look like section.key=value"),
        ("optim=3", "optim: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        build_config({}, [override])
    assert message in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_unknown_task_option_is_a_config_error():
    with pytest.raises(ConfigError, match="task.options: unknown option"):
        build_config({}, ["task.name=gsm8k", "task.options={datset: x}"])


def test_saved_config_round_trips(tmp_path):
    cfg = build_config({}, ["optim.lr=3e-6", "model.lora.enabled=true"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_every_option_is_documented():
    rows = describe_options(RunConfig)
    undocumented = [key for key, _, _, help_ in rows if not help_]
    assert undocumented == []


def test_resolve_preset_by_name_and_path():
    assert resolve_preset("smoke") == PRESETS_DIR / "smoke.yaml"
    assert resolve_preset("configs/smoke.yaml").name == "smoke.yaml"
    with pytest.raises(ConfigError, match="shipped presets"):
        resolve_preset("no-such-preset")


def test_cli_reports_config_errors(capsys):
    assert main(["train", "--config", "smoke", "optim.lr=abc"]) == 2
    assert "optim.lr: expected a number" in capsys.readouterr().err


def test_config_doc_is_current(capsys):
    doc = Path(__file__).parents[1] / "docs" / "config.md"
    main(["options", "--markdown"])
    table = capsys.readouterr().out
    assert table.strip() in doc.read_text(), "docs/config.md is stale: regenerate it with `spo options --markdown`"


def test_unknown_algorithm_or_engine_is_a_config_error(capsys):
    assert main(["train", "--config", "smoke", "algorithm.estimator=ppo2"]) == 2
    err = capsys.readouterr().err
    assert "algorithm.name" in err and "ppo2" in err and "spo_chain" in err
    from spo.config import SamplingConfig
    from spo.sample.factory import build_engine

    with pytest.raises(ConfigError, match="sampling.engine"):
        build_engine(SamplingConfig(engine="nope"), model=None, tokenizer=None)


def test_algorithm_name_and_its_earlier_name_estimator():
    """`algorithm.name` is the option; `algorithm.estimator` (its earlier name) is read as it,
    in YAML and in overrides, and each layer may rename the other's choice."""
    assert build_config({"algorithm": {"estimator": "rloo"}}).algorithm.name == "rloo"
    assert build_config({}, ["algorithm.estimator=spo_chain"]).algorithm.name == "spo_chain"
    assert build_config({"algorithm": {"estimator": "rloo"}}, ["algorithm.name=grpo"]).algorithm.name == "grpo"
    assert build_config({"algorithm": {"name": "rloo"}}, ["algorithm.estimator=ppo"]).algorithm.name == "ppo"
    assert build_config({"algorithm": {"name": "rloo", "estimator": "rloo"}}).algorithm.estimator == "rloo"
    assert "estimator" not in to_dict(build_config({"algorithm": {"estimator": "rloo"}}))["algorithm"]
    with pytest.raises(ConfigError, match="algorithm.estimator is another name of algorithm.name"):
        build_config({"algorithm": {"name": "grpo", "estimator": "rloo"}})
    with pytest.raises(ConfigError, match="name the same option"):
        build_config({}, ["algorithm.estimator=rloo", "algorithm.name=grpo"])


def test_cli_refuses_both_algorithm_names_with_different_values(capsys):
    assert main(["train", "--config", "smoke", "algorithm.name=grpo", "algorithm.estimator=rloo"]) == 2
    assert "algorithm.estimator" in capsys.readouterr().err
