"""The ``focus-optim`` command line.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; this file only
wires them up, so ``focus-optim --help`` stays fast and the labs' heavy imports stay lazy.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .cli_types import INPUT_ERRORS, command_name, interrupted, parse_command_line

# (subcommand, module providing add_parser)
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("bench-step", "focus_optim.bench.step"),
    ("list-optimizers", "focus_optim.optim.cli"),
    ("toy", "focus_optim.landscape.cli"),
    ("mnist", "focus_optim.mnist.cli"),
    ("lm", "focus_optim.lm.cli"),
    ("compare", "focus_optim.compare_cli"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focus-optim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for _name, module in SUBCOMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("focus_optim"):
                continue  # a lab that is not part of this build
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    try:
        result = args.func(args)
    except INPUT_ERRORS as exc:
        print(f"focus-optim {command_name(args)}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted(command_name(args)), file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
