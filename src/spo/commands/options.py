"""`spo options`: every option of `spo train` (or `spo sft`), its type, default and meaning."""

from __future__ import annotations

import argparse

from spo.config import RunConfig
from spo.config_io import describe_options
from spo.train.sft_config import SFTConfig


def cmd_options(args: argparse.Namespace) -> int:
    rows = describe_options(SFTConfig, default=SFTConfig()) if args.sft else describe_options(RunConfig)
    if args.markdown:
        print("| option | type | default | meaning |\n|---|---|---|---|")
        for key, tp, default, help_ in rows:
            print(f"| `{key}` | {tp} | `{default}` | {help_} |")
    else:
        for key, tp, default, help_ in rows:
            print(f"{key} ({tp}, default {default})\n    {help_}")
    return 0
