"""The GPT-2 lab (issue 5): data preparation, a nanoGPT-equivalent model, a trainer and plots.

Modules, each small and importable on its own:

* :mod:`~focus_optim.lm.tokenizer`: the GPT-2 BPE through tiktoken, offline from a local file.
* :mod:`~focus_optim.lm.data`: ``focus-optim lm prepare``: text/JSONL/HF sources -> uint16 bins.
* :mod:`~focus_optim.lm.loader`: memory-mapped, deterministic, prefetching batch loader.
* :mod:`~focus_optim.lm.model`: GPT-2 (pre-LN, GELU, no bias, tied embeddings), as nanoGPT.
* :mod:`~focus_optim.lm.losses`: chunked linear + cross-entropy that never builds full logits.
* :mod:`~focus_optim.lm.config`: the training config (TOML + ``--set key=value``).
* :mod:`~focus_optim.lm.train`: ``focus-optim lm train`` (DDP via torchrun, resume, logs).
* :mod:`~focus_optim.lm.compare`: ``focus-optim lm compare``: curves and steps-to-target ratios.

See ``docs/lm.md``. Nothing here is imported by ``import focus_optim``.
"""
