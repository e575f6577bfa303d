"""Inference ops of MaxViT's MBConv and the fused block that uses them: the depthwise conv + bias + GELU kernel and
the SE gate-multiply kernel under the CPU interpreter against float64 (NaN-poisoned outputs, odd sizes and channel
counts, strided pixels, asymmetric "same" padding, strides 1-3, K 3 / 5, fp32 / fp16), their errors, and
``FusedMbConvBlock`` against timm's ``MbConvBlock`` on the same parameters (stride 1 / 2, even and odd maps)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.layers.padding import get_padding_value, pad_same  # noqa: E402
from timm.models.maxxvit import MaxxVitConvCfg, MbConvBlock  # noqa: E402

import vitzoo.models._mbconv as mbconv  # noqa: E402
from vitzoo.ops import channel_scale_, depthwise_conv2d_act, same_padding  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _nhwc(batch, height, width, channels, dtype):
    """An NHWC view with channel stride 1 and strided pixels (a channel slice of a wider channels_last buffer)."""
    wide = torch.randn(batch, height, width, channels + 3)
    return wide[..., 1:channels + 1].to(dtype)


def _gelu_tanh64(x):
    return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))


# (B, H, W, C, K, stride, (top, bottom, left, right), act, dtype)
DW_CASES = {
    "s1_sym_gelu_fp32": (2, 7, 9, 20, 3, 1, (1, 1, 1, 1), "gelu_tanh", torch.float32),
    "s2_tf_same_even_gelu_fp32": (1, 8, 6, 33, 3, 2, (0, 1, 0, 1), "gelu_tanh", torch.float32),
    "s2_odd_none_fp16": (2, 7, 5, 17, 3, 2, (1, 1, 1, 1), "none", torch.float16),
    "k5_gelu_fp16": (1, 9, 9, 8, 5, 1, (2, 2, 2, 2), "gelu_tanh", torch.float16),
    "s3_asym_none_fp32": (1, 6, 7, 24, 3, 3, (0, 2, 1, 1), "none", torch.float32),
}


@pytest.mark.parametrize("name", list(DW_CASES))
def test_depthwise_conv_matches_float64(name):
    batch, height, width, channels, k, stride, pad, act, dtype = DW_CASES[name]
    x = _nhwc(batch, height, width, channels, dtype)
    weight, bias = torch.randn(channels, 1, k, k) * 0.3, torch.randn(channels)
    out = depthwise_conv2d_act(x, weight, bias, stride, pad, act, backend="triton")
    top, bottom, left, right = pad
    want = F.conv2d(F.pad(x.double().permute(0, 3, 1, 2), (left, right, top, bottom)), weight.double(),
                    bias.double(), stride, groups=channels).permute(0, 2, 3, 1)
    if act == "gelu_tanh":
        want = _gelu_tanh64(want)
    assert out.shape == want.shape and out.dtype == dtype and out.is_contiguous()
    err = float((out.double() - want).abs().max()) / float(want.abs().max())
    assert err <= TOL[dtype], f"{name}: relative error {err:.2e}"
    ref = depthwise_conv2d_act(x, weight, bias, stride, pad, act, backend="torch")
    assert float((ref.double() - want).abs().max()) / float(want.abs().max()) <= TOL[dtype]


def test_depthwise_weights_changed_in_place_are_reread():
    """The op caches its kernel-layout weights: an in-place change of the weight or bias must reach the kernel."""
    x = torch.randn(1, 6, 6, 20)
    weight, bias = torch.randn(20, 1, 3, 3), torch.randn(20)
    with torch.no_grad():
        for _ in range(2):
            got = depthwise_conv2d_act(x, weight, bias, 1, (1, 1, 1, 1), backend="triton")
            want = depthwise_conv2d_act(x, weight, bias, 1, (1, 1, 1, 1), backend="torch")
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            weight.mul_(-2.0)
            bias.add_(1.0)


def test_untuned_depthwise_tile(monkeypatch):
    """With VITZOO_AUTOTUNE=0 on a GPU the kernel runs the H100 winners: (16, 128) on wide maps, (8, 128) on 7x7."""
    from vitzoo.kernels import depthwise_conv_fwd as module

    monkeypatch.setenv("VITZOO_AUTOTUNE", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read per call by the pruner; nothing is launched here
    configs = module._depthwise_conv_fwd_kernel.configs
    for w_out, tile in ((56, (16, 128)), (14, (16, 128)), (7, (8, 128)), (4, (8, 128))):
        (picked,) = module._prune(configs, {"W_OUT": w_out})
        assert (picked.kwargs["BLOCK_W"], picked.kwargs["BLOCK_C"]) == tile and picked.num_warps == 4
    monkeypatch.setenv("VITZOO_AUTOTUNE", "1")
    assert module._prune(configs, {"W_OUT": 56}) == configs


def test_depthwise_conv_errors():
    x = torch.randn(1, 5, 5, 4)
    w = torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="act must be one of"):
        depthwise_conv2d_act(x, w, None, 1, (1, 1, 1, 1), "relu")
    with pytest.raises(ValueError, match="padding must be 4 non-negative ints"):
        depthwise_conv2d_act(x, w, None, 1, (1, 1))
    with pytest.raises(ValueError, match="weight \\(C, 1, K, K\\)"):
        depthwise_conv2d_act(x, torch.randn(5, 1, 3, 3), None, 1, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="bias must be None or \\(4,\\)"):
        depthwise_conv2d_act(x, w, torch.zeros(3), 1, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="stride must be a positive int"):
        depthwise_conv2d_act(x, w, None, 0, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="needs channel stride 1"):  # an NCHW map seen as (B, H, W, C)
        depthwise_conv2d_act(torch.randn(1, 4, 5, 5).permute(0, 2, 3, 1), w, None, 1, (1, 1, 1, 1),
                             backend="triton")
    with pytest.raises(ValueError, match="inference-only"):
        depthwise_conv2d_act(x, w.requires_grad_(), None, 1, (1, 1, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_channel_scale_matches_float64(dtype):
    x = torch.randn(2, 5, 7, 40).to(dtype)
    gate = torch.rand(2, 40)
    want = x.double() * gate.double()[:, None, None, :]
    out = channel_scale_(x, gate, backend="triton")
    assert out is x
    assert float((x.double() - want).abs().max()) <= TOL[dtype] * float(want.abs().max())
    with pytest.raises(ValueError, match="gate \\(B, C\\)"):
        channel_scale_(x, gate[:, :3])
    with pytest.raises(ValueError, match="dense pixels"):
        channel_scale_(_nhwc(2, 5, 7, 40, torch.float32), gate, backend="triton")
    with pytest.raises(ValueError, match="inference-only"):
        channel_scale_(x.float().requires_grad_(), gate)


@pytest.mark.parametrize("size", [5, 6, 7, 112, 113])
@pytest.mark.parametrize("stride", [1, 2])
def test_same_padding_is_timms(size, stride):
    """Our (before, after, out) against timm's pad_same on a map of that size."""
    before, after, out = same_padding(size, 3, stride)
    padded = pad_same(torch.zeros(1, 1, size, size), (3, 3), (stride, stride))
    assert padded.shape[-1] == size + before + after
    assert out == (size + before + after - 3) // stride + 1
    _, dynamic = get_padding_value("same", 3, stride=stride)
    assert dynamic == (stride > 1)  # stride 1 is timm's static symmetric padding, which same_padding also gives


