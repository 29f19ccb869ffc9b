"""The core import stays light: optimizers and registry only, no lab dependencies."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("matplotlib", "xarray", "tiktoken", "tqdm", "tensorboard", "pytorch_optimizer", "triton")

SCRIPT = """
import json, sys, time
import torch  # torch itself may import some of these (e.g. tqdm): only new imports count
before = set(sys.modules)
t0 = time.perf_counter()
import focus_optim
elapsed = time.perf_counter() - t0
new = set(sys.modules) - before
print(json.dumps({"seconds": elapsed, "modules": sorted(m for m in new if m.split('.')[0] in HEAVY),
                  "ours": sorted(m for m in new if m.startswith("focus_optim."))}))
""".replace("HEAVY", repr(HEAVY))

#: What ``import focus_optim`` may load of its own: the optimizers, their registry and kernels'
#: host code, the results loader's entry point. No lab (landscape, mnist, lm), sweep runner or CLI.
LABS = ("focus_optim.landscape", "focus_optim.mnist", "focus_optim.lm", "focus_optim.sweep",
        "focus_optim.cli", "focus_optim.compare", "focus_optim.plots", "focus_optim.bench")  # fmt: skip


def test_import_is_light():
    """No lab dependency and no lab module on ``import focus_optim`` (its time is in BENCHMARKS.md;
    a timed test would fail on a loaded machine)."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["modules"] == [], report["modules"]
    assert "focus_optim.optim" in report["ours"], report["ours"]
    assert not [m for m in report["ours"] if m.startswith(LABS)], report["ours"]


def test_public_api():
    import focus_optim

    for name in ("FOCUS", "Signum", "AdamW", "make_optimizer", "load_results", "available_optimizers"):
        assert hasattr(focus_optim, name)
    assert focus_optim.__version__


def test_type_hints_are_marked_for_type_checkers():
    """PEP 561: ``py.typed`` ships with the package (declared as package data in pyproject.toml)."""
    import importlib.resources
    from pathlib import Path

    assert (importlib.resources.files("focus_optim") / "py.typed").is_file()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\nfocus_optim = ["py.typed"]' in pyproject
