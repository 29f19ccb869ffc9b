"""Small-scale replication of the paper's Figure 3 (GPT-2 124M) on one H100.

Seven runs of ``configs/lm/fig3_*.toml`` (settings and what is scaled down: ``fig3_base.toml``
and ``docs/lm.md``), each 450 steps x 65,536 tokens (~0.96 epoch of the offline corpus) with
the same warmup + cosine schedule, except the half-length FOCUS run (Figure 3d's shape):

=====================  =====  ===============================================================
run                    lr     optimizer settings
=====================  =====  ===============================================================
fig3_adamw_6e-4        6e-4   AdamW, betas (0.9, 0.95), wd 0.1 (the paper's baseline)
fig3_focus_6e-4        6e-4   FOCUS, betas (0.9, 0.99), gamma 0.2, wd 0.2
fig3_signum_6e-4       6e-4   Signum (FOCUS with gamma 0, beta2 0), momentum 0.9, wd 0.2
fig3_focus_6e-4_half   6e-4   FOCUS as above on 225 steps
fig3_adamw_1.2e-3      1.2e-3 AdamW as above
fig3_focus_1e-3        1e-3   FOCUS as above
fig3_signum_1e-4       1e-4   Signum as above
=====================  =====  ===============================================================

At ~500K tokens/s a full run trains for ~60 s plus ~20-50 s of start-up and compilation, so
the whole set takes about 11-12 minutes (data preparation ~15 s included). Split it into parts
of at most 9 minutes with ``--part i/n`` (``1/2``: data and the three lr-6e-4 runs, ~5 min;
``2/2``: the other four runs and the comparison, ~6 min). A finished run (its log ends with an
``end`` event) is skipped, so a part can be re-run after an interruption.

    PYTHONPATH=src python benchmarks/lm_replication.py --part 1/2 --export $OUT/lm_replication
    PYTHONPATH=src python benchmarks/lm_replication.py --part 2/2 --export $OUT/lm_replication

Run directories go to ``--out`` (default ``runs/lm_replication``). ``--export DIR`` receives at
most four files per part: ``lm_replication_part<i>of<n>.tar.gz`` (each run's ``config.json``
and ``log.jsonl``, refreshed after every run), ``lm_replication_part<i>of<n>.json`` (the
summary table) and, after the last part, ``compare.json`` and ``compare.png`` (``focus-optim lm
compare`` over every run found in ``--out``; reference AdamW 6e-4). If the machine was handed
back between parts, unpack both archives in one folder and run ``focus-optim lm compare fig3_*
--reference fig3_adamw_6e-4 --out .`` there. Extra ``--set key=value`` options apply to every run
(e.g. ``--set batch_size=16 --set grad_accum=4``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

RUNS = (
    "fig3_adamw_6e-4",
    "fig3_focus_6e-4",
    "fig3_signum_6e-4",
    "fig3_focus_6e-4_half",
    "fig3_adamw_1.2e-3",
    "fig3_focus_1e-3",
    "fig3_signum_1e-4",
)
REFERENCE = "fig3_adamw_6e-4"


def select_part(runs: list[str], costs: list[float], part: str) -> list[str]:
    """Contiguous slice ``i`` of ``n`` with about equal cost (``part`` is ``"i/n"``)."""
    i, n = (int(x) for x in part.split("/"))
    if not 1 <= i <= n:
        raise SystemExit(f"--part {part}: expected i/n with 1 <= i <= n")
    total, acc, out = sum(costs), 0.0, []
    for run, cost in zip(runs, costs):
        mid = (acc + cost / 2) / total  # the run belongs to the part its cost midpoint falls in
        if (i - 1) / n <= mid < i / n:
            out.append(run)
        acc += cost
    return out


def finished(run_dir: Path) -> bool:
    log = run_dir / "log.jsonl"
    if not log.exists():
        return False
    lines = log.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1]).get("event") in ("end", "nonfinite")


def ensure_data(data_dir: Path, corpus: str, tokenizer: str | None) -> None:
    if (data_dir / "meta.json").exists():
        return
    files = sorted(glob.glob(corpus))
    cmd = [sys.executable, "-m", "focus_optim.lm.cli", "prepare", *files, "--out", str(data_dir)]
    if tokenizer:
        cmd += ["--tokenizer-file", tokenizer]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = args.out / name
    if finished(run_dir):
        return {"run": name, "status": "done before", **_summary(run_dir)}
    cmd = [
        sys.executable, "-m", "focus_optim.lm.cli", "train",
        "--config", str(args.configs / f"{name}.toml"),
        "--set", f"out_dir={json.dumps(str(run_dir))}",
        "--set", f"data_dir={json.dumps(str(args.data_dir))}",
    ]  # fmt: skip
    for item in args.set:
        cmd += ["--set", item]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    status = {0: "ok", 3: "diverged (non-finite loss)"}.get(rc, f"failed (exit {rc})")
    return {"run": name, "status": status, "wall_s": time.perf_counter() - t0, **_summary(run_dir)}


def _summary(run_dir: Path) -> dict[str, Any]:
    recs = []
    if (run_dir / "log.jsonl").exists():
        recs = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    val = [r for r in recs if r.get("kind") == "val"]
    train = [r for r in recs if r.get("kind") == "train"]
    return {
        "steps": train[-1]["step"] if train else 0,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "tok_per_s": sum(r["tok_per_s"] for r in train) / len(train) if train else None,
        "train_time": train[-1]["train_time"] if train else None,
    }


def export(run_dirs: list[Path], archive: Path) -> None:
    """Pack each run's ``config.json`` and ``log.jsonl`` into one ``.tar.gz`` (few files travel back)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for run_dir in run_dirs:
            for name in ("config.json", "log.jsonl"):
                if (run_dir / name).exists():
                    tar.add(run_dir / name, arcname=f"{run_dir.name}/{name}")
    os.replace(tmp, archive)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="1/1", help="i/n: run the i-th of n parts (default: everything)")
    ap.add_argument("--out", type=Path, default=Path("runs/lm_replication"))
    ap.add_argument(
        "--export", type=Path, default=None, help="copy logs and the comparison here (e.g. $OUT/...)"
    )
    ap.add_argument("--configs", type=Path, default=Path("configs/lm"))
    ap.add_argument("--data-dir", type=Path, default=Path(".data/lm/corpus"))
    ap.add_argument("--corpus", default=".data/corpus/*.jsonl.gz")
    ap.add_argument("--tokenizer-file", default=".data/tokenizers/gpt2.tiktoken")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma list of config names (default: all seven)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the comparison (default: in the last part)",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan only")
    args = ap.parse_args()

    t0 = time.perf_counter()
    runs = args.runs.split(",")
    costs = [0.6 if name.endswith("_half") else 1.0 for name in runs]  # relative training time
    mine = select_part(runs, costs, args.part)
    last_part = args.part.split("/")[0] == args.part.split("/")[1]
    print(f"part {args.part}: {', '.join(mine) or '(nothing)'}", flush=True)
    if args.dry_run:
        return 0
    tokenizer = args.tokenizer_file if Path(args.tokenizer_file).is_file() else None
    ensure_data(args.data_dir, args.corpus, tokenizer)

    tag = "lm_replication_part" + args.part.replace("/", "of")
    rows = []
    for name in mine:
        rows.append(run_one(name, args))
        print(json.dumps(rows[-1]), flush=True)
        if args.export is not None:  # after every run, so an interrupted part still returns logs
            export([args.out / r for r in mine], args.export / f"{tag}.tar.gz")

    if args.compare if args.compare is not None else last_part:
        dirs = [str(args.out / r) for r in runs if (args.out / r / "log.jsonl").exists()]
        if dirs:
            from focus_optim.lm.compare import compare

            ref = str(args.out / REFERENCE) if str(args.out / REFERENCE) in dirs else None
            title = "GPT-2 124M on the offline corpus (small-scale Figure 3)"
            compare(dirs, reference=ref, out_dir=args.out, title=title)
            if args.export is not None:
                for name in ("compare.json", "compare.png"):
                    if (args.out / name).exists():
                        shutil.copy2(args.out / name, args.export / name)
    print(format_table(rows, time.perf_counter() - t0))
    if args.export is not None:
        from focus_optim.atomic import write_json_atomic

        write_json_atomic(args.export / f"{tag}.json", rows)
    return 0 if all(r["status"] in ("ok", "done before", "diverged (non-finite loss)") for r in rows) else 1


def format_table(rows: list[dict[str, Any]], seconds: float) -> str:
    lines = [f"{'run':<22} {'status':<28} {'steps':>5} {'val loss':>8} {'tok/s':>9} {'wall s':>7}"]
    for r in rows:
        val = r["final_val_loss"]
        val_s = f"{float(val):.4f}" if val is not None else "-"
        tok = f"{r['tok_per_s']:,.0f}" if r.get("tok_per_s") else "-"
        wall = f"{r['wall_s']:.0f}" if "wall_s" in r else "-"
        lines.append(f"{r['run']:<22} {r['status']:<28} {r['steps']:>5} {val_s:>8} {tok:>9} {wall:>7}")
    lines.append(f"part total {seconds:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
