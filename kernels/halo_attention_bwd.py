"""HaloNet attention, backward part 1 of 2 (Triton): dq, the relative-table gradients, and the per-query values the
dk/dv kernel (:mod:`vitzoo.kernels.halo_attention_bwd_dkv`) needs.

Query-centric like the forward (one program per (batch, head, query block), the key window streamed in tiles of
``ROWS`` window rows, zero padding by masked loads): probabilities are recomputed from the forward's log-sum-exp,
``ds = p * (do . v - delta)`` with ``delta = do . o`` computed here, ``dq = scale * ds @ k + ghr @ rel_h + gwr @ rel_w``
where ``ghr``/``gwr`` are ``ds`` summed per window row/column and shifted back to relative-table rows. The table
gradients ``ghr^T @ q`` and ``gwr^T @ q`` are written as one partial per program and summed afterwards by the caller
(deterministic; no atomics). Padded (out-of-image) keys contribute to the table gradients through their logits.

Extra outputs for the dk/dv kernel, per query, fp32: ``delta`` (B, heads, Hq, Wq) and, when relative tables are
used, ``rel`` (B, heads, Hq, Wq, 2, win): the relative logits ``q . rel_h[a - ly + win - 1]`` (index 0, per window
row a) and ``q . rel_w[b - lx + win - 1]`` (index 1, per window column b), so that kernel gathers them by index.
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
    tile_to_window_rows,
    window_key_tile,
    window_rows_to_tile,
    window_to_rel,
)
from ._launch import launch

LOG2E = tl.constexpr(1.4426950408889634)


_CONFIGS = [triton.Config({"ROWS": rows}, num_warps=4, num_stages=2) for rows in (1, 2, 4)] + [
    triton.Config({"ROWS": 2}, num_warps=8, num_stages=2)
]


@triton.jit
def _halo_bwd_dq_kernel(
    Q, K, V, O, DO, LSE, RELH, RELW, DQ, DELTA, REL_LOGITS, DREL_PART,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,
    stride_gb, stride_gy, stride_gx, stride_gh, stride_gd,
    stride_dqb, stride_dqy, stride_dqx, stride_dqh, stride_dqd,
    heads, height, width, q_height, q_width, n_blocks_w, n_blocks,
    block, block_q, halo, win, d_qk, d_v, scale,
    HAS_REL: tl.constexpr, BLOCK_Q: tl.constexpr, KX_P: tl.constexpr, WIN_P: tl.constexpr, REL_P: tl.constexpr,
    D_QK_P: tl.constexpr, D_V_P: tl.constexpr, ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    BLOCK_N: tl.constexpr = ROWS * KX_P
    pid = tl.program_id(0)
    bh = pid // n_blocks
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
    qk_mask = q_ok[:, None] & (dqk[None, :] < d_qk)
    v_mask = q_ok[:, None] & (dv[None, :] < d_v)

    q = tl.load(Q + b * stride_qb + h * stride_qh + yq[:, None] * stride_qy + xq[:, None] * stride_qx
                + dqk[None, :] * stride_qd, mask=qk_mask, other=0.0)
    do = tl.load(DO + b * stride_gb + h * stride_gh + yq[:, None] * stride_gy + xq[:, None] * stride_gx
                 + dv[None, :] * stride_gd, mask=v_mask, other=0.0)
    o = tl.load(O + b * stride_ob + h * stride_oh + yq[:, None] * stride_oy + xq[:, None] * stride_ox
                + dv[None, :] * stride_od, mask=v_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    row_offset = ((b * heads + h) * q_height + yq) * q_width + xq  # (BLOCK_Q,) index of the query in (B, heads, Hq, Wq)
    tl.store(DELTA + row_offset, delta, mask=q_ok)
    lse2 = tl.load(LSE + row_offset, mask=q_ok, other=0.0) * LOG2E

    n = tl.arange(0, BLOCK_N)
    j = tl.arange(0, WIN_P)
    if HAS_REL:
        n_rel = 2 * win - 1
        rel_h = load_rel_table(RELH, n_rel, d_qk, REL_P, D_QK_P)
        rel_w = load_rel_table(RELW, n_rel, d_qk, REL_P, D_QK_P)
        rqh = tl.dot(q, tl.trans(rel_h), input_precision=DOT_PRECISION)
        rqw = tl.dot(q, tl.trans(rel_w), input_precision=DOT_PRECISION)
        rel_w_tile = rel_to_window(rqw, qx, n % KX_P, win, BLOCK_Q, REL_P, BLOCK_N)
        rel_h_win = rel_to_window(rqh, qy, j, win, BLOCK_Q, REL_P, WIN_P)
        rl_ptrs = REL_LOGITS + row_offset[:, None] * (2 * win)
        tl.store(rl_ptrs + j[None, :], rel_h_win, mask=q_ok[:, None] & (j[None, :] < win))
        # the first KX_P tile columns are window row 0, i.e. the per-column width logits
        tl.store(rl_ptrs + win + n[None, :], rel_w_tile, mask=q_ok[:, None] & (n[None, :] < win))
        g_w_tile = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
        g_h_win = tl.zeros((BLOCK_Q, WIN_P), dtype=tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    y0 = qby * block - halo
    x0 = qbx * block - halo
    qk_scale = scale * LOG2E
    dq_acc = tl.zeros((BLOCK_Q, D_QK_P), dtype=tl.float32)
    for row0 in range(0, win, ROWS):
        y, x, in_window, in_image, row_of_n = window_key_tile(row0, y0, x0, height, width, win, KX_P, BLOCK_N)
        k = tl.load(k_base + y[:, None] * stride_ky + x[:, None] * stride_kx + dqk[None, :] * stride_kd,
                    mask=in_image[:, None] & (dqk[None, :] < d_qk), other=0.0)
        v = tl.load(v_base + y[:, None] * stride_vy + x[:, None] * stride_vx + dv[None, :] * stride_vd,
                    mask=in_image[:, None] & (dv[None, :] < d_v), other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_REL:
            s += (rel_w_tile + window_rows_to_tile(rel_h_win, row0, row_of_n, ROWS, WIN_P, BLOCK_Q, BLOCK_N)) * LOG2E
        p = tl.exp2(tl.where(q_ok[:, None] & in_window[None, :], s - lse2[:, None], float("-inf")))
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq_acc += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        if HAS_REL:
            g_w_tile += ds
            g_h_win += tile_to_window_rows(ds, row0, row_of_n, ROWS, WIN_P, BLOCK_Q)

    dq = dq_acc * scale
    if HAS_REL:
        # d logits -> d (q . rel[r]): sum ds over each window row (column) and shift back to table rows
        ghr = window_to_rel(g_h_win, qy, j, win, BLOCK_Q, REL_P).to(q.dtype)
        gwr = window_to_rel(g_w_tile, qx, n % KX_P, win, BLOCK_Q, REL_P).to(q.dtype)
        dq += tl.dot(ghr, rel_h, input_precision=DOT_PRECISION)
        dq += tl.dot(gwr, rel_w, input_precision=DOT_PRECISION)
        r = tl.arange(0, REL_P)
        part_mask = (r[:, None] < n_rel) & (dqk[None, :] < d_qk)
        part_ptrs = DREL_PART + pid.to(tl.int64) * (2 * n_rel * d_qk) + r[:, None] * d_qk + dqk[None, :]
        tl.store(part_ptrs, tl.dot(tl.trans(ghr), q, input_precision=DOT_PRECISION), mask=part_mask)
        tl.store(part_ptrs + n_rel * d_qk, tl.dot(tl.trans(gwr), q, input_precision=DOT_PRECISION), mask=part_mask)

    tl.store(DQ + b * stride_dqb + h * stride_dqh + yq[:, None] * stride_dqy + xq[:, None] * stride_dqx
             + dqk[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=qk_mask)


_halo_bwd_dq_autotuned = triton.autotune(configs=_CONFIGS, key=AUTOTUNE_KEY)(_halo_bwd_dq_kernel)


def halo_attention_bwd_dq(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    block: int,
    halo: int,
    scale: float,
    rows: Optional[int] = None,
    num_warps: int = 4,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Launch the dq kernel; returns (dq, delta, rel_logits, drel_partials).

    ``rel_logits`` (B, heads, Hq, Wq, 2, win) and ``drel_partials`` (programs, 2, 2 * win - 1, d_qk), both fp32, are
    None without relative tables; ``drel_partials.sum(0)`` gives (d rel_h, d rel_w).
    """
    batch, q_height, q_width, heads, d_qk = q.shape
    _, height, width, _, d_v = v.shape
    block_q = block * q_height // height
    t = halo_tiles(block, block_q, halo, d_qk, d_v)
    n_blocks_w = width // block
    n_blocks = (height // block) * n_blocks_w
    n_programs = batch * heads * n_blocks
    has_rel = rel_h is not None
    f32 = dict(device=q.device, dtype=torch.float32)
    dq = torch.empty_like(q)
    delta = torch.empty((batch, heads, q_height, q_width), **f32)
    rel_logits = torch.empty((batch, heads, q_height, q_width, 2, t.win), **f32) if has_rel else None
    drel_part = torch.empty((n_programs, 2, 2 * t.win - 1, d_qk), **f32) if has_rel else None
    args = (
        q, k, v, out, grad_out, lse, rel_h if has_rel else q, rel_w if has_rel else q, dq, delta,
        rel_logits if has_rel else delta, drel_part if has_rel else delta,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(), *dq.stride(),
        heads, height, width, q_height, q_width, n_blocks_w, n_blocks,
        block, block_q, halo, t.win, d_qk, d_v, float(scale),
    )
    meta = dict(HAS_REL=has_rel, BLOCK_Q=t.BLOCK_Q, KX_P=t.KX_P, WIN_P=t.WIN_P, REL_P=t.REL_P, D_QK_P=t.D_QK_P,
                D_V_P=t.D_V_P, DOT_PRECISION=dot_precision(q.dtype))
    grid = (n_programs,)
    if rows is None and TUNING["autotune"]:
        launch(_halo_bwd_dq_autotuned, grid, *args, **meta)
    else:
        rows = rows or default_rows(t.KX_P, key_tile=32)  # more live tiles than the forward: smaller key tiles
        launch(_halo_bwd_dq_kernel, grid, *args, **meta, ROWS=rows, num_warps=num_warps, num_stages=2)
    return dq, delta, rel_logits, drel_part


def halo_attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    block: int,
    halo: int,
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Whole backward: the dq kernel, then the dk/dv kernel; returns (dq, dk, dv, d rel_h, d rel_w) (the last two
    None without tables; summed from per-program partials in a fixed order, so deterministic)."""
    from .halo_attention_bwd_dkv import halo_attention_bwd_dkv

    dq, delta, rel_logits, drel_part = halo_attention_bwd_dq(grad_out, q, k, v, out, lse, rel_h, rel_w, block, halo,
                                                             scale)
    dk, dv = halo_attention_bwd_dkv(grad_out, q, k, v, lse, delta, rel_logits, block, halo, scale)
    if rel_h is None:
        return dq, dk, dv, None, None
    return dq, dk, dv, drel_part[:, 0].sum(0).to(rel_h.dtype), drel_part[:, 1].sum(0).to(rel_w.dtype)
