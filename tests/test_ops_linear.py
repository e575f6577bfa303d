"""vitzoo.ops.linear (F.linear with a GEMV bias gradient) and the zoo's Linear module / converter, on the CPU: same
outputs as F.linear (autocast included), gradients against float64, the module's switch scoped to
graph_step_kernels, and state_dict-preserving conversion of every family's plain nn.Linears."""
import pytest
import timm
import torch
from torch import nn

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.models._linear import Linear, convert_linears
from vitzoo.models._step_kernels import graph_step_kernels
from vitzoo.ops import linear


def _leaves(*shapes, dtype=torch.float32):
    return [torch.randn(*s, dtype=dtype, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("x_shape", [(7, 12), (2, 5, 3, 12)])
def test_linear_matches_float64(x_shape):
    x, w, b = _leaves(x_shape, (9, 12), (9,))
    out = linear(x, w, b)
    assert torch.equal(out, nn.functional.linear(x, w, b))  # the forward is F.linear itself
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, w, b), grad)
    ref = [t.detach().double().requires_grad_(True) for t in (x, w, b)]
    want = torch.autograd.grad(nn.functional.linear(*ref), ref, grad.double())
    for g, r in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == r.shape
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)


def test_linear_under_autocast_matches_torch_autocast_linear():
    x, w, b = _leaves((4, 6, 16), (8, 16), (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(x, w, b)
        ref = nn.functional.linear(x, w, b)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, w, b), grad)
    want = torch.autograd.grad(ref, (x, w, b), grad)
    for g, r in zip(got, want):
        assert g.dtype == torch.float32  # fp32 leaves get fp32 gradients through the tracked casts
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-2)


def test_linear_without_bias_or_autograd_is_f_linear():
    x, w = _leaves((3, 4), (5, 4))
    assert linear(x, w).grad_fn.name() == nn.functional.linear(x, w).grad_fn.name()
    with torch.no_grad():
        assert linear(x, w, torch.zeros(5)).grad_fn is None


def test_module_uses_the_op_only_inside_graph_step_kernels(monkeypatch):
    import vitzoo.models._linear as linear_module

    calls = []
    real = linear_module.linear
    monkeypatch.setattr(linear_module, "linear", lambda *a: calls.append(1) or real(*a))
    layer = convert_linears(nn.Linear(6, 3))
    assert type(layer) is Linear
    x = torch.randn(2, 6, requires_grad=True)
    plain = torch.autograd.grad(layer(x).square().sum(), (x, layer.weight, layer.bias))
    assert calls == []
    with graph_step_kernels():
        fast = torch.autograd.grad(layer(x).square().sum(), (x, layer.weight, layer.bias))
        with torch.no_grad():
            layer(x)
    assert calls == [1]  # with autograd only
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b)
    layer(x)
    assert calls == [1]  # scoped to the block


def test_convert_linears_keeps_state_and_leaves_subclasses():
    class Special(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(Special(4, 4), nn.Linear(4, 2, bias=False)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert convert_linears(model) is model
    assert [type(m) for m in (model[0], model[1][0], model[1][1])] == [Linear, Special, Linear]
    assert [id(p) for p in model.parameters()] == params
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("name", ["nat_mini", "agent_swin_t", "biformer_t", "vz_davit_tiny", "vz_maxvit_tiny_224",
                                  "agent_pvt_t", "vz_efficientvit_m0", "vz_halonet26t"])
def test_every_family_builds_with_the_zoo_linear(name):
    model = timm.create_model(name)
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Linear)}
    assert Linear in kinds and nn.Linear not in kinds
