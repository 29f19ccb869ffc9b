"""1-bit Adam in one process: the reference's step semantics, compression arithmetic, simulated
workers, checkpoints and API. Multi-process behaviour: ``test_onebit_adam_dist.py``."""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import focus_optim
from focus_optim.optim import _comm, protocol
from focus_optim.optim.onebit_adam import OneBitAdam, load_rank_state, rank_state_path, save_rank_state
from focus_optim.optim.registry import get_spec, make_optimizer

HP = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)


# --- compression arithmetic -------------------------------------------------------------------------
def test_pack_signs_is_numpy_packbits_with_zero_mapped_to_plus_one():
    x = torch.tensor([0.0, -0.0, -1.0, 2.0, -3.0, 0.5, -1e-30, 7.0] * 3 + [-1.0] * 8)
    packed = _comm.pack_signs(x)
    expected = np.packbits((x.numpy() >= 0).astype(np.uint8))
    assert packed.dtype == torch.uint8 and packed.numel() == x.numel() // 8
    assert np.array_equal(packed.numpy(), expected)
    signs = _comm.unpack_signs(packed)
    assert torch.equal(signs, torch.where(x >= 0, 1.0, -1.0))
    assert signs[0] == 1 and signs[1] == 1  # zero (and -0) -> +1


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8, 16])
def test_padding_is_a_multiple_of_n_lcm_n_8(n):
    unit = n * math.lcm(n, 8)
    for numel in (1, unit - 1, unit, unit + 1, 12345):
        lp = _comm.padded_numel(numel, n)
        assert lp % unit == 0 and numel <= lp < numel + unit
        assert (lp // n) % 8 == 0  # every chunk packs into whole bytes


def test_worker_compression_keeps_the_norm_and_records_the_error():
    x = torch.randn(64)
    err = torch.zeros(64)
    bits, scale = _comm.compress_worker_(x, err, 4)
    assert bits.shape == (4, 2)
    decoded = _comm.decode(bits, scale.expand(4))
    torch.testing.assert_close(decoded.norm(), x.norm())  # RMS scale: same l2 norm
    torch.testing.assert_close(decoded + err, x)  # δ = x - s σ(x)


def test_simulated_allreduce_of_identical_inputs_is_close_and_error_feedback_telescopes():
    n, shape = 4, (50, 3)
    lp = _comm.padded_numel(150, n)
    werr, serr = torch.zeros(n, lp), torch.zeros(lp)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    total = torch.zeros(shape)
    for t in range(1, 41):
        out = _comm.simulated_compressed_allreduce([x] * n, werr, serr)
        total += out
        if t == 1:
            assert torch.nn.functional.cosine_similarity(out.flatten(), x.flatten(), 0) > 0.7
    residual = (werr.mean(0) + serr)[:150].view(shape)
    torch.testing.assert_close(total + residual, 40 * x, rtol=0, atol=1e-4)
    assert (total / 40 - x).norm() / x.norm() < 0.1  # the running average converges (~1/T)


# --- the reference's step semantics in one process (no compression) -----------------------------------
def _problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    return model, x, y


def _grad_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, i: int) -> None:
    model.zero_grad(set_to_none=True)
    sl = slice((i % 4) * 4, (i % 4) * 4 + 4)
    nn.functional.mse_loss(model(x[sl]), y[sl]).backward()


