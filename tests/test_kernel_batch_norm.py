"""Training BatchNorm + residual + activation (``vitzoo.ops.batch_norm_act``, kernels ``batch_norm_*.py``) under the
CPU interpreter against float64 torch (NaN-poisoned outputs, odd shapes, NCHW / channels_last / strided maps, every
activation, with and without residual, affine parameters and running statistics), its errors, and the modules that
use it (``FusedBatchNormAct2d``, HaloNet's fused block tails) against timm's on the same parameters."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from timm.layers import BatchNormAct2d, GELUTanh  # noqa: E402

from vitzoo.models._batch_norm_act import FusedBatchNormAct2d, fuse_batch_norm_acts  # noqa: E402
from vitzoo.ops import (batch_norm_act, batch_norm_act_max_pool, batch_norm_act_max_pool_torch,  # noqa: E402
                        batch_norm_act_torch)

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN

TOL = {torch.float32: 2e-5, torch.float16: 3e-3}
ACTS = ("none", "relu", "gelu_tanh", "gelu", "silu")


def _map(shape, dtype, layout, scale=2.0, offset=3.0):
    """A random map with a large mean (the variance must survive it) in the given memory layout."""
    t = torch.randn(shape, dtype=torch.float64) * scale + offset
    if layout == "channels_last":
        return t.to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a channel slice of a wider map: not dense, the op makes it so
        return torch.cat([t, t[:, :2]], dim=1).to(dtype)[:, :shape[1]]
    return t.to(dtype)


def _run(fn, x, weight, bias, residual, dy, running, act, **kw):
    """(y, dx, dweight, dbias, dresidual, running_mean, running_var) of one training call."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, weight, bias, residual)]
    mean, var = (running[0].clone(), running[1].clone()) if running is not None else (None, None)
    y = fn(leaves[0], leaves[1], leaves[2], mean, var, 0.1, 1e-5, act, leaves[3], **kw)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + [t.grad if t is not None else None for t in leaves] + [mean, var]


def _rel(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)


