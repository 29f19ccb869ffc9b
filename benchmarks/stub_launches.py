"""Replace the toy lab's Triton launches with no-ops, leaving only the host work around them.

For measuring on a CPU (under ``TRITON_INTERPRET=1``, so that the Triton paths are taken) what a
GPU run costs its host: the launches, which the interpreter would run slowly in NumPy, do nothing.
Used by ``toy_throughput.py --host-overhead`` and ``toy_first_use.py --stub-kernels``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

#: (module, attribute) of every Triton kernel the toy's steps launch.
KERNELS = (
    ("focus_optim.landscape.triton_valley", "_valley_step_kernel"),
    ("focus_optim.landscape.triton_valley", "_valley_update_kernel"),
    ("focus_optim.optim._kernels.triton_sign", "_sign_family_kernel"),
    ("focus_optim.optim._kernels.triton_adamw", "_adamw_kernel"),
)


class _NoLaunch:
    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def stubbed_launches() -> Iterator[None]:
    """Inside the block, launching any of :data:`KERNELS` does nothing."""
    import importlib

    saved = []
    for module, name in KERNELS:
        mod = importlib.import_module(module)
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, _NoLaunch())
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
