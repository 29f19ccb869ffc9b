"""GPT-2 model: nanoGPT equivalence checks and the chunked linear + cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focus_optim.lm.losses import chunked_linear_cross_entropy
from focus_optim.lm.model import GPT, PRESETS, model_config


def _tiny(**kw):
    torch.manual_seed(0)
    return GPT(model_config("tiny", **kw))


def test_shapes_tied_weights_and_param_count():
    model = _tiny()
    c = model.config
    idx = torch.randint(0, c.vocab_size, (3, 17))
    assert model(idx).shape == (3, 17, c.vocab_size)
    assert model(idx, idx).shape == ()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(
        m.bias is not None for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))
    )
    # nanoGPT's count: 12 L d^2 + V d (tied) + T d (positions) + LayerNorm gains (2 L + 1) d
    d, L = c.n_embd, c.n_layer
    total = 12 * L * d * d + c.vocab_size * d + c.block_size * d + (2 * L + 1) * d
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - c.block_size * d


def test_gpt2_124m_size_and_flops():
    c = PRESETS["gpt2"]
    d, L = c.n_embd, c.n_layer
    n = 12 * L * d * d + c.vocab_size * d + (2 * L + 1) * d  # non-embedding count as nanoGPT: 124M
    assert 123e6 < n < 125e6
    model = GPT(model_config("tiny"))  # formula check on the tiny model (building 124M is slow on CPU)
    tc = model.config
    assert model.flops_per_token() == 6 * model.num_params() + 12 * tc.n_layer * tc.n_embd * tc.block_size


def test_init_std():
    model = GPT(model_config("tiny", n_embd=64, n_layer=4, n_head=4, vocab_size=4096))
    std = {n: p.std().item() for n, p in model.named_parameters()}
    assert math.isclose(std["transformer.wte.weight"], 0.02, rel_tol=0.05)
    assert math.isclose(std["transformer.wpe.weight"], 0.02, rel_tol=0.1)
    assert math.isclose(std["transformer.h.0.attn.c_attn.weight"], 0.02, rel_tol=0.1)
    assert math.isclose(std["transformer.h.0.mlp.c_fc.weight"], 0.02, rel_tol=0.1)
    for name in ("transformer.h.1.attn.c_proj.weight", "transformer.h.3.mlp.c_proj.weight"):
        assert math.isclose(std[name], 0.02 / math.sqrt(2 * 4), rel_tol=0.1)
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if "ln" in n)


def test_causal_future_tokens_do_not_affect_past_logits():
    model = _tiny().eval()
    idx = torch.randint(0, 512, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 512, (2, 8))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("authors", [False, True], ids=["nanogpt", "authors-code"])
@pytest.mark.parametrize("layer", [0, 1])
def test_block_matches_an_independent_restatement(layer, authors):
    """A block against explicit math: LN (no bias) -> masked softmax attention -> GELU MLP. The
    FOCUS/Sophia authors' options divide layer i's scores by i + 1 as well and use tanh GELU."""
    model = _tiny(scale_attn_by_inverse_layer_idx=True, gelu="tanh") if authors else _tiny()
    block, c = model.transformer.h[layer], model.config
    x = torch.randn(2, 9, c.n_embd)
    B, T, C, H = 2, 9, c.n_embd, c.n_head

    def ln(z, w):
        mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
        return (z - mu) / torch.sqrt(var + 1e-5) * w

    h = ln(x, block.ln_1.weight)
    q, k, v = (h @ block.attn.c_attn.weight.T).split(C, dim=2)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H) / ((layer + 1) if authors else 1)
    att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C) @ block.attn.c_proj.weight.T
    x1 = x + y
    h2 = ln(x1, block.ln_2.weight) @ block.mlp.c_fc.weight.T
    if authors:  # new_gelu
        gelu = 0.5 * h2 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h2 + 0.044715 * h2**3)))
    else:
        gelu = 0.5 * h2 * (1 + torch.erf(h2 / math.sqrt(2)))
    want = x1 + gelu @ block.mlp.c_proj.weight.T
    torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-5)


def test_authors_options_are_checked_and_change_nothing_by_default():
    with pytest.raises(ValueError, match=r"model_args\.gelu: 'fast' \(allowed: 'none' or 'tanh'\)"):
        model_config("tiny", gelu="fast")
    with pytest.raises(ValueError, match=r"scale_attn_by_inverse_layer_idx: 1 \(allowed: true or false\)"):
        model_config("tiny", scale_attn_by_inverse_layer_idx=1)
    idx = torch.randint(0, 512, (2, 16))
    plain, explicit = _tiny(), _tiny(scale_attn_by_inverse_layer_idx=False, gelu="none")
    assert torch.equal(plain(idx), explicit(idx))
    assert not torch.allclose(plain(idx), _tiny(scale_attn_by_inverse_layer_idx=True)(idx))


def test_loss_equals_cross_entropy_of_logits():
    model = _tiny()
    idx, tgt = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    want = F.cross_entropy(model(idx).flatten(0, 1), tgt.flatten())
    torch.testing.assert_close(model(idx, tgt), want)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cross_entropy_matches_reference(chunk):
    torch.manual_seed(1)
    x = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(33, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 33, (50,))
    ref = F.cross_entropy(x @ w.T, t)
    gx, gw = torch.autograd.grad(ref * 3.0, (x, w))
    got = chunked_linear_cross_entropy(x, w, t, chunk)
    hx, hw = torch.autograd.grad(got * 3.0, (x, w))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(hx, gx)
    torch.testing.assert_close(hw, gw)
    with torch.no_grad():
        torch.testing.assert_close(chunked_linear_cross_entropy(x, w, t, chunk), ref)


def test_chunked_head_in_model_matches_plain():
    plain, chunked = _tiny(), _tiny(ce_chunk=10)
    idx, tgt = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    a, b = plain(idx, tgt), chunked(idx, tgt)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    for (n, p), q in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_chunked_cross_entropy_under_bf16_autocast():
    torch.manual_seed(2)
    x = torch.randn(40, 16, requires_grad=True)
    w = torch.randn(20, 16, requires_grad=True)
    t = torch.randint(0, 20, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(x, w), t)
        got = chunked_linear_cross_entropy(x, w, t, 16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref.float(), rtol=2e-2, atol=2e-2)
    got.backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_unknown_model_args():
    with pytest.raises(ValueError, match="Unknown model_args: n_layers"):
        model_config("gpt2", n_layers=3)
    with pytest.raises(ValueError, match="Unknown model 'gpt5'"):
        model_config("gpt5")
