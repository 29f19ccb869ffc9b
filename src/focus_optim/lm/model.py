"""GPT-2, equivalent to nanoGPT's ``model.py`` (karpathy/nanoGPT) with ``bias=False, dropout=0``.

* pre-LayerNorm blocks ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``, final ``ln_f``;
* causal self-attention through ``F.scaled_dot_product_attention(is_causal=True)``;
* MLP ``c_fc -> GELU (exact) -> c_proj`` with width ``4 * n_embd``;
* no biases anywhere (LayerNorms have a gain only), no dropout;
* two options of the FOCUS and Sophia authors' GPT-2 code (off by default, on in the paper
  configs): ``scale_attn_by_inverse_layer_idx`` divides layer ``i``'s attention scores by
  ``i + 1`` as well as by ``sqrt(head_dim)``, and ``gelu="tanh"`` is their ``new_gelu``;
* token and position embeddings; the output head shares the token embedding (tied);
* init N(0, 0.02) for every Linear and Embedding; the residual projections (``c_proj``) use
  std ``0.02 / sqrt(2 * n_layer)``.

``model(idx)`` returns logits for every position, shape (B, T, vocab_size).
``model(idx, targets)`` returns the mean cross-entropy, through the chunked head of
:mod:`~focus_optim.lm.losses` when ``ce_chunk > 0`` (never materialising the full logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .losses import chunked_linear_cross_entropy


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50,257 padded up to a multiple of 64, as nanoGPT
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    ce_chunk: int = 0  # rows per chunk of the fused head + cross-entropy; 0: plain F.cross_entropy
    scale_attn_by_inverse_layer_idx: bool = False  # the FOCUS/Sophia GPT-2 code's attention scale
    gelu: str = "none"  # "tanh": the FOCUS/Sophia code's new_gelu; "none": exact, as nanoGPT

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "ce_chunk"):
            value, low = getattr(self, name), 0 if name == "ce_chunk" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Invalid model_args.{name}: {value!r} (allowed: an integer >= {low})")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"Invalid model_args.n_embd: {self.n_embd} (allowed: a multiple of n_head = {self.n_head})"
            )
        if not isinstance(self.scale_attn_by_inverse_layer_idx, bool):
            value = self.scale_attn_by_inverse_layer_idx
            raise ValueError(
                f"Invalid model_args.scale_attn_by_inverse_layer_idx: {value!r} (allowed: true or false)"
            )
        if self.gelu not in ("none", "tanh"):
            raise ValueError(f"Invalid model_args.gelu: {self.gelu!r} (allowed: 'none' or 'tanh')")


PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=32),  # CPU tests
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
}


def model_config(preset: str, **overrides: Any) -> GPTConfig:
    """A preset with fields overridden; unknown presets or fields raise a ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown model {preset!r}; available: {', '.join(PRESETS)}")
    valid = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"Unknown model_args: {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    cfg = replace(PRESETS[preset], **overrides)
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    return cfg


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        head_dim = config.n_embd // config.n_head
        # None: SDPA's own 1/sqrt(head_dim), the nanoGPT model (bit for bit)
        self.scale = 1 / math.sqrt(head_dim) / (layer + 1) if config.scale_attn_by_inverse_layer_idx else None
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.gelu = nn.GELU(approximate=config.gelu)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=False)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=False)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TransformerModules(nn.ModuleDict):
    """The keys of :attr:`GPT.transformer`, for type checkers only: at run time it is a plain
    ``nn.ModuleDict`` (nanoGPT's layout and parameter names)."""

    wte: nn.Embedding
    wpe: nn.Embedding
    h: nn.ModuleList
    ln_f: nn.LayerNorm


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = cast(
            TransformerModules,
            nn.ModuleDict(
                dict(
                    wte=nn.Embedding(config.vocab_size, config.n_embd),
                    wpe=nn.Embedding(config.block_size, config.n_embd),
                    h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                    ln_f=nn.LayerNorm(config.n_embd, bias=False),
                )
            ),
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of the residual projections (GPT-2)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` drops the position embeddings (the tied token
        embedding counts, as it is the head's weight), as nanoGPT."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm's output, shape (B, T, n_embd)."""
        t = idx.size(1)
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} exceeds block_size {self.config.block_size}")
        pos = torch.arange(t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, ce_chunk: int | None = None
    ) -> torch.Tensor:
        """Logits, or with ``targets`` the mean cross-entropy (chunked when ``ce_chunk`` > 0; default
        from the config)."""
        x = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(x)
        chunk = self.config.ce_chunk if ce_chunk is None else ce_chunk
        if chunk > 0:
            return chunked_linear_cross_entropy(
                x.flatten(0, 1), self.lm_head.weight, targets.flatten(), chunk
            )
        logits = self.lm_head(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        vocab_limit: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue each row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens (nanoGPT's loop).

        At each step the context is cropped to the last ``block_size`` tokens, and the next token is
        drawn from softmax(logits / temperature) restricted to the ``top_k`` largest logits and to
        ids below ``vocab_limit`` (the tokenizer's vocabulary, when the model's is padded).
        ``temperature=0`` takes the most likely token. Returns (B, T + max_new_tokens)."""
        limit = self.config.vocab_size if vocab_limit is None else vocab_limit
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            # (the head on the last position only, as nanoGPT's inference path)
            logits = self.lm_head(self.hidden_states(context)[:, -1])[:, :limit].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < limit:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                # inverse-CDF draw: one uniform per row (torch.multinomial costs ~20x more on a CPU
                # at GPT-2's 50k tokens); a token of probability 0 is never chosen (right=True)
                cdf = F.softmax(logits, dim=-1, dtype=torch.float64).cumsum(dim=-1)
                u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device, generator=generator)
                nxt = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=limit - 1)
            idx = torch.cat([idx, nxt.to(idx.dtype)], dim=1)
        return idx

    def flops_per_token(self) -> int:
        """Training FLOPs per token, ``6 N + 12 L H Q T`` (PaLM appendix B; nanoGPT's estimate_mfu)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size
