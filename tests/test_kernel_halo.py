"""HaloNet attention Triton kernels (forward, dq/table-gradient and dk/dv backward) under the Triton interpreter
(``TRITON_INTERPRET=1``, set by conftest.py) against the float64 torch reference: output and every gradient (q, k,
v, rel_h, rel_w), fp32 and fp16, with freshly allocated outputs poisoned with NaN so unwritten elements fail."""
import pytest
import torch

import vitzoo.ops._halo_triton  # noqa: F401  (registers the torch.ops.vitzoo.halo_attention_* custom ops)
from vitzoo.kernels.halo_attention_bwd import halo_attention_bwd_dq
from vitzoo.kernels.halo_attention_bwd_dkv import halo_attention_bwd_dkv
from vitzoo.kernels.halo_attention_fwd import halo_attention_fwd
from vitzoo.ops import halo_attention_2d, halo_attention_2d_torch
from vitzoo.ops.halo import HaloArgs

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2)}

CASES = [
    # (B, H, W, heads, d_qk, d_v, block, halo, stride, rel)
    (1, 8, 4, 2, 16, 32, 4, 1, 1, True),  # two blocks vertically, halo reaches the neighbour block
    (1, 8, 8, 1, 12, 20, 4, 2, 2, True),  # strided query blocks, non-power-of-two head dims (padded in-kernel)
    (2, 6, 3, 1, 16, 16, 3, 1, 1, False),  # odd block (9 queries padded to 16), no relative tables
]


@pytest.fixture
def poison_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled floating tensors while a test runs."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: fill(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: fill(real_empty_like(*a, **kw)))


