"""The GPT-2 BPE tokenizer through tiktoken, usable offline.

tiktoken downloads the GPT-2 ranks on first use. Where that is impossible (no internet), the same
ranks are read from a local ``gpt2.tiktoken`` file, verified by sha256, and the ``Encoding`` is
built with :func:`tiktoken.load.load_tiktoken_bpe`, GPT-2's split pattern and ``<|endoftext|>``.

The local file is looked up in this order (first hit wins), relative to the working directory:

1. an explicit path (``--tokenizer-file``);
2. the environment variable ``FOCUS_OPTIM_GPT2_BPE``;
3. ``.data/tokenizers/gpt2.tiktoken`` (the git-ignored folder carried to the GPU machine);
4. ``../shared/data/tokenizers/gpt2.tiktoken`` (the project's offline data).

If none exists, ``tiktoken.get_encoding("gpt2")`` is used (cache or download).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TOKEN = 50256
GPT2_VOCAB_SIZE = 50257
ENV_VAR = "FOCUS_OPTIM_GPT2_BPE"
DEFAULT_FILES = (".data/tokenizers/gpt2.tiktoken", "../shared/data/tokenizers/gpt2.tiktoken")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_bpe_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The local GPT-2 BPE file to use, or None to let tiktoken fetch it (see module docstring)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{ENV_VAR}={env} does not name an existing file")
        return path
    for candidate in DEFAULT_FILES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def gpt2_encoding(bpe_file: str | os.PathLike[str] | None = None) -> Any:
    """A ``tiktoken.Encoding`` for GPT-2 (vocabulary 50,257; ``<|endoftext|>`` = 50256)."""
    import tiktoken

    path = find_bpe_file(bpe_file)
    if path is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as exc:  # offline: requests' ConnectionError, among others
            looked = ", ".join([f"${ENV_VAR}", *(str(Path(f).absolute()) for f in DEFAULT_FILES)])
            raise FileNotFoundError(
                f"no local GPT-2 BPE file (looked at {looked}) and tiktoken could not fetch it "
                f"({type(exc).__name__}: {str(exc)[:200]}); pass --tokenizer-file PATH (a gpt2.tiktoken) "
                f"or set {ENV_VAR}"
            ) from exc
    return encoding_from_file(path)


def encoding_from_file(path: str | os.PathLike[str]) -> Any:
    """Build the GPT-2 ``Encoding`` from a local ranks file after checking its sha256."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    digest = sha256_file(path)
    if digest != GPT2_BPE_SHA256:
        raise ValueError(
            f"tokenizer file {path} has sha256 {digest}, expected {GPT2_BPE_SHA256} (the GPT-2 BPE ranks)"
        )
    ranks = load_tiktoken_bpe(str(path), expected_hash=GPT2_BPE_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=GPT2_VOCAB_SIZE,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
    )


def describe(bpe_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """JSON-able description of the tokenizer that :func:`gpt2_encoding` would use."""
    path = find_bpe_file(bpe_file)
    if path is None:
        return {"name": "gpt2", "source": "tiktoken.get_encoding('gpt2')", "sha256": None}
    return {"name": "gpt2", "source": str(path), "sha256": GPT2_BPE_SHA256}
