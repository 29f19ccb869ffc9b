"""``focus-optim lm sample`` and ``GPT.generate``: the sampling distribution, top-k, greedy decoding
past the context, the tokenizer's vocabulary, and a trained run that continues its data's rule."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from lm_helpers import VOCAB, tiny_config

from focus_optim.cli import main
from focus_optim.lm import checkpoint
from focus_optim.lm.model import GPT, model_config
from focus_optim.lm.sample import load_model, sample_text, sample_tokens
from focus_optim.lm.train import train


def _model(vocab: int = 16, block: int = 8) -> GPT:
    torch.manual_seed(0)
    model = GPT(model_config("tiny", vocab_size=vocab, block_size=block)).eval()
    with torch.no_grad():  # larger logits than at init, so the distribution is far from uniform
        model.lm_head.weight.mul_(5.0)
    return model


def _next_token_probs(model: GPT, context: list[int], temperature: float) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([context]))[0, -1].double()
    return torch.softmax(logits / temperature, dim=0)


def _frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens.flatten(), minlength=vocab).double() / tokens.numel()


def test_samples_follow_softmax_of_the_logits_over_temperature():
    model, context, n = _model(), [3, 1, 4, 1], 40_000
    for temperature in (0.7, 1.5):
        p = _next_token_probs(model, context, temperature)
        assert p.max() < 0.9 and (p > 0.01).sum() >= 4  # a spread-out distribution, checked per token
        drawn = model.generate(torch.tensor([context] * n), 1, temperature=temperature,
                               generator=torch.Generator().manual_seed(1))[:, -1]  # fmt: skip
        f = _frequencies(drawn, 16)
        assert ((f - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-4).all(), (f, p)


def test_top_k_keeps_the_k_most_likely_tokens_in_proportion():
    model, context, n, k = _model(), [2, 7], 40_000, 3
    p = _next_token_probs(model, context, 1.0)
    top = torch.topk(p, k).indices
    want = torch.zeros_like(p)
    want[top] = p[top] / p[top].sum()
    gen = torch.Generator().manual_seed(2)
    drawn = model.generate(torch.tensor([context] * n), 1, top_k=k, generator=gen)
    f = _frequencies(drawn[:, -1], 16)
    assert set(torch.nonzero(f).flatten().tolist()) == set(top.tolist())
    assert ((f - want).abs() <= 5 * (want * (1 - want) / n).sqrt() + 1e-4).all(), (f, want)


def test_temperature_zero_is_greedy_and_crops_the_context_to_block_size():
    model, prompt = _model(block=8), [5, 9, 2, 11, 0, 7]
    out = model.generate(torch.tensor([prompt]), 12, temperature=0.0)[0].tolist()
    seq = list(prompt)  # restated: the argmax of the last position, on at most block_size tokens
    for _ in range(12):
        with torch.no_grad():
            seq.append(int(model(torch.tensor([seq[-8:]]))[0, -1].argmax()))
    assert out == seq and len(out) == 18
    assert sample_tokens(model, prompt, max_new_tokens=12, temperature=0.0, top_k=5) == [seq[6:]]


def test_sample_tokens_draws_as_one_generate_call(capsys):
    """Token by token (for its progress bar), the same draws as one seeded ``generate`` call."""
    model, prompt = _model(), [4, 4, 2]
    kw = dict(temperature=1.3, top_k=6, vocab_limit=12)
    whole = model.generate(torch.tensor([prompt] * 5), 15, generator=torch.Generator().manual_seed(8), **kw)
    got = sample_tokens(model, prompt, num_samples=5, max_new_tokens=15, seed=8, show_progress=True, **kw)
    assert got == whole[:, 3:].tolist()
    assert "sampling" in capsys.readouterr().err


def test_samples_never_use_ids_beyond_the_vocab_limit_and_repeat_with_the_seed():
    model = _model()
    free = sample_tokens(model, [1], num_samples=64, max_new_tokens=20, temperature=2.0, top_k=None, seed=3)
    limited = sample_tokens(model, [1], num_samples=64, max_new_tokens=20, temperature=2.0, top_k=None,
                            vocab_limit=5, seed=3)  # fmt: skip
    assert max(map(max, free)) >= 5 and max(map(max, limited)) < 5
    again = sample_tokens(model, [1], num_samples=64, max_new_tokens=20, temperature=2.0, top_k=None, seed=3)
    assert again == free
    assert sample_tokens(model, [1], num_samples=64, max_new_tokens=20, temperature=2.0, seed=4) != free


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), r"^Invalid temperature: -1.0 \(allowed: a finite number >= 0"),
        (dict(top_k=0), r"^Invalid top_k: 0 \(allowed: an integer >= 1, or None for all\)"),
        (dict(max_new_tokens=-2), r"^Invalid max_new_tokens: -2"),
        (dict(num_samples=0), r"^Invalid num_samples: 0"),
        (dict(prompt=[16]), r"^Invalid prompt tokens: \[16\] \(allowed: integers in \[0, 16\)\)"),
        (dict(prompt=[]), r"^Invalid prompt: empty"),
    ],
)
def test_bad_sampling_settings_are_named(kwargs, message):
    prompt = kwargs.pop("prompt", [1])
    with pytest.raises(ValueError, match=message):
        sample_tokens(_model(), prompt, **kwargs)


def test_a_trained_run_continues_its_data_s_rule(synthetic_data, tmp_path, capsys):
    """The synthetic stream follows x -> (5x + 3) mod 512 (90% of steps): after 100 steps the
    trained model's greedy continuations follow it (chance: 1/512); the CLI prints the same."""
    run = tmp_path / "run"
    train(tiny_config(synthetic_data, run, "max_steps=100", "lr=1e-2", "warmup_steps=5",
                      "eval_interval=1000", "ckpt_interval=1000", "log_interval=50"))  # fmt: skip
    model, state = load_model(run)
    assert state["step"] == 100 and "model" not in state
    starts = list(range(0, VOCAB, 16))
    follows = 0
    for s in starts:
        seq = [s, *sample_tokens(model, [s], max_new_tokens=6, temperature=0.0)[0]]
        follows += sum((5 * a + 3) % VOCAB == b for a, b in itertools.pairwise(seq))
    assert follows / (6 * len(starts)) >= 0.9
    capsys.readouterr()
    args = ["lm", "sample", str(run), "--tokens", "7", "--max-new-tokens", "4", "--num-samples", "2"]
    assert main([*args, "--temperature", "0"]) == 0
    greedy = sample_tokens(model, [7], num_samples=2, max_new_tokens=4, temperature=0.0)
    assert json.loads(capsys.readouterr().out) == greedy
    assert main([*args, "--seed", "5"]) == 0
    sampled = sample_tokens(model, [7], num_samples=2, max_new_tokens=4, temperature=0.8, top_k=200, seed=5)
    assert json.loads(capsys.readouterr().out) == sampled


