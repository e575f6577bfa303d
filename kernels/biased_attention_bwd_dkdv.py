"""Backward of biased dense attention, key side: dv = P^T @ dO and dk = scale * dS^T @ q, computed transposed
(tiles are (keys, queries)) with P recomputed from the forward's base-2 logsumexp. One program per (key tile, bias
slot, member chunk); it loops over its members (batch, head pairs, see ``_biased_attention_common``) and over all
query tiles, so dk / dv need no atomics.

When this kernel owns the bias gradient it sums dS over its chunk of members: in registers when the queries fit one
tile (DBIAS_REGISTERS: the agent-side stage of Agent attention, Lq = agents), else by read-modify-write of the
program's own fp32 partial strip (DBIAS_GLOBAL; deterministic, no atomics). Partials are (n_chunks, Bb, Hb, Lq, Lk).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._intmath import cdiv
from ._biased_attention_common import (DBIAS_NONE, LOG2E, LOG2E_PY, MODE_GLOBAL, MODE_REGISTERS, make_configs,
                                       make_pruner, member_coords)
from ._launch import launch

__all__ = ["biased_attention_bwd_dkdv"]

# (BLOCK_M, BLOCK_N, warps, stages): programs over key tiles (BLOCK_N), loop over query tiles (BLOCK_M)
_CONFIGS = ((16, 16, 4, 2), (32, 16, 4, 2), (16, 64, 4, 2), (16, 128, 4, 2), (32, 64, 4, 2), (64, 16, 4, 2),
            (64, 32, 4, 2), (64, 64, 4, 2), (32, 128, 8, 2), (64, 128, 8, 2))


@triton.autotune(
    configs=make_configs(_CONFIGS),
    key=["Lq", "Lk", "HEAD_DIM", "V_DIM", "HAS_BIAS", "DBIAS_MODE"],
    prune_configs_by={"early_config_prune": make_pruner("Lk", "Lq", "BLOCK_N", "BLOCK_M")},
)
@triton.jit
def _biased_attention_bwd_dkdv_kernel(
    Q, K, V, Bias, DOut, Lse, Delta, DK, DV, DBias,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_bb, stride_bh, stride_bm, stride_bn,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_lb, stride_lh,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_pc, stride_pb, stride_ph, stride_pm, stride_pn,
    Lq, Lk, scale, qk_scale_log2,
    SLOT_H, H_REP, members, members_per_chunk, n_chunks,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    slot = tl.program_id(1) // n_chunks
    chunk = tl.program_id(1) % n_chunks
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, V_DIM)
    col_ok = offs_n < Lk
    # per-member-invariant offsets of the key tile and of the first query tile (tiles advance by pointer increments)
    k_offs = offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_offs = offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
    dk_offs = offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    dv_offs = offs_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd
    q_offs = offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    do_offs = offs_m[:, None] * stride_gm + offs_dv[None, :] * stride_gd
    bias_t_offs = offs_m[None, :] * stride_bm + offs_n[:, None] * stride_bn
    # this program's (transposed) slice of the fp32 partial d_bias buffer
    part_ptrs0 = DBias + chunk * stride_pc + (slot // SLOT_H) * stride_pb + (slot % SLOT_H) * stride_ph \
        + offs_n[:, None] * stride_pn + offs_m[None, :] * stride_pm
    r_begin = chunk * members_per_chunk
    r_end = tl.minimum(r_begin + members_per_chunk, members)
    dbias_acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)

    for r in range(r_begin, r_end):
        b, h = member_coords(slot, r, SLOT_H, H_REP)
        k = tl.load(K + b * stride_kb + h * stride_kh + k_offs, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + v_offs, mask=col_ok[:, None], other=0.0)
        q_ptrs = Q + b * stride_qb + h * stride_qh + q_offs
        do_ptrs = DOut + b * stride_gb + h * stride_gh + do_offs
        lse_ptrs = Lse + b * stride_lb + h * stride_lh + offs_m
        delta_ptrs = Delta + b * stride_lb + h * stride_lh + offs_m
        bias_t_ptrs = Bias + b * stride_bb + h * stride_bh + bias_t_offs
        part_ptrs = part_ptrs0
        dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
        dv = tl.zeros((BLOCK_N, V_DIM), tl.float32)
        for start_m in range(0, Lq, BLOCK_M):
            row_ok = offs_m < Lq - start_m
            tile_ok = col_ok[:, None] & row_ok[None, :]  # (keys, queries)
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(lse_ptrs, mask=row_ok, other=0.0)
            delta = tl.load(delta_ptrs, mask=row_ok, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision="ieee") * qk_scale_log2
            if HAS_BIAS:
                st += tl.load(bias_t_ptrs, mask=tile_ok, other=0.0).to(tl.float32) * LOG2E
            pt = tl.where(tile_ok, tl.exp2(st - lse[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision="ieee")
            dpt = tl.dot(v, tl.trans(do), input_precision="ieee")
            dst = pt * (dpt - delta[None, :])  # (d loss / d logits)^T
            dk += tl.dot(dst.to(q.dtype), q, input_precision="ieee")
            if DBIAS_MODE == MODE_REGISTERS:
                dbias_acc += dst
            elif DBIAS_MODE == MODE_GLOBAL:
                # the first member of the chunk initialises the strip (also makes autotuner reruns idempotent)
                prev = tl.load(part_ptrs, mask=tile_ok & (r > r_begin), other=0.0)
                tl.store(part_ptrs, prev + dst, mask=tile_ok)
                # other threads of this program re-read these addresses for the next member
                tl.debug_barrier()
            q_ptrs += BLOCK_M * stride_qm
            do_ptrs += BLOCK_M * stride_gm
            lse_ptrs += BLOCK_M
            delta_ptrs += BLOCK_M
            bias_t_ptrs += BLOCK_M * stride_bm
            part_ptrs += BLOCK_M * stride_pm
        tl.store(DK + b * stride_dkb + h * stride_dkh + dk_offs, (dk * scale).to(DK.dtype.element_ty),
                 mask=col_ok[:, None])
        tl.store(DV + b * stride_dvb + h * stride_dvh + dv_offs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    if DBIAS_MODE == MODE_REGISTERS:  # the queries were one tile: store the chunk's sum once
        tl.store(part_ptrs0, dbias_acc, mask=col_ok[:, None] & (offs_m < Lq)[None, :])


def biased_attention_bwd_dkdv(q, k, v, bias, grad_out, lse, delta, dk, dv, dbias_partial, strides, scale: float,
                              split: tuple, dbias_mode: int) -> None:
    """Launch the dk/dv kernel (arguments as in :func:`biased_attention_bwd_dq`)."""
    _, _, lq, head_dim = q.shape
    lk, v_dim = k.shape[2], v.shape[3]
    slot_b, slot_h, h_rep, members, per_chunk, n_chunks = split
    part_strides = dbias_partial.stride() if dbias_mode != DBIAS_NONE else (0,) * 5

    def grid(meta):
        return cdiv(lk, meta["BLOCK_N"]), slot_b * slot_h * n_chunks

    launch(_biased_attention_bwd_dkdv_kernel, grid,
        q, k, v, bias if bias is not None else q, grad_out, lse, delta, dk, dv, dbias_partial,
        *q.stride(), *k.stride(), *v.stride(), *strides, *grad_out.stride(), lse.stride(0), lse.stride(1),
        *dk.stride(), *dv.stride(), *part_strides,
        lq, lk, scale, scale * LOG2E_PY,
        slot_h, h_rep, members, per_chunk, n_chunks,
        HEAD_DIM=head_dim, V_DIM=v_dim, HAS_BIAS=bias is not None, DBIAS_MODE=dbias_mode,
    )
