"""`spo` command line: the parser, the dispatch to spo.commands, and the error handling.

    spo train                                   # the demo preset (configs/demo.yaml)
    spo train --config configs/smoke.yaml iterations=3 optim.lr=1e-5
    spo train --resume runs/20261121-101500 iterations=20
    spo eval runs/20261121-101500 --config configs/demo.yaml --samples 4 --temperature 0.6
    spo sft --config sft-arith                  # supervised fine-tuning (cached by config hash)
    spo credit --config credit-arith            # credit accuracy of the estimators vs ground truth
    spo options                                 # every option, its type, default and meaning
    spo options --sft                           # every option of `spo sft`
"""

from __future__ import annotations

import os

# Before torch loads: spinning OpenMP threads stall badly when cores are shared
# (several processes under accelerate, or a busy laptop).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import errno
import importlib
import logging
import sys
from typing import Callable

from spo.commands.eval import cmd_eval
from spo.commands.inspect import add_inspect_commands
from spo.commands.options import cmd_options
from spo.commands.sft import cmd_sft
from spo.commands.train import cmd_train
from spo.config import ConfigError
from spo.tasks.problems import DataError
from spo.tasks.prompts import PromptFormatError
from spo.train.faults import DiskFullError, PeerFailedError
from spo.train.preemption import EXIT_PREEMPTED, Preempted

# Each command (spo.commands) imports the stages it runs when it runs, and the commands whose
# modules import them at their top are themselves imported when they run (`lazy`), so that
# `spo options` and `--help` answer at once, without loading torch and transformers
# (tests/test_cli.py checks it).


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The command `name` of `module`, imported only when it runs (for commands whose module
    imports torch at its top: `spo bench`, `spo credit`)."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    run.__module__, run.__name__, run.__qualname__ = module, name, name  # where the command lives
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spo", description="Segment Policy Optimization and baselines")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="RL fine-tuning (default: the demo preset)")
    p.add_argument("--config", help="YAML preset: a path or a shipped preset name (demo, smoke, ...)")
    p.add_argument("--output-dir", help="run folder (default runs/<timestamp>); one that holds a run is refused "
                                        "unless --resume auto")
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue a run from its newest good checkpoint; `auto`: continue --output-dir when it has "
                        "one, else start it (the same command can be repeated after a crash)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even when the command's config differs from the run's in what changes results "
                        "(refused otherwise; the change is recorded in RUN/config_changes.jsonl)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (see `spo options`)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint or a model on the held-out split")
    p.add_argument("model", help="run folder, HF model folder, hub id or alias")
    p.add_argument("--config", help="preset for the task/sampling options (a run folder brings its own)")
    p.add_argument("--samples", type=int, help="samples per problem (k)")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--limit", type=int, help="evaluate at most this many problems")
    p.add_argument("--output", help="JSON file to write")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sft", help="supervised fine-tuning on a task's gold solutions (cached by config hash)")
    p.add_argument("--config", help="YAML preset: a path or a shipped preset name (sft-arith, ...)")
    p.add_argument("--output-dir", help="model folder to write (default $SPO_CACHE_DIR/sft/<config hash>)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (see `spo options --sft`)")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("bench", help="compare estimators on one task, model, seeds and budget (table + plots)")
    p.add_argument("--config", default="bench-arith", help="bench preset: a path or a shipped name (bench-arith, ...)")
    p.add_argument("--output-dir", help="results folder (default bench/<preset name>); finished runs there are reused")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and plots from finished runs")
    p.add_argument("--sweep-only", action="store_true",
                   help="run the lr sweep (bench.lr_sweep) and write the lrs it chose, then stop before the bench's runs")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="runs trained at once, each in its own process with cpu_count/jobs threads (default 1)")
    p.add_argument("overrides", nargs="*", help="bench.key=value or run.section.key=value overrides")
    p.set_defaults(func=lazy("spo.commands.bench", "cmd_bench"))

    p = sub.add_parser("credit", help="credit-assignment accuracy of the estimators against Monte-Carlo ground truth "
                                      "on a frozen policy (table + plot)")
    p.add_argument("--config", default="credit-arith", help="credit preset: a path or a shipped name (credit-arith, ...)")
    p.add_argument("--output-dir", help="results folder (default credit/<preset name>)")
    p.add_argument("overrides", nargs="*", help="credit.key=value or run.section.key=value overrides")
    p.set_defaults(func=lazy("spo.commands.credit", "cmd_credit"))

    add_inspect_commands(sub)  # spo inspect, spo plot

    p = sub.add_parser("options", help="list every config option with its default")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--sft", action="store_true", help="the options of `spo sft` instead of `spo train`")
    p.set_defaults(func=cmd_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (a config, data file, model name, run folder) is reported in
    one line naming what and where, exit code 2; a full disk stops the run with exit code 1,
    saying what was being written and that the last checkpoint is intact. No traceback for
    either (`-v` shows it)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except Preempted as err:  # checkpointed on SIGTERM / SIGINT / SIGUSR1 (docs/reliability.md)
        if os.environ.get("RANK", "0") == "0":
            print(f"spo: {err}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except PeerFailedError as err:  # a multi-process run lost a process (docs/reliability.md)
        return _fail(args, err, None, 1)
    except FloatingPointError as err:  # NonFiniteLossError: a NaN/inf loss, the last good checkpoint named
        return _fail(args, err, "non-finite loss", 2)
    except (ConfigError, PromptFormatError) as err:
        return _fail(args, err, getattr(err, "label", "config error"), 2)
    except DataError as err:
        return _fail(args, err, "data error", 2)
    except FileNotFoundError as err:
        return _fail(args, err, None, 2)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return _fail(args, err, None, 1)


def _fail(args: argparse.Namespace, err: BaseException, label: str | None, code: int) -> int:
    if args.verbose:
        logging.getLogger("spo").exception("the error in full")
    text = err.strerror if isinstance(err, DiskFullError) else str(err)
    text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")  # never fail on undecodable input
    print(f"spo: {label}: {text}" if label else f"spo: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
