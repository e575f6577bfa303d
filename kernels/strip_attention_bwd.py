"""Backward of dense attention whose *short side fits one register tile*: the queries (``FIXED_KEYS = False``) or the
keys (``FIXED_KEYS = True``) of every (batch, head) are at most ``MAX_FIXED`` rows, the other side has any length.
Agent attention is exactly this: its agents (9-49) attend to all N keys, then all N queries attend to the agents.

One program per (bias slot, chunk of members; see ``_biased_attention_common``) computes dq, dk, dv and the bias
gradient of its members in a single pass. Per member it holds the short side in registers and streams the long side
in tiles of ``BLOCK_L`` rows:

* fixed keys (queries stream): k, v stay loaded; each query tile gives its dq directly, and dk, dv accumulate in
  registers. delta = rowsum(P * dP) (the whole key range is in the tile), so O is not read.
* fixed queries (keys stream): q, dO, O stay loaded, delta = rowsum(dO * O) once; each key tile gives its dk, dv
  directly, and dq accumulates in registers.

So q, k, v, dO and the log-sum-exp are read once, where the general path (``biased_attention_bwd_{delta,dkdv,dq}``)
reads the long side's tensors in two or three kernels. P is recomputed from the forward's base-2 log-sum-exp.

The bias gradient sums dS over the slot's members: each program read-modify-writes its own fp32 partial strip
(n_chunks, Bb, Hb, Lq, Lk), which stays in L2 between members; the launcher sums the chunks in a fixed order.
Deterministic, no atomics.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._biased_attention_common import (LOG2E, LOG2E_PY, bias_strides, check_head_dims, chunk_split, member_coords,
                                       next_block)
from ._launch import launch
from ._neighborhood_common import SUM
from ._tuning import autotune_enabled, interpreting

__all__ = ["strip_attention_bwd", "ENABLED", "MAX_FIXED", "MIN_PAIRS_PER_SM"]

# The op layer sends calls that fit here (VITZOO_STRIP_BACKWARD=0: to the general kernels, for comparisons)
ENABLED = os.environ.get("VITZOO_STRIP_BACKWARD", "1") not in ("", "0", "false", "False")

# Short side per (batch, head), padded to a power of two: four fp32 (BLOCK_L, MAX_FIXED) tiles (S/P, dP, dS, bias)
# and the short side's operands and accumulators live in registers at once.
MAX_FIXED = 64
# The kernel runs at most one program per (batch, head): with fewer (batch, head) pairs than MIN_PAIRS_PER_SM x SMs
# the op layer keeps the general kernels, whose programs over tiles of the long side fill the GPU better (H100,
# Agent-PVT-T stage 1, 128 pairs x 3136 queries x 49 agents: general 305 us, this kernel 330 us at its best tile).
MIN_PAIRS_PER_SM = 1
# Programs per SM the bias-gradient chunking aims for: fewer, longer chunks write fewer fp32 partials. When the
# streamed side is short (at most SHORT_STREAM rows: a member is a few loop tiles) half as many. H100, bf16, batch
# 128, Agent attention's fwd+bwd (us) at 4 / 2 programs per SM: Agent-Swin-T stage 3 (196 rows streamed) 477 / 462;
# stage 2 (784) 473 / 531; stage 1 (3136) 1222 / 1418 (`h100_agent_op_ab_2026-11-24o.txt`).
PROGRAMS_PER_SM = 4
SHORT_STREAM = 256
SHORT_STREAM_PROGRAMS_PER_SM = 2
PARTIAL_BUDGET_BYTES = 1 << 26  # cap on the fp32 bias-gradient partials (chunks x slots x Lq x Lk)

# (BLOCK_L, warps, stages). H100, bf16, batch 128, the launch with its partial sum (us): 64 / 4 / 2 is best or within
# 2 % at Agent-Swin-T stages 1-3 and Agent-PVT-T stages 2-3 (e.g. 221 / 165 at stage 1's agent / query side, 132 at
# stage 3's query side), except for 64 fixed queries (stage 3's agent side: 163 at 32 rows, 190 at 64).
_SPECS = ((64, 4, 2), (32, 4, 2), (64, 4, 3), (128, 8, 2), (64, 8, 2), (128, 4, 2))
_CONFIGS = [triton.Config({"BLOCK_L": l}, num_warps=w, num_stages=s) for l, w, s in _SPECS]
_INTERPRET_CONFIG = triton.Config({"BLOCK_L": 16}, num_warps=4, num_stages=1)  # several loop tiles on tiny shapes
_WIDE_FIXED_QUERIES_BLOCK_L = 32  # untuned loop tile when 64 fixed queries hold q, dO and dq in registers


def _prune(configs, named_args, **kwargs):
    """All configs when autotuning; else the interpreter's small tile, or the measured default for the shape."""
    if interpreting():
        return [_INTERPRET_CONFIG]
    if autotune_enabled():
        return configs
    args = {**named_args, **kwargs}
    wide_fixed_queries = not args["FIXED_KEYS"] and args["BLOCK_FIXED"] >= MAX_FIXED
    want = _WIDE_FIXED_QUERIES_BLOCK_L if wide_fixed_queries else configs[0].kwargs["BLOCK_L"]
    return [next(c for c in configs if c.kwargs["BLOCK_L"] == want)]


