"""The command line's shape: `--help` answers without loading torch (each command imports
what it runs when it runs), and every command's function lives in spo.commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spo.cli import build_parser, main

HELP_WITHOUT_TORCH = """
import sys
from spo.cli import main
try:
    main({argv!r})
except SystemExit as err:
    assert err.code == 0, err.code
heavy = [m for m in ("torch", "transformers", "spo.commands.bench", "spo.commands.credit", "spo.train.loop")
         if m in sys.modules]
print("loaded:", heavy)
"""


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], ["credit", "--help"], ["train", "--help"],
                                  ["plot", "--help"], ["inspect", "--help"]])
def test_help_loads_no_torch(argv):
    done = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH.format(argv=argv)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout, done.stdout


def test_every_command_runs_a_function_of_spo_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        func = p.get_default("func")
        assert func.__module__.startswith("spo.commands."), (name, func.__module__)  # lazy ones: the module they import


@pytest.mark.parametrize("command", ["bench", "credit"])
def test_bench_and_credit_dispatch_to_their_command_modules(command, capsys):
    assert main([command, "--config", "no-such-preset"]) == 2  # spo.commands.<command>.cmd_<command> ran
    assert "config file not found: no-such-preset" in capsys.readouterr().err
    assert f"spo.commands.{command}" in sys.modules
