"""GPU correctness check of the Triton neighborhood-attention kernels on large shapes: bf16 / fp16 / fp32 outputs,
every gradient (q, k, v, rpb, bias) and the no-grad output (the inference path: the dense logit block of each tile
class) against a float64 reference, with the rule kernel error <= 2x the error of the same-precision torch
implementation (``backend="torch"``) + a small floor. GPU only; ``run()`` returns rows."""
from __future__ import annotations

from typing import List, Optional

import torch

from ._bench_utils import rel_err, row

PATTERN = "neighborhood"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Absolute allowance on top of 2x the torch error: summation order alone differs by about this much.
FLOOR = {"bf16": 2e-3, "fp16": 5e-4, "fp32": 1e-5}

# name: (B, H, W, heads, d, d_v, kernel, dilation, stride, rpb, bias)
CASES = {
    "na7_rpb_56": (8, 56, 56, 3, 32, 32, 7, 1, 1, True, False),
    "window7_rpb_56": (8, 56, 56, 3, 32, 32, 7, 1, 7, True, False),
    "dinat7_dil4_rpb_56": (8, 56, 56, 3, 32, 32, 7, 4, 1, True, False),
    "grid7_rpb_56": (8, 56, 56, 3, 32, 32, 7, 8, 7, True, False),
    "window7_d16_bias_28": (8, 28, 28, 4, 16, 16, 7, 1, 7, False, True),
    "window7_d16_dv48_bias_14": (16, 14, 14, 1, 16, 48, 7, 1, 7, False, True),  # EfficientViT-M1 cascaded head
    "na13_stride2_rpb_bias_30": (4, 30, 30, 2, 64, 64, 13, 1, 2, True, True),
}


def _grads(q, k, v, rpb, bias, case, backend: str, grad_out):
    from vitzoo.ops import neighborhood_attention_2d

    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (q, k, v, rpb, bias)]
    kernel, dilation, stride = case[6:9]
    out = neighborhood_attention_2d(*leaves[:3], kernel, dilation, stride, leaves[3], leaves[4], backend=backend)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


def run() -> List[dict]:
    from vitzoo.ops import neighborhood_attention_2d

    rows = []
    torch.manual_seed(0)
    for name, case in CASES.items():
        batch, height, width, heads, dim, v_dim, kernel, _, _, has_rpb, has_bias = case
        base = [torch.randn(batch, height, width, heads, d, device="cuda") for d in (dim, dim, v_dim)]
        rpb: Optional[torch.Tensor] = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device="cuda") if has_rpb \
            else None
        bias: Optional[torch.Tensor] = torch.randn(heads, kernel ** 2, kernel ** 2, device="cuda") if has_bias \
            else None
        grad_out = torch.randn_like(base[2])
        for dname, dtype in DTYPES.items():
            q, k, v = (t.to(dtype) for t in base)  # the low-precision values are the inputs of every path
            # rpb / bias stay float32, as module parameters do under autocast
            ref = _grads(q.double(), k.double(), v.double(), None if rpb is None else rpb.double(),
                         None if bias is None else bias.double(), case, "torch", grad_out.double())
            same = _grads(q, k, v, rpb, bias, case, "torch", grad_out)
            try:
                ours = _grads(q, k, v, rpb, bias, case, "triton", grad_out)
            except Exception as exc:  # a failure is a row, never a crash of the whole check
                rows.append(row(PATTERN, name, "all", dtype=dname, err=float("nan"), ref_err=float("nan"),
                                ok=False, note=f"{type(exc).__name__}: {exc}"[:300]))
                continue
            with torch.no_grad():  # fixed weights: the cached table, or the dense block for windows
                ours.append(neighborhood_attention_2d(q, k, v, *case[6:9], rpb, bias, backend="triton"))
            same.append(same[0])
            ref.append(ref[0])
            for what, o, s, r in zip(["out", "dq", "dk", "dv", "d_rpb", "d_bias", "out_no_grad"], ours, same, ref):
                if r is None:
                    continue
                err, ref_err = rel_err(o, r), rel_err(s, r)
                rows.append(row(PATTERN, name, what, dtype=dname, err=err, ref_err=ref_err,
                                ok=bool(err <= 2 * ref_err + FLOOR[dname])))
        del base
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