def test_text_samples_decode_with_the_gpt2_bpe_and_skip_padded_ids(tmp_path, capsys):
    """A padded 50304-token model samples text as the token path does with the BPE's 50257 ids as
    its limit: the same seed gives the same draws only if the limit is the same (the CDF differs)."""
    pytest.importorskip("tiktoken")
    from focus_optim.lm.tokenizer import GPT2_VOCAB_SIZE, find_bpe_file, gpt2_encoding

    if find_bpe_file() is None:
        pytest.skip("the offline GPT-2 BPE file is not available")
    torch.manual_seed(0)
    cfg = {"model": "tiny", "model_args": {"vocab_size": 50304, "block_size": 16}}
    model = GPT(model_config("tiny", vocab_size=50304, block_size=16))
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg, "step": 0}, tmp_path / "ckpt.pt")
    loaded, _ = load_model(tmp_path)
    kw = dict(num_samples=8, max_new_tokens=40, temperature=1.0, top_k=None, seed=0)
    enc = gpt2_encoding()
    prompt = enc.encode("The cat")
    ids = sample_tokens(loaded, prompt, vocab_limit=GPT2_VOCAB_SIZE, **kw)
    assert max(map(max, ids)) < GPT2_VOCAB_SIZE and ids != sample_tokens(loaded, prompt, **kw)
    texts = sample_text(tmp_path, "The cat", device="cpu", **kw)
    assert texts == [enc.decode(t) for t in ids] and len(texts) == 8
    assert main(["lm", "sample", str(tmp_path), "--prompt", "The cat", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The cat")


def test_sample_names_a_missing_or_damaged_checkpoint(tmp_path, capsys):
    assert main(["lm", "sample", str(tmp_path), "--tokens", "1"]) == 2
    assert f"no checkpoint at {tmp_path / 'ckpt.pt'}" in capsys.readouterr().err
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert main(["lm", "sample", str(tmp_path), "--tokens", "1"]) == 2
    assert f"{tmp_path / 'ckpt.pt'} is corrupt or not a checkpoint" in capsys.readouterr().err
    model = _model()
    other = {"model": model.state_dict(), "config": {"model": "tiny", "model_args": {"vocab_size": 32}}}
    checkpoint.save_atomic(other, tmp_path / "ckpt.pt")
    assert main(["lm", "sample", str(tmp_path), "--tokens", "1"]) == 2
    assert "does not hold the model its config describes" in capsys.readouterr().err


def test_text_sampling_names_a_wrong_run_first_then_a_missing_tokenizer(
    tmp_path, offline_without_bpe, capsys
):
    """Offline without a BPE file: a mistyped run directory is reported as such (the tokenizer was
    once loaded first, hiding it behind a requests traceback), and a good run gets one clear line."""
    assert main(["lm", "sample", str(tmp_path / "nope"), "--prompt", "The"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    cfg = {"model": "tiny", "model_args": {"vocab_size": 64, "block_size": 8}}
    model = GPT(model_config("tiny", vocab_size=64, block_size=8))
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg, "step": 0}, tmp_path / "ckpt.pt")
    assert main(["lm", "sample", str(tmp_path), "--prompt", "The"]) == 2
    err = capsys.readouterr().err
    assert "no local GPT-2 BPE file" in err and "--tokenizer-file" in err and "Traceback" not in err


@pytest.mark.gpu
def test_sampling_on_cuda_is_greedy_alike_and_repeatable():
    """Greedy continuations on CUDA equal the CPU's (float32, no ties at this scale); seeded draws
    repeat on the device and stay inside the vocab limit."""
    model = _model(vocab=64, block=8)
    prompt = [1, 2, 3]
    cpu = sample_tokens(model, prompt, num_samples=4, max_new_tokens=12, temperature=0.0)
    model = model.cuda()
    assert sample_tokens(model, prompt, num_samples=4, max_new_tokens=12, temperature=0.0) == cpu
    kw = dict(num_samples=16, max_new_tokens=12, temperature=1.5, top_k=None, vocab_limit=40, seed=9)
    drawn = sample_tokens(model, prompt, **kw)
    assert drawn == sample_tokens(model, prompt, **kw) and max(map(max, drawn)) < 40
