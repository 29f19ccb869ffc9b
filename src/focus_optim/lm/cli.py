"""``focus-optim lm {prepare,train,sample,compare,sweep}``; heavy imports happen inside the handlers.

Exit codes: 0 done, 2 bad input or config (the message says which), 3 stopped on a non-finite
loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from ..cli_types import INPUT_ERRORS, interrupted, nonnegative_int, parse_command_line, positive_int


def add_parser(subparsers: Any) -> None:
    """Register ``focus-optim lm`` and its sub-commands (called by :mod:`focus_optim.cli`)."""
    lm = subparsers.add_parser("lm", help="GPT-2 lab: prepare data, train, sample, compare runs")
    sub = lm.add_subparsers(dest="lm_command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_sample(sub)
    _add_compare(sub)
    _add_sweep(sub)


def main(argv: list[str] | None = None) -> int:
    """``python -m focus_optim.lm.cli {prepare,train,sample,compare,sweep} ...``: the lab alone, without
    importing the other labs' command modules (what the GPU scripts and torchrun use)."""
    parser = argparse.ArgumentParser(
        prog="focus-optim lm", description="GPT-2 lab: prepare data, train, sample, compare runs"
    )
    sub = parser.add_subparsers(dest="lm_command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_sample(sub)
    _add_compare(sub)
    _add_sweep(sub)
    args = parse_command_line(parser, argv)
    try:
        return int(args.func(args) or 0)
    except INPUT_ERRORS as exc:
        print(f"focus-optim lm {args.lm_command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted(f"lm {args.lm_command}"), file=sys.stderr)
        return 130


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
    p.add_argument(
        "--workers", type=positive_int, default=None, help="tokeniser processes (default: cores, max 16)"
    )
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
    if meta.get("up_to_date"):
        print(
            f"{args.out or DEFAULT_OUT_DIR} already holds this dataset (same inputs and settings): "
            f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens; nothing to do"
        )
        return 0
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
    _config_args(p, TRAIN_FLAGS)
    p.add_argument("--resume", action="store_true", help="continue from out_dir/ckpt.pt if it exists")
    p.set_defaults(func=_train)


SET_HELP = "override a config key (repeatable); dotted keys for optimizer_args./model_args."


def _config_args(p: argparse.ArgumentParser, flags: tuple[str, ...], set_help: str = SET_HELP) -> None:
    """``--config``, ``--set`` and the shortcut flags shared by ``train`` and ``sweep``."""
    p.add_argument("--config", default=None, help="TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    for key in flags:
        p.add_argument("--" + key.replace("_", "-"), dest=key, default=None, help=f"same as --set {key}=...")
    p.add_argument(
        "--compile",
        dest="compile",
        action="store_const",
        const="true",
        default=None,
        help="torch.compile the model",
    )


def _load(args: argparse.Namespace, flags: tuple[str, ...]) -> Any:
    from .config import load_config

    given = [k for k in (*flags, "compile") if getattr(args, k) is not None]
    values = [f"{k}={_quote(k, getattr(args, k))}" for k in given]
    return load_config(args.config, args.overrides + values)


TRAIN_FLAGS = ("out_dir", "data_dir", "optimizer", "lr", "max_steps", "model", "device")
SWEEP_FLAGS = ("data_dir", "max_steps", "model", "device")


def _train(args: argparse.Namespace) -> int:
    from .train import NonFiniteLossError, train

    cfg = _load(args, TRAIN_FLAGS)
    try:
        summary = train(cfg, resume=args.resume)
    except NonFiniteLossError as exc:
        print(f"focus-optim lm train: {exc}", file=sys.stderr)
        return 3
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0


def _quote(key: str, value: str) -> str:
    """A flag's value as a TOML value: quoted for string keys (paths and names stay strings even
    when they would parse as numbers, e.g. ``--out-dir 2024``), as written for the others (a
    malformed number then fails the config's type check, naming the key)."""
    from .config import TrainConfig

    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    return json.dumps(value) if types[key] == "str" else value


def _add_sample(sub: Any) -> None:
    p = sub.add_parser(
        "sample",
        help="continue a prompt with a trained run's model (text, or token ids with --tokens)",
        description="Load RUN/ckpt.pt (weights only), rebuild the model from its config and sample "
        "continuations: temperature, top-k, never an id the tokenizer lacks. Text goes through the GPT-2 "
        "BPE; --tokens reads and prints token ids instead (any vocabulary, no tokenizer).",
    )
    p.add_argument("run", help="run directory of lm train (or its ckpt.pt)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    src.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    src.add_argument("--tokens", type=int, nargs="+", default=None, metavar="ID",
                     help="the prompt as token ids; print the samples as JSON lists of ids")  # fmt: skip
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: the most likely token each step")
    p.add_argument(
        "--top-k", type=nonnegative_int, default=200, help="keep the k most likely tokens (0: all)"
    )
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--tokenizer-file", default=None, help="local gpt2.tiktoken (see lm prepare)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (on stderr)")
    p.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .sample import sample_text, sample_tokens

    settings = dict(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                    show_progress=not args.no_progress)  # fmt: skip
    if args.tokens is not None:
        from .distributed import resolve_device
        from .sample import load_model

        model, _ = load_model(args.run, resolve_device(args.device))
        print(json.dumps(sample_tokens(model, args.tokens, **settings)))
        return 0
    prompt = Path(args.prompt_file).read_text(encoding="utf-8") if args.prompt_file else args.prompt
    texts = sample_text(args.run, prompt, device=args.device, bpe_file=args.tokenizer_file, **settings)
    for text in texts:
        print(prompt + text)
        print("-" * 40)
    return 0


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


def _add_sweep(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="optimizers x lrs x seeds of one config, resumable, sharded (--shard i/n or torchrun)",
        description="Train the base config (--config, --set) once per optimizer, lr and replicate, each "
        "run in OUT/runs/, results in OUT (focus-optim compare summary|plot OUT). Under torchrun every "
        "rank trains its own runs on its own GPU. Optimizers: NAME:KEY=VALUE,... from registry defaults.",
    )
    _config_args(
        p,
        SWEEP_FLAGS,
        SET_HELP + " Not optimizer, lr, optimizer_args, out_dir or name: each run sets them (from "
        "--optimizers, --lrs, --out), so setting one is an error; a --config file's are ignored.",
    )
    p.add_argument("--out", required=True, help="results directory (resumed if it exists)")
    p.add_argument(
        "--optimizers", nargs="+", required=True, help='e.g. "adamw:betas=(0.9,0.95),weight_decay=0.1"'
    )
    p.add_argument("--lrs", nargs="+", type=float, required=True, help="peak learning rates")
    p.add_argument("--replicates", type=int, default=1, help="seeds per (optimizer, lr): seed, seed+1, ...")
    p.add_argument(
        "--shard", default=None, help="i/n: this process trains every n-th run (default: torchrun's)"
    )
    p.add_argument("--workers", type=int, default=1, help="local processes training runs side by side")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over runs")
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from ..compare import best_lr
    from .sweep import check_overrides, sweep

    base = _load(args, SWEEP_FLAGS)  # unknown keys and bad values first, naming the valid ones
    check_overrides(args.overrides)
    ds = sweep(
        base,
        args.optimizers,
        args.lrs,
        args.out,
        replicates=args.replicates,
        shard=args.shard,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(f"{ds.attrs['cells_done']}/{ds.attrs['cells_total']} runs stored in {args.out}")
    if ds.attrs["complete"]:
        table = best_lr(ds, "val_loss")
        for label in table["optimizer"].values:
            t = table.sel(optimizer=label)
            print(f"  {label}: best lr {float(t['best_lr']):.3g}, final val loss {float(t['best']):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
