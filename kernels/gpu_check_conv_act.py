"""GPU correctness of the conv blocks' ops in bf16 / fp16 / fp32 against float64: MBConv's inference kernels
(``depthwise_conv_fwd.py``, ``channel_scale.py``) at MaxViT-T's shapes (the 4x-expanded maps, stride 1 and the
stride-2 TF "same" padding), the fused MBConv block against timm's on the same parameters, cuDNN's fused
conv + bias (+ residual) + ReLU (``vitzoo.ops.conv2d_bias_relu``) at HaloNet-26t's shapes, and the training ops
(``vitzoo.ops.depthwise_conv2d`` and ``squeeze_excite``: outputs and every gradient) at the depthwise shapes. Rule:
error <= 2 x torch's own error in the same dtype (cuDNN's depthwise conv + torch's GELU; torch's broadcast multiply;
timm's block; conv, add, relu; torch's forward and backward) + a small floor."""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from ._bench_utils import rel_err, row

PATTERN = "conv_act"
DEVICE = "cuda"
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-6}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# (case, batch, H, W, C, stride, (top, bottom, left, right))
DW_CASES = (("maxvit_t_s1_first_112_s2", 32, 112, 112, 256, 2, (0, 1, 0, 1)),
            ("maxvit_t_s1_56", 32, 56, 56, 256, 1, (1, 1, 1, 1)),
            ("maxvit_t_s4_7", 64, 7, 7, 3072, 1, (1, 1, 1, 1)),
            ("odd_15x13_s2_c100", 8, 15, 13, 100, 2, (1, 1, 1, 1)))
# (case, batch, C_in, C_out, map, kernel, stride, with residual)
CONV_RELU_CASES = (("halonet26t_s1_1x1_64to256_add", 32, 64, 256, 56, 1, 1, True),
                   ("halonet26t_s1_3x3_64", 32, 64, 64, 56, 3, 1, False),
                   ("halonet26t_s2_3x3_128_s2", 32, 128, 128, 56, 3, 2, False),
                   ("stem_3x3_3to24_s2", 32, 3, 24, 255, 3, 2, False))
BLOCK_CASES = (("stride1_c64_28", 16, 64, 64, 1, 28), ("stride2_c64_c128_28", 16, 64, 128, 2, 28),
               ("stride2_odd_c48_15", 8, 48, 96, 2, 15))


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _depthwise_rows() -> List[Dict]:
    from vitzoo.ops import channel_scale_, depthwise_conv2d_act

    rows: List[Dict] = []
    for case, batch, height, width, channels, stride, pad in DW_CASES:
        x64 = torch.randn(batch, channels, height, width, device=DEVICE, dtype=torch.float64)
        x64 = x64.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        w64 = torch.randn(channels, 1, 3, 3, device=DEVICE, dtype=torch.float64) * 0.3
        b64 = torch.randn(channels, device=DEVICE, dtype=torch.float64)
        gate64 = torch.rand(batch, channels, device=DEVICE, dtype=torch.float64)
        top, bottom, left, right = pad

        def torch_dw(x, w, b):
            return _gelu_tanh(F.conv2d(F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom)), w, b, stride,
                                       groups=channels)).permute(0, 2, 3, 1)

        exact = torch_dw(x64, w64, b64)
        exact_scaled = exact * gate64[:, None, None, :]
        for dtype in DTYPES:
            x = x64.to(dtype)
            with torch.no_grad():
                ours = depthwise_conv2d_act(x, w64.float(), b64.float(), stride, pad, "gelu_tanh", backend="triton")
                ref = torch_dw(x, w64.to(dtype), b64.to(dtype))
                err, ref_err = rel_err(ours, exact), rel_err(ref, exact)
                rows.append(row(PATTERN, f"dw_{case}", "out", dtype=str(dtype)[6:], err=err, ref_err=ref_err,
                                ok=bool(err <= 2 * ref_err + FLOOR[dtype] and ours.dtype == dtype)))
                gate = gate64.to(dtype)
                scaled = channel_scale_(ours.clone(), gate, backend="triton")
                ref_scaled = ref * gate[:, None, None, :]
                err, ref_err = rel_err(scaled, exact_scaled), rel_err(ref_scaled, exact_scaled)
                rows.append(row(PATTERN, f"scale_{case}", "out", dtype=str(dtype)[6:], err=err, ref_err=ref_err,
                                ok=bool(err <= 2 * ref_err + FLOOR[dtype])))
    return rows


