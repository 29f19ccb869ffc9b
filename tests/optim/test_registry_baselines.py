"""The literature baselines through the registry: names, defaults, parameter splits, ensembles."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

from focus_optim import make_optimizer
from focus_optim.optim import ROOT, Conda, EXAdam, Lion, Muon, SophiaG, get_spec, protocol
from focus_optim.optim.cli import run as list_optimizers
from focus_optim.optim.registry import available_optimizers

BASELINES = {"lion": Lion, "muon": Muon, "sophia": SophiaG, "conda": Conda, "root": ROOT, "exadam": EXAdam}
MATRIX_ONLY = {"muon", "conda", "root"}


class TinyLM(nn.Module):
    def __init__(self, vocab=17, d=8):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(2 * d, d)
        self.ln = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, x):
        h = self.wte(x)
        h = h + self.proj(torch.relu(self.fc(h)))
        return self.lm_head(self.ln(h))


@pytest.mark.parametrize("name", list(BASELINES))
def test_builds_from_a_model_and_trains(name):
    torch.manual_seed(0)
    model = TinyLM()
    opt = make_optimizer(name, model, lr=3e-3) if name != "muon" else make_optimizer(name, model)
    assert type(opt) is BASELINES[name]
    x = torch.randint(0, 17, (4, 6))
    before = [p.detach().clone() for p in model.parameters()]
    first = None
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 17), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step(**protocol.step_kwargs(opt, tokens=x.numel()))
        first = loss.item() if first is None else first
    assert loss.item() < first
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", sorted(MATRIX_ONLY))
def test_matrix_only_split_of_a_model(name):
    model = TinyLM()
    opt = make_optimizer(name, model)
    where = {id(p): g["matrix"] for g in opt.param_groups for p in g["params"]}
    assert where[id(model.fc.weight)] and where[id(model.proj.weight)]
    for p in (model.wte.weight, model.lm_head.weight, model.fc.bias, model.ln.weight, model.ln.bias):
        assert where[id(p)] is False
    assert all(g["ensemble_dims"] == 0 for g in opt.param_groups)


@pytest.mark.parametrize("name", sorted(MATRIX_ONLY))
def test_head_names_count_only_at_either_end_of_a_module_path(name):
    """BERT-style hidden ``layer.output.dense`` is a hidden matrix; ``head.fc`` and a top-level
    ``output`` are heads."""
    model = nn.ModuleDict(
        {
            "layer": nn.ModuleDict({"output": nn.ModuleDict({"dense": nn.Linear(6, 6)})}),
            "head": nn.ModuleDict({"fc": nn.Linear(6, 3)}),
            "output": nn.Linear(6, 2),
        }
    )
    opt = make_optimizer(name, model)
    where = {id(p): g["matrix"] for g in opt.param_groups for p in g["params"]}
    assert where[id(model["layer"]["output"]["dense"].weight)]
    assert not where[id(model["head"]["fc"].weight)] and not where[id(model["output"].weight)]


@pytest.mark.parametrize("name", list(BASELINES))
def test_builds_from_a_list_of_tensors_with_gpt2_like_shapes(name):
    """What ``focus-optim bench-step`` does on GPT-2-124M shapes, scaled down 24x."""
    torch.manual_seed(0)
    d, vocab, ctx = 32, 2094, 43
    shapes = [
        (vocab, d),
        (ctx, d),
        (d,),
        (d,),
        (3 * d, d),
        (3 * d,),
        (d, d),
        (d,),
        (4 * d, d),
        (4 * d,),
        (d, 4 * d),
    ]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    opt = make_optimizer(name, params)
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    opt.step(**protocol.step_kwargs(opt, tokens=1024))
    assert all(torch.isfinite(p).all() and not torch.equal(b, p) for b, p in zip(before, params))
    if name in MATRIX_ONLY:
        matrices = {id(p) for g in opt.param_groups if g["matrix"] for p in g["params"]}
        assert matrices == {id(p) for p in params if p.ndim == 2}


@pytest.mark.parametrize("name", sorted(MATRIX_ONLY))
def test_ensemble_dims_pass_through_and_vectors_are_refused(name):
    stacked = [torch.randn(3, 6, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    opt = make_optimizer(name, stacked, ensemble_dims=1)
    assert {(g["matrix"], g["ensemble_dims"]) for g in opt.param_groups} == {(True, 1), (False, 1)}
    # the 2-D toy landscape: E trajectories of a 2-vector, no matrix at all
    with pytest.raises(ValueError, match="none of the given parameters is a matrix"):
        make_optimizer(name, [torch.randn(5, 2, requires_grad=True)], ensemble_dims=1)


@pytest.mark.parametrize("name", ["lion", "sophia", "exadam"])
def test_element_wise_baselines_run_the_2d_toy_ensemble(name):
    """Each of the 5 stacked trajectories moves as the same optimizer does on it alone, with its lr."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, generator=gen).requires_grad_()
    grads = [torch.randn(5, 2, generator=gen) for _ in range(3)]
    lrs = torch.linspace(1e-3, 1e-2, 5)
    opt = make_optimizer(name, [x], ensemble_dims=1, lr=lrs)
    alone = [x.detach()[i].clone().requires_grad_() for i in range(5)]
    opts = [make_optimizer(name, [a], lr=float(lr)) for a, lr in zip(alone, lrs)]
    before = x.detach().clone()
    for g in grads:
        x.grad = g.clone()
        opt.step()
        for i, (a, o) in enumerate(zip(alone, opts)):
            a.grad = g[i].clone()
            o.step()
    assert (x.detach() != before).all()
    for i, a in enumerate(alone):
        torch.testing.assert_close(x.detach()[i], a.detach(), rtol=1e-6, atol=1e-7)


