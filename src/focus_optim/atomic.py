"""Files written atomically: a temp file in the same directory, fsync, then ``os.replace``.

A reader (or a run resumed after a kill) sees the old file or the new one, never a torn one. Every
result, summary, manifest, log rewrite and checkpoint of the project goes through here.

Temp names carry the process id and a random token: processes on different nodes of a shared file
system (cluster array jobs writing into one store) can have the same pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: Names of the temp files :func:`_write_temp` makes: ``.<name>.<pid>.<12 hex digits>.tmp``.
TEMP_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{12}\.tmp$")


def temp_name(path: Path) -> Path:
    """A fresh temp file name next to ``path`` (unique across processes and nodes)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _write_temp(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write(f)`` into a new, uniquely named temp file next to ``path``, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def remove_stale_temps(directory: str | os.PathLike[str], older_than: float = 0.0) -> int:
    """Remove the temp files a killed writer left in ``directory``; returns how many.

    Only names of :data:`TEMP_NAME`'s form, last modified more than ``older_than`` seconds ago, are
    removed: where other processes may be writing into the same directory (shards of one sweep),
    a positive age keeps their temp files, which are modified while they are written.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    now, removed = time.time(), 0
    for entry in os.scandir(directory):
        if not TEMP_NAME.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):  # its writer renamed or removed it meanwhile
            if now - entry.stat().st_mtime > older_than:
                os.unlink(entry.path)
                removed += 1
    return removed


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary temp file next to ``path``, then move it to ``path``.

    The parent directory is created. On an error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def create_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> bool:
    """Like :func:`write_atomic`, but only if ``path`` does not exist yet (a hard link, so of
    several processes racing to create it exactly one does and none sees it half-written).
    Returns whether this call created it."""
    path = Path(path)
    tmp = _write_temp(path, write)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
            return True
        return False
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON (newline-terminated), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


__all__ = [
    "create_atomic",
    "remove_stale_temps",
    "temp_name",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