def _block_rows() -> List[Dict]:
    from timm.models.maxxvit import MaxxVitConvCfg, MbConvBlock

    from vitzoo.models._mbconv import FusedMbConvBlock, fuse_mbconv_blocks

    rows: List[Dict] = []
    cfg = MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same")
    for case, batch, in_chs, out_chs, stride, size in BLOCK_CASES:
        timm_block = MbConvBlock(in_chs, out_chs, stride=stride, cfg=cfg).to(DEVICE).eval()
        with torch.no_grad():
            for bn in (timm_block.pre_norm, timm_block.norm1, timm_block.norm2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
        fused = fuse_mbconv_blocks(MbConvBlock(in_chs, out_chs, stride=stride, cfg=cfg), backend="triton")
        fused = fused.to(DEVICE).eval()
        fused.load_state_dict(timm_block.state_dict())
        assert type(fused) is FusedMbConvBlock
        x = torch.randn(batch, in_chs, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            exact = timm_block.double()(x.double())
            timm_block.float()
            for dtype in (torch.bfloat16, torch.float32):
                with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    ours, ref = fused(x), timm_block(x)
                err, ref_err = rel_err(ours, exact), rel_err(ref, exact)
                rows.append(row(PATTERN, f"mbconv_{case}", "fused_block", dtype=str(dtype)[6:], err=err,
                                ref_err=ref_err, ok=bool(err <= 2 * ref_err + FLOOR[dtype])))
    return rows


def _conv_relu_rows() -> List[Dict]:
    from vitzoo.ops import conv2d_bias_relu

    rows: List[Dict] = []
    for case, batch, c_in, c_out, size, k, stride, with_residual in CONV_RELU_CASES:
        x64 = torch.randn(batch, c_in, size, size, device=DEVICE, dtype=torch.float64)
        w64 = torch.randn(c_out, c_in, k, k, device=DEVICE, dtype=torch.float64) / (c_in * k * k) ** 0.5
        b64 = torch.randn(c_out, device=DEVICE, dtype=torch.float64)
        out_size = (size + 2 * (k // 2) - k) // stride + 1
        z64 = (torch.randn(batch, c_out, out_size, out_size, device=DEVICE, dtype=torch.float64)
               if with_residual else None)

        def torch_ref(x, w, b, z):
            out = F.conv2d(x, w, b, stride, k // 2)
            return torch.relu(out if z is None else out + z)

        exact = torch_ref(x64, w64, b64, z64)
        for dtype in DTYPES:
            cl = dict(memory_format=torch.channels_last)
            x, w = x64.to(dtype).contiguous(**cl), w64.to(dtype).contiguous(**cl)
            z = None if z64 is None else z64.to(dtype).contiguous(**cl)
            with torch.no_grad():
                ours = conv2d_bias_relu(x, w, b64.to(dtype), (stride, stride), (k // 2, k // 2), residual=z)
                ref = torch_ref(x, w, b64.to(dtype), z)
            err, ref_err = rel_err(ours, exact), rel_err(ref, exact)
            rows.append(row(PATTERN, f"conv_relu_{case}", "out", dtype=str(dtype)[6:], err=err, ref_err=ref_err,
                            ok=bool(err <= 2 * ref_err + FLOOR[dtype] and ours.dtype == dtype)))
    return rows


def _grads(fn, leaves64, dtype, grad64):
    """Output and input gradients of fn on copies of the float64 leaves cast to ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in leaves64]
    leaves[0] = leaves[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = fn(*leaves)
    out.backward(grad64.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def _training_rows() -> List[Dict]:
    """The training ops: depthwise conv with per-side padding (output, dx, dweight, dbias) and squeeze-and-excite
    (output, dx, the gate MLP's parameter gradients), against float64, with torch's own error as the yardstick."""
    from vitzoo.ops import depthwise_conv2d, squeeze_excite

    rows: List[Dict] = []
    for case, batch, height, width, channels, stride, pad in DW_CASES:
        x64 = torch.randn(batch, channels, height, width, device=DEVICE, dtype=torch.float64)
        w64 = torch.randn(channels, 1, 3, 3, device=DEVICE, dtype=torch.float64) * 0.3
        b64 = torch.randn(channels, device=DEVICE, dtype=torch.float64)
        top, bottom, left, right = pad

        def ref_fn(x, w, b):
            return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, groups=channels)

        def ours_fn(x, w, b):
            return depthwise_conv2d(x, w, b, stride, pad, backend="triton")

        grad64 = torch.randn_like(ref_fn(x64, w64, b64))
        exact = _grads(ref_fn, [x64, w64, b64], torch.float64, grad64)
        for dtype in DTYPES:
            got, ref = _grads(ours_fn, [x64, w64, b64], dtype, grad64), _grads(ref_fn, [x64, w64, b64], dtype, grad64)
            for name, g, r, e in zip(("out", "dx", "dweight", "dbias"), got, ref, exact):
                err, ref_err = rel_err(g, e), rel_err(r, e)
                rows.append(row(PATTERN, f"dw_train_{case}", name, dtype=str(dtype)[6:], err=err, ref_err=ref_err,
                                ok=bool(err <= 2 * ref_err + FLOOR[dtype] and g.dtype == r.dtype)))
    for case, batch, height, width, channels, _, _ in DW_CASES:
        fc1_64 = torch.randn(channels // 4, channels, device=DEVICE, dtype=torch.float64) / channels ** 0.5
        fc2_64 = torch.randn(channels, channels // 4, device=DEVICE, dtype=torch.float64) / (channels // 4) ** 0.5
        x64 = torch.randn(batch, channels, height, width, device=DEVICE, dtype=torch.float64)

        def gate(fc1, fc2):
            return lambda m: torch.sigmoid(F.conv2d(F.silu(F.conv2d(m, fc1[:, :, None, None])), fc2[:, :, None, None]))

        def ref_fn(x, fc1, fc2):
            return x * gate(fc1, fc2)(x.mean((2, 3), keepdim=True))

        def ours_fn(x, fc1, fc2):
            return squeeze_excite(x, gate(fc1, fc2), [fc1, fc2], backend="triton")

        grad64 = torch.randn_like(x64)
        exact = _grads(ref_fn, [x64, fc1_64, fc2_64], torch.float64, grad64)
        for dtype in DTYPES:
            got = _grads(ours_fn, [x64, fc1_64, fc2_64], dtype, grad64)
            ref = _grads(ref_fn, [x64, fc1_64, fc2_64], dtype, grad64)
            for name, g, r, e in zip(("out", "dx", "dfc1", "dfc2"), got, ref, exact):
                err, ref_err = rel_err(g, e), rel_err(r, e)
                rows.append(row(PATTERN, f"se_train_{case}", name, dtype=str(dtype)[6:], err=err, ref_err=ref_err,
                                ok=bool(err <= 2 * ref_err + FLOOR[dtype] and g.dtype == r.dtype)))
    return rows


def run() -> List[Dict]:
    torch.manual_seed(0)
    return _depthwise_rows() + _block_rows() + _conv_relu_rows() + _training_rows()
