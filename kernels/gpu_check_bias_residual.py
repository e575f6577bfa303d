"""GPU correctness of the fused bias + residual add (``bias_residual_add.py``): output and the x / y / bias gradients
in bf16 / fp16 / fp32 (and bf16 y with fp32 x) against float64 at DaViT map shapes, channels_last maps seen as
(B, H, W, C). Rule: error <= 2 x torch's ``x + (y + bias)`` in the same dtypes (the bias cast to y's dtype, as an
autocast conv adds it) + a small floor."""
from __future__ import annotations

from typing import Dict, List

import torch

from ._bench_utils import rel_err, row

PATTERN = "bias_residual"
DEVICE = "cuda"
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-6}
CASES = (("davit_t_s1", 32, 56, 56, 96), ("davit_t_s4", 32, 7, 7, 768), ("odd_13x9_c100", 8, 13, 9, 100))


def run() -> List[Dict]:
    from vitzoo.ops import bias_residual_add

    torch.manual_seed(0)
    rows: List[Dict] = []
    for case, batch, height, width, channels in CASES:
        x64, y64 = (torch.randn(batch, channels, height, width, device=DEVICE, dtype=torch.float64)
                    .contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1) for _ in range(2))
        b64 = torch.randn(channels, device=DEVICE, dtype=torch.float64)
        grad = torch.randn(batch, height, width, channels, device=DEVICE, dtype=torch.float64)
        exact = [x64 + y64 + b64, grad, grad, grad.sum((0, 1, 2))]
        for x_dtype, y_dtype in ((torch.bfloat16,) * 2, (torch.float16,) * 2, (torch.float32,) * 2,
                                 (torch.float32, torch.bfloat16)):
            results = []
            # torch's reference in the model's dtypes: an autocast conv adds its bias in its output's dtype
            for fn in (lambda x, y, b: bias_residual_add(x, y, b, backend="triton"),
                       lambda x, y, b: x + (y + b.to(y.dtype))):
                x, y = x64.to(x_dtype).requires_grad_(True), y64.to(y_dtype).requires_grad_(True)
                b = b64.float().requires_grad_(True)
                out = fn(x, y, b)
                results.append([out.detach()] + list(torch.autograd.grad(out, (x, y, b), grad.to(out.dtype))))
            low = torch.promote_types(x_dtype, y_dtype)
            for name, a, p, e in zip(("out", "dx", "dy", "dbias"), results[0], results[1], exact):
                err, ref_err = rel_err(a, e), rel_err(p, e)
                ok = err <= 2 * ref_err + FLOOR[low] and (name != "out" or a.dtype == low)
                rows.append(row(PATTERN, f"{case}_{str(x_dtype)[6:]}+{str(y_dtype)[6:]}", name,
                                dtype=str(low).replace("torch.", ""), err=err, ref_err=ref_err, ok=bool(ok)))
    return rows
