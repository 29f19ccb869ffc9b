"""``focus-optim lm {prepare,train,compare}``; heavy imports happen inside the handlers.

Exit codes: 0 done, 2 bad input or config (the message says which), 3 stopped on a non-finite
loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register ``focus-optim lm`` and its sub-commands (called by :mod:`focus_optim.cli`)."""
    lm = subparsers.add_parser("lm", help="GPT-2 lab: prepare data, train, compare runs")
    sub = lm.add_subparsers(dest="lm_command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_compare(sub)


def main(argv: list[str] | None = None) -> int:
    """``python -m focus_optim.lm.cli {prepare,train,compare} ...``: the lab alone, without
    importing the other labs' command modules (what the GPU scripts and torchrun use)."""
    parser = argparse.ArgumentParser(
        prog="focus-optim lm", description="GPT-2 lab: prepare data, train, compare runs"
    )
    sub = parser.add_subparsers(dest="lm_command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_compare(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"focus-optim lm {args.lm_command}: error: {exc}", file=sys.stderr)
        return 2


def _add_prepare(sub: Any) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenise text/JSONL(.gz)/hf: sources into train.bin/val.bin/meta.json",
        description="Tokenise with the GPT-2 BPE (tiktoken) into uint16 train.bin/val.bin plus meta.json. "
        "Default input: .data/corpus/*.jsonl.gz or ../shared/data/corpus/*.jsonl.gz.",
    )
    p.add_argument("inputs", nargs="*", help="files, globs, directories or hf:NAME[:CONFIG]")
    p.add_argument("--out", default=None, help="output directory (default .data/lm/corpus)")
    p.add_argument(
        "--tokenizer-file",
        default=None,
        help="local gpt2.tiktoken (default: $FOCUS_OPTIM_GPT2_BPE, .data/tokenizers/, "
        "../shared/data/tokenizers/)",
    )
    p.add_argument(
        "--val-source", default="wiki*", help="glob of source names eligible for val (default wiki*)"
    )
    p.add_argument("--val-fraction", type=float, default=0.25, help="fraction of eligible documents in val")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--workers", type=int, default=None, help="tokeniser processes (default: cores, max 16)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished dataset")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from .data import DEFAULT_OUT_DIR, prepare

    meta = prepare(
        args.inputs,
        args.out or DEFAULT_OUT_DIR,
        tokenizer_file=args.tokenizer_file,
        val_source=args.val_source,
        val_fraction=args.val_fraction,
        text_field=args.text_field,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out or DEFAULT_OUT_DIR}: {meta['train_tokens']:,} train / "
        f"{meta['val_tokens']:,} val tokens ({meta['train_docs']:,} / {meta['val_docs']:,} documents) "
        f"in {meta['seconds']:.1f}s"
    )
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train GPT-2 with any registered optimizer (torchrun for DDP)",
        description="Train GPT-2. Config: --config TOML, then --set key=value overrides (see "
        "focus_optim.lm.config.TrainConfig for the keys). "
        "Multi-GPU: torchrun ... -m focus_optim.lm.cli train ...",
    )
    p.add_argument("--config", default=None, help="TOML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable); dotted keys for optimizer_args./model_args.",
    )
    p.add_argument("--resume", action="store_true", help="continue from out_dir/ckpt.pt if it exists")
    for flag, key in (
        ("--out-dir", "out_dir"),
        ("--data-dir", "data_dir"),
        ("--optimizer", "optimizer"),
        ("--lr", "lr"),
        ("--max-steps", "max_steps"),
        ("--model", "model"),
        ("--device", "device"),
    ):
        p.add_argument(flag, dest=key, default=None, help=f"same as --set {key}=...")
    p.add_argument(
        "--compile",
        dest="compile",
        action="store_const",
        const="true",
        default=None,
        help="torch.compile the model",
    )
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import NonFiniteLossError, train

    flags = [
        f"{key}={_quote(getattr(args, key))}"
        for key in ("out_dir", "data_dir", "optimizer", "lr", "max_steps", "model", "device", "compile")
        if getattr(args, key) is not None
    ]
    cfg = load_config(args.config, args.overrides + flags)
    try:
        summary = train(cfg, resume=args.resume)
    except NonFiniteLossError as exc:
        print(f"focus-optim lm train: {exc}", file=sys.stderr)
        return 3
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0


def _quote(value: str) -> str:
    """Paths and names are strings even when they would parse as TOML numbers."""
    try:
        float(value)
        return value
    except ValueError:
        return value if value in ("true", "false") else json.dumps(value)


def _add_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="plot val loss vs steps/tokens/time and report steps-to-target ratios",
        description="Read RUN/log.jsonl of each run; plot val loss against steps, tokens and wall time; "
        "report for each run the steps (tokens, time) to reach the target loss, by default the best val "
        "loss of the reference run (the first one), and the ratio to the reference.",
    )
    p.add_argument("runs", nargs="+", help="run directories (or their log.jsonl)")
    p.add_argument("--reference", default=None, help="reference run (default: the first)")
    p.add_argument(
        "--target", type=float, default=None, help="target val loss (default: the reference's best)"
    )
    p.add_argument("--out", default=None, help="directory for compare.json and the figure (default: cwd)")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--no-plot", action="store_true", help="table and JSON only")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    compare(
        args.runs,
        reference=args.reference,
        target=args.target,
        out_dir=args.out or ".",
        title=args.title,
        plot=not args.no_plot,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
