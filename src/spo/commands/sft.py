"""`spo sft`: supervised fine-tuning on a task's gold solutions (spo.train.sft.run_sft)."""

from __future__ import annotations

import argparse

from spo.config_io import load_yaml
from spo.presets import resolve_preset
from spo.train.sft_config import build_sft_config


def cmd_sft(args: argparse.Namespace) -> int:
    from spo.train.sft import describe, run_sft

    cfg = build_sft_config(load_yaml(resolve_preset(args.config)) if args.config else {}, args.overrides)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    print(describe(run_sft(cfg)))
    return 0
