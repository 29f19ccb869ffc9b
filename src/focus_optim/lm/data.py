"""``focus-optim lm prepare``: tokenise a corpus with the GPT-2 BPE into ``train.bin`` / ``val.bin``.

Output (in ``out_dir``), as nanoGPT's ``prepare.py``:

* ``train.bin``, ``val.bin``: flat ``uint16`` token streams; every document is followed by
  ``<|endoftext|>`` (50256), so EOT separates consecutive documents;
* ``meta.json``: vocabulary, token/document counts, per-source sha256 and the split rule.
  ``meta.json`` is written last; its presence marks a finished dataset, which is never
  overwritten without ``overwrite=True`` (the same command again, on the same files by content
  and settings, finds it up to date and does nothing). Every file is written to a temp name and
  renamed; the temp files of a prepare killed midway are removed by the next one.

Sources: local ``.txt``/``.md`` files (one document each), ``.jsonl``/``.jsonl.gz`` files (one JSON
object per line, text in field ``text``), or ``hf:NAME[:CONFIG]`` (a Hugging Face dataset,
streamed; needs the optional ``datasets`` package and internet). Empty, binary or undecodable
input raises :class:`DataError` naming the file (and line).

Split rule ("hash"): a document goes to ``val`` when its source's file name matches
``val_source`` (a glob; default ``wiki*``, the Wikipedia prose of the offline corpus) and the
first 8 bytes of the BLAKE2b hash of its UTF-8 text, read as a fraction of 2**64, are below
``val_fraction`` (default 0.25). The rule depends only on a document's text, not on file order
or worker count, and identical documents always land in the same split.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import hashlib
import json
import os
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import remove_stale_temps, temp_name, write_json_atomic
from ..worker_pool import spawn_pool
from .progress import progress
from .tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, describe, find_bpe_file, gpt2_encoding, sha256_file

DEFAULT_CORPUS_DIRS = (".data/corpus", "../shared/data/corpus")
DEFAULT_OUT_DIR = ".data/lm/corpus"
FORMAT = "focus-optim-lm-tokens/1"
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
CHUNK_CHARS = 1 << 20  # characters of text per worker task


class DataError(ValueError):
    """Bad input data; the message names the file (and line)."""


@dataclass
class Source:
    """One input: a local file or a Hugging Face dataset (``hf:NAME[:CONFIG]``)."""

    spec: str
    name: str
    path: Path | None = None
    val_eligible: bool = False

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path is not None else 0


# --- sources -----------------------------------------------------------------------------------
def default_sources() -> list[str]:
    """``*.jsonl.gz`` of the first existing default corpus directory (relative to the cwd)."""
    for d in DEFAULT_CORPUS_DIRS:
        files = sorted(glob.glob(os.path.join(d, "*.jsonl.gz")))
        if files:
            return files
    raise FileNotFoundError(
        f"no input given and no default corpus found in {' or '.join(DEFAULT_CORPUS_DIRS)} "
        "(relative to the working directory); pass files or hf:NAME"
    )


def resolve_sources(specs: list[str], val_source: str) -> list[Source]:
    """Expand globs and directories into sources; mark those eligible for the val split."""
    sources: list[Source] = []
    for spec in specs or default_sources():
        if spec.startswith("hf:"):
            sources.append(Source(spec=spec, name=spec[3:]))
            continue
        if any(c in spec for c in "*?["):
            paths = sorted(Path(p) for p in glob.glob(spec))
            if not paths:
                raise FileNotFoundError(f"no file matches {spec!r}")
        elif Path(spec).is_dir():
            paths = sorted(p for p in Path(spec).iterdir() if _kind(p) is not None)
            if not paths:
                raise FileNotFoundError(f"directory {spec} holds no .txt/.md/.jsonl/.jsonl.gz file")
        else:
            paths = [Path(spec)]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"input file {p} does not exist")
            if _kind(p) is None:
                raise DataError(
                    f"{p}: unsupported file type (use {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)})"
                )
            sources.append(Source(spec=str(p), name=p.name, path=p))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"two inputs share a file name: {sorted(n for n in names if names.count(n) > 1)}")
    for s in sources:
        s.val_eligible = fnmatch.fnmatch(s.name, val_source)
    return sources


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def iter_chunks(source: Source, text_field: str = "text") -> Iterator[tuple[list[str], int]]:
    """Yield (documents, input bytes consumed) in chunks of about ``CHUNK_CHARS`` characters."""
    docs: list[str] = []
    chars, consumed, n_docs = 0, 0, 0
    for text, pos in _iter_documents(source, text_field):
        if not text or text.isspace():  # nothing a model could learn from
            continue
        docs.append(text)
        chars += len(text)
        n_docs += 1
        if chars >= CHUNK_CHARS:
            yield docs, pos - consumed
            consumed, docs, chars = pos, [], 0
    if n_docs == 0:
        raise DataError(f"{source.spec}: contains no text (empty file, or only empty or blank documents)")
    if docs:
        yield docs, max(source.nbytes - consumed, 0)


def _iter_documents(source: Source, text_field: str) -> Iterator[tuple[str, int]]:
    """(text, bytes of the file read so far) for every document of a source."""
    if source.path is None:
        yield from _iter_hf(source, text_field)
    elif _kind(source.path) == "text":
        yield _read_text_file(source.path), source.nbytes
    else:
        yield from _iter_jsonl(source.path, text_field)


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise DataError(f"{path}: looks binary (contains NUL bytes), expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc})") from None


def _iter_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    with open(path, "rb") as raw:
        stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.lower().endswith(".gz") else raw
        lineno = 0
        try:
            for lineno, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                yield _parse_line(path, lineno, line, text_field), raw.tell()
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None


def _parse_line(path: Path, lineno: int, line: bytes, text_field: str) -> str:
    if b"\x00" in line:
        raise DataError(f"{path}:{lineno}: looks binary (contains NUL bytes), expected JSON lines")
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not valid UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
        raise DataError(f"{path}:{lineno}: expected a JSON object with a string field {text_field!r}")
    text = obj[text_field]
    if b"\\u" in line:  # only a \uXXXX escape can make an unpaired surrogate (raw bytes are UTF-8)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"{path}:{lineno}: field {text_field!r} holds an unpaired surrogate "
                f"(\\u{ord(text[exc.start]):04x} at character {exc.start}): not valid Unicode text"
            ) from None
    return text


def _iter_hf(source: Source, text_field: str) -> Iterator[tuple[str, int]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source.spec}: Hugging Face sources need the optional 'datasets' package (and internet); "
            "install it or pass local files"
        ) from None
    name, _, config = source.name.partition(":")
    ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
    for row in ds:
        yield row[text_field], 0


# --- tokenisation workers ------------------------------------------------------------------------
_ENCODING: Any = None


def _init_worker(bpe_file: str | None) -> None:
    global _ENCODING
    _ENCODING = gpt2_encoding(bpe_file)


def in_val_split(text: str, val_fraction: float) -> bool:
    """The hash split rule for a val-eligible document (see the module docstring)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < val_fraction


