"""Fixtures of the GPT-2 lab tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_helpers import write_synthetic


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI machine is small and shared: one intra-op thread is much faster than contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("lmdata") / "data")


@pytest.fixture
def offline_without_bpe(tmp_path, monkeypatch):
    """No local GPT-2 BPE file anywhere tokenizer.py looks, and tiktoken's download refused at once
    (an empty cache; a proxy on a closed port), in this process and in spawned workers."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("FOCUS_OPTIM_GPT2_BPE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return work
