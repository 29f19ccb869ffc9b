"""Run logs: ``log.jsonl`` always (one JSON object per line), TensorBoard when installed.

Record kinds (field ``kind``): ``train`` (step, loss, lr, grad_norm, tokens, train_time,
tok_per_s, mfu), ``val`` (step, val_loss, tokens, train_time), ``event`` (start, resume,
skip, nonfinite, end). ``step`` counts optimizer steps completed; the ``val`` record at step
``s`` evaluates the model after ``s`` steps.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic

LOG_NAME = "log.jsonl"


class RunLogger:
    """Appends records to ``out_dir/log.jsonl`` (and TensorBoard scalars); a no-op when disabled."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        purge_after: int | None = None,
    ) -> None:
        """``purge_after``: a resumed run's step; TensorBoard drops the scalars an interrupted run
        logged after it (``log.jsonl`` is cut by :meth:`truncate_after`)."""
        self.path = Path(out_dir) / LOG_NAME
        self.enabled = enabled
        self._tb: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if purge_after is None else purge_after + 1
                self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=purge)
            except ImportError:
                self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if (
                    key not in ("step", "kind")
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    def start_fresh(self) -> None:
        """A new run in a used directory: keep the previous log as ``log.jsonl.prev``."""
        if self.enabled and self.path.exists():
            os.replace(self.path, self.path.with_name(self.path.name + ".prev"))

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a run interrupted past its last checkpoint). A log
        that is not a run log (see :func:`read_records`) raises a ValueError and stays as it is."""
        if not self.enabled or not self.path.exists():
            return
        lines = _read_text(self.path).splitlines()
        kept = [line for i, line in enumerate(lines, 1) if _keep(parse_line(self.path, i, line), step)]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _keep(rec: dict[str, Any] | None, step: int) -> bool:
    if rec is None:
        return False  # a line cut by the interruption
    return rec.get("step", -1) <= step and rec.get("event") != "end"


def parse_line(path: Path, lineno: int, line: str) -> dict[str, Any] | None:
    """A log line's record, or None for a line that is not JSON (cut by an interruption); a
    ValueError naming the file and line for JSON that is not a record (an object, integer step)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict):
        raise ValueError(
            f"{path}:{lineno}: not a run-log record (a JSON {type(rec).__name__}, expected an object)"
        )
    step = rec.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(f"{path}:{lineno}: not a run-log record (step {step!r}, expected an integer)")
    return rec


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not a run log (not UTF-8 text: {exc.reason} at byte {exc.start})"
        ) from None


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats become strings ('nan', 'inf'), which JSON cannot hold as numbers."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a ``log.jsonl`` (``path`` may be the file or its run directory)."""
    return [rec for _, rec in read_records(path)[1]]


def read_records(path: str | os.PathLike[str]) -> tuple[Path, list[tuple[int, dict[str, Any]]]]:
    """The log file and its records with their line numbers (``path`` may be the run directory).
    Lines that are not JSON (cut by an interruption) are skipped; a file that is not UTF-8 text,
    or a JSON line that is not a record, raises a ValueError naming the file (and line)."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no run log at {p}")
    out = []
    for lineno, line in enumerate(_read_text(p).splitlines(), start=1):
        rec = parse_line(p, lineno, line)
        if rec is not None:
            out.append((lineno, rec))
    return p, out
