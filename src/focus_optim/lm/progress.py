"""A progress bar: tqdm when installed, otherwise a plain line printed every few seconds."""

from __future__ import annotations

import sys
import time
from typing import Any


class _PlainBar:
    """The subset of tqdm's interface used here, printing at most every ``interval`` seconds."""

    def __init__(self, total: float | None, desc: str, initial: float, unit: str, interval: float = 5.0):
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.interval, self._last, self._postfix = interval, 0.0, ""

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self._postfix = s

    def write(self, s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    def _print(self) -> None:
        total = f"/{self.total:g}" if self.total else ""
        print(f"{self.desc}: {self.n:g}{total} {self.unit} {self._postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._print()


def progress(
    total: float | None = None,
    *,
    desc: str = "",
    initial: float = 0,
    unit: str = "it",
    enabled: bool = True,
    unit_scale: bool = False,
) -> Any:
    """A tqdm-like bar (``update``, ``set_postfix_str``, ``write``, ``close``); silent if disabled."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainBar(total, desc, initial, unit) if enabled else _Silent()
    return tqdm(
        total=total,
        desc=desc,
        initial=initial,
        unit=unit,
        unit_scale=unit_scale,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 15.0,  # keep captured logs short
    )


class _Silent:
    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass
