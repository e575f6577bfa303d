"""GPU correctness of the HaloNet attention kernels (run by kernels/gpu_check.py on the device machine).

For bf16 / fp16 / fp32 on HaloNet-shaped calls: the Triton forward and every gradient (q, k, v, rel_h, rel_w)
against a float64 reference, which is timm's own ``HaloAttn`` core run in float64; the same-precision baseline is
that timm core run in the kernel's dtype. Rule: kernel error <= 2x baseline error + a small absolute floor. Also
checks that the backward is bitwise deterministic. Autotuning is switched off (heuristic tiles) to bound compile
time; kernels/bench_halo.py runs the autotuned path.
"""
from __future__ import annotations

import torch

from ._bench_utils import rel_err, row
from ._halo_common import TUNING
from ._competitor_halo_timm import TimmHaloCore, from_timm_layout, to_timm_layout
from .halo_attention_bwd import halo_attention_bwd
from .halo_attention_fwd import halo_attention_fwd

PATTERN = "halo"
ERR_FLOOR = 1e-5
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
CASES = [
    # name, (B, H, W, heads, d_qk, d_v, block, halo, stride), dtypes
    ("halonet26t_s2_16x16_d32", (8, 16, 16, 8, 32, 32, 8, 2, 1), (BF16, FP16, FP32)),
    ("halonet26t_s3_stride2_d64", (8, 16, 16, 8, 64, 64, 8, 2, 2), (BF16, FP16, FP32)),
    ("haloregnetz_b7_dqk24_dv72", (4, 14, 14, 8, 24, 72, 7, 2, 1), (BF16, FP32)),
    ("halonet_h1_32x32_d8", (4, 32, 32, 8, 8, 8, 8, 3, 1), (BF16,)),
]
NAMES = ("out", "dq", "dk", "dv", "d_rel_h", "d_rel_w")


def _timm(q, k, v, rel_h, rel_w, grad, block, halo, stride):
    """timm's core in q's dtype: (out, dq, dk, dv, d rel_h, d rel_w) in our (B, H, W, heads, d) layout."""
    heads, d_qk, d_v = k.shape[3], k.shape[4], v.shape[4]
    core = TimmHaloCore(heads, d_qk, d_v, block, halo, stride, rel_h.requires_grad_(), rel_w.requires_grad_())
    q_nchw, kv_nchw = (t.requires_grad_() for t in to_timm_layout(q, k, v))
    out = from_timm_layout(core(q_nchw, kv_nchw), heads)
    g_q, g_kv, g_rh, g_rw = torch.autograd.grad(out, [q_nchw, kv_nchw, *core.rel_tables], grad)
    b, h, w = k.shape[:3]
    dq = g_q.view(b, heads, d_qk, *q.shape[1:3]).permute(0, 3, 4, 1, 2)
    g_kv = g_kv.view(b, heads, d_qk + d_v, h, w).permute(0, 3, 4, 1, 2)
    return out.detach(), dq, g_kv[..., :d_qk], g_kv[..., d_qk:], g_rh, g_rw


def _ours(q, k, v, rel_h, rel_w, grad, block, halo, scale):
    out, lse = halo_attention_fwd(q, k, v, rel_h, rel_w, block, halo, scale)
    return (out, *halo_attention_bwd(grad, q, k, v, out, lse, rel_h, rel_w, block, halo, scale))


def run(cases=CASES, device: str = "cuda") -> list[dict]:
    rows = []
    autotune = TUNING["autotune"]
    TUNING["autotune"] = False
    try:
        for name, (b, h, w, heads, d_qk, d_v, block, halo, stride), dtypes in cases:
            gen = torch.Generator(device=device).manual_seed(0)
            win = block + 2 * halo

            def randn(*shape, std=1.0):
                return torch.randn(*shape, device=device, dtype=torch.float64, generator=gen) * std

            q, k = randn(b, h // stride, w // stride, heads, d_qk), randn(b, h, w, heads, d_qk)
            v = randn(b, h, w, heads, d_v)
            rel_h, rel_w = randn(2 * win - 1, d_qk, std=d_qk ** -0.5), randn(2 * win - 1, d_qk, std=d_qk ** -0.5)
            grad = randn(b, h // stride, w // stride, heads, d_v)
            scale = d_qk ** -0.5
            ref = _timm(q, k, v, rel_h.clone(), rel_w.clone(), grad, block, halo, stride)
            for dtype in dtypes:
                cast = [t.detach().to(dtype) for t in (q, k, v, rel_h, rel_w, grad)]
                base = _timm(*[t.clone() for t in cast], block, halo, stride)
                try:
                    ours = _ours(*cast, block, halo, scale)
                except Exception as exc:  # a crash is a failed check, not a crashed driver
                    rows.append(row(PATTERN, name, "triton", dtype=str(dtype), err=float("nan"), ref_err=float("nan"),
                                    ok=False, note=repr(exc)[:200]))
                    continue
                for what, o, bl, r in zip(NAMES, ours, base, ref):
                    err, ref_err = rel_err(o, r), rel_err(bl, r)
                    rows.append(row(PATTERN, name, what, dtype=str(dtype), err=err, ref_err=ref_err,
                                    ok=bool(err <= 2 * ref_err + ERR_FLOOR)))
                again = _ours(*cast, block, halo, scale)
                same = all(torch.equal(x, y) for x, y in zip(ours[1:], again[1:]))
                rows.append(row(PATTERN, name, "bwd_bitwise_deterministic", dtype=str(dtype), err=0.0 if same else 1.0,
                                ref_err=0.0, ok=same))
    finally:
        TUNING["autotune"] = autotune
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
