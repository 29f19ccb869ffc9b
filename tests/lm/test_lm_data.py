"""``lm prepare``: tokens, EOT placement, split rule, refusal to overwrite, bad-input errors."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from lm_helpers import tiny_config

from focus_optim.lm.data import DataError, in_val_split, prepare
from focus_optim.lm.tokenizer import EOT_TOKEN, GPT2_BPE_SHA256, find_bpe_file, gpt2_encoding
from focus_optim.lm.train import train

pytestmark = pytest.mark.skipif(find_bpe_file() is None, reason="the offline GPT-2 BPE file is not available")


def _jsonl(path: Path, texts: list[str], gz: bool = False) -> Path:
    lines = "".join(json.dumps({"title": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    if gz:
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)
    return path


WIKI = [f"Article {i} is about the number {i} and its {i % 7} friends." for i in range(40)]
DOCS = ["Hello world.", "The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x + 1\n"]


def _corpus(tmp_path: Path) -> list[str]:
    return [
        str(_jsonl(tmp_path / "docs.jsonl", DOCS)),
        str(_jsonl(tmp_path / "wiki.jsonl.gz", WIKI, gz=True)),
    ]


def test_prepare_tokens_eot_and_split(tmp_path):
    out = tmp_path / "out"
    meta = prepare(
        _corpus(tmp_path), out, val_source="wiki*", val_fraction=0.5, workers=1, show_progress=False
    )
    enc = gpt2_encoding()
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)

    # independent restatement: every document, in order, followed by EOT; val = hashed wiki docs
    is_val = [in_val_split(t, 0.5) for t in WIKI]
    want_train = [t for t in DOCS] + [t for t, v in zip(WIKI, is_val) if not v]
    want_val = [t for t, v in zip(WIKI, is_val) if v]
    assert 0 < len(want_val) < len(WIKI)
    for got, docs in ((train, want_train), (val, want_val)):
        expected = [tok for d in docs for tok in [*enc.encode_ordinary(d), EOT_TOKEN]]
        assert got.tolist() == expected
    assert meta["train_tokens"] == train.size and meta["val_tokens"] == val.size
    assert meta["train_docs"] == len(want_train) and meta["val_docs"] == len(want_val)
    assert meta["vocab_size"] == 50257 and meta["eot_token"] == EOT_TOKEN
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["split"]["rule"] == "hash" and on_disk["tokenizer"]["sha256"] == GPT2_BPE_SHA256
    assert [s["name"] for s in on_disk["sources"]] == ["docs.jsonl", "wiki.jsonl.gz"]
    assert all(len(s["sha256"]) == 64 for s in on_disk["sources"])


def test_prepare_multiprocess_equals_inprocess(tmp_path):
    inputs = _corpus(tmp_path)
    prepare(inputs, tmp_path / "a", val_fraction=0.5, workers=1, show_progress=False)
    prepare(inputs, tmp_path / "b", val_fraction=0.5, workers=2, show_progress=False)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepare_refuses_to_overwrite_other_inputs_and_is_a_no_op_for_the_same(tmp_path):
    inputs, out = _corpus(tmp_path), tmp_path / "out"
    meta = prepare(inputs, out, val_fraction=0.5, workers=1, show_progress=False)
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    again = prepare(inputs, out, val_fraction=0.5, workers=1, show_progress=False)  # e.g. a re-run script
    assert again.pop("up_to_date") is True and again == meta
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == files
    with pytest.raises(FileExistsError, match=r"val_fraction: 0.5 then, 0.25 now.*--overwrite"):
        prepare(inputs, out, val_fraction=0.25, workers=1, show_progress=False)
    with pytest.raises(
        FileExistsError, match=r"inputs \['docs.jsonl', 'wiki.jsonl.gz'\] then, \['wiki.jsonl.gz'\] now"
    ):
        prepare(inputs[1:], out, val_fraction=0.5, workers=1, show_progress=False)
    _jsonl(Path(inputs[0]), [*DOCS, "One more document."])
    with pytest.raises(FileExistsError, match=r"contents changed: \['docs.jsonl'\]"):
        prepare(inputs, out, val_fraction=0.5, workers=1, show_progress=False)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == files
    redone = prepare(inputs, out, val_fraction=0.5, workers=1, show_progress=False, overwrite=True)
    assert redone["train_docs"] + redone["val_docs"] == meta["train_docs"] + meta["val_docs"] + 1
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_a_prepare_killed_midway_leaves_temp_files_the_next_one_removes(tmp_path):
    from focus_optim.atomic import temp_name

    inputs, out = _corpus(tmp_path), tmp_path / "out"
    out.mkdir()
    torn = [temp_name(out / "train.bin"), temp_name(out / "val.bin")]  # SIGKILL skips all cleanup
    for p in torn:
        p.write_bytes(b"\x00\x01" * 100)
    prepare(inputs, out, val_fraction=0.5, workers=1, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "contains no text"),
        ("blank.jsonl", b'{"text": ""}\n', "contains no text"),
        ("spaces.jsonl", b'{"text": " \\n\\t "}\n{"text": ""}\n', "contains no text"),
        ("spaces.txt", b"  \n\n \t\n", "contains no text"),
        ("binary.txt", b"\x00\x01\x02binary", "looks binary"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
        ("broken.jsonl", b'{"text": "ok"}\nnot json\n', r"broken\.jsonl:2: not valid JSON"),
        ("nofield.jsonl", b'{"body": "x"}\n', "string field 'text'"),
        (
            "surrogate.jsonl",
            b'{"text": "fine \\ud83d\\ude00"}\n{"text": "a \\ud800 b"}\n',
            r"surrogate\.jsonl:2: field 'text' holds an unpaired surrogate \(\\ud800 at character 2\)",
        ),
        ("fake.jsonl.gz", b"plain text, not gzip", "not a valid gzip file"),
        ("data.bin", b"\x00\x00", "unsupported file type"),
    ],
)
def test_prepare_bad_input_names_the_file(tmp_path, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    wiki = _jsonl(tmp_path / "wiki.jsonl", WIKI)
    with pytest.raises(DataError, match=message) as err:
        prepare([str(wiki), str(bad)], tmp_path / "out", val_fraction=0.5, workers=1, show_progress=False)
    assert name in str(err.value)
    assert not (tmp_path / "out").exists()  # a failed first prepare leaves no empty directory


def test_prepare_missing_input_and_empty_val(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        prepare([str(tmp_path / "nothing.jsonl")], tmp_path / "out", workers=1, show_progress=False)
    docs = _jsonl(tmp_path / "docs.jsonl", DOCS)
    with pytest.raises(DataError, match="val_source"):
        prepare([str(docs)], tmp_path / "out", val_source="wiki*", workers=1, show_progress=False)


def test_tokenizer_file_is_verified(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_text("not the ranks\n")
    with pytest.raises(ValueError, match="sha256"):
        gpt2_encoding(bad)
    enc = gpt2_encoding(find_bpe_file())
    assert enc.n_vocab == 50257 and enc.eot_token == EOT_TOKEN
    assert enc.encode_ordinary("Hello world") == [15496, 995]  # GPT-2's well-known ids


@pytest.mark.parametrize("workers", [1, 2])
def test_offline_without_a_bpe_file_prepare_fails_in_one_clear_error(tmp_path, offline_without_bpe, workers):
    """The tokenizer is loaded in each worker: a failure there once hung ``lm prepare`` (the pool
    replaced the dying workers forever) or printed a raw requests traceback."""
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"no local GPT-2 BPE file .* pass --tokenizer-file"):
        prepare(_corpus(tmp_path), out, workers=workers, show_progress=False)
    assert not out.exists()  # and no empty directory left behind


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "meta.json").write_text("{not json"), r"meta\.json is corrupt"),
        (
            lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:100]),
            r"train\.bin holds 100 bytes",
        ),
        (
            lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes()[:-1]),
            r"val\.bin holds .* truncated",
        ),
        (lambda d: (d / "train.bin").write_bytes(b""), r"train\.bin holds 0 bytes"),
        (lambda d: (d / "val.bin").unlink(), r"val\.bin is missing"),
    ],
)
def test_a_damaged_dataset_is_named_before_training(synthetic_data, tmp_path, damage, message):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    damage(data)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(tiny_config(data, tmp_path / "run", "max_steps=1"))
    assert not (tmp_path / "run" / "ckpt.pt").exists()
