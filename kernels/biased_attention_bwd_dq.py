"""Backward of biased dense attention, query side: dq = scale * dS @ k with dS = P * (dO @ v^T - delta), P
recomputed from the forward's base-2 logsumexp. One program per (query tile, bias slot, member chunk); it loops over
its members (batch, head pairs, see ``_biased_attention_common``) and over all key tiles, so dq needs no atomics.

When this kernel owns the bias gradient (DBIAS_MODE != DBIAS_NONE) it also sums dS over its chunk of members:
in registers when the keys fit one tile (DBIAS_REGISTERS: the query-side stage of Agent attention, Lk = agents), else
by read-modify-write of the program's own fp32 partial strip (DBIAS_GLOBAL; no other program touches it, so the
result is deterministic). The partial buffer is (n_chunks, Bb, Hb, Lq, Lk) fp32.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._intmath import cdiv
from ._biased_attention_common import (DBIAS_NONE, LOG2E, LOG2E_PY, MODE_GLOBAL, MODE_REGISTERS, make_configs,
                                       make_pruner, member_coords)
from ._launch import launch

__all__ = ["biased_attention_bwd_dq"]

# (BLOCK_M, BLOCK_N, warps, stages): programs over query tiles (BLOCK_M), loop over key tiles (BLOCK_N)
_CONFIGS = ((16, 16, 4, 2), (16, 32, 4, 2), (16, 64, 4, 2), (16, 128, 4, 2), (32, 64, 4, 2), (64, 16, 4, 2),
            (64, 32, 4, 2), (64, 64, 4, 2), (128, 16, 8, 2), (128, 32, 8, 2))


@triton.autotune(
    configs=make_configs(_CONFIGS),
    key=["Lq", "Lk", "HEAD_DIM", "V_DIM", "HAS_BIAS", "DBIAS_MODE"],
    prune_configs_by={"early_config_prune": make_pruner("Lq", "Lk", "BLOCK_M", "BLOCK_N")},
)
@triton.jit
def _biased_attention_bwd_dq_kernel(
    Q, K, V, Bias, DOut, Lse, Delta, DQ, DBias,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_bb, stride_bh, stride_bm, stride_bn,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_pc, stride_pb, stride_ph, stride_pm, stride_pn,
    Lq, Lk, scale, qk_scale_log2,
    SLOT_H, H_REP, members, members_per_chunk, n_chunks,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    slot = tl.program_id(1) // n_chunks
    chunk = tl.program_id(1) % n_chunks
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, V_DIM)
    row_ok = offs_m < Lq
    # per-member-invariant offsets of the query tile and of the first key tile (tiles advance by pointer increments)
    q_offs = offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    do_offs = offs_m[:, None] * stride_gm + offs_dv[None, :] * stride_gd
    dq_offs = offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    k_offs = offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    vt_offs = offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd
    bias_offs = offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn
    # this program's slice of the fp32 partial d_bias buffer (only touched when DBIAS_MODE != DBIAS_NONE)
    part_ptrs0 = DBias + chunk * stride_pc + (slot // SLOT_H) * stride_pb + (slot % SLOT_H) * stride_ph \
        + offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn
    r_begin = chunk * members_per_chunk
    r_end = tl.minimum(r_begin + members_per_chunk, members)
    dbias_acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)

    for r in range(r_begin, r_end):
        b, h = member_coords(slot, r, SLOT_H, H_REP)
        q = tl.load(Q + b * stride_qb + h * stride_qh + q_offs, mask=row_ok[:, None], other=0.0)
        do = tl.load(DOut + b * stride_gb + h * stride_gh + do_offs, mask=row_ok[:, None], other=0.0)
        lse = tl.load(Lse + b * stride_lb + h * stride_lh + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(Delta + b * stride_lb + h * stride_lh + offs_m, mask=row_ok, other=0.0)
        k_ptrs = K + b * stride_kb + h * stride_kh + k_offs
        vt_ptrs = V + b * stride_vb + h * stride_vh + vt_offs
        bias_ptrs = Bias + b * stride_bb + h * stride_bh + bias_offs
        part_ptrs = part_ptrs0
        dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
        for start_n in range(0, Lk, BLOCK_N):
            col_ok = offs_n < Lk - start_n
            tile_ok = row_ok[:, None] & col_ok[None, :]
            k = tl.load(k_ptrs, mask=col_ok[:, None], other=0.0)
            vt = tl.load(vt_ptrs, mask=col_ok[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale_log2
            if HAS_BIAS:
                s += tl.load(bias_ptrs, mask=tile_ok, other=0.0).to(tl.float32) * LOG2E
            p = tl.where(tile_ok, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, vt, input_precision="ieee")
            ds = p * (dp - delta[:, None])  # d loss / d logits
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
            if DBIAS_MODE == MODE_REGISTERS:
                dbias_acc += ds
            elif DBIAS_MODE == MODE_GLOBAL:
                # the first member of the chunk initialises the strip (also makes autotuner reruns idempotent)
                prev = tl.load(part_ptrs, mask=tile_ok & (r > r_begin), other=0.0)
                tl.store(part_ptrs, prev + ds, mask=tile_ok)
                # other threads of this program re-read these addresses for the next member
                tl.debug_barrier()
            k_ptrs += BLOCK_N * stride_kn
            vt_ptrs += BLOCK_N * stride_vn
            bias_ptrs += BLOCK_N * stride_bn
            part_ptrs += BLOCK_N * stride_pn
        tl.store(DQ + b * stride_dqb + h * stride_dqh + dq_offs, (dq * scale).to(DQ.dtype.element_ty),
                 mask=row_ok[:, None])

    if DBIAS_MODE == MODE_REGISTERS:  # the keys were one tile: store the chunk's sum once
        tl.store(part_ptrs0, dbias_acc, mask=row_ok[:, None] & (offs_n < Lk)[None, :])


def biased_attention_bwd_dq(q, k, v, bias, grad_out, lse, delta, dq, dbias_partial, strides, scale: float,
                            split: tuple, dbias_mode: int) -> None:
    """Launch the dq kernel. ``strides``: bias strides viewed as (B, H, Lq, Lk); ``split``: (slot_b, slot_h, h_rep,
    members, members_per_chunk, n_chunks) from the orchestrator; ``dbias_partial``: the fp32 partial buffer (any
    tensor when ``dbias_mode == DBIAS_NONE``)."""
    _, _, lq, head_dim = q.shape
    lk, v_dim = k.shape[2], v.shape[3]
    slot_b, slot_h, h_rep, members, per_chunk, n_chunks = split
    part_strides = dbias_partial.stride() if dbias_mode != DBIAS_NONE else (0,) * 5

    def grid(meta):
        return cdiv(lq, meta["BLOCK_M"]), slot_b * slot_h * n_chunks

    launch(_biased_attention_bwd_dq_kernel, grid,
        q, k, v, bias if bias is not None else q, grad_out, lse, delta, dq, dbias_partial,
        *q.stride(), *k.stride(), *v.stride(), *strides, *grad_out.stride(), lse.stride(0), lse.stride(1),
        *dq.stride(), *part_strides,
        lq, lk, scale, scale * LOG2E_PY,
        slot_h, h_rep, members, per_chunk, n_chunks,
        HEAD_DIM=head_dim, V_DIM=v_dim, HAS_BIAS=bias is not None, DBIAS_MODE=dbias_mode,
    )

