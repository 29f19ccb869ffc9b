"""Argument checks shared by the command lines: each turns bad input into a one-line error.

``positive_int`` and friends are ``argparse`` types (argparse prints ``argument --x: ...``);
``check_device`` raises a ``ValueError`` naming the device, for config values as well as flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: Bad input, reported by every command line as one ``error:`` line with exit code 2.
INPUT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)

#: Seeds are integers in ``0 .. MAX_SEED - 1`` everywhere: that leaves room for the per-rank and
#: per-replicate offsets below 2**64, the largest seed ``torch.manual_seed`` takes
#: (``numpy.random.default_rng`` takes no negative one).
MAX_SEED = 2**63


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an unrecognised argument is reported by the subcommand it
    was given to (its usage line, ``focus-optim toy run: error: ...``), not by the top level."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        leaf = parser
        while True:
            action = next((a for a in leaf._actions if isinstance(a, argparse._SubParsersAction)), None)
            name = getattr(args, action.dest, None) if action is not None else None
            if action is None or name not in action.choices:
                break
            leaf = action.choices[name]
        leaf.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def counted(n: int, noun: str) -> str:
    """``1 cell``, ``2 cells``: a count for a message."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def command_name(args: argparse.Namespace) -> str:
    """``toy run``, ``lm train``, ...: the command as the user typed it, for messages."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else args.command


def interrupted(command: str) -> str:
    """The one line printed when Ctrl-C stops ``command`` (instead of a traceback); ``lm train``
    continues a run only with ``--resume``, every other command resumes as it is."""
    again = "the same command with --resume" if command == "lm train" else "the same command"
    return f"focus-optim {command}: interrupted; what was stored is kept, and {again} resumes it"


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} (allowed: an integer >= {low})")
    return value


def device_arg(text: str) -> str:
    """A device string this machine has: ``cpu``, ``cuda``, ``cuda:1``, ... (``auto`` passes)."""
    try:
        check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_device(name: str) -> None:
    """Raise a ValueError unless ``name`` parses as a torch device that is available here."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"Invalid device {name!r} (allowed: cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Invalid device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"Invalid device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Invalid device {name!r}: MPS is not available on this machine")


def output_dir(text: str) -> str:
    """A directory to write into: absent (it is created) or a directory, not a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return text


def output_file(text: str) -> str:
    """A file to write: absent or a file, not a directory (checked before any work is done)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    return text
