"""`spo inspect` and `spo plot`: see what a run did, token by token, in a browser.

    spo inspect runs/20261121-101500                 # writes runs/.../inspect.html
    spo inspect RUN --iteration 1 12 --out a.html    # those iterations' episodes
    spo inspect RUN --serve --port 8765              # while it trains: http://127.0.0.1:8765/
    spo plot RUN_A RUN_B --metric eval/accuracy kl --x tokens --out curves.png

The page is one HTML file with its script, style and data inline (no server, no network):
metrics charts over iterations, and per iteration the episodes with every response token
coloured by its advantage, SPO-chain's segments with their values, SPO-tree's trees
(docs/inspect.md). `run_data` reads the run folder, `page` assembles the HTML from
`assets/`, `serve` serves a live run; `spo.commands.plot` draws the PNG learning curves.

`add_inspect_commands(subparsers)` adds both commands to the `spo` command line; this
module imports nothing heavy at import time, so `spo --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spo.commands.plot import add_plot_command

DEFAULT_PORT = 8765
PAGE_NAME = "inspect.html"


def cmd_inspect(args: argparse.Namespace) -> int:
    """Write the run's page, or serve the run folder with --serve."""
    run_dir = Path(args.run_dir)
    if args.serve:
        from spo.inspect.serve import serve

        serve(run_dir, args.port)
        return 0
    from spo.inspect.page import write_page

    out = write_page(run_dir, Path(args.out) if args.out else run_dir / PAGE_NAME, args.iteration)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): open it in a browser")
    return 0


def add_inspect_commands(subparsers: Any) -> None:
    """Add `spo inspect` and `spo plot` to an argparse sub-parser set (spo.cli's)."""
    p = subparsers.add_parser("inspect", help="a run's metrics and episodes, token by token, as one HTML page")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.yaml, metrics.jsonl, episodes/)")
    p.add_argument("--iteration", nargs="+", metavar="N",
                   help="iterations whose episodes go into the page, or `all` (default: all when there are "
                        "at most 10, else 10 spread from the first to the last)")
    p.add_argument("--out", metavar="FILE.html", help=f"page to write (default RUN_DIR/{PAGE_NAME})")
    p.add_argument("--serve", action="store_true",
                   help="serve the run folder on 127.0.0.1 instead (every iteration, read when viewed; "
                        "follows a run while it trains)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port for --serve (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_inspect)
    add_plot_command(subparsers)


__all__ = ["add_inspect_commands", "cmd_inspect"]
