"""`spo train`: a new run from a preset and overrides, or a run resumed (spo.api.train)."""

from __future__ import annotations

import argparse

from spo.config_io import load_yaml
from spo.presets import DEFAULT_PRESET


def cmd_train(args: argparse.Namespace) -> int:
    from spo.api import make_config, train
    from spo.train.run_dir import AUTO, CONFIG_FILE, require_run_folder

    if args.resume and args.resume != AUTO:  # continue that run: its saved config, then --config, then overrides
        run_dir = require_run_folder(args.resume, option="--resume")
        cfg = make_config(args.config, args.overrides, base=load_yaml(run_dir / CONFIG_FILE))
        cfg.output_dir = str(run_dir)
    else:  # a new run, or (--resume auto) the same command again: the config is the command's
        cfg = make_config(args.config or DEFAULT_PRESET, args.overrides)
        if args.output_dir:
            cfg.output_dir = args.output_dir
    run_dir = train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    print(f"run folder: {run_dir}")
    return 0
