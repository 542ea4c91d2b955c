"""Resume that notices a changed config: `--resume auto` and `--resume RUN overrides`
compare the command's config with the run's own (`RUN/config.yaml`) before continuing.

* A difference in a key that changes what the run trains (the model, the task, sampling,
  the algorithm, the optimizer, the seed, ...) is refused (ConfigError, exit code 2) with
  the differing keys and both values listed: continuing would mix two experiments in one
  run. `--allow-config-change` continues anyway.
* A difference only in the keys of `HARMLESS` (how long to train, how often to evaluate or
  checkpoint, what to log) is allowed with a warning.

Either way an accepted change is recorded: one line per resume in
`RUN/config_changes.jsonl` (time, iteration resumed from, each key's old and new value,
and whether the change was harmless or forced), and `RUN/config.yaml` is replaced by the
config the run now continues with (so a later plain `--resume RUN` keeps it).
docs/reliability.md lists the harmless keys and why each is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from spo.cache import write_text_atomic
from spo.config import RunConfig, build_config
from spo.config_io import ConfigError, load_yaml, to_dict

log = logging.getLogger("spo.train")

CONFIG_FILE = "config.yaml"
CHANGES_FILE = "config_changes.jsonl"
ALLOW_FLAG = "--allow-config-change"

HARMLESS: dict[str, str] = {
    "iterations": "how long the run trains (the lr schedule must not depend on it: see below)",
    "max_tokens": "a budget: when the run stops",
    "max_train_seconds": "a budget: when the run stops",
    "save_every": "when checkpoints are written",
    "keep_checkpoints": "how many checkpoints are kept",
    "log_episodes": "whether episode logs are written",
    "progress": "the progress display",
    "output_dir": "where the run is (the folder being resumed)",
    "preempt_grace": "how long a preempted run may take to checkpoint",
    "collective_timeout": "how long a process waits for a dead or hung peer",
    "task.eval_limit": "evaluation only",
    "eval.every": "evaluation only (evaluations do not draw from the training RNG streams)",
    "eval.at_start": "evaluation only",
    "eval.at_end": "evaluation only",
    "eval.samples": "evaluation only",
    "eval.temperature": "evaluation only",
    "eval.top_p": "evaluation only",
    "eval.max_new_tokens": "evaluation only",
}
"""Keys whose change on resume cannot change what the run trains, with the reason."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (dicts inside options, such as task.options, too)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (the run's value, the command's value)} for every key that differs."""
    old, now = flatten(to_dict(saved)), flatten(to_dict(new))
    return {k: (old.get(k), now.get(k)) for k in sorted(old.keys() | now.keys())
            if old.get(k) != now.get(k) and k != "output_dir"}


def results_changing(changes: dict[str, Any], saved: RunConfig) -> list[str]:
    """The changed keys that change results: all but HARMLESS, and `iterations` when the
    lr schedule spans the run (warmup or a decaying schedule are stretched by it)."""
    schedule_spans_run = saved.optim.schedule != "constant" or saved.optim.warmup_ratio > 0
    return [k for k in changes if k not in HARMLESS or (k == "iterations" and schedule_spans_run)]


def saved_config_changes(run_dir: Path, cfg: RunConfig) -> tuple[RunConfig, dict[str, tuple[Any, Any]]] | None:
    """(the run's saved config, `config_changes` from it to `cfg`); None when the run folder
    has no RUN/config.yaml. Used on resume and by `spo bench` before reusing a finished run."""
    saved_file = run_dir / CONFIG_FILE
    if not saved_file.is_file():
        return None
    saved = build_config(load_yaml(saved_file))
    return saved, config_changes(saved, cfg)


def describe_changes(changes: dict[str, tuple[Any, Any]], keys: list[str]) -> str:
    """"key: run's value in the run, command's value now; ..." for `keys` of `changes`."""
    return "; ".join(f"{k}: {_show(changes[k][0])} in the run, {_show(changes[k][1])} now" for k in keys)


def check_resume_config(run_dir: Path, cfg: RunConfig, allow_change: bool) -> dict[str, tuple[Any, Any]]:
    """The differences between `cfg` and the run's saved config; raises ConfigError when one
    changes results and `allow_change` is off. Nothing is written here (every process of a
    multi-process run calls it, so all refuse together)."""
    found = saved_config_changes(run_dir, cfg)
    if found is None:
        return {}
    saved, changes = found
    changing = results_changing(changes, saved)
    if changing and not allow_change:
        listed = describe_changes(changes, changing)
        why = (" (iterations: the run's lr schedule, with warmup or decay, spans its iterations)"
               if "iterations" in changing else "")
        raise ConfigError(
            f"--resume {run_dir}: the command's config differs from the run's ({run_dir / CONFIG_FILE}) in what changes its "
            f"results: {listed}{why}. Continuing would mix two experiments in one run: start a new run (another "
            f"--output-dir), or pass {ALLOW_FLAG} to continue with the new values (recorded in {CHANGES_FILE})")
    return changes


def record_config_changes(run_dir: Path, cfg: RunConfig, changes: dict[str, tuple[Any, Any]], iteration: int,
                          saved: RunConfig | None = None) -> None:
    """Log and record accepted changes (main process, once the run has resumed)."""
    if not changes:
        return
    saved = saved or build_config(load_yaml(run_dir / CONFIG_FILE))
    forced = results_changing(changes, saved)
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_from_iteration": iteration,
            "changes": {k: {"run": old, "now": new} for k, (old, new) in changes.items()},
            "allowed": f"{ALLOW_FLAG} ({', '.join(forced)})" if forced else "harmless"}
    with (run_dir / CHANGES_FILE).open("a") as f:
        f.write(json.dumps(line) + "\n")
    write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    log.warning("resuming %s with a changed config (%s): %s; recorded in %s", run_dir, line["allowed"],
                ", ".join(f"{k}: {_show(old)} -> {_show(new)}" for k, (old, new) in changes.items()),
                run_dir / CHANGES_FILE)


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
