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


def test_a_writer_killed_midway_leaves_a_temp_file_that_is_swept_once_stale(tmp_path):
    """SIGKILL skips every cleanup: the temp file stays until :func:`remove_stale_temps`, which
    removes only names of the writer's form and, given an age, only files that old."""
    import os
    import subprocess
    import sys
    import time

    from focus_optim.atomic import remove_stale_temps, temp_name

    path = tmp_path / "ckpt.pt"
    write_atomic(path, lambda f: f.write(b"old"))
    killed = (
        "import os, signal, sys\n"
        "from focus_optim.atomic import write_atomic\n"
        "def dies(f):\n"
        "    f.write(b'half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_atomic(sys.argv[1], dies)\n"
    )
    proc = subprocess.run([sys.executable, "-c", killed, str(path)], check=False)
    assert proc.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name != "ckpt.pt"]
    assert len(left) == 1 and left[0].read_bytes() == b"half" and path.read_bytes() == b"old"

    fresh = temp_name(path)  # another process's write in progress
    fresh.write_bytes(b"being written")
    keep = [tmp_path / ".corrupt-cell.npz", tmp_path / ".notes.tmp", tmp_path / "x.1.abcdefabcdef.tmp"]
    for p in keep:
        p.write_bytes(b"not a temp file of ours")
    an_hour_ago = time.time() - 3600
    os.utime(left[0], (an_hour_ago, an_hour_ago))
    assert remove_stale_temps(tmp_path, older_than=600) == 1
    assert not left[0].exists() and fresh.exists() and all(p.exists() for p in keep)
    assert remove_stale_temps(tmp_path) == 1  # no age: every temp file of ours
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.pt", *(p.name for p in keep)])
    assert remove_stale_temps(tmp_path / "absent") == 0