def _tf_block(in_chs, out_chs, stride):
    cfg = MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same")
    block = MbConvBlock(in_chs, out_chs, stride=stride, cfg=cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for bn in (block.pre_norm, block.norm1, block.norm2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return block


@pytest.mark.parametrize("in_chs,out_chs,stride,size", [(16, 16, 1, 7), (16, 32, 2, 8), (8, 16, 2, 7)])
def test_fused_mbconv_matches_timm(in_chs, out_chs, stride, size, monkeypatch):
    torch.manual_seed(0)
    timm_block = _tf_block(in_chs, out_chs, stride)
    fused = mbconv.fuse_mbconv_blocks(_tf_block(in_chs, out_chs, stride), backend="triton")
    fused.load_state_dict(timm_block.state_dict())
    assert type(fused) is mbconv.FusedMbConvBlock and mbconv.fusable(timm_block)
    calls = []
    real = mbconv.depthwise_conv2d_act
    monkeypatch.setattr(mbconv, "depthwise_conv2d_act", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(2, in_chs, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = timm_block(x)
        got = fused(x)
        again = fused(x)  # folded weights from the cache
    assert calls == [1, 1]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert torch.equal(again, got)
    with torch.no_grad():  # a changed running statistic rebuilds the folded weights
        fused.norm2.running_var.mul_(2.0)
        timm_block.norm2.running_var.mul_(2.0)
        torch.testing.assert_close(fused(x), timm_block(x), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # with autograd (training, fine-tuning) and on the torch backend the block is timm's forward, exactly
    assert torch.equal(fused(x), timm_block(x)) and len(calls) == 3
    fused.fused_backend = "torch"
    with torch.no_grad():
        assert torch.equal(fused(x), timm_block(x)) and len(calls) == 3


def test_unfusable_blocks_stay_timms():
    cfg = MaxxVitConvCfg(act_layer="gelu")  # exact GELU: not the kernel's tanh form
    block = mbconv.fuse_mbconv_blocks(MbConvBlock(8, 8, cfg=cfg))
    assert type(block) is MbConvBlock and not mbconv.fusable(block)


def test_maxvit_inference_runs_fused_mbconv(monkeypatch):
    """vz_maxvit_tiny_224 (32 px maps, window 1) with its MBConvs on the Triton backend runs all 11 fused in
    inference and matches the same weights on the torch backend (timm's MBConv); with autograd it runs timm's. The
    attention stays on torch (the whole model on the interpreter takes minutes; tests/test_models_maxvit_davit.py
    covers the attention op)."""
    import timm

    import vitzoo  # noqa: F401

    torch.manual_seed(0)
    ref = timm.create_model("vz_maxvit_tiny_224", img_size=32, attn_backend="torch").eval()
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    ours = timm.create_model("vz_maxvit_tiny_224", img_size=32, attn_backend="torch").eval()
    ours.load_state_dict(ref.state_dict())
    for m in ours.modules():
        if type(m) is mbconv.FusedMbConvBlock:
            m.fused_backend = "triton"
    calls = []
    real = mbconv.depthwise_conv2d_act
    monkeypatch.setattr(mbconv, "depthwise_conv2d_act", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert len(calls) == 11 and sum(type(m) is mbconv.FusedMbConvBlock for m in ours.modules()) == 11
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    ours(x)  # autograd on: timm's MBConv forward
    assert len(calls) == 11


_SM90_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from vitzoo.kernels import channel_scale, depthwise_conv_fwd

for kernel, consts, bf16_pointers, fp32_pointers in (
        (depthwise_conv_fwd._depthwise_conv_fwd_kernel,
         dict(K=3, STRIDE=2, ACT="gelu_tanh", BLOCK_W=16, BLOCK_C=64), ("X", "OUT"), ("WEIGHT", "BIAS")),
        (channel_scale._channel_scale_kernel, dict(BLOCK_P=32, BLOCK_C=128, HAS_SHIFT=True),
         ("X", "GATE", "SHIFT", "OUT"), ())):
    fn = kernel.fn
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in bf16_pointers + fp32_pointers:
            signature[name] = "*fp32" if name in fp32_pointers else "*bf16"
        else:
            signature[name] = "i32"
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts)
    assert triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
print("compiled")
"""


def test_kernels_compile_for_sm90_bf16():
    """The interpreter accepts more than a GPU: compile both kernels for an H100 (sm_90) in bf16 (ptxas runs on the
    CPU; a subprocess, since the interpreter replaces triton.jit in this one)."""
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, "-c", _SM90_COMPILE], env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_tile_sweep_says_it_needs_a_gpu():
    """kernels/tile_sweep.py (the GPU tool that chose the untuned tiles) refuses to run without CUDA, naming why."""
    from vitzoo.kernels import tile_sweep

    with pytest.raises(SystemExit, match="needs a CUDA device"):
        tile_sweep.main(["--only", "routed"])
    with pytest.raises(SystemExit):
        tile_sweep.main(["--only", "attention"])  # argparse: not one of the sweeps