def _restated(steps: int, freeze: int, dry_run: bool = True) -> list[torch.Tensor]:
    """DeepSpeed OnebitAdam with n = 1, restated: step 1 dry-run; m, v EMAs; v frozen after t
    reaches ``freeze``; p -= lr * (m / (sqrt(v) + eps) + wd * p); no bias correction."""
    model, x, y = _problem()
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = HP["betas"]
    out, frozen = [], False
    for t in range(1, steps + 1):
        _grad_step(model, x, y, t)
        if not (dry_run and t == 1):
            with torch.no_grad():
                for p, mi, vi in zip(params, m, v):
                    mi.mul_(b1).add_((1 - b1) * p.grad)
                    if not frozen:
                        vi.mul_(b2).add_((1 - b2) * p.grad * p.grad)
                    p -= HP["lr"] * (mi / (vi.sqrt() + HP["eps"]) + HP["weight_decay"] * p)
            frozen = frozen or t >= freeze
        out.append(torch.cat([p.detach().flatten() for p in params]))
    return out


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_single_process_matches_the_reference_and_does_not_compress(dry_run, bias_correction):
    steps, freeze = 12, 6
    model, x, y = _problem()
    opt = OneBitAdam(
        model.parameters(), freeze_step=freeze, init_dry_run=dry_run, bias_correction=bias_correction, **HP
    )
    expected = _restated(steps, freeze, dry_run)
    for t in range(1, steps + 1):
        _grad_step(model, x, y, t)
        opt.step()
        got = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.testing.assert_close(got, expected[t - 1], rtol=1e-5, atol=1e-6)
        assert opt.frozen == (t >= freeze)
        assert opt.comm_stats["bytes_sent"] == 0
    assert opt.comm_stats["phase"] == "local"
    assert all("worker_error" not in s for s in opt.state.values())  # n = 1: no compression
    assert all(float(s["step"]) == steps for s in opt.state.values())


def test_dry_run_discards_the_first_gradient_but_counts_the_step():
    model, x, y = _problem()
    before = [p.detach().clone() for p in model.parameters()]
    opt = OneBitAdam(model.parameters(), freeze_step=10, **HP)
    _grad_step(model, x, y, 0)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for s in opt.state.values():
        assert float(s["step"]) == 1 and not s["exp_avg"].any() and not s["exp_avg_sq"].any()
    assert opt.comm_stats["phase"] == "dry_run"


def test_non_freeze_groups_keep_updating_v_and_frozen_groups_do_not():
    model, x, y = _problem()
    opt = OneBitAdam(
        [
            {"params": model[0].parameters()},
            {"params": model[2].parameters(), "non_freeze": True},
        ],
        freeze_step=3,
        **HP,
    )
    for t in range(1, 4):
        _grad_step(model, x, y, t)
        opt.step()
    v_before = {p: opt.state[p]["exp_avg_sq"].clone() for p in model.parameters()}
    _grad_step(model, x, y, 4)
    opt.step()
    for p in model[0].parameters():
        assert torch.equal(opt.state[p]["exp_avg_sq"], v_before[p])
    for p in model[2].parameters():
        assert not torch.equal(opt.state[p]["exp_avg_sq"], v_before[p])


def test_non_freeze_must_be_a_bool():
    model, _, _ = _problem()
    with pytest.raises(ValueError, match=r"Invalid param_groups\[0\]\.non_freeze: 'no'"):
        OneBitAdam([{"params": model.parameters(), "non_freeze": "no"}], **HP)


def test_non_freeze_groups_update_moments_in_the_dry_run_like_the_reference():
    model, x, y = _problem()
    opt = OneBitAdam([{"params": model[2].parameters(), "non_freeze": True}], **HP)
    _grad_step(model, x, y, 0)
    opt.step()
    b1, b2 = HP["betas"]
    for p in model[2].parameters():
        torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - b1) * p.grad)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], (1 - b2) * p.grad**2)


def test_maximize_equals_minimizing_the_negated_loss():
    results = []
    for maximize in (False, True):
        model, x, y = _problem()
        opt = OneBitAdam(model.parameters(), freeze_step=3, simulate_workers=2, maximize=maximize, **HP)
        for _t in range(1, 7):
            model.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            (-loss if maximize else loss).backward()
            grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
            assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_per_member_learning_rates_equal_separate_runs_without_compression():
    # (with compression the members share one scale per tensor, as the reference's per-tensor
    # compression does, so they are coupled; see the class docstring)
    torch.manual_seed(0)
    w0 = torch.randn(2, 5, 3)
    lrs = [1e-2, 3e-2]

    def run(w: torch.Tensor, lr) -> torch.Tensor:
        w = w.clone().requires_grad_(True)
        opt = OneBitAdam([w], lr=lr, freeze_step=3, weight_decay=0.1)
        for t in range(6):
            w.grad = torch.sin(w.detach() * (t + 1))
            opt.step()
        return w.detach()

    ensemble = run(w0, torch.tensor(lrs))
    for i, lr in enumerate(lrs):
        separate = run(w0[i : i + 1], lr)
        torch.testing.assert_close(ensemble[i : i + 1], separate, rtol=1e-6, atol=1e-7)


