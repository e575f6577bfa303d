"""HaloNet blocked-query / haloed-key attention, forward (Triton).

Paper: Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones"; semantics of
timm's ``HaloAttn`` (see :mod:`vitzoo.kernels._halo_common` for the geometry). One program per (batch, head, query
block): the block's queries stay in registers while the ``win x win`` key window streams through in tiles of
``ROWS`` window rows (each row padded to ``KX_P`` keys), read in place from the (B, H, W, heads, d) key map by index
arithmetic. Keys in the window but outside the image are HaloNet's zero padding: masked loads return 0 for them and
they stay in the softmax with the relative term as their logit. Online softmax in fp32 (exp2).

Layouts: q (B, Hq, Wq, heads, d_qk), k (B, H, W, heads, d_qk), v (B, H, W, heads, d_v), any strides; rel_h/rel_w
contiguous (2 * win - 1, d_qk); out (B, Hq, Wq, heads, d_v); lse (B, heads, Hq, Wq) fp32 natural-log
log-sum-exp of each query's logits (saved for the backward).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._halo_common import (
    AUTOTUNE_KEY,
    TUNING,
    default_rows,
    dot_precision,
    halo_tiles,
    load_rel_table,
    rel_to_window,
    window_key_tile,
    window_rows_to_tile,
)
from ._launch import launch

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ROWS window rows per key tile (KX_P = 16 keys each for HaloNet's 11..16-wide windows)
_CONFIGS = [triton.Config({"ROWS": 1}, num_warps=4, num_stages=2)] + [
    triton.Config({"ROWS": rows}, num_warps=warps, num_stages=2) for rows in (2, 4) for warps in (4, 8)
]


@triton.jit
def _halo_fwd_kernel(
    Q, K, V, RELH, RELW, O, LSE,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,
    heads, height, width, q_height, q_width, n_blocks_w, n_blocks,
    block, block_q, halo, win, d_qk, d_v, scale,
    HAS_REL: tl.constexpr, BLOCK_Q: tl.constexpr, KX_P: tl.constexpr, WIN_P: tl.constexpr, REL_P: tl.constexpr,
    D_QK_P: tl.constexpr, D_V_P: tl.constexpr, ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    BLOCK_N: tl.constexpr = ROWS * KX_P
    pid = tl.program_id(0)
    bh = pid // n_blocks  # blocks of one (batch, head) are consecutive programs: neighbours share halo keys in L2
    blk = pid % n_blocks
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    qby = blk // n_blocks_w
    qbx = blk % n_blocks_w

    i = tl.arange(0, BLOCK_Q)
    qy = i // block_q
    qx = i % block_q
    q_ok = i < block_q * block_q
    yq = qby * block_q + qy
    xq = qbx * block_q + qx
    dqk = tl.arange(0, D_QK_P)
    dv = tl.arange(0, D_V_P)

    q_ptrs = Q + b * stride_qb + h * stride_qh + yq[:, None] * stride_qy + xq[:, None] * stride_qx
    q = tl.load(q_ptrs + dqk[None, :] * stride_qd, mask=q_ok[:, None] & (dqk[None, :] < d_qk), other=0.0)

    n = tl.arange(0, BLOCK_N)
    if HAS_REL:
        n_rel = 2 * win - 1
        rqh = tl.dot(q, tl.trans(load_rel_table(RELH, n_rel, d_qk, REL_P, D_QK_P)), input_precision=DOT_PRECISION)
        rqw = tl.dot(q, tl.trans(load_rel_table(RELW, n_rel, d_qk, REL_P, D_QK_P)), input_precision=DOT_PRECISION)
        # width logits depend on the key column only, so one (BLOCK_Q, BLOCK_N) tile serves every key tile
        rel_w_tile = rel_to_window(rqw, qx, n % KX_P, win, BLOCK_Q, REL_P, BLOCK_N)
        rel_h_win = rel_to_window(rqh, qy, tl.arange(0, WIN_P), win, BLOCK_Q, REL_P, WIN_P)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    y0 = qby * block - halo
    x0 = qbx * block - halo
    m_i = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_Q, D_V_P), dtype=tl.float32)
    qk_scale = scale * LOG2E
    for row0 in range(0, win, ROWS):
        y, x, in_window, in_image, row_of_n = window_key_tile(row0, y0, x0, height, width, win, KX_P, BLOCK_N)
        k = tl.load(k_base + y[:, None] * stride_ky + x[:, None] * stride_kx + dqk[None, :] * stride_kd,
                    mask=in_image[:, None] & (dqk[None, :] < d_qk), other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_REL:
            s += (rel_w_tile + window_rows_to_tile(rel_h_win, row0, row_of_n, ROWS, WIN_P, BLOCK_Q, BLOCK_N)) * LOG2E
        s = tl.where(in_window[None, :], s, float("-inf"))  # only the tile padding leaves the softmax
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile holds window key (row0, 0)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + y[:, None] * stride_vy + x[:, None] * stride_vx + dv[None, :] * stride_vd,
                    mask=in_image[:, None] & (dv[None, :] < d_v), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + yq[:, None] * stride_oy + xq[:, None] * stride_ox
    tl.store(o_ptrs + dv[None, :] * stride_od, out.to(O.dtype.element_ty), mask=q_ok[:, None] & (dv[None, :] < d_v))
    lse_ptrs = LSE + ((b * heads + h) * q_height + yq) * q_width + xq
    tl.store(lse_ptrs, (m_i + tl.log2(l_i)) * LN2, mask=q_ok)


_halo_fwd_autotuned = triton.autotune(configs=_CONFIGS, key=AUTOTUNE_KEY)(_halo_fwd_kernel)


def halo_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    block: int,
    halo: int,
    scale: float,
    rows: Optional[int] = None,
    num_warps: int = 4,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel; returns (out, lse). Shapes must already be validated by the op layer.

    ``rel_h``/``rel_w``: both given (contiguous, q's dtype) or both None. ``rows`` pins the key-tile height (window
    rows per tile; tests use it to cover several tile shapes); without it the launcher autotunes, or uses
    ``default_rows`` when ``TUNING["autotune"]`` is off.
    """
    batch, q_height, q_width, heads, d_qk = q.shape
    _, height, width, _, d_v = v.shape
    block_q = block * q_height // height
    t = halo_tiles(block, block_q, halo, d_qk, d_v)
    n_blocks_w = width // block
    n_blocks = (height // block) * n_blocks_w
    out = torch.empty((batch, q_height, q_width, heads, d_v), device=q.device, dtype=q.dtype)
    lse = torch.empty((batch, heads, q_height, q_width), device=q.device, dtype=torch.float32)
    has_rel = rel_h is not None
    args = (
        q, k, v, rel_h if has_rel else q, rel_w if has_rel else q, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, height, width, q_height, q_width, n_blocks_w, n_blocks,
        block, block_q, halo, t.win, d_qk, d_v, float(scale),
    )
    meta = dict(HAS_REL=has_rel, BLOCK_Q=t.BLOCK_Q, KX_P=t.KX_P, WIN_P=t.WIN_P, REL_P=t.REL_P, D_QK_P=t.D_QK_P,
                D_V_P=t.D_V_P, DOT_PRECISION=dot_precision(q.dtype))
    grid = (batch * heads * n_blocks,)
    if rows is None and TUNING["autotune"]:
        launch(_halo_fwd_autotuned, grid, *args, **meta)
    else:
        rows = rows or default_rows(t.KX_P)
        launch(_halo_fwd_kernel, grid, *args, **meta, ROWS=rows, num_warps=num_warps, num_stages=2)
    return out, lse
