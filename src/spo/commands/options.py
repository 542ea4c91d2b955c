"""`spo options`: every option of `spo train` (or `spo sft`), its type, default and meaning."""

from __future__ import annotations

import argparse

from spo.config import SFTConfig, describe_options


def cmd_options(args: argparse.Namespace) -> int:
    rows = describe_options(SFTConfig, default=SFTConfig()) if args.sft else describe_options()
    if args.markdown:
        print("| option | type | default | meaning |\n|---|---|---|---|")
        for key, tp, default, help_ in rows:
            print(f"| `{key}` | {tp} | `{default}` | {help_} |")
    else:
        for key, tp, default, help_ in rows:
            print(f"{key} ({tp}, default {default})\n    {help_}")
    return 0
