"""Files written atomically: a temp file in the same directory, fsync, then ``os.replace``.

A reader (or a run resumed after a kill) sees the old file or the new one, never a torn one. Every
result, summary, manifest, log rewrite and checkpoint of the project goes through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary temp file next to ``path``, then move it to ``path``.

    The parent directory is created. On an error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON (newline-terminated), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


__all__ = ["write_atomic", "write_json_atomic", "write_text_atomic"]