@triton.autotune(configs=_CONFIGS, key=["LQ", "LK", "HEAD_DIM", "V_DIM", "HAS_BIAS", "BIAS_GRAD", "FIXED_KEYS"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _strip_attention_bwd_kernel(
    Q, K, V, O, DO, Lse, Bias, DQ, DK, DV, DBias,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,  # dO
    stride_lb, stride_lh,  # log-sum-exp (fp32, base 2, unit stride over queries)
    stride_bb, stride_bh, stride_bm, stride_bn,  # bias viewed as (B, H, Lq, Lk): 0 on broadcast dims
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_pc, stride_pb, stride_ph, stride_pm, stride_pn,  # fp32 bias-gradient partials (chunks, Bb, Hb, Lq, Lk)
    LQ, LK, scale, qk_scale_log2,
    SLOT_H, H_REP, members, members_per_chunk, n_chunks,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr,
    FIXED_KEYS: tl.constexpr, BLOCK_FIXED: tl.constexpr, BLOCK_L: tl.constexpr,
):
    slot = tl.program_id(0) // n_chunks
    chunk = tl.program_id(0) % n_chunks
    offs_f = tl.arange(0, BLOCK_FIXED)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_e = tl.arange(0, V_DIM)
    if FIXED_KEYS:
        loop_len = LQ
    else:
        loop_len = LK
    part_base = DBias + chunk * stride_pc + (slot // SLOT_H) * stride_pb + (slot % SLOT_H) * stride_ph
    r_begin = chunk * members_per_chunk
    r_end = tl.minimum(r_begin + members_per_chunk, members)

    for r in range(r_begin, r_end):
        b, h = member_coords(slot, r, SLOT_H, H_REP)
        b = b.to(tl.int64)
        q_base = Q + b * stride_qb + h * stride_qh
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        do_base = DO + b * stride_gb + h * stride_gh
        lse_base = Lse + b * stride_lb + h * stride_lh
        bias_base = Bias + b * stride_bb + h * stride_bh
        if FIXED_KEYS:  # this member's keys and values stay in registers; dk, dv accumulate over the query tiles
            offs_k = offs_f
            k_ok = offs_k < LK
            k = tl.load(k_base + offs_k[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=k_ok[:, None],
                        other=0.0)
            v = tl.load(v_base + offs_k[:, None] * stride_vn + offs_e[None, :] * stride_vd, mask=k_ok[:, None],
                        other=0.0)
            dk_acc = tl.zeros((BLOCK_FIXED, HEAD_DIM), tl.float32)
            dv_acc = tl.zeros((BLOCK_FIXED, V_DIM), tl.float32)
        else:  # this member's queries stay in registers; dq accumulates over the key tiles
            offs_q = offs_f
            q_ok = offs_q < LQ
            q = tl.load(q_base + offs_q[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok[:, None],
                        other=0.0)
            do = tl.load(do_base + offs_q[:, None] * stride_gm + offs_e[None, :] * stride_gd, mask=q_ok[:, None],
                         other=0.0)
            o = tl.load(O + b * stride_ob + h * stride_oh + offs_q[:, None] * stride_om + offs_e[None, :] * stride_od,
                        mask=q_ok[:, None], other=0.0)
            lse = tl.load(lse_base + offs_q, mask=q_ok, other=0.0)
            delta = tl.reduce(do.to(tl.float32) * o.to(tl.float32), 1, SUM)
            dq_acc = tl.zeros((BLOCK_FIXED, HEAD_DIM), tl.float32)

        for start in range(0, loop_len, BLOCK_L):
            if FIXED_KEYS:  # a tile of queries
                offs_q = start + offs_l
                q_ok = offs_q < LQ
                q = tl.load(q_base + offs_q[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok[:, None],
                            other=0.0)
                do = tl.load(do_base + offs_q[:, None] * stride_gm + offs_e[None, :] * stride_gd, mask=q_ok[:, None],
                             other=0.0)
                lse = tl.load(lse_base + offs_q, mask=q_ok, other=0.0)
            else:  # a tile of keys
                offs_k = start + offs_l
                k_ok = offs_k < LK
                k = tl.load(k_base + offs_k[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=k_ok[:, None],
                            other=0.0)
                v = tl.load(v_base + offs_k[:, None] * stride_vn + offs_e[None, :] * stride_vd, mask=k_ok[:, None],
                            other=0.0)
            tile_ok = q_ok[:, None] & k_ok[None, :]
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale_log2
            if HAS_BIAS:
                s += tl.load(bias_base + offs_q[:, None] * stride_bm + offs_k[None, :] * stride_bn, mask=tile_ok,
                             other=0.0).to(tl.float32) * LOG2E
            p = tl.where(tile_ok, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            if FIXED_KEYS:
                delta = tl.reduce(p * dp, 1, SUM)  # = rowsum(dO * O): every key is in this tile
            ds = p * (dp - delta[:, None])  # d loss / d logits (natural units)
            if FIXED_KEYS:
                dq = tl.dot(ds.to(k.dtype), k, input_precision="ieee") * scale
                tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_q[:, None] * stride_dqm
                         + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=q_ok[:, None])
                dk_acc += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")
                dv_acc += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
            else:
                dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee") * scale
                dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
                tl.store(DK + b * stride_dkb + h * stride_dkh + offs_k[:, None] * stride_dkn
                         + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty), mask=k_ok[:, None])
                tl.store(DV + b * stride_dvb + h * stride_dvh + offs_k[:, None] * stride_dvn
                         + offs_e[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=k_ok[:, None])
                dq_acc += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
            if BIAS_GRAD:
                # the chunk's first member initialises the strip (which also makes autotuner reruns idempotent)
                part_ptrs = part_base + offs_q[:, None] * stride_pm + offs_k[None, :] * stride_pn
                prev = tl.load(part_ptrs, mask=tile_ok & (r > r_begin), other=0.0)
                tl.store(part_ptrs, prev + ds, mask=tile_ok)
                # other threads of this program may re-read these addresses for the next member
                tl.debug_barrier()

        if FIXED_KEYS:
            offs_k = offs_f
            k_ok = offs_k < LK
            tl.store(DK + b * stride_dkb + h * stride_dkh + offs_k[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
                     (dk_acc * scale).to(DK.dtype.element_ty), mask=k_ok[:, None])
            tl.store(DV + b * stride_dvb + h * stride_dvh + offs_k[:, None] * stride_dvn + offs_e[None, :] * stride_dvd,
                     dv_acc.to(DV.dtype.element_ty), mask=k_ok[:, None])
        else:
            offs_q = offs_f
            q_ok = offs_q < LQ
            tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_q[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
                     (dq_acc * scale).to(DQ.dtype.element_ty), mask=q_ok[:, None])


def strip_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
    out: torch.Tensor, lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, scale: float,
    bias_grad: bool,
) -> Optional[torch.Tensor]:
    """Write dq, dk, dv (preallocated, any strides) and return the bias gradient.

    q, grad_out, out, dq: (B, H, Lq, d | d_v); k, v, dk, dv: (B, H, Lk, d | d_v); ``lse``: (B, H, Lq) fp32 base-2
    log-sum-exp with unit stride over queries; ``bias``: None or 4-D (1|B, 1|H, Lq, Lk). min(Lq, Lk) must be at most
    ``MAX_FIXED``. Returns the fp32 gradient of ``bias`` (its shape) when ``bias_grad``, else None.
    """
    batch, heads, lq, head_dim = q.shape
    lk, v_dim = k.shape[2], v.shape[3]
    check_head_dims(head_dim, v_dim)
    if min(lq, lk) > MAX_FIXED:
        raise ValueError(f"strip_attention_bwd: needs min(Lq, Lk) <= {MAX_FIXED}; got Lq={lq}, Lk={lk}")
    fixed_keys = lk <= lq  # the shorter side stays in registers
    bias_grad = bias_grad and bias is not None
    if bias_grad:  # members of one bias slot sum their dS into one strip per chunk
        slot_b, slot_h = bias.shape[0], bias.shape[1]
        h_rep = heads // slot_h
        members = (batch // slot_b) * h_rep
        slots = slot_b * slot_h
        per_sm = SHORT_STREAM_PROGRAMS_PER_SM if max(lq, lk) <= SHORT_STREAM else PROGRAMS_PER_SM
        per_chunk, n_chunks = chunk_split(members, slots, q.device, slots * lq * lk * 4, PARTIAL_BUDGET_BYTES,
                                          programs_per_sm=per_sm)
        partial = torch.empty(n_chunks, slot_b, slot_h, lq, lk, device=q.device, dtype=torch.float32)
        part_strides = partial.stride()
    else:  # every (batch, head) is its own program
        slot_h, h_rep, members, slots, per_chunk, n_chunks = heads, 1, 1, batch * heads, 1, 1
        partial, part_strides = None, (0,) * 5
    launch(_strip_attention_bwd_kernel, (slots * n_chunks,),
           q, k, v, out, grad_out, lse, bias if bias is not None else q, dq, dk, dv,
           partial if partial is not None else q,
           *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(), lse.stride(0), lse.stride(1),
           *bias_strides(bias, batch, heads, lq, lk), *dq.stride(), *dk.stride(), *dv.stride(), *part_strides,
           lq, lk, scale, scale * LOG2E_PY,
           slot_h, h_rep, members, per_chunk, n_chunks,
           HEAD_DIM=head_dim, V_DIM=v_dim, HAS_BIAS=bias is not None, BIAS_GRAD=bias_grad,
           FIXED_KEYS=fixed_keys, BLOCK_FIXED=next_block(min(lq, lk)))
    if partial is None:
        return None
    return partial[0] if n_chunks == 1 else partial.sum(0)