# --- simulated workers ---------------------------------------------------------------------------------
def _simulated_run(steps: int, n: int = 2, freeze: int = 3, **kw) -> tuple[OneBitAdam, nn.Module]:
    model, x, y = _problem()
    opt = OneBitAdam(model.parameters(), freeze_step=freeze, simulate_workers=n, **HP, **kw)
    for t in range(1, steps + 1):
        _simulated_step(model, opt, x, y, t, n)
    return opt, model


def _simulated_step(model, opt, x, y, t, n) -> None:
    for j in range(n):
        _grad_step(model, x, y, t * n + j)
        opt.stash_worker_grads()
    opt.step()


def test_simulated_workers_compress_after_the_freeze_with_per_worker_errors():
    n = 3
    opt, model = _simulated_run(6, n=n, freeze=3)
    assert opt.frozen and opt.comm_stats["phase"] == "compressed"
    for p in model.parameters():
        s = opt.state[p]
        lp = _comm.padded_numel(p.numel(), n)
        assert s["worker_error"].shape == (n, lp) and s["server_error"].shape == (lp,)
        assert s["worker_error"].any()
        assert not torch.equal(s["worker_error"][0], s["worker_error"][1])  # each worker its own δ
    numel = sum(p.numel() for p in model.parameters())
    assert opt.comm_stats["fp32_allreduce_bytes"] == _comm.ring_allreduce_bytes(numel, n)
    assert opt.comm_stats["compressed_bytes"] == _comm.compressed_allreduce_bytes(
        [_comm.padded_numel(p.numel(), n) for p in model.parameters()], n
    )


@pytest.mark.parametrize("stash", [True, False])
def test_one_simulated_worker_is_one_process_without_compression(stash):
    """n = 1 compresses nothing (the reference's rule), stashed gradient or ``.grad`` alike."""
    plain_model, x, y = _problem()
    plain = OneBitAdam(plain_model.parameters(), freeze_step=3, **HP)
    model, _, _ = _problem()
    sim = OneBitAdam(model.parameters(), freeze_step=3, simulate_workers=1, **HP)
    for t in range(1, 8):
        _grad_step(plain_model, x, y, t)
        plain.step()
        _grad_step(model, x, y, t)
        if stash:
            sim.stash_worker_grads()
        sim.step()
    assert sim.frozen and sim.comm_stats["phase"] == plain.comm_stats["phase"] == "local"
    assert sim.comm_stats["compressed_bytes"] == 0
    for a, b in zip(plain_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
        assert torch.equal(plain.state[a]["exp_avg"], sim.state[b]["exp_avg"])
        assert "worker_error" not in sim.state[b]


def test_simulated_compression_of_a_large_tensor_sends_under_a_25th_of_fp32():
    w = torch.zeros(1 << 16, requires_grad=True)
    opt = OneBitAdam([w], freeze_step=2, simulate_workers=4)
    for _t in range(4):
        w.grad = torch.randn(1 << 16)
        opt.step()
    stats = opt.comm_stats
    assert stats["phase"] == "compressed" and stats["bytes_sent"] == stats["compressed_bytes"]
    assert stats["ratio"] <= 1 / 25


def test_exp_avg_mask_zeroes_the_masked_momentum_after_compression():
    w = torch.zeros(4, 3, requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0])
    opt = OneBitAdam([{"params": [w], "exp_avg_mask": mask}], freeze_step=2, simulate_workers=2)
    for _t in range(5):
        w.grad = torch.randn(4, 3)
        opt.step()
    assert not opt.state[w]["exp_avg"][:, 1].any() and opt.state[w]["exp_avg"][:, 0].all()
    with pytest.raises(ValueError, match="exp_avg_mask"):
        OneBitAdam([{"params": [w], "exp_avg_mask": torch.ones(4)}])


