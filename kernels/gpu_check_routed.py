"""GPU correctness check of the bi-level routing attention kernels (BiFormer, CVPR 2023) on large-ish shapes: bf16 /
fp16 / fp32 outputs and dq, dk, dv against a float64 reference (vitzoo's torch reference on float64 inputs), with the
rule kernel error <= 2x the error of a same-precision torch implementation + a small floor. The same-precision
implementation is ``F.scaled_dot_product_attention`` with the routing as an explicit (N, N) boolean mask, run in the
checked dtype (an independent formulation). Every path uses one routing index (computed once), so near-ties of the
router in low precision cannot make paths disagree. GPU only; ``run()`` returns rows."""
from __future__ import annotations

from typing import List

import torch

from ._bench_utils import rel_err, row

PATTERN = "routed"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FLOOR = {"bf16": 2e-3, "fp16": 5e-4, "fp32": 1e-5}

# name: (B, H, W, heads, d, d_v, n_win, topk)
CASES = {
    "stage1_56x56_d32_top1": (4, 56, 56, 2, 32, 32, 7, 1),
    "stage2_28x28_d32_top4": (8, 28, 28, 4, 32, 32, 7, 4),
    "stage3_14x14_d32_top16": (16, 14, 14, 8, 32, 32, 7, 16),
    "pad_30x26_d64_top8": (4, 30, 26, 2, 64, 64, 7, 8),
    "pad_45x37_d16_dv64_top64": (2, 45, 37, 2, 16, 64, 8, 64),
    "big_regions_64x64_nwin2_top3": (2, 64, 64, 2, 64, 32, 2, 3),
}


def _routing_mask(index: torch.Tensor, height: int, width: int, n_win: int) -> torch.Tensor:
    """(B, 1, N, N) bool: query token i may attend key token j (j's region routed from i's region)."""
    rh, rw = -(-height // n_win), -(-width // n_win)
    ys, xs = torch.meshgrid(torch.arange(height, device=index.device), torch.arange(width, device=index.device),
                            indexing="ij")
    region = ((ys // rh) * n_win + xs // rw).reshape(-1)
    regions = n_win * n_win
    allowed = torch.zeros(index.shape[0], regions, regions, dtype=torch.bool, device=index.device)
    allowed.scatter_(2, index, True)
    return allowed[:, region][:, :, region][:, None]


def _sdpa(q, k, v, mask, scale):
    import torch.nn.functional as F

    batch, height, width, heads = q.shape[:4]
    flat = [t.reshape(batch, height * width, heads, -1).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*flat, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, height, width, heads, -1)


def _grads(fn, q, k, v, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def run() -> List[dict]:
    from vitzoo.ops.routed import RoutedArgs, route_regions, routed_attention_torch
    from vitzoo.ops._routed_triton import routed_attention_triton

    rows = []
    torch.manual_seed(0)
    for name, case in CASES.items():
        batch, height, width, heads, dim, v_dim, n_win, topk = case
        base = [torch.randn(batch, height, width, heads, d, device="cuda") for d in (dim, dim, v_dim)]
        grad_out = torch.randn(batch, height, width, heads, v_dim, device="cuda")
        index = route_regions(base[0], base[1], n_win, topk)
        mask = _routing_mask(index, height, width, n_win)
        scale = dim ** -0.5
        for dname, dtype in DTYPES.items():
            q, k, v = (t.to(dtype) for t in base)  # the low-precision values are the inputs of every path
            ref = _grads(lambda a, b, c: routed_attention_torch(a, b, c, n_win, topk, scale, index=index),
                         q.double(), k.double(), v.double(), grad_out.double())
            same = _grads(lambda a, b, c: _sdpa(a, b, c, mask, scale), q, k, v, grad_out)
            try:
                ours = _grads(lambda a, b, c: routed_attention_triton(a, b, c, index,
                                                                      RoutedArgs(a, b, c, n_win, topk, scale)),
                              q, k, v, grad_out)
            except Exception as exc:  # a failure is a row, never a crash of the whole check
                rows.append(row(PATTERN, name, "all", dtype=dname, err=float("nan"), ref_err=float("nan"),
                                ok=False, note=f"{type(exc).__name__}: {exc}"[:300]))
                continue
            for what, o, s, r in zip(["out", "dq", "dk", "dv"], ours, same, ref):
                err, ref_err = rel_err(o, r), rel_err(s, r)
                rows.append(row(PATTERN, name, what, dtype=dname, err=err, ref_err=ref_err,
                                ok=bool(err <= 2 * ref_err + FLOOR[dname])))
        del base, mask
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
