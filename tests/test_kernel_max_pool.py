"""BatchNorm + activation fused into max pooling (``kernels/batch_norm_act_max_pool_fwd.py``) and the max pooling
backward from its uint8 argmax (``kernels/max_pool_bwd.py``) under the CPU interpreter, against torch's max_pool2d
(float64, on the activated map rounded to the map's dtype, which is what torch pools) and its autograd: odd shapes,
NCHW / channels_last, fp32 / fp16, several (kernel, stride, padding), NaN-poisoned outputs, ties (torch's
first-strict-max rule, ties made by rounding to fp16 included), NaN and -inf inputs, and the parameter errors."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitzoo.kernels._activation import ACTIVATIONS  # noqa: E402
from vitzoo.kernels.batch_norm_act_fwd import batch_norm_act_fwd  # noqa: E402
from vitzoo.kernels.batch_norm_act_max_pool_fwd import batch_norm_act_max_pool_fwd  # noqa: E402
from vitzoo.kernels.max_pool_bwd import max_pool_bwd  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN / 255

TOL = {torch.float32: 1e-6, torch.float16: 1e-3}  # dy: fp32 sums of a few dout against float64 sums


def _map(shape, dtype, layout, values=None):
    t = torch.randn(shape, dtype=torch.float64) * 2.0 + 0.5 if values is None else values
    t = t.to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def _stats(channels, scale=None, beta=None):
    """(4, C) fp32 (mean, invstd, scale, beta) as batch_norm_stats_merge writes them."""
    invstd = torch.rand(channels) + 0.5
    scale = invstd * (torch.rand(channels) + 0.5) if scale is None else scale
    beta = torch.randn(channels) * 0.5 if beta is None else beta
    return torch.stack([torch.randn(channels) * 0.5, invstd, scale, beta]).float()


def _activated(x, stats, act):
    """act((x - mean) * scale + beta) in fp32 in the kernels' order of operations, rounded to x's dtype."""
    mean, _, scale, beta = (s[:, None, None] for s in stats)
    y = (x.float() - mean) * scale + beta
    y = y.clamp_min(0.0) if act == "relu" else y
    return y.to(x.dtype)


def _taps(indices, height, width, kernel, stride, padding):
    """torch's flat (h * W + w) max_pool2d indices as window taps kh * kernel + kw."""
    out_h, out_w = indices.shape[2:]
    top = torch.arange(out_h)[:, None] * stride - padding
    left = torch.arange(out_w)[None, :] * stride - padding
    return (indices // width - top) * kernel + (indices % width - left)


def _check(x, stats, act, kernel, stride, padding, dout_layout=None):
    """Forward (out exactly, argmax exactly) and backward (dy to rounding) against float64 torch; returns out."""
    height, width = x.shape[2:]
    out, argmax = batch_norm_act_max_pool_fwd(x, stats, act, kernel, stride, padding)
    y = _activated(x, stats, act).double().requires_grad_(True)
    want, indices = F.max_pool2d(y, kernel, stride, padding, return_indices=True)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert out.shape == want.shape and out.dtype == x.dtype and argmax.dtype == torch.uint8
    for t in (out, argmax):
        assert t.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out.double(), want.detach(), rtol=0, atol=0, equal_nan=True)
    assert int(argmax.max()) < kernel * kernel  # 255: the poisoned, unwritten value
    assert torch.equal(argmax.long(), _taps(indices, height, width, kernel, stride, padding))
    dout = _map(want.shape, x.dtype, dout_layout or ("channels_last" if channels_last else "nchw"))
    dy = max_pool_bwd(dout, argmax, (height, width), kernel, stride, padding, x)
    (dy_want,) = torch.autograd.grad(want, y, dout.double())
    assert dy.shape == x.shape and dy.dtype == x.dtype and dy.stride() == x.stride()
    assert not dy.isnan().any()
    torch.testing.assert_close(dy.double(), dy_want.to(x.dtype).double(), rtol=TOL[x.dtype], atol=TOL[x.dtype])
    return out


