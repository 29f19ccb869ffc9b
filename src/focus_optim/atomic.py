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
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _write_temp(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write(f)`` into a new, uniquely named temp file next to ``path``, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


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


__all__ = ["create_atomic", "write_atomic", "write_json_atomic", "write_text_atomic"]
