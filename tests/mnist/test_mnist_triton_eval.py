"""The fused test pass (``EnsembleMLP.evaluate(fused=True)``, one Triton kernel) against a plain
torch restatement of its arithmetic, the fp32 test pass, and through a whole cell.

Without a GPU the kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, which must be set
before Triton is imported, hence the subprocess); the CUDA test runs it compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from focus_optim.mnist.model import EnsembleMLP

HERE = os.path.dirname(os.path.abspath(__file__))


def restated(
    model: EnsembleMLP, x_t: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's arithmetic in torch: bf16 weights, images and activations, float32 products
    (exact for bf16 operands) and sums, float32 biases and logits; argmax the first maximum."""
    *layers, (w_out, b_out) = model.folded_layers()
    h = x_t.bfloat16().float().expand(model.members, -1, -1)
    for w, b in layers:
        h = torch.relu(torch.bmm(w.bfloat16().float(), h) + b.unsqueeze(-1)).bfloat16().float()
    z = torch.bmm(w_out.bfloat16().float(), h) + b_out.unsqueeze(-1)
    target = labels.expand(model.members, -1)
    loss = F.cross_entropy(z, target, reduction="none").mean(1)
    return loss, (z.argmax(1) == target).float().mean(1)


def random_model(members: int, seed: int) -> EnsembleMLP:
    """An eval-mode ensemble with non-trivial BN statistics (so the folding matters)."""
    model = EnsembleMLP(members, generator=torch.Generator().manual_seed(seed)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for b in model.all_blocks():
            n = b.norm
            for t, lo, hi in ((n.weight, 0.5, 1.5), (n.bias, -0.2, 0.2), (n.running_mean, -0.1, 0.1)):
                t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))
            n.running_var.copy_(0.5 + 1.5 * torch.rand(n.running_var.shape, generator=gen))
    return model


def check_fused_test_pass(device: str) -> None:
    """The checks, on ``device`` (the interpreter's CPU or CUDA)."""
    gen = torch.Generator().manual_seed(0)
    n = 300  # not a multiple of the kernel's 128-image blocks
    x_t = torch.rand(784, n, generator=gen).to(device)
    labels = torch.randint(0, 10, (n,), generator=gen).to(device)
    model = random_model(3, 0).to(device)
    loss, acc = model.evaluate(x_t, labels, precision="bf16", fused=True)
    ref_loss, ref_acc = restated(model, x_t, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    # an image whose top two logits are within float32 rounding may flip: at most one per member
    assert ((acc - ref_acc).abs() * n).max().item() <= 1.0
    fp32_loss = model.evaluate(x_t, labels)[0]
    torch.testing.assert_close(loss, fp32_loss, rtol=2e-2, atol=2e-2)  # bf16 against fp32
    aug = EnsembleMLP.augment_inputs(x_t, torch.bfloat16)  # the cell's cached input: same numbers
    torch.testing.assert_close(
        model.evaluate(aug, labels, precision="bf16", fused=True)[0], loss, rtol=0, atol=0
    )

    # ties: a head of zeros gives every class the same logit; the prediction is class 0, as argmax
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.zero_()
    loss, acc = model.evaluate(x_t, labels, precision="bf16", fused=True)
    torch.testing.assert_close(loss, torch.full_like(loss, torch.log(torch.tensor(10.0)).item()))
    torch.testing.assert_close(acc, torch.full_like(acc, (labels == 0).float().mean().item()))


def run_interpreted(code: str) -> None:
    """Run ``code`` (with this folder importable) under Triton's CPU interpreter, which has to be
    switched on before Triton is imported; it prints ``ok`` when its checks pass."""
    pytest.importorskip("triton")
    code = f"import sys; sys.path.insert(0, {HERE!r})\n" + code
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_fused_test_pass_in_interpreter() -> None:
    code = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(1)
        from test_mnist_triton_eval import check_fused_test_pass
        check_fused_test_pass("cpu")
        print("ok")
        """
    )
    run_interpreted(code)


def test_fused_test_pass_refuses_what_it_cannot_run() -> None:
    model = EnsembleMLP(2)
    x_t, labels = torch.rand(784, 8), torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="precision must be 'bf16'"):
        model.evaluate(x_t, labels, fused=True)
    with pytest.raises(ValueError, match="hidden widths"):
        EnsembleMLP(2, (784, 100, 100, 10)).evaluate(x_t, labels, precision="bf16", fused=True)


def test_cell_with_fused_test_pass_in_interpreter(tmp_path) -> None:
    """A whole cell with ``fused_eval``: the same training (train losses bit for bit) and test
    metrics within bf16 rounding of the cuBLAS-path bf16 test pass."""
    code = textwrap.dedent(
        """
        import numpy as np, torch
        torch.set_num_threads(1)
        from mnist_helpers import synthetic_mnist
        from focus_optim.mnist.optimizers import parse_optimizer
        from focus_optim.mnist.train import DeviceData, TrainSettings, train_cell
        data = DeviceData.from_mnist(synthetic_mnist(), "cpu")
        s = TrainSettings(steps=4, eval_every=2, eval_precision="bf16")
        args = (parse_optimizer("focus:gamma=0.2"), 16, [1e-3, 1e-2], data, s)
        plain = train_cell(*args, seed=3)
        fused = train_cell(*args, seed=3, fused_eval=True)
        np.testing.assert_array_equal(fused[..., 0], plain[..., 0])
        np.testing.assert_array_equal(np.isnan(fused), np.isnan(plain))
        np.testing.assert_allclose(fused[..., 1], plain[..., 1], rtol=2e-2, equal_nan=True)
        try:
            train_cell(*args[:4], TrainSettings(steps=1), seed=3, fused_eval=True)
        except ValueError as err:
            assert "eval_precision 'bf16'" in str(err)
        else:
            raise AssertionError("fp32 eval with fused_eval did not raise")
        print("ok")
        """
    )
    run_interpreted(code)


@pytest.mark.gpu
def test_fused_test_pass_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    check_fused_test_pass("cuda")
