"""`spo train`: a new run from a preset and overrides, or a run resumed (spo.api.train)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spo.config_io import ConfigError, load_yaml
from spo.presets import DEFAULT_PRESET


def cmd_train(args: argparse.Namespace) -> int:
    from spo.api import make_config, train
    from spo.train.run_dir import AUTO

    if args.resume and args.resume != AUTO:  # continue that run: its saved config, then --config, then overrides
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run folder?)")
        cfg = make_config(args.config, args.overrides, base=load_yaml(saved))
        cfg.output_dir = str(run_dir)
    else:  # a new run, or (--resume auto) the same command again: the config is the command's
        cfg = make_config(args.config or DEFAULT_PRESET, args.overrides)
        if args.output_dir:
            cfg.output_dir = args.output_dir
    run_dir = train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    print(f"run folder: {run_dir}")
    return 0
