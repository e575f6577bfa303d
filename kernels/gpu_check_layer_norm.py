"""GPU correctness of the LayerNorm kernels: y, dx, dweight, dbias in bf16 / fp16 / fp32 (autocast on and off)
against float64, over narrow and wide rows, odd row counts, strided rows and every weight / bias combination.

Rule (FlashAttention's): relative error of the kernel <= 2 x that of torch's own ``F.layer_norm`` on the same
low-precision input (under the same autocast setting) + a small floor; the output dtype must equal the op's rule
(autocast dtype under autocast, else the input's).
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from ._bench_utils import rel_err, row

PATTERN = "layer_norm"
DEVICE = "cuda"
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-5}
# (rows, C, affine variants): NAT / Swin widths, a single row, a non-power-of-two width with every weight / bias
# combination, the widest supported row. Kept small: every (C, dtype, affine, autocast) is a new kernel compile.
CASES = ((3136 * 4 + 3, 64, ("both",)), (1, 96, ("both",)), (997, 100, ("both", "weight", "bias", "none")),
         (777, 768, ("both",)), (64, 16384, ("both", "none")))


def _grads(fn, wide64: torch.Tensor, channels: int, params64, dtype: torch.dtype, grad_out: torch.Tensor,
           autocast: bool):
    """fn's output and the gradients of x (read as a strided slice of a wider buffer) and of the given params."""
    wide = wide64.detach().to(dtype).requires_grad_(True)
    params = [t.detach().float().requires_grad_(True) if t is not None else None for t in params64]
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        out = fn(wide[:, :channels], *params)
    grads = torch.autograd.grad(out, [wide] + [t for t in params if t is not None], grad_out.to(out.dtype))
    return [out.detach(), grads[0][:, :channels]] + list(grads[1:])


def _torch_norm(x: torch.Tensor, channels: int, weight, bias) -> torch.Tensor:
    """torch's norm at the op's rounding points: under autocast its fp32 output cast to the autocast dtype (what the
    op returns and the next autocast Linear consumes; the gradient then arrives in that dtype too); outside autocast
    with the parameters in the input's dtype (torch requires it)."""
    if torch.is_autocast_enabled(DEVICE):
        return F.layer_norm(x, (channels,), weight, bias).to(torch.get_autocast_dtype(DEVICE))
    cast = [p.to(x.dtype) if p is not None else None for p in (weight, bias)]
    return F.layer_norm(x, (channels,), *cast)


def run() -> List[Dict]:
    from vitzoo.ops import layer_norm

    torch.manual_seed(0)
    rows: List[Dict] = []
    for n_rows, channels, affines in CASES:
        wide = torch.randn(n_rows, channels + 8, device=DEVICE, dtype=torch.float64) * 2 + 0.5
        go = torch.randn(n_rows, channels, device=DEVICE, dtype=torch.float64)
        for affine in affines:
            w = torch.randn(channels, device=DEVICE, dtype=torch.float64) if affine in ("both", "weight") else None
            b = torch.randn(channels, device=DEVICE, dtype=torch.float64) if affine in ("both", "bias") else None
            leaves = [t.clone().requires_grad_(True) for t in (wide[:, :channels], w, b) if t is not None]
            exact_x, exact_w, exact_b = (leaves.pop(0), leaves.pop(0) if w is not None else None,
                                         leaves.pop(0) if b is not None else None)
            exact_out = F.layer_norm(exact_x, (channels,), exact_w, exact_b)
            exact = [exact_out.detach()] + list(torch.autograd.grad(
                exact_out, [t for t in (exact_x, exact_w, exact_b) if t is not None], go))
            names = ["y", "dx"] + [n for n, t in (("dweight", w), ("dbias", b)) if t is not None]
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                for autocast in (False, True):
                    ours = _grads(lambda t, pw, pb: layer_norm(t, channels, pw, pb, backend="triton"),
                                  wide, channels, (w, b), dtype, go, autocast)
                    plain = _grads(lambda t, pw, pb: _torch_norm(t, channels, pw, pb),
                                   wide, channels, (w, b), dtype, go, autocast)
                    want_dtype = torch.bfloat16 if autocast else dtype
                    for name, a, p, e in zip(names, ours, plain, exact):
                        err, ref_err = rel_err(a, e), rel_err(p, e)
                        ok = err <= 2 * ref_err + FLOOR[dtype] and (name != "y" or a.dtype == want_dtype)
                        rows.append(row(PATTERN, f"{n_rows}x{channels}_{affine}_autocast{int(autocast)}", name,
                                        dtype=str(dtype).replace("torch.", ""), err=err, ref_err=ref_err, ok=bool(ok)))
    return rows