def _assert_trains_like(ref: nn.Module, ours: nn.Module) -> None:
    """Same parameter gradients and buffers (running statistics, num_batches_tracked) after a training step."""
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        assert _rel(b.grad, a.grad.double()) < 1e-4, name
    for (name, a), b in zip(ref.named_buffers(), ours.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name


# (N, C, H, W, layout, act, residual, affine, running, dtype)
CASES = {
    "cl_relu_res_fp32": (3, 20, 5, 7, "channels_last", "relu", True, True, True, torch.float32),
    "nchw_gelu_tanh_fp32": (2, 9, 4, 6, "nchw", "gelu_tanh", False, True, True, torch.float32),
    "strided_silu_res_fp32": (2, 7, 3, 5, "strided", "silu", True, True, False, torch.float32),
    "cl_gelu_noaffine_fp32": (4, 33, 3, 3, "channels_last", "gelu", False, False, True, torch.float32),
    "cl_none_res_fp16": (2, 24, 6, 5, "channels_last", "none", True, True, True, torch.float16),
    "w1_column_relu_fp32": (5, 16, 9, 1, "channels_last", "relu", False, True, True, torch.float32),
    "one_image_gelu_tanh_fp16": (1, 17, 7, 8, "nchw", "gelu_tanh", True, True, True, torch.float16),
    # ReLU after a residual with C % 8 == 0: the backward reads the forward's packed z > 0 bits
    "cl_relu_res_mask_fp32": (3, 40, 5, 3, "channels_last", "relu", True, True, True, torch.float32),
    "nchw_relu_res_mask_fp16": (2, 16, 3, 7, "nchw", "relu", True, False, True, torch.float16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_batch_norm_act_matches_float64(name):
    batch, channels, height, width, layout, act, has_res, affine, running, dtype = CASES[name]
    shape = (batch, channels, height, width)
    x = _map(shape, dtype, layout)
    residual = _map(shape, dtype, layout, 1.0, 0.0) if has_res else None
    weight = torch.rand(channels) + 0.5 if affine else None
    bias = torch.randn(channels) if affine else None
    running = (torch.randn(channels), torch.rand(channels) + 0.5) if running else None
    dy = torch.randn(shape, dtype=torch.float64)
    got = _run(batch_norm_act, x, weight, bias, residual, dy, running, act, backend="triton")
    want = _run(batch_norm_act_torch, x.double(), *(t.double() if t is not None else None for t in
                                                    (weight, bias, residual)), dy,
                tuple(t.double() for t in running) if running else None, act)
    assert got[0].dtype == dtype and got[0].shape == shape
    names = ("y", "dx", "dweight", "dbias", "dresidual", "running_mean", "running_var")
    for label, g, w in zip(names, got, want):
        assert (g is None) == (w is None), label
        if g is not None:
            err = _rel(g, w)
            assert err <= TOL[dtype], f"{name} {label}: relative error {err:.2e}"


def test_batch_norm_act_tracks_torch_over_steps_and_is_deterministic():
    """Three training steps with momentum 0.3: running statistics follow torch's; two runs agree bit for bit."""
    x = _map((4, 12, 5, 6), torch.float32, "channels_last")
    runs = []
    for fn, kw in ((batch_norm_act, dict(backend="triton")), (batch_norm_act, dict(backend="triton")),
                   (batch_norm_act_torch, {})):
        mean, var = torch.zeros(12), torch.ones(12)
        for step in range(3):
            y = fn(x * (step + 1), None, None, mean, var, 0.3, 1e-3, "relu", **kw)
        runs.append((y, mean, var))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    for a, b in zip(runs[0], runs[2]):
        assert _rel(a, b.double()) < 1e-5


def test_batch_norm_act_errors():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="act must be one of"):
        batch_norm_act(x, None, None, None, None, act="tanh")
    with pytest.raises(ValueError, match="residual must be None or a tensor of x's shape"):
        batch_norm_act(x, None, None, None, None, residual=torch.randn(2, 4, 3, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_act(torch.randn(1, 4, 1, 1), None, None, None, None)
    with pytest.raises(ValueError, match="momentum must be a float in \\[0, 1\\]"):
        batch_norm_act(x, None, None, None, None, momentum=None)
    with pytest.raises(ValueError, match="weight must be None or a tensor of shape \\(4,\\)"):
        batch_norm_act(x, torch.ones(3), None, None, None)
    with pytest.raises(ValueError, match="running_mean and running_var must both"):
        batch_norm_act(x, None, None, torch.zeros(4), None)
    with pytest.raises(ValueError, match="x dtype must be float16, bfloat16 or float32"):
        batch_norm_act(x.double(), None, None, None, None, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        batch_norm_act(x, None, None, None, None, backend="cuda")


# (N, C, H, W, layout, act, (kernel_size, stride, padding), dtype)
POOL_CASES = {
    "stem_cl_relu_fp32": (2, 12, 9, 10, "channels_last", "relu", (3, 2, 1), torch.float32),
    "nchw_silu_2x2_fp32": (3, 5, 6, 7, "nchw", "silu", (2, 2, 0), torch.float32),
    "strided_none_s1_fp16": (2, 7, 5, 6, "strided", "none", (3, 1, 1), torch.float16),
}


@pytest.mark.parametrize("name", list(POOL_CASES))
def test_batch_norm_act_max_pool_matches_float64(name):
    """The fused stem end ``max_pool2d(act(bn(x)))``: pooled map, every gradient and the running statistics against
    float64 torch (the pooled map within the BN's rounding; the window maxima are the same taps)."""
    batch, channels, height, width, layout, act, pool, dtype = POOL_CASES[name]
    x = _map((batch, channels, height, width), dtype, layout)
    weight, bias = torch.rand(channels) + 0.5, torch.randn(channels)
    running = (torch.randn(channels), torch.rand(channels) + 0.5)

    def run(fn, x, weight, bias, running, **kw):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
        mean, var = running[0].clone(), running[1].clone()
        out = fn(leaves[0], leaves[1], leaves[2], mean, var, 0.1, 1e-5, act, *pool, **kw)
        out.backward(dout.to(out.dtype))
        return [out.detach()] + [t.grad for t in leaves] + [mean, var]

    out_shape = batch_norm_act_max_pool_torch(x.double(), None, None, None, None, 0.1, 1e-5, act, *pool).shape
    dout = torch.randn(out_shape, dtype=torch.float64)
    got = run(batch_norm_act_max_pool, x, weight, bias, running, backend="triton")
    want = run(batch_norm_act_max_pool_torch, x.double(), weight.double(), bias.double(),
               tuple(t.double() for t in running))
    assert got[0].dtype == dtype and got[0].shape == out_shape
    for label, g, w in zip(("out", "dx", "dweight", "dbias", "running_mean", "running_var"), got, want):
        err = _rel(g, w)
        assert err <= TOL[dtype], f"{name} {label}: relative error {err:.2e}"


def test_batch_norm_act_max_pool_errors():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="padding <= kernel_size // 2"):
        batch_norm_act_max_pool(x, None, None, None, None, kernel_size=3, stride=2, padding=2)
    with pytest.raises(ValueError, match="stride must be an int"):
        batch_norm_act_max_pool(x, None, None, None, None, stride=(2, 1))
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        batch_norm_act_max_pool(torch.randn(2, 4, 2, 2), None, None, None, None, kernel_size=5, padding=1)
    with pytest.raises(ValueError, match="act must be one of"):
        batch_norm_act_max_pool(x, None, None, None, None, act="tanh")


def test_halonet_stem_trains_its_last_norm_and_pool_as_one_op():
    """timm's tiered ByobNet stem (HaloNet-26t's, narrower) in training: with the last BN + ReLU + max pool as one op it
    gives timm's output, input and parameter gradients and running statistics; forward_intermediates (which returns
    the pre-pool map) stays timm's."""
    from timm.models.byobnet import LayerFn, Stem

    from vitzoo.models._conv_norm_act import FusedPoolStem, fuse_conv_norm_acts

    torch.manual_seed(0)
    ref = Stem(3, (6, 8, 16), stride=4, pool="maxpool", layers=LayerFn()).train()
    ours = Stem(3, (6, 8, 16), stride=4, pool="maxpool", layers=LayerFn())
    ours.load_state_dict(ref.state_dict())
    ours = fuse_batch_norm_acts(fuse_conv_norm_acts(ours), "triton").train()
    assert type(ours) is FusedPoolStem
    calls = []
    ours.conv3.bn.forward_fused_max_pool = (lambda f: lambda *a: calls.append(1) or f(*a))(
        ours.conv3.bn.forward_fused_max_pool)
    x = torch.randn(2, 3, 13, 10).contiguous(memory_format=torch.channels_last)
    xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yr, yo = ref(xr), ours(xo)
    assert calls == [1]
    dy = torch.randn_like(yr)
    yr.backward(dy)
    yo.backward(dy)
    assert _rel(yo, yr.double()) < 1e-5 and _rel(xo.grad, xr.grad.double()) < 1e-4
    _assert_trains_like(ref, ours)
    with torch.no_grad():
        (yr, mid_r), (yo, mid_o) = ref.forward_intermediates(x), ours.forward_intermediates(x)
    assert calls == [1] and _rel(mid_o, mid_r.double()) < 1e-5 and _rel(yo, yr.double()) < 1e-5


@pytest.mark.parametrize("act_layer, act", [(nn.Identity, "none"), (nn.ReLU, "relu"), (GELUTanh, "gelu_tanh"),
                                            (nn.SiLU, "silu")])
def test_fused_batch_norm_act2d_matches_timm(act_layer, act):
    """Same parameters, outputs, gradients, running statistics and num_batches_tracked as timm's BatchNormAct2d
    (momentum 0.1 and the cumulative average, momentum=None); eval mode is timm's forward."""
    for momentum in (0.1, None):
        ref = BatchNormAct2d(10, momentum=momentum, act_layer=act_layer)
        ours = fuse_batch_norm_acts(BatchNormAct2d(10, momentum=momentum, act_layer=act_layer), "triton")
        assert type(ours) is FusedBatchNormAct2d and set(ours.state_dict()) == set(ref.state_dict())
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
        ours.load_state_dict(ref.state_dict())
        x = _map((3, 10, 4, 5), torch.float32, "channels_last")
        for step in range(2):
            xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            yr, yo = ref(xr * (step + 1)), ours(xo * (step + 1))
            dy = torch.randn_like(yr)
            yr.backward(dy)
            yo.backward(dy)
            assert _rel(yo, yr.double()) < 1e-5 and _rel(xo.grad, xr.grad.double()) < 1e-4
        _assert_trains_like(ref, ours)
        ref.eval()
        ours.eval()
        with torch.no_grad():
            assert _rel(ours(x), ref(x).double()) < 1e-5


def test_fused_batch_norm_act2d_falls_back_to_timm():
    """CPU tensors without the forced backend, dropout before the activation, eval mode: timm's own forward."""
    bn = fuse_batch_norm_acts(BatchNormAct2d(6, act_layer=nn.ReLU))
    x = torch.randn(2, 6, 3, 3)
    assert not bn.fused_training(x)  # auto: CPU runs timm's
    bn.fused_backend = "triton"
    assert bn.fused_training(x)
    bn.drop = nn.Dropout(0.1)
    assert not bn.fused_training(x)
    bn.drop = nn.Identity()
    bn.act = nn.Tanh()
    assert not bn.fused_training(x)


def test_fused_training_runs_in_graphed_steps_or_when_forced():
    """"auto" takes the fused training ops only inside graph_step_kernels (eager steps are host-bound and the ops'
    Python costs host time); "triton" forces them, "torch" never takes them."""
    from vitzoo.models._step_kernels import fused_training_enabled, graph_step_kernels

    assert fused_training_enabled("triton") and not fused_training_enabled("auto")
    assert not fused_training_enabled("torch")
    with graph_step_kernels():
        assert fused_training_enabled("auto") and not fused_training_enabled("torch")
    bn = fuse_batch_norm_acts(BatchNormAct2d(6, act_layer=nn.ReLU), "triton")
    x = torch.randn(2, 6, 3, 3)
    assert bn.fused_training(x)
    bn.fused_backend = "auto"
    with graph_step_kernels():
        assert not bn.fused_training(x)  # auto: CPU tensors still run timm's


def test_halonet_block_tails_train_through_the_op():
    """ByobNet bottleneck / self-attention blocks (HaloNet's) in training: the tail relu(bn3(conv3) + shortcut) as one
    op gives timm's outputs, input and parameter gradients and running statistics."""
    from timm.models.byobnet import BottleneckBlock, LayerFn

    from vitzoo.models._conv_norm_act import FusedBottleneckBlock, fuse_conv_norm_acts

    torch.manual_seed(0)
    # HaloNet's downsampling shortcuts are conv1x1 -> BN (the op normalizes them inside the add); "avg" is a pooled
    # DownsampleAvg, which runs as its own module
    for in_chs, out_chs, stride, downsample in ((16, 32, 1, "conv1x1"), (16, 16, 2, "conv1x1"), (16, 24, 2, "avg"),
                                                (16, 16, 1, "conv1x1")):
        ref = BottleneckBlock(in_chs, out_chs, stride=stride, downsample=downsample, layers=LayerFn()).train()
        ours = BottleneckBlock(in_chs, out_chs, stride=stride, downsample=downsample, layers=LayerFn())
        ours.load_state_dict(ref.state_dict())
        ours = fuse_batch_norm_acts(fuse_conv_norm_acts(ours), "triton").train()
        assert type(ours) is FusedBottleneckBlock
        norms = []  # the tail's call: the shortcut's conv -> BN goes into the op as its residual norm
        ours.conv3_1x1.bn.forward_fused = (lambda f: lambda *a: norms.append(a[3]) or f(*a))(
            ours.conv3_1x1.bn.forward_fused)
        x = torch.randn(2, in_chs, 6, 5).contiguous(memory_format=torch.channels_last)
        xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yr, yo = ref(xr), ours(xo)
        assert norms == [getattr(ours.shortcut, "bn", None)], norms  # identity and avg shortcuts: none
        dy = torch.randn_like(yr)
        yr.backward(dy)
        yo.backward(dy)
        assert _rel(yo, yr.double()) < 1e-5 and _rel(xo.grad, xr.grad.double()) < 1e-4
        grads_r = torch.cat([p.grad.flatten() for p in ref.parameters()])
        grads_o = torch.cat([p.grad.flatten() for p in ours.parameters()])
        assert _rel(grads_o, grads_r.double()) < 1e-4
        _assert_trains_like(ref, ours)


def test_models_convert_their_batch_norms():
    """vz_halonet26t and vz_maxvit_tiny_224 train every BatchNormAct2d through the op (timm's forward on CPU)."""
    import timm

    import vitzoo  # noqa: F401

    for name, count in (("vz_halonet26t", 31), ("vz_maxvit_tiny_224", 34)):
        model = timm.create_model(name)
        assert sum(type(m) is FusedBatchNormAct2d for m in model.modules()) == count, name
        assert not any(type(m) is BatchNormAct2d for m in model.modules()), name
    from vitzoo.models._conv_norm_act import FusedPoolStem

    assert type(timm.create_model("vz_halonet26t").stem) is FusedPoolStem


# C -> (stats, transform, backward reduce, backward) tiles as (BLOCK_M, BLOCK_C, warps): the H100 winners at
# HaloNet-26t's norms (kernels/README.md, "Sixteenth run" for the elementwise kernels, "Seventeenth run" for the
# reductions)
UNTUNED_AT_MEASURED = {
    24: ((64, 32, 2), (128, 32, 4), (64, 32, 2), (128, 32, 4)),
    64: ((64, 64, 4), (64, 128, 8), (32, 64, 2), (32, 128, 4)),
    256: ((64, 64, 4), (16, 256, 4), (32, 64, 2), (16, 256, 4)),
    2048: ((64, 64, 4), (16, 256, 4), (32, 64, 2), (16, 256, 4)),
}


@pytest.mark.parametrize("channels", list(UNTUNED_AT_MEASURED))
def test_untuned_tiles_are_the_measured_winners(channels):
    from vitzoo.kernels import batch_norm_act_bwd, batch_norm_act_bwd_reduce, batch_norm_act_fwd, batch_norm_stats

    kernels = (batch_norm_stats._batch_norm_stats_kernel, batch_norm_act_fwd._batch_norm_act_fwd_kernel,
               batch_norm_act_bwd_reduce._batch_norm_act_bwd_reduce_kernel,
               batch_norm_act_bwd._batch_norm_act_bwd_kernel)
    modules = (batch_norm_stats, batch_norm_act_fwd, batch_norm_act_bwd_reduce, batch_norm_act_bwd)
    for module, kernel, want in zip(modules, kernels, UNTUNED_AT_MEASURED[channels]):
        config = module._untuned(kernel.configs, {"C": channels})
        assert (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_C"], config.num_warps) == want, module.__name__


def test_relu_mask_bits_are_z_positive():
    """The packed mask of a block tail: bit c % 8 of byte (m, c // 8) is ``z > 0`` for every row m (NCHW rows too),
    and a ReLU tail with C % 8 == 0 saves it (not the output) for the backward."""
    from vitzoo.kernels.batch_norm_act_fwd import batch_norm_act_fwd
    from vitzoo.ops._batch_norm_triton import z_source

    for layout in ("channels_last", "nchw"):
        x = _map((2, 24, 3, 5), torch.float32, layout, 1.0, 0.0)
        res = _map((2, 24, 3, 5), torch.float32, layout, 1.0, 0.0)
        stats = torch.stack([torch.zeros(24), torch.ones(24), torch.ones(24), torch.zeros(24)])
        y, mask = batch_norm_act_fwd(x, stats, "relu", res, relu_mask=True)
        z = (x + res).permute(0, 2, 3, 1).reshape(-1, 24)  # rows m = n * H * W + l
        bits = (mask.to(torch.int32).repeat_interleave(8, dim=1) >> (torch.arange(24) % 8)) & 1
        assert mask.shape == (30, 3) and mask.dtype == torch.uint8 and torch.equal(bits.bool(), z > 0), layout
        assert torch.equal(y, torch.relu(x + res))
    assert z_source("relu", True, 24) == "relu_mask" and z_source("relu", True, 20) == "output"
    with pytest.raises(ValueError, match="relu_mask needs C divisible by 8"):
        batch_norm_act_fwd(torch.randn(2, 20, 3, 3), stats[:, :20], "relu", None, relu_mask=True)


@pytest.mark.parametrize("channels, act, layout", [(16, "relu", "channels_last"), (12, "relu", "nchw"),
                                                   (9, "none", "channels_last")])
def test_residual_norm_matches_float64(channels, act, layout):
    """``act(bn(x) + bn_r(residual))`` (a downsampling block's tail, the shortcut's norm inside the add): output,
    the gradients of x, the residual and both norms' parameters, and both norms' running statistics against float64
    torch. C = 16 takes the packed ReLU mask, C = 12 the output."""
    from vitzoo.ops import ResidualNorm

    shape = (3, channels, 5, 4)
    x, res = _map(shape, torch.float32, layout), _map(shape, torch.float32, layout, 3.0, -1.0)
    params = [torch.rand(channels) + 0.5, torch.randn(channels), torch.rand(channels) + 0.5, torch.randn(channels)]
    running = [torch.randn(channels), torch.rand(channels) + 0.5, torch.randn(channels), torch.rand(channels) + 0.5]
    dy = torch.randn(shape, dtype=torch.float64)

    def run(fn, dtype, **kw):
        leaves = [t.detach().to(dtype).clone().requires_grad_(True) for t in [x, res] + params]
        stats = [t.to(dtype).clone() for t in running]
        norm = ResidualNorm(leaves[4], leaves[5], stats[2], stats[3], 0.2, 1e-4)
        y = fn(leaves[0], leaves[2], leaves[3], stats[0], stats[1], 0.1, 1e-5, act, leaves[1], residual_norm=norm,
               **kw)
        y.backward(dy.to(dtype))
        return [y.detach()] + [t.grad for t in leaves] + stats

    got = run(batch_norm_act, torch.float32, backend="triton")
    want = run(batch_norm_act_torch, torch.float64)
    names = ("y", "dx", "dresidual", "dweight", "dbias", "dres_weight", "dres_bias", "running_mean", "running_var",
             "res_running_mean", "res_running_var")
    for label, g, w in zip(names, got, want):
        assert _rel(g, w) <= TOL[torch.float32], f"{label}: relative error {_rel(g, w):.2e}"


def test_residual_norm_errors():
    from vitzoo.ops import ResidualNorm

    x = torch.randn(2, 8, 3, 3)
    norm = ResidualNorm(None, None, None, None)
    with pytest.raises(ValueError, match="residual_norm needs a residual"):
        batch_norm_act(x, None, None, None, None, act="relu", residual_norm=norm)
    with pytest.raises(ValueError, match="residual_norm must be None or a vitzoo.ops.ResidualNorm"):
        batch_norm_act(x, None, None, None, None, act="relu", residual=x, residual_norm=(None,) * 6)
    with pytest.raises(ValueError, match="batch_norm_act residual_norm: weight must be None or a tensor of shape"):
        batch_norm_act(x, None, None, None, None, act="relu", residual=x, residual_norm=norm._replace(
            weight=torch.ones(3)))
    with pytest.raises(ValueError, match="act must be none or relu with a residual_norm"):
        batch_norm_act(x, None, None, None, None, act="gelu", residual=x, residual_norm=norm, backend="triton")
