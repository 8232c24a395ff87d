"""The shape every `python -m PACKAGE COMMAND` of the kit shares: subcommands from modules, one-line errors.

    COMMANDS = {"score": ("eval.score", "score an answer file")}
    parser = subcommand_parser("eval", "what the tool does", COMMANDS)
    sys.exit(run_command(parser, argv, (ScoreError,)))

Each command's module provides `add_arguments(parser)` and `run(args) -> int`; its docstring is
the command's --help text. Modules are imported when the parser is built.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def subcommand_parser(
    prog: str, description: str, commands: dict[str, tuple[str, str]]
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in commands.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def run_command(
    parser: argparse.ArgumentParser, argv: list[str] | None, errors: tuple[type[BaseException], ...]
) -> int:
    """Parse and run; a known error is printed as one `error: ...` line and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