def _encode_task(task: tuple[int, list[str], bool, float, int]) -> dict[str, Any]:
    """Tokenise one chunk; returns its train/val token arrays (EOT after every document)."""
    source_idx, docs, eligible, val_fraction, nbytes = task
    val_mask = [eligible and in_val_split(d, val_fraction) for d in docs]
    out: dict[str, Any] = {"source": source_idx, "nbytes": nbytes}
    for split, want in (("train", False), ("val", True)):
        chosen = [d for d, v in zip(docs, val_mask) if v == want]
        out[split] = _tokens(chosen)
        out[f"{split}_docs"] = len(chosen)
    return out


def _tokens(docs: list[str]) -> np.ndarray:
    if not docs:
        return np.empty(0, dtype=np.uint16)
    eot = np.array([EOT_TOKEN], dtype=np.uint16)
    parts = []
    for ids in _ENCODING.encode_ordinary_batch(docs, num_threads=1):
        parts += [np.asarray(ids, dtype=np.uint16), eot]
    return np.concatenate(parts)


# --- driver --------------------------------------------------------------------------------------
def prepare(
    inputs: list[str],
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    *,
    tokenizer_file: str | os.PathLike[str] | None = None,
    val_source: str = "wiki*",
    val_fraction: float = 0.25,
    text_field: str = "text",
    workers: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Tokenise ``inputs`` into ``out_dir``; returns the ``meta.json`` contents.

    A finished dataset in ``out_dir`` is kept as it is when it was prepared from the same files
    (by content) with the same settings: the returned meta then has ``"up_to_date": True``, so the
    command can be re-run. Other inputs or settings need ``overwrite=True``.
    """
    out = Path(out_dir)
    if not 0.0 < val_fraction <= 1.0:
        raise ValueError(f"Invalid val_fraction: {val_fraction} (allowed: (0, 1])")
    sources = resolve_sources(inputs, val_source)
    if (out / "meta.json").exists() and not overwrite:
        done = load_meta(out)  # also checks that the token files hold what it counts
        differs = _differs(done, sources, tokenizer_file, val_source, val_fraction, text_field)
        if differs is None:
            return {**done, "up_to_date": True}
        raise FileExistsError(
            f"{out} already holds a dataset prepared from other inputs or settings ({differs}); "
            "pass --overwrite to redo it, or use another --out"
        )
    if not any(s.val_eligible for s in sources):
        raise DataError(f"no input matches val_source {val_source!r}: {[s.name for s in sources]}")
    bpe = find_bpe_file(tokenizer_file)
    bpe_arg = str(bpe.resolve()) if bpe is not None else None
    workers = workers or min(os.cpu_count() or 1, 16)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # of a prepare killed midway (one writer a dataset)
    t0 = time.time()

    counts = [dict.fromkeys(("train_tokens", "val_tokens", "train_docs", "val_docs"), 0) for _ in sources]
    tasks = (
        (i, docs, s.val_eligible, val_fraction, nbytes)
        for i, s in enumerate(sources)
        for docs, nbytes in iter_chunks(s, text_field)
    )
    tmp = {split: temp_name(out / f"{split}.bin") for split in ("train", "val")}
    total_bytes = sum(s.nbytes for s in sources) or None
    bar = progress(total_bytes, desc="tokenising", unit="B", unit_scale=True, enabled=show_progress)
    try:
        with open(tmp["train"], "wb") as ftrain, open(tmp["val"], "wb") as fval:
            for res in _run_tasks(tasks, workers, bpe_arg):
                c = counts[res["source"]]
                for split, f in (("train", ftrain), ("val", fval)):
                    res[split].tofile(f)
                    c[f"{split}_tokens"] += int(res[split].size)
                    c[f"{split}_docs"] += res[f"{split}_docs"]
                bar.update(res["nbytes"])
            for f in (ftrain, fval):
                f.flush()
                os.fsync(f.fileno())
        bar.close()
        totals = {k: sum(c[k] for c in counts) for k in counts[0]}
        for split in ("train", "val"):
            if totals[f"{split}_tokens"] == 0:
                raise DataError(
                    f"the {split} split is empty (val_source={val_source!r}, val_fraction={val_fraction}); "
                    "add documents or change the split"
                )
        meta = _meta(
            sources, counts, totals, tokenizer_file, val_source, val_fraction, text_field, time.time() - t0
        )
        (out / "meta.json").unlink(missing_ok=True)  # an unfinished dataset from here on
        for split in ("train", "val"):
            os.replace(tmp[split], out / f"{split}.bin")
        write_json_atomic(out / "meta.json", meta, indent=2)
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        if created and not any(out.iterdir()):  # a failed first prepare leaves no empty directory
            out.rmdir()
    return meta


def _run_tasks(tasks: Iterator[Any], workers: int, bpe_file: str | None) -> Iterator[dict[str, Any]]:
    """Results in input order: in-process for one worker, else a spawn pool."""
    if workers <= 1:
        _init_worker(bpe_file)
        yield from map(_encode_task, tasks)
        return
    with spawn_pool(workers, _init_worker, (bpe_file,)) as pool:
        pending: deque[Any] = deque()  # at most 2 tasks per worker in flight: bounded memory
        for task in tasks:
            pending.append(pool.apply_async(_encode_task, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _meta(
    sources: list[Source],
    counts: list[dict[str, int]],
    totals: dict[str, int],
    tokenizer_file: str | os.PathLike[str] | None,
    val_source: str,
    val_fraction: float,
    text_field: str,
    seconds: float,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "dtype": "uint16",
        "vocab_size": GPT2_VOCAB_SIZE,
        "eot_token": EOT_TOKEN,
        "separator": "<|endoftext|> (50256) after every document",
        "tokenizer": describe(tokenizer_file),
        "text_field": text_field,
        **totals,
        "split": {
            "rule": "hash",
            "val_source": val_source,
            "val_fraction": val_fraction,
            "description": (
                f"a document is in val iff its source file name matches {val_source!r} and "
                f"int.from_bytes(blake2b(text.encode('utf-8'), digest_size=8).digest(), 'big') / 2**64 "
                f"< {val_fraction}; everything else is train"
            ),
        },
        "sources": [
            {
                "name": s.name,
                "spec": s.spec,
                "sha256": sha256_file(s.path) if s.path is not None else None,
                "bytes": s.nbytes,
                "val_eligible": s.val_eligible,
                **c,
            }
            for s, c in zip(sources, counts)
        ],
        "seconds": round(seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _differs(
    meta: dict[str, Any],
    sources: list[Source],
    tokenizer_file: str | os.PathLike[str] | None,
    val_source: str,
    val_fraction: float,
    text_field: str,
) -> str | None:
    """What makes ``meta`` (a finished dataset) differ from preparing ``sources`` now, or None."""
    if any(s.path is None for s in sources):
        return "a Hugging Face source cannot be checked for changes"
    split = meta.get("split", {})
    settings = {
        "val_source": (split.get("val_source"), val_source),
        "val_fraction": (split.get("val_fraction"), val_fraction),
        "text_field": (meta.get("text_field", "text"), text_field),  # datasets written before it was kept
        "tokenizer": (meta.get("tokenizer", {}).get("sha256"), describe(tokenizer_file)["sha256"]),
    }
    changed = [f"{k}: {old!r} then, {new!r} now" for k, (old, new) in settings.items() if old != new]
    if changed:
        return "; ".join(changed)
    then = [(s.get("name"), s.get("sha256")) for s in meta.get("sources", [])]
    now = [(s.name, sha256_file(s.path)) for s in sources if s.path is not None]
    if [n for n, _ in then] != [n for n, _ in now]:
        return f"inputs {[n for n, _ in then]} then, {[n for n, _ in now]} now"
    edited = [n for (n, a), (_, b) in zip(then, now) if a != b]
    return f"contents changed: {edited}" if edited else None


#: ``meta.json`` keys every reader needs: (type, least value).
META_FIELDS: dict[str, tuple[type[int], int]] = {
    "vocab_size": (int, 1),
    "train_tokens": (int, 0),
    "val_tokens": (int, 0),
}
#: Keys that need not be there (datasets written by hand, or before they were kept), but typed.
META_OPTIONAL: dict[str, type] = {"split": dict, "tokenizer": dict, "sources": list, "text_field": str}


def load_meta(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a prepared dataset; a clear error naming it when it is missing, is not
    a JSON object with the required keys (:data:`META_FIELDS`) and types, or does not match the
    token files' sizes."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{data_dir} is not a prepared dataset (no meta.json); "
            f"run `focus-optim lm prepare --out {data_dir}`"
        )
    redo = "re-run `focus-optim lm prepare --overwrite`"
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is corrupt ({exc}); {redo}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is corrupt (a JSON {type(meta).__name__}, expected an object); {redo}")
    for key, (want_type, low) in META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, want_type) or isinstance(value, bool) or value < low:
            what = "missing" if key not in meta else f"{value!r}"
            raise DataError(f"{path} is corrupt ({key}: {what}; expected an integer >= {low}); {redo}")
    for key, want_type in META_OPTIONAL.items():
        if key in meta and not isinstance(meta[key], want_type):
            raise DataError(
                f"{path} is corrupt ({key}: a {type(meta[key]).__name__}, expected a {want_type.__name__}); "
                f"{redo}"
            )
    if not all(isinstance(s, dict) for s in meta.get("sources", [])):
        raise DataError(f"{path} is corrupt (sources: expected a list of objects); {redo}")
    for split in ("train", "val"):  # the token files must hold what meta.json counted
        bin_path, want = Path(data_dir) / f"{split}.bin", meta[f"{split}_tokens"]
        if not bin_path.is_file():
            raise FileNotFoundError(f"{bin_path} is missing; {redo}")
        size = bin_path.stat().st_size
        if size != 2 * want:
            raise DataError(
                f"{bin_path} holds {size} bytes, but {path} counts {want} uint16 tokens ({2 * want} bytes): "
                f"truncated or replaced; {redo}"
            )
    return meta
