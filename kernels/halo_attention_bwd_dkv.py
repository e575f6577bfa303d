"""HaloNet attention, backward part 2 of 2 (Triton): dk and dv.

Key-centric so that every dk/dv element is written by exactly one program (no atomics, deterministic): one program
per (batch, head, key block of ``block x block`` image keys) loops over the query blocks whose haloed windows can
reach it (``ceil(halo / block)`` blocks in each direction) and accumulates ``dv += p^T @ do`` and
``dk += scale * ds^T @ q``. Probabilities are recomputed from the forward's log-sum-exp; the relative logits and
``delta = do . o`` are gathered per (key, query) pair from the per-query tables that
:mod:`vitzoo.kernels.halo_attention_bwd` wrote (the relative index depends on both the key's and the query's
position, which a register gather could not express). Zero-padding keys lie outside the image: they have no dk/dv.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._halo_common import AUTOTUNE_KEY, TUNING, dot_precision, halo_tiles
from ._launch import launch

LOG2E = tl.constexpr(1.4426950408889634)


_CONFIGS = [triton.Config({}, num_warps=warps, num_stages=2) for warps in (4, 8)]


@triton.jit
def _halo_bwd_dkv_kernel(
    Q, K, V, DO, LSE, DELTA, REL_LOGITS, DK, DV,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_gb, stride_gy, stride_gx, stride_gh, stride_gd,
    stride_dkb, stride_dky, stride_dkx, stride_dkh, stride_dkd,
    stride_dvb, stride_dvy, stride_dvx, stride_dvh, stride_dvd,
    heads, q_height, q_width, n_blocks_h, n_blocks_w, n_blocks,
    block, block_q, halo, win, reach, d_qk, d_v, scale,
    HAS_REL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, D_QK_P: tl.constexpr,
    D_V_P: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid // n_blocks
    blk = pid % n_blocks
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    kby = blk // n_blocks_w
    kbx = blk % n_blocks_w

    m = tl.arange(0, BLOCK_K)
    k_ok = m < block * block
    yk = kby * block + m // block
    xk = kbx * block + m % block
    dqk = tl.arange(0, D_QK_P)
    dv_idx = tl.arange(0, D_V_P)
    k_mask = k_ok[:, None] & (dqk[None, :] < d_qk)
    v_mask = k_ok[:, None] & (dv_idx[None, :] < d_v)
    k = tl.load(K + b * stride_kb + h * stride_kh + yk[:, None] * stride_ky + xk[:, None] * stride_kx
                + dqk[None, :] * stride_kd, mask=k_mask, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + yk[:, None] * stride_vy + xk[:, None] * stride_vx
                + dv_idx[None, :] * stride_vd, mask=v_mask, other=0.0)

    i = tl.arange(0, BLOCK_Q)
    qy = i // block_q
    qx = i % block_q
    q_ok = i < block_q * block_q
    qk_scale = scale * LOG2E
    dk = tl.zeros((BLOCK_K, D_QK_P), dtype=tl.float32)
    dv = tl.zeros((BLOCK_K, D_V_P), dtype=tl.float32)
    side = 2 * reach + 1
    for t in range(0, side * side):
        qby = kby + t // side - reach
        qbx = kbx + t % side - reach
        if (qby >= 0) & (qby < n_blocks_h) & (qbx >= 0) & (qbx < n_blocks_w):
            yq = qby * block_q + qy
            xq = qbx * block_q + qx
            q = tl.load(Q + b * stride_qb + h * stride_qh + yq[:, None] * stride_qy + xq[:, None] * stride_qx
                        + dqk[None, :] * stride_qd, mask=q_ok[:, None] & (dqk[None, :] < d_qk), other=0.0)
            do = tl.load(DO + b * stride_gb + h * stride_gh + yq[:, None] * stride_gy + xq[:, None] * stride_gx
                         + dv_idx[None, :] * stride_gd, mask=q_ok[:, None] & (dv_idx[None, :] < d_v), other=0.0)
            row_offset = ((b * heads + h) * q_height + yq) * q_width + xq
            lse2 = tl.load(LSE + row_offset, mask=q_ok, other=0.0) * LOG2E
            delta = tl.load(DELTA + row_offset, mask=q_ok, other=0.0)
            # the key's slot in this query block's window
            ky = yk - (qby * block - halo)
            kx = xk - (qbx * block - halo)
            in_window = k_ok & (ky >= 0) & (ky < win) & (kx >= 0) & (kx < win)
            pair_ok = in_window[:, None] & q_ok[None, :]
            s = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_K, BLOCK_Q)
            if HAS_REL:
                rl_ptrs = REL_LOGITS + row_offset[None, :] * (2 * win)
                rel = tl.load(rl_ptrs + ky[:, None], mask=pair_ok, other=0.0)
                rel += tl.load(rl_ptrs + win + kx[:, None], mask=pair_ok, other=0.0)
                s += rel * LOG2E
            p = tl.exp2(tl.where(pair_ok, s - lse2[None, :], float("-inf")))
            dv += tl.dot(p.to(do.dtype), do, input_precision=DOT_PRECISION)
            dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[None, :])
            dk += tl.dot(ds.to(q.dtype), q, input_precision=DOT_PRECISION)

    tl.store(DK + b * stride_dkb + h * stride_dkh + yk[:, None] * stride_dky + xk[:, None] * stride_dkx
             + dqk[None, :] * stride_dkd, (dk * scale).to(DK.dtype.element_ty), mask=k_mask)
    tl.store(DV + b * stride_dvb + h * stride_dvh + yk[:, None] * stride_dvy + xk[:, None] * stride_dvx
             + dv_idx[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=v_mask)


_halo_bwd_dkv_autotuned = triton.autotune(configs=_CONFIGS, key=AUTOTUNE_KEY)(_halo_bwd_dkv_kernel)


def halo_attention_bwd_dkv(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    rel_logits: Optional[torch.Tensor],
    block: int,
    halo: int,
    scale: float,
    num_warps: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the dk/dv kernel after :func:`halo_attention_bwd_dq` (which produced ``delta`` and ``rel_logits``)."""
    batch, q_height, q_width, heads, d_qk = q.shape
    _, height, width, _, d_v = v.shape
    block_q = block * q_height // height
    t = halo_tiles(block, block_q, halo, d_qk, d_v)
    n_blocks_h, n_blocks_w = height // block, width // block
    n_blocks = n_blocks_h * n_blocks_w
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    has_rel = rel_logits is not None
    args = (
        q, k, v, grad_out, lse, delta, rel_logits if has_rel else delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(),
        heads, q_height, q_width, n_blocks_h, n_blocks_w, n_blocks,
        block, block_q, halo, t.win, -(-halo // block), d_qk, d_v, float(scale),
    )
    meta = dict(HAS_REL=has_rel, BLOCK_Q=t.BLOCK_Q, BLOCK_K=t.BLOCK_K, D_QK_P=t.D_QK_P, D_V_P=t.D_V_P,
                DOT_PRECISION=dot_precision(q.dtype))
    grid = (batch * heads * n_blocks,)
    if num_warps is None and TUNING["autotune"]:
        launch(_halo_bwd_dkv_autotuned, grid, *args, **meta)
    else:
        launch(_halo_bwd_dkv_kernel, grid, *args, **meta, num_warps=num_warps or 4, num_stages=2)
    return dk, dv
