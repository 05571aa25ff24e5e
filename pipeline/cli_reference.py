"""docs/cli.md, generated from the argparse parser so that it cannot drift from the command line.

    python -m finetext.pipeline.cli_reference > docs/cli.md

tests/pipeline/test_cli.py fails when the file differs from what this prints (under another Python, whose argparse
lays help out a little differently: when an option or its help is missing).
"""
from __future__ import annotations

import argparse
import sys

from finetext.pipeline.cli import build_parser

WIDTH = 100  # help text is wrapped at this width, whatever the terminal


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH, max_help_position=32)
    return parser.format_help().rstrip()


def markdown() -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    parts = ["# The `finetext` command line",
             "",
             "Generated from `finetext --help` and each command's `--help` by "
             "`python -m finetext.pipeline.cli_reference > docs/cli.md` "
             f"(Python {sys.version_info.major}.{sys.version_info.minor}'s argparse); a test keeps it current.",
             "",
             "```", _help(parser).replace("__main__.py", "finetext"), "```"]
    for name, sub in commands.items():
        parts += ["", f"## `finetext {name}`", "", "```", _help(sub), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