# (N, C, H, W, kernel, stride, padding, dtype, layout, act, dout layout: None = x's)
CASES = {
    "c3_7x9_k3s2p1_fp32_nchw_relu": (2, 3, 7, 9, 3, 2, 1, torch.float32, "nchw", "relu", None),
    "c24_13x10_k3s2p1_fp16_cl_relu": (2, 24, 13, 10, 3, 2, 1, torch.float16, "channels_last", "relu", None),
    "c40_9x7_k2s2p0_fp32_cl_none": (2, 40, 9, 7, 2, 2, 0, torch.float32, "channels_last", "none", "nchw"),
    "c24_10x13_k2s2p0_fp16_nchw_relu": (2, 24, 10, 13, 2, 2, 0, torch.float16, "nchw", "relu", None),
    "c3_9x10_k3s1p1_fp16_cl_none": (2, 3, 9, 10, 3, 1, 1, torch.float16, "channels_last", "none", None),
    "c24_7x7_k3s1p1_fp32_nchw_relu": (2, 24, 7, 7, 3, 1, 1, torch.float32, "nchw", "relu", "channels_last"),
    "c40_13x9_k3s2p0_fp16_cl_relu": (2, 40, 13, 9, 3, 2, 0, torch.float16, "channels_last", "relu", None),
    "c3_10x7_k3s2p0_fp32_nchw_none": (2, 3, 10, 7, 3, 2, 0, torch.float32, "nchw", "none", None),
    "c40_10x10_k3s2p1_fp32_cl_none_n1": (1, 40, 10, 10, 3, 2, 1, torch.float32, "channels_last", "none", None),
    "c24_9x13_k3s2p1_fp16_nchw_none": (2, 24, 9, 13, 3, 2, 1, torch.float16, "nchw", "none", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_max_pool_matches_torch(name):
    batch, channels, height, width, kernel, stride, padding, dtype, layout, act, dout_layout = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    x = _map((batch, channels, height, width), dtype, layout)
    out = _check(x, _stats(channels), act, kernel, stride, padding, dout_layout)
    assert not out.isnan().any()


@pytest.mark.parametrize("dtype, layout, kernel, stride, padding",
                         [(torch.float32, "channels_last", 3, 1, 1), (torch.float16, "nchw", 3, 2, 1),
                          (torch.float16, "channels_last", 2, 2, 0)])
def test_ties_follow_torch(dtype, layout, kernel, stride, padding):
    """Integer-valued maps constant on 2 x 2 blocks, and ReLU zeroing about half of them: most windows tie, and
    the first strictly greater tap must win as in torch (argmax equality is checked in ``_check``)."""
    torch.manual_seed(1)
    batch, channels, height, width = 2, 24, 9, 10
    blocks = torch.randint(-3, 4, (batch, channels, (height + 1) // 2, (width + 1) // 2)).double()
    values = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :height, :width]
    x = _map((batch, channels, height, width), dtype, layout, values)
    ones = torch.ones(channels)
    stats = torch.stack([torch.zeros(channels), ones, ones, torch.zeros(channels)])
    out = _check(x, stats, "relu", kernel, stride, padding)
    assert (out == 0).float().mean() > 0.1  # windows of zeros only: all-tie windows were exercised


def test_ties_made_by_rounding_to_fp16():
    """Distinct fp32 values that round to one fp16 (a large beta, a small scale): compared after the rounding, as
    torch compares the fp16 map it materialized; comparing in fp32 would pick other taps."""
    torch.manual_seed(2)
    batch, channels, height, width = 2, 24, 10, 9
    x = _map((batch, channels, height, width), torch.float16, "channels_last")
    stats = _stats(channels, scale=torch.full((channels,), 1e-2), beta=torch.full((channels,), 100.0))
    _check(x, stats, "none", 3, 2, 1)
    y32 = (x.float() - stats[0, :, None, None]) * stats[2, :, None, None] + stats[3, :, None, None]
    _, fp32_indices = F.max_pool2d(y32, 3, 2, 1, return_indices=True)
    _, fp16_indices = F.max_pool2d(y32.half().float(), 3, 2, 1, return_indices=True)
    assert not torch.equal(fp32_indices, fp16_indices)  # the case does discriminate


def test_nan_and_minus_inf_follow_torch():
    """NaN taps win (the last NaN of a window, torch's ``val > max || isnan(val)``); windows all -inf keep their
    first in-bounds tap."""
    torch.manual_seed(3)
    batch, channels, height, width = 2, 3, 7, 9
    values = torch.randn(batch, channels, height, width, dtype=torch.float64)
    values[0, 0, 1, 2] = values[0, 0, 2, 2] = values[1, 2, 0, 0] = float("nan")
    values[0, 1, :4, :5] = float("-inf")
    for layout in ("nchw", "channels_last"):
        x = _map(values.shape, torch.float32, layout, values)
        out = _check(x, _stats(channels), "none", 3, 2, 1)
        assert out.isnan().any() and out.isneginf().any()


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # numpy's sigmoid(-large)
def test_matches_batch_norm_act_fwd_bit_for_bit():
    """The pooled values are max_pool2d of ``batch_norm_act_fwd``'s map for every activation (the forward and the
    fused pool compute y with one expression)."""
    torch.manual_seed(4)
    x = _map((2, 24, 7, 9), torch.float16, "channels_last")
    stats = _stats(24)
    for act in ACTIVATIONS:
        out, argmax = batch_norm_act_max_pool_fwd(x, stats, act, 3, 2, 1)
        want, indices = F.max_pool2d(batch_norm_act_fwd(x, stats, act)[0].double(), 3, 2, 1, return_indices=True)
        assert torch.equal(out.double(), want), act
        assert torch.equal(argmax.long(), _taps(indices, 7, 9, 3, 2, 1)), act


def test_errors():
    x = torch.zeros(1, 4, 6, 6)
    stats = torch.zeros(4, 4)
    fwd = batch_norm_act_max_pool_fwd
    with pytest.raises(ValueError, match="padding must be in"):
        fwd(x, stats, "relu", 3, 2, 2)
    with pytest.raises(ValueError, match="padding must be in"):
        fwd(x, stats, "relu", 3, 2, -1)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        fwd(x, stats, "relu", 0, 1, 0)
    with pytest.raises(ValueError, match="kernel_size must be >= 1 with kernel_size\\*\\*2 <= 255"):
        fwd(torch.zeros(1, 4, 20, 20), stats, "relu", 16, 1, 0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fwd(x, stats, "relu", 3, 0, 1)
    with pytest.raises(ValueError, match="kernel_size must be an int"):
        fwd(x, stats, "relu", 3.0, 2, 1)
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        fwd(torch.zeros(1, 4, 2, 6), stats, "relu", 5, 1, 1)
    with pytest.raises(ValueError, match="act must be one of"):
        fwd(x, stats, "tanh", 3, 2, 1)
    out, argmax = fwd(x, stats, "relu", 3, 2, 1)
    with pytest.raises(ValueError, match="padding must be in"):
        max_pool_bwd(out, argmax, (6, 6), 3, 2, 2, x)
    with pytest.raises(ValueError, match="dout and argmax must be"):
        max_pool_bwd(out, argmax, (6, 6), 3, 1, 1, x)
    with pytest.raises(ValueError, match="argmax must be uint8"):
        max_pool_bwd(out, argmax.long(), (6, 6), 3, 2, 1, x)
    with pytest.raises(ValueError, match="like must be"):
        max_pool_bwd(out, argmax, (7, 6), 3, 2, 1, x)
