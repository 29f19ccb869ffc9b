"""``focus-optim list-optimizers``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list-optimizers", help="list registered optimizers with defaults and sources")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .registry import describe

    print(describe())
    return 0
