"""HaloNet attention benchmark (run by kernels/bench.py on the device machine): our Triton kernels vs timm's
``HaloAttn`` attention core (unfold-based windows + ``PosEmbedRel``, eager, bf16) on the halonet26t attention calls
at 256x256 input and batch 128, forward and forward+backward, with the HBM floor (q, k, v, out once; plus do read
and dq, dk, dv written for the backward) and peak memory.

Each implementation starts from its natural layout, outside the timed region: ours from contiguous
(B, H, W, heads, d) q/k/v, timm from its projections' (B, C, H, W) q and interleaved kv. Projections are not timed.
"""
from __future__ import annotations

import torch

from ._bench_utils import gpu_time_ms, hbm_floor_ms, peak_memory_gb, row, tensor_bytes, time_ms
from ._halo_common import TUNING
from ._competitor_halo_timm import TimmHaloCore, to_timm_layout
from .halo_attention_bwd import halo_attention_bwd
from .halo_attention_fwd import halo_attention_fwd

PATTERN = "halo"
DEVICE = "cuda"
BATCH = 128
# timm halonet26t at 256x256 (from the instantiated model): stages.2.1, stages.3.0 (strided queries), stages.3.1;
# block 8, halo 2 (win 12), 8 heads, d_qk = d_v.  (B, H, W, heads, d_qk, d_v, block, halo, stride)
CASES = [
    ("halonet26t_stages.2.1_16x16_d32", (BATCH, 16, 16, 8, 32, 32, 8, 2, 1)),
    ("halonet26t_stages.3.0_16x16_stride2_d64", (BATCH, 16, 16, 8, 64, 64, 8, 2, 2)),
    ("halonet26t_stages.3.1_8x8_d64", (BATCH, 8, 8, 8, 64, 64, 8, 2, 1)),
]


def _case_rows(name, shape, dtype=torch.bfloat16) -> list[dict]:
    b, h, w, heads, d_qk, d_v, block, halo, stride = shape
    win = block + 2 * halo
    scale = d_qk ** -0.5
    dev = dict(device=DEVICE, dtype=dtype)
    q = torch.randn(b, h // stride, w // stride, heads, d_qk, **dev)
    k, v = torch.randn(b, h, w, heads, d_qk, **dev), torch.randn(b, h, w, heads, d_v, **dev)
    rel_h, rel_w = (torch.randn(2 * win - 1, d_qk, **dev) * d_qk ** -0.5 for _ in range(2))
    grad = torch.randn(b, h // stride, w // stride, heads, d_v, **dev)
    out_bytes = tensor_bytes([grad])
    fwd_bytes = tensor_bytes([q, k, v]) + out_bytes
    fwdbwd_bytes = fwd_bytes + 2 * tensor_bytes([q, k, v]) + 2 * out_bytes  # + (q, k, v, out, do) read, dq/dk/dv
    floors = dict(floor_ms=hbm_floor_ms(fwd_bytes), floor_fwdbwd_ms=hbm_floor_ms(fwdbwd_bytes))
    rows = []

    def ours_fwd():
        return halo_attention_fwd(q, k, v, rel_h, rel_w, block, halo, scale)

    def ours_fwdbwd():
        out, lse = ours_fwd()
        return halo_attention_bwd(grad, q, k, v, out, lse, rel_h, rel_w, block, halo, scale)

    try:
        rows.append(row(PATTERN, name, "vitzoo_triton", dtype=str(dtype), fwd_ms=time_ms(ours_fwd),
                        fwdbwd_ms=time_ms(ours_fwdbwd), fwd_gpu_ms=gpu_time_ms(ours_fwd),
                        fwdbwd_gpu_ms=gpu_time_ms(ours_fwdbwd), peak_gb=peak_memory_gb(ours_fwdbwd), **floors,
                        note="autotuned" if TUNING["autotune"] else "heuristic tiles"))
    except Exception as exc:  # a failed implementation is a row, not a crashed driver
        rows.append(row(PATTERN, name, "vitzoo_triton", dtype=str(dtype), **floors, note=repr(exc)[:200]))

    core = TimmHaloCore(heads, d_qk, d_v, block, halo, stride, rel_h.clone().requires_grad_(),
                        rel_w.clone().requires_grad_())
    q_nchw, kv_nchw = (t.requires_grad_() for t in to_timm_layout(q, k, v))
    grad_nchw = grad.permute(0, 3, 4, 1, 2).reshape(b, heads * d_v, h // stride, w // stride).contiguous()
    leaves = [q_nchw, kv_nchw, *core.rel_tables]

    def timm_fwd():
        with torch.no_grad():
            return core(q_nchw, kv_nchw)

    def timm_fwdbwd():
        return torch.autograd.grad(core(q_nchw, kv_nchw), leaves, grad_nchw)

    try:
        rows.append(row(PATTERN, name, "timm_HaloAttn_core", dtype=str(dtype), fwd_ms=time_ms(timm_fwd),
                        fwdbwd_ms=time_ms(timm_fwdbwd), fwd_gpu_ms=gpu_time_ms(timm_fwd),
                        fwdbwd_gpu_ms=gpu_time_ms(timm_fwdbwd), peak_gb=peak_memory_gb(timm_fwdbwd), **floors,
                        note="eager, unfold windows"))
    except Exception as exc:
        rows.append(row(PATTERN, name, "timm_HaloAttn_core", dtype=str(dtype), **floors, note=repr(exc)[:200]))
    return rows


def run(quick: bool = False) -> list[dict]:
    rows = []
    autotune = TUNING["autotune"]
    TUNING["autotune"] = autotune and not quick  # quick: heuristic tiles, no tuning sweep
    try:
        for name, shape in CASES[:1] if quick else CASES:
            rows += _case_rows(name, shape)
    finally:
        TUNING["autotune"] = autotune
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
