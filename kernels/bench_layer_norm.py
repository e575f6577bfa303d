"""LayerNorm benchmark (run by kernels/bench.py on the device machine): vitzoo's Triton LayerNorm vs torch's under
bf16 autocast, at the token counts and widths of the zoo's block norms (batch 128 at 224), forward and
forward+backward, with the HBM floor of the forward (x read and y written once, bf16).

Why it matters: under autocast torch's ``layer_norm`` casts a bf16 input to fp32, writes an fp32 output and the next
Linear casts it back to bf16, so a block norm moves about 20 bytes per element where 4 would do; its CUDA kernel is
also slow for narrow rows (C = 64-768). Implementations:

* ``vitzoo_triton``: :func:`vitzoo.ops.layer_norm` under autocast (bf16 in, bf16 out, fp32 statistics);
* ``torch_autocast``: ``F.layer_norm`` under autocast plus the ``.to(bfloat16)`` the next autocast Linear performs
  (the cost a timm block pays);
* ``torch_bf16``: ``F.layer_norm`` on bf16 input with bf16 parameters, autocast off (torch's best eager form);
* ``torch_compile`` (full runs only): ``torch.compile`` of the autocast form (Inductor's fused Triton norm).
"""
from __future__ import annotations

from typing import Callable, List

import torch
import torch.nn.functional as F

from ._bench_utils import hbm_floor_ms, row, time_fwd_bwd

PATTERN = "layer_norm"
BATCH = 128
# (case, tokens per image, channels): NAT-T / BiFormer-S stages (C 64-512) and Swin-T / Agent-Swin-T stages (96-768)
CASES = (("nat_t_s1", 3136, 64), ("swin_t_s1", 3136, 96), ("nat_t_s2", 784, 128), ("swin_t_s2", 784, 192),
         ("swin_t_s3", 196, 384), ("swin_t_s4", 49, 768))
EPS = 1e-5


def _impls(quick: bool):
    from vitzoo.ops import layer_norm

    def ours(x, w, b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return layer_norm(x, x.shape[-1], w, b, EPS)

    def torch_autocast(x, w, b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return F.layer_norm(x, (x.shape[-1],), w, b, EPS).to(torch.bfloat16)

    def torch_bf16(x, w, b):
        return F.layer_norm(x, (x.shape[-1],), w.to(x.dtype), b.to(x.dtype), EPS)

    impls = [("vitzoo_triton", ours), ("torch_autocast", torch_autocast), ("torch_bf16", torch_bf16)]
    if not quick:
        impls.append(("torch_compile", torch.compile(torch_autocast, dynamic=False)))
    return impls


def run(quick: bool = False) -> List[dict]:
    rows: List[dict] = []
    cases = CASES[::2] if quick else CASES
    for case, tokens, channels in cases:
        x = torch.randn(BATCH * tokens, channels, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = (1 + 0.1 * torch.randn(channels, device="cuda")).requires_grad_(True)
        b = (0.1 * torch.randn(channels, device="cuda")).requires_grad_(True)
        grad = torch.randn(BATCH * tokens, channels, device="cuda", dtype=torch.bfloat16)
        floor = hbm_floor_ms(2 * x.numel() * x.element_size())
        ref = F.layer_norm(x.detach().double(), (channels,), w.detach().double(), b.detach().double(), EPS)
        for impl, fn in _impls(quick):
            fwd: Callable[[], torch.Tensor] = lambda fn=fn, x=x, w=w, b=b: fn(x, w, b)  # noqa: E731
            try:
                err = float((fwd().detach().double() - ref).abs().max())
                values = time_fwd_bwd(fwd, grad, [x, w, b])
                note = f"rows={BATCH * tokens} C={channels} max|err|={err:.2e} {values.pop('note')}".strip()
            except Exception as exc:  # noqa: BLE001 - a failing implementation is a result
                values, note = {}, f"failed: {type(exc).__name__}: {exc}"[:200]
            rows.append(row(PATTERN, case, impl, dtype="bf16", floor_ms=floor, note=note, **values))
        del x, grad
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