def test_aliases_and_defaults_follow_the_spec():
    assert get_spec("sophiag").name == "sophia" and get_spec("SophiaG").load() is SophiaG
    expect = {
        "lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0),
        "muon": dict(lr=0.02, momentum=0.95, weight_decay=0.0, nesterov=True, ns_steps=5, adamw_lr=3e-4,
                     adamw_betas=(0.9, 0.95), adamw_eps=1e-10, adamw_wd=0.0),
        "sophia": dict(lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1, hessian_interval=10),
        "conda": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, update_proj_gap=50, scale=1.0,
                      proj_type="std"),
        "root": dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, root_steps=5,
                     adamw_betas=(0.9, 0.95), adamw_eps=1e-8),
        "exadam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, growing_step=False),
    }  # fmt: skip
    for name, want in expect.items():
        spec = get_spec(name)
        hp = spec.hyperparameters()
        assert {k: hp[k] for k in want} == want, name
        assert spec.matrix_only == (name in MATRIX_ONLY) and spec.source and spec.description


def test_no_decay_groups_stay_undecayed_under_default_weight_decay():
    """Sophia and ROOT default to weight_decay 0.1: the registry must still exempt 1-D params."""
    for name in ("sophia", "root"):
        opt = make_optimizer(name, TinyLM())
        decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        model_bias = [g for g in opt.param_groups if any(p.ndim == 1 for p in g["params"])]
        assert model_bias and all(g["weight_decay"] == 0.0 for g in model_bias), name
        assert 0.1 in decay.values()


def test_unknown_hyperparameter_lists_valid_ones():
    with pytest.raises(
        ValueError, match=r"Unknown hyperparameter\(s\) for muon: betas; valid: .*adamw_betas"
    ):
        make_optimizer("muon", TinyLM(), betas=(0.9, 0.99))


def test_list_optimizers_prints_every_baseline():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert list_optimizers(None) == 0
    text = out.getvalue()
    for name in BASELINES:
        assert f"\n{name}" in "\n" + text
    assert "sophia (aliases: sophiag)" in text
    assert text.count("[matrix-only, aux AdamW for the rest]") >= 3


@pytest.mark.parametrize("name", available_optimizers())
def test_init_state_up_front_equals_lazy_state(name):
    """``init_state()`` creates what the first step would, so that stepping afterwards is bit for bit
    the lazily initialised run (what the labs rely on before compiling ``step``)."""

    def run(eager_init: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = TinyLM()
        opt = make_optimizer(name, model, lr=3e-3) if name != "muon" else make_optimizer(name, model)
        if eager_init:
            opt.init_state(step_on_device=True)  # the CPU is the parameters' device here
            assert all(len(opt.state[p]) > 0 for g in opt.param_groups for p in g["params"])
        x = torch.randint(0, 17, (4, 6))
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 17), x[:, 1:].reshape(-1)).backward()
            opt.step(**protocol.step_kwargs(opt, tokens=x.numel()))
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", available_optimizers())
def test_reset_state_equals_a_new_optimizer(name):
    """After some steps, ``reset_state()`` (in place, same tensors) then training again equals a new
    optimizer trained the same way, bit for bit."""
    x = torch.randint(0, 17, (4, 6))

    def train(model, opt, steps=3):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 17), x[:, 1:].reshape(-1)).backward()
            opt.step(**protocol.step_kwargs(opt, tokens=x.numel()))

    def build():
        torch.manual_seed(0)
        model = TinyLM()
        opt = make_optimizer(name, model, lr=3e-3) if name != "muon" else make_optimizer(name, model)
        return model, opt

    model, opt = build()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt.init_state()
    train(model, opt)
    tensors = {id(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)}
    model.load_state_dict(start)
    opt.reset_state()
    assert tensors == {id(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)}
    train(model, opt)
    fresh_model, fresh_opt = build()
    train(fresh_model, fresh_opt)
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", available_optimizers())
def test_compiled_step_makes_the_eager_update(name):
    """``torch.compile(opt.step)`` of every registered optimizer moves the parameters as the eager
    step does, over steps that cross the optimizers' own schedules (Sophia's Hessian refresh,
    1-bit Adam's dry run). Compared on the total displacement: sign-based updates flip on
    rounding-level differences and Muon's Newton-Schulz runs in bf16, so per-element equality
    is not expected (the per-class tests pin the element-wise ones tighter)."""
    torch._dynamo.reset()
    x = (torch.arange(24) % 17).reshape(4, 6)  # every token appears: no parameter sits still

    def train(compiled: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = TinyLM()
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        opt = make_optimizer(name, model, lr=3e-3) if name != "muon" else make_optimizer(name, model)
        step = torch.compile(opt.step) if compiled else opt.step
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 17), x[:, 1:].reshape(-1)).backward()
            step(**protocol.step_kwargs(opt, tokens=x.numel()))
        return torch.cat([p.detach().flatten() for p in model.parameters()]) - start

    eager, compiled = train(False), train(True)
    assert eager.norm() > 0
    assert (compiled - eager).norm() < 0.05 * eager.norm()
