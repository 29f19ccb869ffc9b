"""The package's type hints are part of its API (it ships ``py.typed``): mypy must accept them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_type_checks_clean():
    """``mypy`` with the repository's configuration ([tool.mypy] in pyproject.toml) finds nothing.

    Runs in a subprocess so that mypy's memory and import state stay out of the test process.
    """
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-color-output", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert out.returncode == 0 and not errors, "\n".join(errors or [out.stdout, out.stderr])
