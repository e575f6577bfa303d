"""Cascaded group attention (EfficientViT inference) benchmark: one layer (``LocalWindowAttention``: every head's
projection, query conv and window attention, then the output projection) at EfficientViT-M5's three stage shapes at
224, batch 256, bf16 autocast, channels_last, eval (BatchNorms folded where the implementation folds them), no
autograd. HBM floor: the layer's input read once and its output written once (the kernel's own traffic: x read,
the heads' outputs written; the projection's read and write come on top).

* ``vitzoo_one_op``: vitzoo's layer, every head in one :func:`vitzoo.ops.cascaded_group_attention` call;
* ``vitzoo_per_head``: vitzoo's layer with one neighborhood-attention call per head (its training path);
* ``timm``: timm's ``LocalWindowAttention`` on the same weights (window partition copies, per-head matmuls);
* ``timm_compile`` (full runs only): ``torch.compile`` of timm's layer.
"""
from __future__ import annotations

from typing import List

import torch

from ._bench_utils import gpu_time_ms, hbm_floor_ms, row, time_ms
from .gpu_check_cascaded import randomize

PATTERN = "cascaded"
BATCH = 256
# (case, dim, heads, map, kernels) of EfficientViT-M5 at 224 (key dim 16, windows of 7)
CASES = (("m5_s1_14x14", 192, 3, 14, (7, 5, 3)), ("m5_s2_7x7", 288, 3, 7, (7, 5, 3)),
         ("m5_s3_4x4", 384, 4, 4, (7, 5, 3, 3)))


def _layers(dim: int, heads: int, size: int, kernels):
    """(timm's layer, vitzoo's) on the same random weights, eval, channels_last, on the GPU."""
    from timm.models.efficientvit_msra import LocalWindowAttention

    from vitzoo.models.efficientvit_msra import LocalWindowAttentionVz

    args = dict(dim=dim, key_dim=16, num_heads=heads, attn_ratio=dim / (16 * heads), resolution=size,
                window_resolution=7, kernels=kernels)
    ref = randomize(LocalWindowAttention(**args))
    ours = LocalWindowAttentionVz(**args)
    ours.load_state_dict(ref.state_dict())
    to_gpu = dict(device="cuda", memory_format=torch.channels_last)
    return ref.to(**to_gpu).eval(), ours.to(**to_gpu).eval()


def run(quick: bool = False) -> List[dict]:
    rows: List[dict] = []
    for case, dim, heads, size, kernels in CASES:
        ref, ours = _layers(dim, heads, size, kernels)
        per_head = type(ours)(dim, 16, heads, dim / (16 * heads), size, 7, kernels)
        per_head = per_head.to(device="cuda", memory_format=torch.channels_last).eval()
        per_head.load_state_dict(ours.state_dict())
        per_head.attn.runs_as_one_op = lambda x: False  # the layer's training path, in eval
        x = torch.randn(BATCH, dim, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
        floor = hbm_floor_ms(2 * x.numel() * 2)  # bf16 in and out
        impls = [("vitzoo_one_op", ours), ("vitzoo_per_head", per_head), ("timm", ref)]
        if not quick:
            impls.append(("timm_compile", torch.compile(ref, dynamic=False)))
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            exact = ref(x).double()
            for impl, layer in impls:
                try:
                    def fwd(layer=layer):
                        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                            return layer(x)

                    err = float((fwd().double() - exact).abs().max() / exact.abs().max())
                    values = dict(fwd_ms=time_ms(fwd), fwd_gpu_ms=gpu_time_ms(fwd))
                    note = f"B={BATCH} {size}x{size} C={dim} heads={heads} rel err vs timm bf16 {err:.1e}"
                except Exception as exc:  # noqa: BLE001 - a failing implementation is a result
                    values, note = {}, f"failed: {type(exc).__name__}: {exc}"[:200]
                rows.append(row(PATTERN, case, impl, dtype="bf16", floor_ms=floor, note=note, **values))
        del x
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
