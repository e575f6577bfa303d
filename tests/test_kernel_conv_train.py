"""MaxViT's training-path ops and modules under the CPU interpreter: the depthwise convolution with per-side padding
(``vitzoo.ops.depthwise_conv2d``: forward + input / weight / bias gradients, kernels ``depthwise_conv_*``) and
squeeze-and-excitation's gating (``vitzoo.ops.squeeze_excite``: kernels ``channel_scale`` / ``channel_dot``) against
float64 (NaN-poisoned outputs, odd sizes and channel counts, strides 1-3, K 3 / 5, fp32 / fp16), the pad-free
"same" convolutions and pooled shortcuts against timm's modules, and a whole MBConv block in training against timm's
(outputs, all gradients, running statistics)."""
import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitzoo.ops import depthwise_conv2d, squeeze_excite, squeeze_excite_torch  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN

TOL = {torch.float32: 2e-5, torch.float16: 3e-3}


def _rel(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


# (B, C, H, W, K, stride, (top, bottom, left, right), dtype)
DW_CASES = {
    "s2_tf_same_odd_rows_fp32": (2, 20, 9, 7, 3, 2, (0, 1, 1, 1), torch.float32),
    "s2_tf_same_even_fp32": (1, 16, 8, 8, 3, 2, (0, 1, 0, 1), torch.float32),
    "s1_sym_fp16": (2, 33, 6, 5, 3, 1, (1, 1, 1, 1), torch.float16),
    "k5_s2_asym_fp32": (1, 8, 9, 9, 5, 2, (2, 2, 1, 2), torch.float32),
    "s3_fp32": (1, 17, 4, 12, 3, 3, (0, 2, 1, 0), torch.float32),
}


@pytest.mark.parametrize("name", list(DW_CASES))
def test_depthwise_conv2d_matches_float64(name):
    batch, channels, height, width, k, stride, pad, dtype = DW_CASES[name]
    x = torch.randn(batch, channels, height, width).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(channels, 1, k, k) * 0.3, torch.randn(channels)
    ours = _leaves(x, weight, bias)
    exact = _leaves(x.double(), weight.double(), bias.double())
    y = depthwise_conv2d(*ours, stride, pad, backend="triton")
    top, bottom, left, right = pad
    want = F.conv2d(F.pad(exact[0], (left, right, top, bottom)), exact[1], exact[2], stride, groups=channels)
    dy = torch.randn_like(want)
    y.backward(dy.to(y.dtype))
    want.backward(dy)
    assert y.shape == want.shape and y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    # fp16 without autocast: the weight is rounded to fp16 as F.conv2d would
    tol = TOL[dtype]
    for label, got, ref in zip(("y", "dx", "dweight", "dbias"), [y, *(t.grad for t in ours)],
                               [want, *(t.grad for t in exact)]):
        assert _rel(got, ref) <= tol, f"{name} {label}: {_rel(got, ref):.2e}"
    assert ours[1].grad.dtype == weight.dtype and ours[2].grad.dtype == bias.dtype


def test_depthwise_conv2d_errors_and_torch_path():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="weight \\(C, 1, K, K\\)"):
        depthwise_conv2d(x, torch.randn(4, 2, 3, 3), None, 1, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="stride must be a positive int"):
        depthwise_conv2d(x, w, None, 0, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="padding must be 4 non-negative ints"):
        depthwise_conv2d(x, w, None, 1, (1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        depthwise_conv2d(torch.randn(1, 4, 1, 1), w, None, 1, (0, 0, 0, 0))
    with pytest.raises(ValueError, match="channels_last"):  # forced Triton on an NCHW map
        depthwise_conv2d(x, w, None, 1, (1, 1, 1, 1), backend="triton")
    want = F.conv2d(F.pad(x, (0, 1, 0, 1)), w, None, 2, groups=4)
    assert torch.equal(depthwise_conv2d(x, w, None, 2, (0, 1, 0, 1)), want)  # auto on CPU: torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_squeeze_excite_matches_float64(dtype):
    """Output, input gradient (the multiply's and the pooling's) and the gate MLP's parameter gradients."""
    channels, hidden = 24, 6
    x = torch.randn(3, channels, 5, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    fc1, fc2 = torch.randn(hidden, channels) / 5, torch.randn(channels, hidden) / 3
    b1 = torch.randn(hidden)

    def gate_fn(w1, bias1, w2):
        return lambda m: torch.sigmoid(F.conv2d(F.silu(F.conv2d(m, w1[:, :, None, None], bias1)),
                                                w2[:, :, None, None].to(m.dtype)))

    ours = _leaves(x, fc1, b1, fc2)
    exact = _leaves(x.double(), fc1.double(), b1.double(), fc2.double())
    fn = gate_fn(ours[1].to(dtype), ours[2].to(dtype), ours[3])
    y = squeeze_excite(ours[0], fn, ours[1:], backend="triton")
    want = squeeze_excite_torch(exact[0], gate_fn(*exact[1:]))
    dy = torch.randn_like(want)
    y.backward(dy.to(dtype))
    want.backward(dy)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    for label, got, ref in zip(("y", "dx", "dfc1", "dbias1", "dfc2"), [y, *(t.grad for t in ours)],
                               [want, *(t.grad for t in exact)]):
        assert _rel(got, ref) <= 3 * TOL[dtype], f"{label}: {_rel(got, ref):.2e}"


def test_squeeze_excite_paths():
    x = torch.randn(2, 8, 3, 3)
    gate = nn.Sequential(nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 8, 1), nn.Sigmoid())
    assert torch.equal(squeeze_excite(x, gate), x * gate(x.mean((2, 3), keepdim=True)))  # CPU auto: torch
    with pytest.raises(ValueError, match="dense channels_last"):
        squeeze_excite(x, gate, backend="triton")
    with pytest.raises(ValueError, match="\\(B, C, H, W\\)"):
        squeeze_excite(x[0], gate)
    with torch.no_grad():  # no autograd: one gate-multiply pass
        cl = x.contiguous(memory_format=torch.channels_last)
        assert _rel(squeeze_excite(cl, gate, backend="triton"), squeeze_excite_torch(cl, gate).double()) < 1e-6


@pytest.mark.parametrize("size", [(15, 13), (8, 9), (7, 7), (8, 8)])
def test_pad_free_same_modules_match_timm(size):
    """PadFreeConv2dSame (dense: zero-tap kernel; depthwise: the op) and the pooled shortcut as one conv give timm's
    modules' outputs and gradients, float64."""
    from timm.layers import Conv2dSame
    from timm.models.maxxvit import Downsample2d

    from vitzoo.models._tf_same import ConvDownsample2d, PadFreeConv2dSame, fuse_tf_same

    torch.manual_seed(0)
    modules = [Conv2dSame(8, 8, k, s, groups=g) for k, s, g in ((3, 2, 1), (3, 1, 1), (5, 2, 1), (2, 2, 1),
                                                               (4, 3, 8), (3, 2, 8))]
    modules += [Downsample2d(8, 8, "avg2", padding="same"), Downsample2d(8, 16, "avg2", padding="same")]
    for ref in modules:
        ref = ref.double()
        ours = fuse_tf_same(copy.deepcopy(ref), pad_free=True, backend="torch")
        assert type(ours) in (PadFreeConv2dSame, ConvDownsample2d)
        x = torch.randn(2, 8, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        xr, xo = _leaves(x, x)
        yr, yo = ref(xr), ours(xo)
        assert yr.shape == yo.shape and _rel(yo, yr) < 1e-12
        dy = torch.randn_like(yr)
        yr.backward(dy)
        yo.backward(dy)
        assert _rel(xo.grad, xr.grad) < 1e-12
        for a, b in zip(ref.parameters(), ours.parameters()):
            assert _rel(b.grad, a.grad) < 1e-12


@pytest.mark.parametrize("stride, in_chs, out_chs, size", [(2, 8, 16, 8), (1, 16, 16, 6), (2, 8, 8, 7)])
def test_mbconv_block_trains_like_timm(stride, in_chs, out_chs, size):
    """timm's MbConvBlock with vitzoo's training paths forced (BatchNorm + GELU op, SE op, the depthwise op with
    TF padding, the shortcut conv): outputs, input and parameter gradients and running statistics match timm's."""
    from timm.models.maxxvit import MaxxVitConvCfg, MbConvBlock

    from vitzoo.models._batch_norm_act import fuse_batch_norm_acts
    from vitzoo.models._mbconv import fuse_mbconv_blocks
    from vitzoo.models._squeeze_excite import fuse_se_modules
    from vitzoo.models._tf_same import fuse_tf_same

    torch.manual_seed(0)
    cfg = MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same")
    ref = MbConvBlock(in_chs, out_chs, stride=stride, cfg=cfg).train()
    ours = copy.deepcopy(ref)
    fuse_mbconv_blocks(ours, "triton")
    fuse_batch_norm_acts(ours, "triton")
    fuse_se_modules(ours, "triton")
    fuse_tf_same(ours, pad_free=True, backend="triton")
    x = torch.randn(2, in_chs, size, size).contiguous(memory_format=torch.channels_last)
    xr, xo = _leaves(x, x)
    yr, yo = ref(xr), ours(xo)
    dy = torch.randn_like(yr)
    yr.backward(dy)
    yo.backward(dy)
    assert _rel(yo, yr) < 1e-5 and _rel(xo.grad, xr.grad) < 1e-4
    grads_r = torch.cat([p.grad.flatten() for p in ref.parameters()])
    grads_o = torch.cat([p.grad.flatten() for p in ours.parameters()])
    assert _rel(grads_o, grads_r) < 1e-4
    for (name, a), b in zip(ref.named_buffers(), ours.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name


def test_maxvit_converts_its_training_modules():
    import timm

    import vitzoo  # noqa: F401
    from vitzoo.models._squeeze_excite import FusedSEModule
    from vitzoo.models._tf_same import ConvDownsample2d, PadFreeConv2dSame

    model = timm.create_model("vz_maxvit_tiny_224")
    counts = {t: sum(type(m) is t for m in model.modules()) for t in (PadFreeConv2dSame, ConvDownsample2d,
                                                                         FusedSEModule)}
    assert counts == {PadFreeConv2dSame: 5, ConvDownsample2d: 4, FusedSEModule: 11}
