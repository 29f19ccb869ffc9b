"""Atomic writes: the target holds the old or the new content, never a torn one."""

from __future__ import annotations

import json

import pytest

from focus_optim.atomic import write_atomic, write_json_atomic, write_text_atomic


def test_writes_create_parents_and_replace(tmp_path):
    path = tmp_path / "a" / "b" / "result.json"
    write_json_atomic(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    write_json_atomic(path, {"x": [1.5, None]}, indent=None)
    assert path.read_text() == '{"x": [1.5, null]}\n'
    write_text_atomic(path, "π\n")
    assert path.read_text(encoding="utf-8") == "π\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.bin"
    write_atomic(path, lambda f: f.write(b"old"))

    def fails(f):
        f.write(b"new but half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fails)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]
    with pytest.raises(TypeError):  # not JSON-able: nothing written either
        write_json_atomic(path, {"x": object()})
    assert path.read_bytes() == b"old"
