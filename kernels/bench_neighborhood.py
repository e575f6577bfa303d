"""Benchmark of the Triton neighborhood-attention kernels (bf16, GPU only) against compiled FlexAttention (block mask +
RPB score_mod), SDPA with the bias as attn_mask on window-partitioned tensors (window cases), the naive torch
reference (``backend="torch"``) and the HBM floor (q, k, v, o moved once at the measured copy bandwidth).

``run(quick)`` returns rows ``row("neighborhood", case, impl, dtype, fwd_ms, fwdbwd_ms, floor_ms, floor_frac,
peak_gb, note)``; floor_frac = floor_ms / fwd_ms. The fwd+bwd floor moves q, k, v, o, dO once more and writes
dq, dk, dv (it is reported in the note).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from ._bench_utils import hbm_floor_ms, row, tensor_bytes, time_fwd_bwd

PATTERN = "neighborhood"
# name: (B, H, W, heads, d, kernel, dilation, stride, rpb, bias, with_flex)
CASES = {
    "na7_rpb_56x56_h3": (64, 56, 56, 3, 32, 7, 1, 1, True, False, True),
    "win7_rpb_56x56_h3": (64, 56, 56, 3, 32, 7, 1, 7, True, False, True),
    "na7_rpb_28x28_h6": (64, 28, 28, 6, 32, 7, 1, 1, True, False, False),
    "dinat7_dil2_rpb_28x28_h6": (64, 28, 28, 6, 32, 7, 2, 1, True, False, False),
    "na7_rpb_14x14_h12": (64, 14, 14, 12, 32, 7, 1, 1, True, False, False),
    "na7_rpb_7x7_h24": (64, 7, 7, 24, 32, 7, 1, 1, True, False, False),
    "win7_d16_bias_14x14_h4": (64, 14, 14, 4, 16, 7, 1, 7, False, True, False),
    "win7_d16_bias_28x28_h4": (64, 28, 28, 4, 16, 7, 1, 7, False, True, False),
}
QUICK = ("na7_rpb_56x56_h3", "win7_rpb_56x56_h3", "win7_d16_bias_14x14_h4")


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]


def _position_tables(height: int, width: int, kernel: int, dilation: int, stride: int):
    from vitzoo.ops._geometry import axis_windows

    wy = axis_windows(height, kernel, dilation, stride, "cuda")
    wx = axis_windows(width, kernel, dilation, stride, "cuda")
    return wy.start, wy.local, wx.start, wx.local


def _flex(q, k, v, rpb, case, with_rpb: bool = True) -> dict:
    """Compiled FlexAttention with the NA window as a block mask and the rpb gathered in score_mod, on (B, heads, N,
    d) tensors (permuted once, outside the timing: favourable to Flex). ``with_rpb=False`` drops the score_mod: not the
    same attention, but Flex's lower bound on this mask, which separates the cost of the RPB gather in score_mod
    (integer div/mod and three table lookups per score) from the cost of the 128-wide tiles."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, height, width, heads, dim, kernel, dilation, stride = case[:8]
    sy, ly, sx, lx = _position_tables(height, width, kernel, dilation, stride)
    n = height * width

    def slot(start, pos_q, pos_k):
        rel = pos_k - start[pos_q]
        return rel // dilation, (rel >= 0) & (rel % dilation == 0) & (rel < kernel * dilation)

    def mask_mod(b, h, q_idx, kv_idx):
        a, ok_y = slot(sy, q_idx // width, kv_idx // width)
        c, ok_x = slot(sx, q_idx % width, kv_idx % width)
        return ok_y & ok_x

    def score_mod(score, b, h, q_idx, kv_idx):
        a, _ = slot(sy, q_idx // width, kv_idx // width)
        c, _ = slot(sx, q_idx % width, kv_idx % width)
        ry = (a - ly[q_idx // width] + kernel - 1).clamp(0, 2 * kernel - 2)
        rx = (c - lx[q_idx % width] + kernel - 1).clamp(0, 2 * kernel - 2)
        return score + rpb[h, ry, rx]

    block_mask = create_block_mask(mask_mod, None, None, n, n, device="cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    qf, kf, vf = (t.reshape(batch, n, heads, dim).transpose(1, 2).contiguous() for t in (q, k, v))
    qf, kf, vf, rpb_f = _leaves(qf, kf, vf, rpb)
    grad = torch.randn_like(qf)
    return time_fwd_bwd(lambda: compiled(qf, kf, vf, score_mod=score_mod if with_rpb else None, block_mask=block_mask),
                        grad, [qf, kf, vf, rpb_f] if with_rpb else [qf, kf, vf])


def _sdpa_windows(q, k, v, rpb, bias, case) -> dict:
    """SDPA on window-partitioned (B * windows, heads, k*k, d) tensors with the dense (heads, k*k, k*k) bias (rpb
    gathered to dense once per call, inside the timing, as Swin does) as attn_mask."""
    import torch.nn.functional as F

    batch, height, width, heads, dim, kernel = case[:6]
    kk = kernel * kernel

    def part(t):
        t = t.reshape(batch, height // kernel, kernel, width // kernel, kernel, heads, dim)
        return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, kk, dim).contiguous()

    qw, kw_, vw = _leaves(part(q), part(k), part(v))
    table = _leaves(rpb if rpb is not None else bias)[0]
    if rpb is not None:
        idx = torch.arange(kernel, device="cuda")
        rel = idx[None, :] - idx[:, None] + kernel - 1  # [query slot, key slot] per axis
        ry = rel[:, None, :, None].expand(kernel, kernel, kernel, kernel).reshape(kk, kk)
        rx = rel[None, :, None, :].expand(kernel, kernel, kernel, kernel).reshape(kk, kk)

        def dense():
            return table[:, ry, rx]
    else:
        def dense():
            return table

    grad = torch.randn_like(qw)
    return time_fwd_bwd(lambda: F.scaled_dot_product_attention(qw, kw_, vw, attn_mask=dense().to(qw.dtype)[None]),
                        grad, [qw, kw_, vw, table])


def run(quick: bool = False) -> List[dict]:
    from vitzoo.ops import neighborhood_attention_2d

    rows = []
    dtype = torch.bfloat16
    for name, case in CASES.items():
        if quick and name not in QUICK:
            continue
        batch, height, width, heads, dim, kernel, dilation, stride, has_rpb, has_bias, with_flex = case
        q, k, v = (torch.randn(batch, height, width, heads, dim, device="cuda", dtype=dtype) for _ in range(3))
        rpb: Optional[torch.Tensor] = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device="cuda") \
            if has_rpb else None
        bias: Optional[torch.Tensor] = torch.randn(heads, kernel ** 2, kernel ** 2, device="cuda") if has_bias else None
        io = tensor_bytes([q, k, v, q])  # q, k, v read once, o written once
        floor = hbm_floor_ms(io)
        floor_bwd = hbm_floor_ms(io + tensor_bytes([q, q, k, v, q, q, k, v]))
        common = dict(dtype="bf16", floor_ms=floor)

        def ours(backend: str):
            leaves = _leaves(q, k, v, rpb, bias)
            grad = torch.randn_like(q)
            return time_fwd_bwd(lambda: neighborhood_attention_2d(
                leaves[0], leaves[1], leaves[2], kernel, dilation, stride, leaves[3], leaves[4], backend=backend),
                grad, [t for t in leaves if t is not None])

        impls = [("triton", lambda: ours("triton")), ("torch_naive", lambda: ours("torch"))]
        if with_flex and not (quick and name != QUICK[0]):
            impls.append(("flex_compiled", lambda: _flex(q, k, v, rpb, case)))
            impls.append(("flex_compiled_mask_only", lambda: _flex(q, k, v, rpb, case, with_rpb=False)))
        windowed = stride == kernel and dilation == 1 and height % kernel == 0 and width % kernel == 0
        if windowed:
            impls.append(("sdpa_windows", lambda: _sdpa_windows(q, k, v, rpb, bias, case)))
        for impl, fn in impls:
            try:
                values = fn()
            except Exception as exc:  # a competitor that fails to compile is a row with a note, not a crash
                rows.append(row(PATTERN, name, impl, **common, fwd_ms=float("nan"), fwdbwd_ms=float("nan"),
                                floor_frac=float("nan"), peak_gb=float("nan"),
                                note=f"{type(exc).__name__}: {exc}"[:300]))
                continue
            if impl == "triton":
                values["note"] = f"fwd+bwd floor {floor_bwd:.4f} ms; {values['note']}".rstrip("; ")
            rows.append(row(PATTERN, name, impl, **common, **values, floor_frac=floor / values["fwd_ms"]))
        del q, k, v
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(r)