def test_without_a_stash_every_simulated_worker_uses_grad():
    model, x, y = _problem()
    opt = OneBitAdam(model.parameters(), freeze_step=2, simulate_workers=2, **HP)
    for t in range(1, 5):
        _grad_step(model, x, y, t)
        opt.step()
    assert opt.comm_stats["phase"] == "compressed"
    s = opt.state[model[0].weight]
    assert torch.equal(s["worker_error"][0], s["worker_error"][1])  # identical inputs, identical δ


def test_stash_misuse_raises():
    model, x, y = _problem()
    with pytest.raises(RuntimeError, match="simulate_workers"):
        OneBitAdam(model.parameters()).stash_worker_grads()
    opt = OneBitAdam(model.parameters(), simulate_workers=2)
    _grad_step(model, x, y, 0)
    opt.stash_worker_grads()
    with pytest.raises(RuntimeError, match="expected 2"):
        opt.step()


# --- checkpoints -------------------------------------------------------------------------------------
def test_state_dict_round_trip_with_compression_errors_continues_identically(tmp_path):
    n, steps, save_at = 2, 9, 5
    model, x, y = _problem()
    opt = OneBitAdam(model.parameters(), freeze_step=3, simulate_workers=n, **HP)
    for t in range(1, save_at + 1):
        _simulated_step(model, opt, x, y, t, n)
    path = save_rank_state(opt, tmp_path / "opt.pt")
    assert path == tmp_path / "opt.rank0.pt"
    saved = torch.load(path, weights_only=True)
    assert all("worker_error" in s and "server_error" in s for s in saved["state"].values())
    assert saved["onebit"]["frozen"] and saved["onebit"]["t"] == save_at
    snapshot = [p.detach().clone() for p in model.parameters()]
    for t in range(save_at + 1, steps + 1):
        _simulated_step(model, opt, x, y, t, n)

    model2, _, _ = _problem(seed=1)
    with torch.no_grad():
        for p, s in zip(model2.parameters(), snapshot):
            p.copy_(s)
    opt2 = OneBitAdam(model2.parameters(), freeze_step=3, simulate_workers=n, **HP)
    load_rank_state(opt2, tmp_path / "opt.pt")
    assert opt2.frozen
    for t in range(save_at + 1, steps + 1):
        _simulated_step(model2, opt2, x, y, t, n)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_errors_stay_float32_for_bf16_params_and_reset_when_the_layout_changes():
    w = torch.zeros(40, dtype=torch.bfloat16, requires_grad=True)
    opt = OneBitAdam([w], freeze_step=2, simulate_workers=2, fp32_state=True)
    for _t in range(4):
        w.grad = torch.randn(40, dtype=torch.bfloat16)
        opt.step()
    sd = opt.state_dict()
    opt2 = OneBitAdam([w], freeze_step=2, simulate_workers=2, fp32_state=True)
    opt2.load_state_dict(sd)
    assert opt2.state[w]["worker_error"].dtype == torch.float32
    assert torch.equal(opt2.state[w]["worker_error"], opt.state[w]["worker_error"])
    opt3 = OneBitAdam([w], freeze_step=2, simulate_workers=4)
    with pytest.warns(UserWarning, match="resetting"):
        opt3.load_state_dict(sd)
    assert "worker_error" not in opt3.state[w] and opt3.frozen
    opt2.reset_compression_errors()
    assert "server_error" not in opt2.state[w]


