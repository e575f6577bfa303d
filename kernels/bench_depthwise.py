"""Training depthwise-conv benchmark (run by kernels/bench.py on the device machine): vitzoo's
:func:`vitzoo.ops.depthwise_conv2d` (implicit "same" padding, Triton forward and backwards) against timm's
``Conv2dSame`` / ``Conv2d`` (``F.pad`` for the stride-2 maps, then cuDNN) at MaxViT-T's MBConv shapes (batch 128,
4x-expanded channels, bf16 autocast, channels_last), forward and forward + backward, with the HBM floor of the
forward (x read and y written once).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ._bench_utils import hbm_floor_ms, timed_row

PATTERN = "depthwise"
BATCH = 128
# (case, C, input size, stride): each stage's stride-2 first block and a stride-1 block
CASES = (("maxvit_t_s1_first_112_s2", 256, 112, 2), ("maxvit_t_s1_56", 256, 56, 1),
         ("maxvit_t_s2_first_56_s2", 512, 56, 2), ("maxvit_t_s2_28", 512, 28, 1),
         ("maxvit_t_s3_first_28_s2", 1024, 28, 2), ("maxvit_t_s3_14", 1024, 14, 1),
         ("maxvit_t_s4_first_14_s2", 2048, 14, 2), ("maxvit_t_s4_7", 2048, 7, 1))


def _same(size: int, stride: int):
    out = -(-size // stride)
    total = max((out - 1) * stride + 3 - size, 0)
    return total // 2, total - total // 2


def run(quick: bool = False) -> List[dict]:
    from vitzoo.ops import depthwise_conv2d

    rows: List[dict] = []
    for case, channels, size, stride in (CASES[::2] if quick else CASES):
        top, bottom = _same(size, stride)
        pad = (top, bottom, top, bottom)
        x = torch.randn(BATCH, channels, size, size, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        w = (0.3 * torch.randn(channels, 1, 3, 3, device="cuda")).requires_grad_(True)

        def ours():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return depthwise_conv2d(x, w, None, stride, pad)

        def timm_form():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if top == bottom:
                    return F.conv2d(x, w, None, stride, top, groups=channels)
                return F.conv2d(F.pad(x, (top, bottom, top, bottom)), w, None, stride, groups=channels)

        with torch.no_grad():  # no autograd graph may outlive this line: a kept one breaks the backward's capture
            out = ours()
        grad = torch.randn_like(out)
        floor = hbm_floor_ms(x.numel() * 2 + out.numel() * 2)
        for impl, fn in (("vitzoo_triton", ours), ("timm_cudnn", timm_form)):
            rows.append(timed_row(PATTERN, case, impl, fn, grad, [x, w], f"shape={tuple(x.shape)} stride={stride} "
                                  f"pad={pad}", dtype="bf16", floor_ms=floor))
        del x, grad, out
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
