"""LayerNorm Triton kernels (vitzoo.kernels.layer_norm_fwd / _bwd) and the :func:`vitzoo.ops.layer_norm` op under the
CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py): output, dx, dweight and dbias against float64
``F.layer_norm`` for fp32 / fp16 / bf16 inputs, small and non-power-of-two C, odd row counts split over several
programs, strided rows, every weight / bias combination; the saved mean / rstd; the autocast output dtype; clear
errors; torch vs triton backends; the custom op under torch.compile and opcheck. Unwritten outputs are caught by
filling every torch.empty with NaN (torch's deterministic mode)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest.py sets it too)

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitzoo.kernels.layer_norm_bwd import layer_norm_bwd  # noqa: E402
from vitzoo.kernels.layer_norm_fwd import MAX_CHANNELS, layer_norm_fwd  # noqa: E402
from vitzoo.ops import layer_norm  # noqa: E402

# relative-error floor on top of 2x the same-precision torch error (FlashAttention's rule, as kernels/gpu_check*.py)
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN


def _rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm())


def _inputs(rows, channels, dtype, strided, affine, seed=0):
    """x (1, rows, C), a slice of a wider tensor when ``strided`` (row stride C + 5); fp32 weight / bias per
    ``affine`` ("both", "weight", "bias", "none")."""
    gen = torch.Generator().manual_seed(seed)
    pad = 5 if strided else 0
    x = (torch.randn(1, rows, channels + pad, generator=gen) * 2 + 0.7).to(dtype)[..., :channels]
    weight = torch.randn(channels, generator=gen) if affine in ("both", "weight") else None
    bias = torch.randn(channels, generator=gen) if affine in ("both", "bias") else None
    return x, weight, bias


def _leaves(*tensors, dtype=None):
    return [t.detach().to(dtype or t.dtype).requires_grad_(True) if t is not None else None for t in tensors]


# (rows, C, dtype, strided rows, weight / bias); the interpreter config gives 256-element tiles: C = 24 / 64 / 100
# -> 8 / 4 / 2 rows per program, so 7 and 33 rows end in a partly masked tile, and the backward's 3 row chunks too
CASES = {
    "fp32-c24-affine": (7, 24, torch.float32, False, "both"),
    "fp32-c100-strided-weight-only": (33, 100, torch.float32, True, "weight"),
    "fp32-c64-no-affine": (33, 64, torch.float32, False, "none"),
    "fp32-c64-bias-only": (7, 64, torch.float32, False, "bias"),
    "fp16-c64-strided-affine": (33, 64, torch.float16, True, "both"),
    "fp16-c100-no-affine": (7, 100, torch.float16, False, "none"),
    "fp16-c24-weight-only": (33, 24, torch.float16, False, "weight"),
    "bf16-c100-strided-affine": (33, 100, torch.bfloat16, True, "both"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name):
    rows, channels, dtype, strided, affine = CASES[name]
    x, weight, bias = _inputs(rows, channels, dtype, strided, affine)
    assert x.is_contiguous() != strided
    go = torch.randn(x.shape).to(dtype)
    results = {}
    for backend in ("triton", "torch"):  # torch: the same precision (fp32 compute, output in x's dtype)
        leaves = _leaves(x, weight, bias)
        out = layer_norm(leaves[0], channels, leaves[1], leaves[2], backend=backend)
        out.backward(go)
        results[backend] = [out] + [t.grad if t is not None else None for t in leaves]
    ref_leaves = _leaves(x, weight, bias, dtype=torch.float64)
    ref = F.layer_norm(ref_leaves[0], (channels,), ref_leaves[1], ref_leaves[2])
    ref.backward(go.double())
    want = [ref] + [t.grad if t is not None else None for t in ref_leaves]

    out, dx, dweight, dbias = results["triton"]
    assert out.dtype == dtype and out.shape == x.shape and dx.dtype == dtype and dx.shape == x.shape
    for what, got, base, exact, param in zip(("out", "dx", "dweight", "dbias"), results["triton"], results["torch"],
                                             want, (x, x, weight, bias)):
        if param is None:
            assert got is None, what
            continue
        assert got.dtype == param.dtype and torch.isfinite(got).all(), what
        err, base_err = _rel(got, exact), _rel(base, exact)
        assert err <= 2 * base_err + FLOOR[dtype], f"{name} {what}: {err:.2e} vs torch {base_err:.2e}"


def test_launchers_mean_rstd_and_mixed_dtypes():
    """The launchers directly: fp32 x with an fp16 weight, a bf16 bias and an fp16 output; the saved fp32 mean and
    rstd; a strided fp32 dy; parameter gradients in their dtypes."""
    rows, channels, eps = 33, 100, 1e-3
    x = (torch.randn(rows, channels + 3) * 3 + 1)[:, :channels]
    weight, bias = torch.randn(channels).half(), torch.randn(channels).bfloat16()
    y, stats = layer_norm_fwd(x, weight, bias, eps, torch.float16)
    mean, rstd = stats
    xd = x.double()
    want_mean, want_var = xd.mean(1), xd.var(1, unbiased=False)
    want = F.layer_norm(xd, (channels,), weight.double(), bias.double(), eps)
    assert y.dtype == torch.float16 and y.is_contiguous() and stats.shape == (2, rows) and stats.dtype == torch.float32
    assert _rel(mean, want_mean) < 1e-6 and _rel(rstd, (want_var + eps).rsqrt()) < 1e-6
    assert _rel(y, want) < 1e-3

    dy = torch.randn(rows, channels + 7)[:, 2:channels + 2]
    leaves = _leaves(xd, weight, bias, dtype=torch.float64)
    F.layer_norm(leaves[0], (channels,), leaves[1], leaves[2], eps).backward(dy.double())
    dx, dparams = layer_norm_bwd(dy, x, weight, stats, True, True)
    dweight, dbias = dparams
    assert dx.dtype == torch.float32 and dparams.shape == (2, channels) and dparams.dtype == torch.float32
    assert _rel(dx, leaves[0].grad) < 1e-5
    assert _rel(dweight, leaves[1].grad) < 1e-3 and _rel(dbias, leaves[2].grad) < 1e-2
    dx_only = layer_norm_bwd(dy, x, weight, stats, False, False)
    assert dx_only[1] is None and torch.equal(dx_only[0], dx)
    _, bias_only = layer_norm_bwd(dy, x, weight, stats, False, True)
    torch.testing.assert_close(bias_only[0], dbias, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_output_dtype(dtype):
    """Under CPU bf16 autocast the output is bf16 (what the next autocast Linear consumes) on both backends, from
    fp32 or bf16 inputs; gradients come back in the input and parameter dtypes."""
    x, weight, bias = _inputs(7, 64, dtype, True, "both")
    go = torch.randn(x.shape, dtype=torch.bfloat16)
    results = {}
    for backend in ("triton", "torch"):
        leaves = _leaves(x, weight, bias)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer_norm(leaves[0], 64, leaves[1], leaves[2], backend=backend)
        out.backward(go)
        assert out.dtype == torch.bfloat16 and leaves[0].grad.dtype == dtype
        assert leaves[1].grad.dtype == leaves[2].grad.dtype == torch.float32
        results[backend] = [out] + [t.grad for t in leaves]
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    ref = F.layer_norm(x.double(), (64,), weight.double(), bias.double())
    assert _rel(results["triton"][0], ref) < 1e-2


def test_output_dtype_rule_torch_backend():
    """Without autocast the output keeps x's dtype; float64 stays float64 (and is computed in float64) even under
    autocast, as autocast never casts float64."""
    x = torch.randn(3, 5, 16)
    assert layer_norm(x, 16, backend="torch").dtype == torch.float32
    assert layer_norm(x.half(), (16,), backend="torch").dtype == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer_norm(x.half(), 16, backend="torch").dtype == torch.bfloat16
        out = layer_norm(x.double(), 16, backend="torch")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.layer_norm(x.double(), (16,)), rtol=0, atol=0)


def test_backends_agree():
    """backend="torch" and backend="triton" give the same output and gradients (fp32, leading dims, affine)."""
    x, weight, bias = _inputs(33, 100, torch.float32, True, "both", seed=3)
    go = torch.randn(x.shape)
    results = {}
    for backend in ("torch", "triton"):
        leaves = _leaves(x, weight, bias)
        out = layer_norm(leaves[0], [100], leaves[1], leaves[2], eps=1e-6, backend=backend)
        out.backward(go)
        results[backend] = [out] + [t.grad for t in leaves]
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_empty_rows():
    x = torch.randn(0, 3, 64, requires_grad=True)
    weight = torch.randn(64, requires_grad=True)
    out = layer_norm(x, 64, weight, backend="triton")
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(weight.grad, torch.zeros(64))


@pytest.mark.parametrize("shape", [(8, 8), 7, (4,), 8.0, True, [4, 8], "8"])
def test_bad_normalized_shape(shape):
    x = torch.randn(2, 4, 8)
    if shape == (8, 8):
        x = torch.randn(2, 8, 8)  # torch would normalize the last two dims: refused, not silently changed
    with pytest.raises(ValueError, match="normalized_shape must be an int or a 1-tuple equal to x.shape"):
        layer_norm(x, shape)


def test_clear_errors():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"weight must be None or a tensor of shape \(8,\)"):
        layer_norm(x, 8, torch.randn(4))
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        layer_norm(torch.ones(2, 8, dtype=torch.int64), 8)
    wide = torch.zeros(1, MAX_CHANNELS + 1)
    with pytest.raises(ValueError, match=f"normalized_shape.*{MAX_CHANNELS}"):
        layer_norm(wide, MAX_CHANNELS + 1, backend="triton")
    with pytest.raises(ValueError, match=f"normalized_shape.*{MAX_CHANNELS}"):
        layer_norm_fwd(wide, None, None, 1e-5, torch.float32)
    assert layer_norm(wide, MAX_CHANNELS + 1).shape == wide.shape  # auto: torch path on CPU


def test_custom_op_compile_and_opcheck():
    x, weight, bias = _inputs(7, 24, torch.float32, True, "both", seed=5)
    leaves = _leaves(x, weight, bias)
    go = torch.randn(x.shape)
    out = layer_norm(leaves[0], 24, leaves[1], leaves[2], backend="triton")
    grads = torch.autograd.grad(out, leaves, go)

    compiled = torch.compile(lambda a, w, b: layer_norm(a, 24, w, b, backend="triton"), backend="aot_eager",
                             fullgraph=True)
    out_c = compiled(*leaves)
    torch.testing.assert_close(out_c, out)
    for got, want in zip(torch.autograd.grad(out_c, leaves, go), grads):
        torch.testing.assert_close(got, want)

    from vitzoo.ops._layer_norm_triton import _OP

    x2d = x.reshape(-1, 24)
    for args in ((x2d, weight, bias, 1e-5, torch.float32), (x2d.half(), None, bias, 1e-5, torch.bfloat16)):
        torch.library.opcheck(_OP.forward_op, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def _check_autocast_policy(norm: torch.nn.Module, x: torch.Tensor) -> None:
    """Under autocast: the no-grad forward writes the autocast dtype (with the fast norm on), the autograd one fp32."""
    from vitzoo.models._norm import FAST_NORM

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            fast = norm(x)
        slow = norm(x)
    assert slow.dtype == torch.float32
    assert fast.dtype == (torch.bfloat16 if FAST_NORM else torch.float32)
    torch.testing.assert_close(fast.float(), slow, rtol=1e-2, atol=1e-2)


def test_model_layer_norm_module_policy():
    """vitzoo.models._norm.LayerNorm: nn.LayerNorm's parameters and state_dict; without autograd it runs the op
    (autocast dtype out), with autograd torch's own norm (fp32 out under autocast, timm's numerics)."""
    from vitzoo.models._norm import LayerNorm

    norm = LayerNorm(24, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    ref = torch.nn.LayerNorm(24, eps=1e-6)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(norm(x), ref(x), rtol=0, atol=0)
    _check_autocast_policy(norm, x)


def test_model_layer_norm2d_module_policy():
    """vitzoo.models._norm.LayerNorm2d (DaViT's stem / downsampling / head norms): timm's LayerNorm2d parameters and
    outputs; without autograd the op on the (B, H, W, C) view (autocast dtype out), and a channels_last map stays
    channels_last."""
    from timm.layers import LayerNorm2d as TimmLayerNorm2d

    from vitzoo.models._norm import LayerNorm2d, token_norm_layer

    assert token_norm_layer("layernorm2d") is LayerNorm2d
    norm = LayerNorm2d(24, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    ref = TimmLayerNorm2d(24, eps=1e-5)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = norm(x)
        torch.testing.assert_close(out, ref(x), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(norm(x), ref(x), rtol=0, atol=0)  # with autograd: timm's own forward
    _check_autocast_policy(norm, x)