def test_exp_avg_mask_of_the_current_groups_survives_loading():
    w = torch.zeros(3, requires_grad=True)
    opt = OneBitAdam([{"params": [w], "exp_avg_mask": torch.tensor([1.0, 1.0, 0.0])}])
    sd = opt.state_dict()
    new_mask = torch.tensor([0.0, 1.0, 1.0])
    opt2 = OneBitAdam([{"params": [w], "exp_avg_mask": new_mask}])
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.param_groups[0]["exp_avg_mask"], new_mask)


def test_a_state_dict_without_the_onebit_entry_derives_the_stage_from_the_steps():
    model, x, y = _problem()
    opt = OneBitAdam(model.parameters(), freeze_step=3, **HP)
    for t in range(1, 5):
        _grad_step(model, x, y, t)
        opt.step()
    sd = opt.state_dict()
    sd.pop("onebit")
    opt2 = OneBitAdam(model.parameters(), freeze_step=3, **HP)
    opt2.load_state_dict(sd)
    assert opt2.frozen and opt2.state_dict()["onebit"]["t"] == 4
    opt3 = OneBitAdam(model.parameters(), freeze_step=10, **HP)
    opt3.load_state_dict(sd)
    assert not opt3.frozen and protocol.needs_grad_sync(opt3)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_carries_on_as_the_original_through_the_freeze(how):
    """The stage (step count, frozen) and settings live outside torch's pickled state; a copy
    keeps them, with its per-worker compression errors, and then steps exactly as the original."""
    n = 2
    opt, model = _simulated_run(2, n=n, freeze=3)  # warm-up; the freeze comes after the copy
    pair = (model, opt)
    model2, opt2 = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    _, x, y = _problem()
    for t in range(3, 7):
        _simulated_step(model, opt, x, y, t, n)
        _simulated_step(model2, opt2, x, y, t, n)
    assert opt2.frozen and opt2.comm_stats["phase"] == "compressed"
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    _assert_same_state(opt2.state_dict(), opt.state_dict())


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["onebit"] == b["onebit"] and a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k]), (i, k)


def test_state_dict_and_load_hooks_see_the_onebit_entry():
    model, x, y = _problem()
    opt = OneBitAdam(model.parameters(), freeze_step=2, simulate_workers=2, **HP)
    for t in range(1, 4):
        _simulated_step(model, opt, x, y, t, 2)
    seen = {}
    opt.register_state_dict_post_hook(lambda o, sd: seen.update(saved=dict(sd["onebit"])))
    sd = opt.state_dict()
    assert seen["saved"] == sd["onebit"] and sd["onebit"]["frozen"] and sd["onebit"]["t"] == 3

    def forget_errors(_, loading):
        """An old-checkpoint adapter: drop the compression errors and rewind the stage."""
        loading = dict(loading, onebit=dict(loading["onebit"], t=1, frozen=False))
        loading["state"] = {
            i: {k: v for k, v in st.items() if not k.endswith("_error")} for i, st in loading["state"].items()
        }
        return loading

    opt2 = OneBitAdam(model.parameters(), freeze_step=2, simulate_workers=2, **HP)
    opt2.register_load_state_dict_pre_hook(forget_errors)
    opt2.load_state_dict(sd)
    assert not opt2.frozen and opt2.state_dict()["onebit"]["t"] == 1
    assert all("worker_error" not in st for st in opt2.state.values())


def test_a_copy_on_a_process_group_of_its_own_is_refused(monkeypatch):
    opt = OneBitAdam([torch.zeros(3, requires_grad=True)])
    monkeypatch.setattr(opt, "group", object())  # what a process_group argument leaves under torchrun
    with pytest.raises(TypeError, match="state_dict"):
        copy.deepcopy(opt)


