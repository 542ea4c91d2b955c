"""spo as a library: the functions behind `spo train` and `spo eval` (docs/own-task.md).

    import spo
    cfg = spo.make_config("smoke-spo-chain", {"iterations": 3, "task.name": "dataset",
                                              "task.options": {"path": "rows.jsonl"}})
    run_dir = spo.train(cfg, reward=my_reward)      # my_reward(prompt, response, problem, finish_reason)
    report = spo.evaluate(run_dir, limit=16)

The command line calls these same functions (spo.commands), so a config gives the same run
from Python as from `spo train`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo.config import ModelConfig, RunConfig, build_config
from spo.config_io import ConfigError, load_yaml, set_path, to_dict
from spo.presets import resolve_preset
from spo.tasks.base import Task
from spo.tasks.registry import build_task
from spo.tasks.workers import WORKER_ENV

Overrides = Sequence[str] | Mapping[str, Any]
"""`["section.key=value", ...]` (values parsed as YAML, as on the command line) or
`{"section.key": value}` (values as they are)."""


def make_config(preset: str | Path | None = None, overrides: Overrides = (), *,
                base: RunConfig | Mapping[str, Any] | None = None) -> RunConfig:
    """A checked RunConfig: the defaults <- `base` (a RunConfig or nested dict) <- `preset`
    (a YAML path or a shipped preset name: "smoke", "gsm8k-grpo", ...) <- `overrides`.
    Raises ConfigError naming the bad option."""
    data: dict[str, Any] = to_dict(base) if isinstance(base, RunConfig) else dict(base or {})
    if preset:
        data.update(load_yaml(resolve_preset(str(preset))))
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            data = set_path(data, key, value)
        return build_config(data)
    if isinstance(overrides, str):
        raise ConfigError(f"overrides: expected a list of 'key=value' strings or a dict, got the string {overrides!r}")
    return build_config(data, list(overrides))


def make_task(cfg: RunConfig, reward: Any = None) -> Task:
    """The task `cfg.task` names; `reward` (a callable, a spec, or a list of them, see
    spo.tasks.user_rewards) replaces `task.options.reward` of the dataset task."""
    options = dict(cfg.task.options)
    if reward is not None:
        if cfg.task.name != "dataset":
            raise ConfigError(f"reward=: only the dataset task takes a reward (task.name is {cfg.task.name!r})")
        options["reward"] = reward
    return build_task(cfg.task.name, **options)


def train(config: RunConfig | str | Path, *, task: Task | None = None, reward: Any = None,
          output_dir: str | Path | None = None, resume: str | Path | None = None,
          allow_config_change: bool = False) -> Path:
    """Train (or resume) a run; returns its folder (config.yaml, metrics.jsonl, episodes/,
    checkpoints/). `config`: a RunConfig or a preset name/path. `task`: a Task object used
    instead of building `config.task` (config.yaml still records config.task, so resuming
    such a run needs the same object again); `reward`: the dataset task's reward, as in
    make_task. `resume`: a run folder, or "auto" (continue `output_dir` when it holds a run);
    a resumed run whose config differs in what changes results is refused unless
    `allow_config_change` (docs/reliability.md)."""
    from spo.train.loop import train as run_training  # torch and transformers: only when training

    if os.environ.get(WORKER_ENV):
        raise RuntimeError("spo.train was called inside a reward worker process: the reward's module starts "
                           "training when it is imported; put the training call under "
                           "`if __name__ == \"__main__\":`")
    cfg = config if isinstance(config, RunConfig) else make_config(config)
    if output_dir is not None:  # a copy: the caller's config stays as it was
        cfg = dataclasses.replace(cfg, output_dir=str(output_dir))
    if task is not None and reward is not None:
        raise ConfigError("pass task= or reward=, not both (a Task object brings its own reward)")
    return run_training(cfg, resume_dir=None if resume is None else str(resume),
                        task=task if task is not None else make_task(cfg, reward),
                        allow_config_change=allow_config_change)


@dataclass
class EvalReport:
    """What `evaluate` measured: the summary (accuracy, pass@k, maj@k, lengths) and one row
    per problem (answers, correctness, responses)."""

    model: str
    task: str
    samples: int
    temperature: float
    summary: dict[str, float]
    problems: list[dict[str, Any]] = field(repr=False)

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "task": self.task, "samples": self.samples,
                           "temperature": self.temperature, "summary": self.summary, "problems": self.problems},
                          indent=1)


def evaluate(model: str | Path, config: RunConfig | str | Path | None = None, overrides: Overrides = (), *,
             task: Task | None = None, reward: Any = None, samples: int | None = None,
             temperature: float | None = None, max_new_tokens: int | None = None,
             limit: int | None = None) -> EvalReport:
    """Evaluate a run folder's latest checkpoint (with its own config) or a model (folder,
    hub id or alias) on the task's held-out split: `samples` responses per problem (default
    eval.samples) at `temperature` (default eval.temperature), at most `limit` problems."""
    import torch

    from spo.evaluate.evaluator import evaluate as run_evaluation
    from spo.evaluate.evaluator import evaluation_params, summarize
    from spo.sample.factory import build_engine
    from spo.train.checkpoint import latest_checkpoint
    from spo.train.run_dir import CONFIG_FILE
    from spo.train.sft import load_model_and_tokenizer

    model_path, run_cfg = str(model), None
    folder = Path(model_path)
    if folder.is_dir() and not any((folder / f).is_file() for f in (CONFIG_FILE, "config.json", "adapter_config.json")):
        # either kind of folder will do, so this is not require_run_folder's check
        raise ConfigError(f"{folder}: neither a run folder (no {CONFIG_FILE}) nor a model folder (no config.json); "
                          "give a run folder, a Hugging Face model folder, a hub id or an alias")
    if (folder / CONFIG_FILE).is_file():  # a run folder: its latest checkpoint and its config
        ck = latest_checkpoint(model_path)
        if ck is None:
            raise ConfigError(f"{model_path}: run folder has no complete checkpoint")
        run_cfg = load_yaml(folder / CONFIG_FILE)
        model_path = str(ck / "model")
    if isinstance(config, RunConfig):
        cfg = make_config(None, overrides, base=config)
    else:
        cfg = make_config(config, overrides, base=run_cfg)
    torch.manual_seed(cfg.seed)
    task = task if task is not None else make_task(cfg, reward)
    problems = task.problems("eval", limit if limit is not None else cfg.task.eval_limit)
    # the model itself (a run's checkpoint: with its own tokenizer), in the config's dtype
    policy, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=model_path, dtype=cfg.model.dtype,
                                                             tokenizer=None if run_cfg else cfg.model.tokenizer))
    engine = build_engine(cfg.sampling, policy, tokenizer)
    params = evaluation_params(cfg.eval, cfg.sampling.max_new_tokens, cfg.seed, cfg.sampling.stop,
                               max_new_tokens=max_new_tokens or None, temperature=temperature)
    k = samples or cfg.eval.samples
    t0 = time.perf_counter()
    result = run_evaluation(engine, tokenizer, task, problems, params, k=k, prompt_format=cfg.task.prompt_format,
                            system_prompt=cfg.task.system_prompt, prompt_template=cfg.task.prompt_template)
    summary = summarize(result.per_problem, k)
    summary["seconds"] = time.perf_counter() - t0
    name = cfg.task.name + (f"/{cfg.task.options['dataset']}" if "dataset" in cfg.task.options else "")
    return EvalReport(model_path, name, k, params.temperature, summary, result.per_problem)
