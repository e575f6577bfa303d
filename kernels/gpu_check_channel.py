"""GPU correctness of the channel-attention kernels (DaViT): output and dq / dk / dv in bf16 / fp16 / fp32 against
float64, at the DaViT-T stage shapes (batch 32) and odd token counts, with q, k, v as strided views of one qkv buffer;
the no-grad forward (no saved softmax) too.

Rule (FlashAttention's): relative error of the kernel <= 2 x that of the torch formulation on the same
low-precision inputs + a small floor.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from ._bench_utils import rel_err, row

PATTERN = "channel"
DEVICE = "cuda"
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-5}
# (case, tokens, heads, head_dim): DaViT-T stages at 224 (d 32), an odd map, head dims 16 and 64
CASES = (("davit_t_s1", 3136, 3, 32), ("davit_t_s2", 784, 6, 32), ("davit_t_s3", 196, 12, 32),
         ("davit_t_s4", 49, 24, 32), ("odd_1369_d16", 1369, 4, 16), ("odd_99_d64", 99, 2, 64))
BATCH = 32


def _exact(q, k, v, scale):
    attn = torch.softmax(scale * torch.einsum("bnhi,bnhj->bhij", k, v), dim=-1)
    return torch.einsum("bnhj,bhij->bnhi", q, attn)


def run() -> List[Dict]:
    from vitzoo.ops import channel_attention, channel_attention_torch

    torch.manual_seed(0)
    rows: List[Dict] = []
    for case, tokens, heads, dim in CASES:
        qkv = torch.randn(BATCH, tokens, 3, heads, dim, device=DEVICE, dtype=torch.float64)
        scale = dim ** -0.5
        exact = _exact(*qkv.unbind(2), scale)
        exact_leaf = qkv.clone().requires_grad_(True)
        grad = torch.randn(BATCH, tokens, heads, dim, device=DEVICE, dtype=torch.float64)
        exact_out = _exact(*exact_leaf.unbind(2), scale)
        (exact_grad,) = torch.autograd.grad(exact_out, exact_leaf, grad)
        exact = [exact_out.detach()] + list(exact_grad.unbind(2))
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            results = []
            for fn in (lambda *t: channel_attention(*t, scale, backend="triton"),
                       lambda *t: channel_attention_torch(*t, scale)):
                leaf = qkv.to(dtype).requires_grad_(True)  # strided (B, N, heads, d) views, as DaViT's qkv gives them
                out = fn(*leaf.unbind(2))
                (g,) = torch.autograd.grad(out, leaf, grad.to(out.dtype))
                results.append([out.detach()] + list(g.unbind(2)))
            with torch.no_grad():
                inference = channel_attention(*qkv.to(dtype).unbind(2), scale, backend="triton")
            for name, a, p, e in zip(("out", "dq", "dk", "dv"), results[0], results[1], exact):
                err, ref_err = rel_err(a, e), rel_err(p, e)
                ok = err <= 2 * ref_err + FLOOR[dtype] and a.dtype == dtype and a.shape == e.shape
                if name == "out":
                    ok = ok and torch.equal(inference, a)  # the no-grad launch computes the same output
                rows.append(row(PATTERN, f"{case}_B{BATCH}", name, dtype=str(dtype).replace("torch.", ""), err=err,
                                ref_err=ref_err, ok=bool(ok)))
    return rows
