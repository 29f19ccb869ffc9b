"""The documentation's Python snippets run as written, given the names they leave to the reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(doc: str) -> list[str]:
    """The ```python blocks of ``doc`` (a path relative to the repository), in order."""
    return re.findall(r"^```python\n(.*?)^```", (ROOT / doc).read_text(), flags=re.M | re.S)


def teacher_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-class problem a linear model can learn: labels from a fixed random linear teacher."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    w = torch.randn(8, 3, generator=torch.Generator().manual_seed(1234))
    return x, (x @ w).argmax(dim=1)


def test_every_documented_python_snippet_is_covered():
    # A new snippet in README.md or docs/ needs a test here (or a reason it cannot run on a CPU).
    docs = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
    counts = {doc: n for doc in docs if (n := len(python_blocks(doc)))}
    assert counts == {"README.md": 2, "docs/onebit_adam.md": 2}


def test_readme_training_loop_snippet_trains_and_builds_the_named_optimizer():
    from focus_optim import FOCUS

    snippet = python_blocks("README.md")[0]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = teacher_data(4096, seed=0)
    loader = list(zip(x.split(32), y.split(32)))
    x_val, y_val = teacher_data(1024, seed=1)

    def val_loss() -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x_val), y_val))

    before = val_loss()
    scope = {"model": model, "loader": loader}
    exec(compile(snippet, "README.md[python 1]", "exec"), scope)
    assert val_loss() < 0.8 * before
    opt = scope["opt"]  # rebound by the snippet's last line
    assert isinstance(opt, FOCUS)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.2 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.ndim == 2}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.2}


def test_readme_compare_snippet_runs_and_picks_a_best_lr_per_optimizer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    snippet = python_blocks("README.md")[1]
    x, y = teacher_data(512, seed=0)
    x_val, y_val = teacher_data(256, seed=1)

    def my_batches(seed: int):
        order = torch.randperm(512, generator=torch.Generator().manual_seed(seed))
        return [(x[i], y[i]) for i in order.split(32)]

    scope = {
        "MyModel": lambda: nn.Linear(8, 3),
        "my_batches": my_batches,
        "my_loss": lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1]),
        "my_val_loss": lambda model: float(nn.functional.cross_entropy(model(x_val), y_val).detach()),
    }
    exec(compile(snippet, "README.md[python 2]", "exec"), scope)

    ds = scope["ds"]
    assert sorted(ds["optimizer"].values.tolist()) == ["adamw", "focus", "lion"]
    val = ds["metrics"].sel(metric="val_loss")
    assert val.sizes == {"optimizer": 3, "lr": 3, "replicate": 3} and bool(val.notnull().all())
    printed = capsys.readouterr().out
    for name in ("adamw", "focus", "lion"):
        assert name in printed
    best = scope["best_lr"](ds, "val_loss")
    assert set(best["best_lr"].values.tolist()) <= {1e-4, 3e-4, 1e-3}
    # 16 steps from the same inits: the highest lr gets furthest, for every paired replicate.
    assert (best["best_lr"] == 1e-3).all()
    assert bool((val.sel(lr=1e-3) < val.sel(lr=1e-4)).all())
    assert sorted(p.name for p in (tmp_path / "runs" / "mine").iterdir() if p.name.startswith("compare"))


def test_onebit_simulated_workers_snippet_runs_and_compresses_after_the_freeze():
    from focus_optim.optim import OneBitAdam

    snippet = python_blocks("docs/onebit_adam.md")[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = teacher_data(200 * 64, seed=0)
    loader = list(zip(x.split(64), y.split(64)))
    x_val, y_val = teacher_data(1024, seed=1)
    with torch.no_grad():
        before = float(nn.functional.cross_entropy(model(x_val), y_val))
    scope = {"model": model, "loader": loader, "loss_fn": nn.functional.cross_entropy}
    exec(compile(snippet, "docs/onebit_adam.md[python 2]", "exec"), scope)
    opt = scope["opt"]
    assert isinstance(opt, OneBitAdam)
    # 200 steps past freeze_step=100: each parameter holds the four simulated workers' errors.
    errors = [opt.state[p]["worker_error"] for p in model.parameters()]
    assert all(e.shape[0] == 4 and e.abs().sum() > 0 for e in errors)
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(model(x_val), y_val)) < 0.8 * before


@pytest.mark.parametrize("doc, index", [("docs/onebit_adam.md", 0)])
def test_snippets_that_need_several_cuda_processes_at_least_compile(doc, index):
    # The DDP training loop needs NCCL and torchrun; its syntax and imports are checked here.
    snippet = python_blocks(doc)[index]
    compile(snippet, f"{doc}[python {index + 1}]", "exec")
    imports = "\n".join(line for line in snippet.splitlines() if line.startswith(("import ", "from ")))
    exec(compile(imports, f"{doc}[imports]", "exec"), {})