def test_a_parameter_first_trained_after_the_freeze_warns_unless_non_freeze():
    """Its variance would stay 0 (DeepSpeed's rule, kept), so its steps are lr * m / eps: warned."""
    late, spare = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    early = torch.zeros(4, requires_grad=True)
    opt = OneBitAdam([{"params": [early, late]}, {"params": [spare], "non_freeze": True}], freeze_step=2)
    for _ in range(3):
        early.grad = torch.ones(4)
        opt.step()
    assert opt.frozen
    late.grad = torch.ones(4)
    with pytest.warns(UserWarning, match=r"shape \(4,\) got its first gradient after the variance froze"):
        opt.step()
    spare.grad = torch.ones(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # late's state exists now; spare's group keeps updating its variance


def test_rank_state_path_template():
    assert str(rank_state_path("ck/opt-{rank}.pt", 3)) == "ck/opt-3.pt"
    assert str(rank_state_path("ck/opt.pt", 1)) == "ck/opt.rank1.pt"


# --- API -------------------------------------------------------------------------------------------
def test_protocol_asks_for_ddp_sync_until_the_freeze_only():
    model, x, y = _problem()
    opt = OneBitAdam(model.parameters(), freeze_step=3, **HP)
    flags = []
    for t in range(1, 6):
        flags.append(protocol.needs_grad_sync(opt))
        _grad_step(model, x, y, t)
        opt.step()
    assert flags == [True, True, True, False, False]
    assert not protocol.needs_grad_sync(OneBitAdam(model.parameters(), average_grads=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"amsgrad": True}, "amsgrad"),
        ({"freeze_step": -1}, "freeze_step"),
        ({"phase1": "ring"}, "phase1"),
        ({"simulate_workers": 0}, "simulate_workers"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": 0.0}, "eps"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OneBitAdam([torch.zeros(2, requires_grad=True)], **kwargs)


def test_registry_entry_and_defaults():
    spec = get_spec("1bit-adam")
    assert spec.name == "onebit_adam" and get_spec("onebit_adam") is spec
    hp = spec.hyperparameters()
    assert hp["lr"] == 1e-3 and hp["freeze_step"] == 100000 and hp["betas"] == (0.9, 0.999)
    assert hp["eps"] == 1e-8 and hp["weight_decay"] == 0.0
    model, _, _ = _problem()
    opt = make_optimizer("1bit_adam", model, weight_decay=0.01, freeze_step=10)
    assert isinstance(opt, OneBitAdam) and opt.freeze_step == 10
    assert focus_optim.OneBitAdam is OneBitAdam


# --- CUDA ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_packing_and_simulated_allreduce_match_cpu():
    x = torch.randn(4, 1000)
    x[0, :5] = 0.0
    assert torch.equal(_comm.pack_signs(x.cuda()).cpu(), _comm.pack_signs(x))
    assert torch.equal(
        _comm.unpack_signs(_comm.pack_signs(x.cuda())).cpu(), _comm.unpack_signs(_comm.pack_signs(x))
    )
    lp = _comm.padded_numel(1000, 4)
    outs = []
    for device in ("cpu", "cuda"):
        werr, serr = torch.zeros(4, lp, device=device), torch.zeros(lp, device=device)
        for _ in range(5):
            out = _comm.simulated_compressed_allreduce(x.to(device), werr, serr)
        outs.append(out.cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_optimizer_with_simulated_workers_matches_cpu():
    results = []
    for device in ("cpu", "cuda"):
        model, x, y = _problem()
        model, x, y = model.to(device), x.to(device), y.to(device)
        opt = OneBitAdam(model.parameters(), freeze_step=3, simulate_workers=2, **HP)
        for t in range(1, 8):
            _simulated_step(model, opt, x, y, t, 2)
        assert opt.comm_stats["phase"] == "compressed"
        results.append(torch.cat([p.detach().flatten().cpu() for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


def test_compiled_step_equals_eager_through_the_freeze():
    """Under ``torch.compile`` the step keeps its stages (dry run, warm-up, compressed): a compiled
    graph would drop the Python-side stage updates and repeat the dry run forever."""
    results = []
    for compiled in (False, True):
        model, x, y = _problem()
        opt = OneBitAdam(model.parameters(), freeze_step=3, simulate_workers=2, **HP)
        step = torch.compile(opt.step) if compiled else opt.step
        for _t in range(1, 7):
            model.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x), y).backward()
            step()
        assert opt.frozen and opt.comm_stats["phase"] == "compressed"
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