def make_inputs(b, h, w, heads, dqk, dv, block, halo, stride, rel, dtype):
    q = torch.randn(b, h // stride, w // stride, heads, dqk)
    k = torch.randn(b, h, w, heads, dqk)
    v = torch.randn(b, h, w, heads, dv)
    win = block + 2 * halo
    tables = [torch.randn(2 * win - 1, dqk) * 0.5, torch.randn(2 * win - 1, dqk) * 0.5] if rel else [None, None]
    return [t if t is None else t.to(dtype) for t in (q, k, v, *tables)]


def reference(inputs, block, halo, grad):
    x = [t if t is None else t.detach().double().requires_grad_() for t in inputs]
    out = halo_attention_2d_torch(*x[:3], block, halo, *x[3:])
    grads = torch.autograd.grad(out, [t for t in x if t is not None], grad.double())
    return out, grads


def check(got, want, dtype, what):
    assert torch.isfinite(got).all(), f"{what}: non-finite values (unwritten output?)"
    torch.testing.assert_close(got.double(), want, **TOL[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES)
def test_op_triton_matches_reference(case, dtype, poison_empty):
    *_, block, halo, stride, rel = case
    inputs = make_inputs(*case, dtype)
    leaves = [t.requires_grad_() for t in inputs if t is not None]
    out = halo_attention_2d(*inputs[:3], block, halo, *inputs[3:], backend="triton")
    assert out.dtype == dtype
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_out, ref_grads = reference(inputs, block, halo, grad)
    check(out, ref_out, dtype, "out")
    for name, g, r in zip(["dq", "dk", "dv", "d rel_h", "d rel_w"], grads, ref_grads):
        assert g.dtype == dtype
        check(g, r, dtype, name)


@pytest.mark.parametrize("rows", [1, 4])
def test_kernels_other_tile_heights(rows, poison_empty):
    """The launchers with a pinned key-tile height (window rows per tile; the op autotunes it) and 8 warps for dk/dv;
    halo larger than the block, so the dk/dv kernel visits query blocks two blocks away."""
    case = (1, 4, 4, 1, 16, 16, 2, 3, 1, True)
    block, halo = case[6], case[7]
    q, k, v, rel_h, rel_w = make_inputs(*case, torch.float32)
    scale = 0.37
    out, lse = halo_attention_fwd(q, k, v, rel_h, rel_w, block, halo, scale, rows=rows)
    grad = torch.randn_like(out)
    dq, delta, rel_logits, part = halo_attention_bwd_dq(grad, q, k, v, out, lse, rel_h, rel_w, block, halo, scale,
                                                        rows=rows)
    dk, dv = halo_attention_bwd_dkv(grad, q, k, v, lse, delta, rel_logits, block, halo, scale, num_warps=8)
    x = [t.double().requires_grad_() for t in (q, k, v, rel_h, rel_w)]
    ref = halo_attention_2d_torch(*x[:3], block, halo, *x[3:], scale=scale)
    ref_grads = torch.autograd.grad(ref, x, grad.double())
    check(out, ref, torch.float32, "out")
    check(delta, (grad.double() * ref).sum(-1).permute(0, 3, 1, 2), torch.float32, "delta")
    for name, g, r in zip(["dq", "dk", "dv", "d rel_h", "d rel_w"], (dq, dk, dv, part[:, 0].sum(0),
                                                                    part[:, 1].sum(0)), ref_grads):
        check(g, r, torch.float32, name)


def test_non_contiguous_inputs_and_grad():
    """Strided views (timm's conv outputs permuted to (B, H, W, heads, d)) and an expanded upstream gradient."""
    b, heads, d, h, w, block, halo = 1, 2, 16, 4, 4, 4, 1
    qkv = torch.randn(b, heads, 3 * d, h, w).permute(0, 3, 4, 1, 2)
    q, k, v = (t.requires_grad_() for t in qkv.detach().split(d, dim=-1))
    win = block + 2 * halo
    rel_h, rel_w = torch.randn(2 * win - 1, d), torch.randn(2 * win - 1, d)
    out = halo_attention_2d(q, k, v, block, halo, rel_h, rel_w, backend="triton")
    out.sum().backward()  # grad_out is an expanded (stride-0) tensor
    x = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = halo_attention_2d_torch(*x, block, halo, rel_h.double(), rel_w.double())
    ref.sum().backward()
    check(out, ref, torch.float32, "out")
    for name, t, r in zip(["dq", "dk", "dv"], (q, k, v), x):
        check(t.grad, r.grad, torch.float32, name)


def test_autocast_runs_kernel_in_autocast_dtype():
    inputs = make_inputs(1, 4, 4, 1, 16, 16, 4, 1, 1, True, torch.float32)
    with torch.autocast("cpu", dtype=torch.float16):
        out = halo_attention_2d(*inputs[:3], 4, 1, *inputs[3:], backend="triton")
    assert out.dtype == torch.float16
    check(out, halo_attention_2d_torch(*(t.double() for t in inputs[:3]), 4, 1, *(t.double() for t in inputs[3:])),
          torch.float16, "out")


def test_custom_ops_opcheck():
    """Schema, fake (meta) implementations and autograd registration of the torch.library ops."""
    q, k, v, rel_h, rel_w = make_inputs(1, 4, 4, 1, 16, 16, 4, 1, 1, True, torch.float32)
    for t in (q, k, v, rel_h, rel_w):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.vitzoo.halo_attention_fwd.default, (q, k, v, rel_h, rel_w, 4, 1, 0.25),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_traces_without_graph_break():
    q, k, v, rel_h, rel_w = (t.requires_grad_() for t in make_inputs(1, 4, 4, 1, 16, 16, 4, 1, 1, True, torch.float32))

    def f(q, k, v, rel_h, rel_w):
        return halo_attention_2d(q, k, v, 4, 1, rel_h, rel_w, backend="triton") * 2

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, rel_h, rel_w)
    out.sum().backward()
    x = [t.detach().double().requires_grad_() for t in (q, k, v, rel_h, rel_w)]
    ref = halo_attention_2d_torch(*x[:3], 4, 1, *x[3:]) * 2
    ref.sum().backward()
    check(out, ref, torch.float32, "out")
    for name, t, r in zip(["dq", "dk", "dv", "d rel_h", "d rel_w"], (q, k, v, rel_h, rel_w), x):
        check(t.grad, r.grad, torch.float32, name)


@pytest.mark.parametrize(
    "dtype,d_v,match", [(torch.float64, 16, "float16, bfloat16 and float32"), (torch.float32, 160, "d_v")]
)
def test_forced_triton_rejects_unsupported_calls(dtype, d_v, match):
    q, k, _, rel_h, rel_w = make_inputs(1, 4, 4, 1, 16, 16, 4, 1, 1, True, dtype)
    v = torch.randn(1, 4, 4, 1, d_v, dtype=dtype)
    HaloArgs(q, k, v, 4, 1, rel_h, rel_w, None)  # the call itself is valid
    with pytest.raises(ValueError, match=match):
        halo_attention_2d(q, k, v, 4, 1, rel_h, rel_w, backend="triton")
