"""Backward of softmax attention over *groups that fit one tile*: every group's queries and keys (at most
``MAX_TILE`` each) are one register tile, so one kernel computes dq, dk, dv and the bias gradient of a group in a
single pass, reading q, k, v, dO and the log-sum-exp once.

Groups are non-overlapping windows or grids of a (B, H, W, heads, d) map (Swin / MaxViT / DaViT / EfficientViT
windows, MaxViT grids: ``neighborhood_attention_2d`` with stride == kernel on an exactly tiled map), or whole
sequences of a dense (B, heads, L, d) attention (Agent attention's stages with few tokens). Both are described by
one geometry: a group is a ``rows x cols`` block of tokens whose map rows / columns step by the dilation; the map
holds ``B x GROUPS_Y x GROUPS_X`` groups per head. A dense sequence is one row of ``L`` tokens (``GROUPS_* = 1``).
Queries and keys share the group's rows and dilations; their column counts may differ (dense: Lq vs Lk).

The flash-attention backward needs ``delta = rowsum(dO * O)``; with the whole key range in registers it equals
``rowsum(P * dP)`` (``dP = dO V^T``), computed here, so O is never read. P is recomputed from the forward's base-2
log-sum-exp.

One program per (head, chunk of groups) loops over its chunk's groups, keeping the bias (one (Lq, Lk) block per
head, shared by every group and batch) in registers and summing the bias gradient dS over the chunk in registers;
each program writes one fp32 partial, summed over chunks by the launcher in a fixed order (deterministic, no
atomics, no (groups, Lq, Lk) intermediate).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._biased_attention_common import LOG2E_PY, chunk_split, next_block
from ._launch import launch
from ._neighborhood_common import LOG2E, SUM, value_block
from ._tuning import mode_pruner

__all__ = ["tile_attention_bwd", "TileGeometry", "ENABLED", "MAX_TILE", "TILE_HEAD_DIMS", "MAX_TILE_V_DIM"]

# The op layer sends calls that fit here (VITZOO_TILE_BACKWARD=0: to the general dq and dk/dv kernels, for comparisons)
ENABLED = os.environ.get("VITZOO_TILE_BACKWARD", "1") not in ("", "0", "false", "False")

# Query and key counts per group (padded to a power of two): four fp32 (Lq, Lk) tiles (S/P, dP, dS, the bias and its
# gradient) live in registers at once, which 8 warps hold without spilling up to 64 x 64.
MAX_TILE = 64
TILE_HEAD_DIMS = (16, 32, 64)
MAX_TILE_V_DIM = 64
# With a bias gradient, each program sums dS over a chunk of groups in registers: about PROGRAMS_PER_SM programs per
# SM in all (H100 sweep of 4-128: within 5 %; fewer programs re-load the bias block less often and write fewer
# partials). Without one, every (group, head) is its own program (10 % faster than chunks on DaViT's windows).
PROGRAMS_PER_SM = 8
PARTIAL_BUDGET_BYTES = 1 << 26  # cap on the fp32 bias-gradient partials (chunks x heads x Lq x Lk)

# First = the untuned default. H100, bf16, the launch alone at MaxViT-T's first stage (56x56, 2 heads, 7x7 windows,
# rpb gradient) / DaViT-T's (3 heads, no bias): 4 warps 1 stage 280 / 240 us, 2 stages 282 / 250, 8 warps 409-424 /
# 363-402 (255 registers per thread at 4 warps: 2 programs per SM; the no-bias launch moves 67 % of HBM peak).
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 1), (4, 2), (4, 3), (8, 1), (8, 2))]


@triton.autotune(configs=_CONFIGS, key=["LQ", "LK", "HEAD_DIM", "V_BLOCK", "HAS_BIAS", "BIAS_GRAD"],
                 prune_configs_by={"early_config_prune": mode_pruner(_CONFIGS[0])})
@triton.jit
def _tile_attention_bwd_kernel(
    Q, K, V, DO, LSE, Bias, DQ, DK, DV, DBias,
    # (batch, map row, map column, head, channel) strides; dense sequences have one row (its stride is unused)
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_gb, stride_gy, stride_gx, stride_gh, stride_gd,  # dO
    stride_dqb, stride_dqy, stride_dqx, stride_dqh, stride_dqd,
    stride_dkb, stride_dky, stride_dkx, stride_dkh, stride_dkd,
    stride_dvb, stride_dvy, stride_dvx, stride_dvh, stride_dvd,
    stride_lb, stride_ly, stride_lx, stride_lh,  # log-sum-exp (fp32, base 2)
    stride_bh, stride_bq, stride_bk,  # bias (heads or broadcast, Lq, Lk)
    stride_pc, stride_ph, stride_pq, stride_pk,  # fp32 bias-gradient partials (chunks, heads, Lq, Lk)
    LQ, LK, Q_COLS, K_COLS, GROUP_ROWS, DIL_Y, DIL_X, GROUPS_Y, GROUPS_X,
    members, members_per_chunk, scale, qk_scale_log2,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr,
):
    chunk = tl.program_id(0)
    h = tl.program_id(1)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_e = tl.arange(0, V_BLOCK)
    q_ok = offs_q < LQ
    k_ok = offs_k < LK
    qe_ok = q_ok[:, None] & (offs_e < V_DIM)[None, :]
    ke_ok = k_ok[:, None] & (offs_e < V_DIM)[None, :]
    tile_ok = q_ok[:, None] & k_ok[None, :]
    # map offsets of every token from its group's origin (row-major inside the group, dilated)
    qy = (offs_q // Q_COLS) * DIL_Y
    qx = (offs_q % Q_COLS) * DIL_X
    ky = (offs_k // K_COLS) * DIL_Y
    kx = (offs_k % K_COLS) * DIL_X
    q_offs = (qy * stride_qy + qx * stride_qx)[:, None] + offs_d[None, :] * stride_qd
    do_offs = (qy * stride_gy + qx * stride_gx)[:, None] + offs_e[None, :] * stride_gd
    dq_offs = (qy * stride_dqy + qx * stride_dqx)[:, None] + offs_d[None, :] * stride_dqd
    lse_offs = qy * stride_ly + qx * stride_lx
    k_offs = (ky * stride_ky + kx * stride_kx)[:, None] + offs_d[None, :] * stride_kd
    v_offs = (ky * stride_vy + kx * stride_vx)[:, None] + offs_e[None, :] * stride_vd
    dk_offs = (ky * stride_dky + kx * stride_dkx)[:, None] + offs_d[None, :] * stride_dkd
    dv_offs = (ky * stride_dvy + kx * stride_dvx)[:, None] + offs_e[None, :] * stride_dvd
    if HAS_BIAS:  # shared by every group of this head: loaded once, pre-scaled to base 2
        bias = tl.load(Bias + h * stride_bh + offs_q[:, None] * stride_bq + offs_k[None, :] * stride_bk,
                       mask=tile_ok, other=0.0).to(tl.float32) * LOG2E
    dbias = tl.zeros((BLOCK_Q, BLOCK_K), tl.float32)

    r_begin = chunk * members_per_chunk
    r_end = tl.minimum(r_begin + members_per_chunk, members)
    for r in range(r_begin, r_end):
        b = (r // (GROUPS_Y * GROUPS_X)).to(tl.int64)
        gy = (r // GROUPS_X) % GROUPS_Y
        gx = r % GROUPS_X
        # group (gy, gx) = (block, dilation phase) per axis; its origin in map rows / columns
        y0 = (gy // DIL_Y) * GROUP_ROWS * DIL_Y + gy % DIL_Y
        x0 = (gx // DIL_X) * Q_COLS * DIL_X + gx % DIL_X
        q = tl.load(Q + (b * stride_qb + y0 * stride_qy + x0 * stride_qx + h * stride_qh) + q_offs,
                    mask=q_ok[:, None], other=0.0)
        do = tl.load(DO + (b * stride_gb + y0 * stride_gy + x0 * stride_gx + h * stride_gh) + do_offs,
                     mask=qe_ok, other=0.0)
        lse = tl.load(LSE + (b * stride_lb + y0 * stride_ly + x0 * stride_lx + h * stride_lh) + lse_offs,
                      mask=q_ok, other=0.0)
        k = tl.load(K + (b * stride_kb + y0 * stride_ky + x0 * stride_kx + h * stride_kh) + k_offs,
                    mask=k_ok[:, None], other=0.0)
        v = tl.load(V + (b * stride_vb + y0 * stride_vy + x0 * stride_vx + h * stride_vh) + v_offs,
                    mask=ke_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale_log2
        if HAS_BIAS:
            s += bias
        p = tl.where(tile_ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        delta = tl.reduce(p * dp, 1, SUM)  # = rowsum(dO * O) with the fp32 P of this pass
        ds = p * (dp - delta[:, None])  # d loss / d logits (natural units)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
        dq = tl.dot(ds.to(k.dtype), k, input_precision="ieee") * scale
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee") * scale
        tl.store(DQ + (b * stride_dqb + y0 * stride_dqy + x0 * stride_dqx + h * stride_dqh) + dq_offs,
                 dq.to(DQ.dtype.element_ty), mask=q_ok[:, None])
        tl.store(DK + (b * stride_dkb + y0 * stride_dky + x0 * stride_dkx + h * stride_dkh) + dk_offs,
                 dk.to(DK.dtype.element_ty), mask=k_ok[:, None])
        tl.store(DV + (b * stride_dvb + y0 * stride_dvy + x0 * stride_dvx + h * stride_dvh) + dv_offs,
                 dv.to(DV.dtype.element_ty), mask=ke_ok)
        if BIAS_GRAD:
            dbias += ds

    if BIAS_GRAD:
        tl.store(DBias + chunk * stride_pc + h * stride_ph + offs_q[:, None] * stride_pq + offs_k[None, :] * stride_pk,
                 dbias, mask=tile_ok)


class TileGeometry:
    """How the groups of a (B, H, W, heads, d) map are laid out: ``rows x q_cols`` query and ``rows x k_cols`` key
    tokens per group, map steps ``dilation`` = (dy, dx), ``groups`` = (GROUPS_Y, GROUPS_X) per batch element.

    ``windows(kernel, dilation, size)``: non-overlapping (dilated) windows of an exactly tiled map; ``sequence(lq,
    lk)``: one dense sequence per batch element (the tensors viewed as (B, 1, L, heads, d))."""

    def __init__(self, rows: int, q_cols: int, k_cols: int, dilation: Tuple[int, int], groups: Tuple[int, int]):
        self.rows, self.q_cols, self.k_cols = rows, q_cols, k_cols
        self.dilation, self.groups = tuple(dilation), tuple(groups)
        self.lq, self.lk = rows * q_cols, rows * k_cols

    @classmethod
    def windows(cls, kernel: Tuple[int, int], dilation: Tuple[int, int], size: Tuple[int, int]) -> "TileGeometry":
        (kh, kw), (dy, dx), (height, width) = kernel, dilation, size
        if height % (kh * dy) or width % (kw * dx):
            raise ValueError(f"map {height}x{width} is not tiled exactly by windows {kh}x{kw} at dilation {dy}x{dx}")
        return cls(kh, kw, kw, (dy, dx), (height // kh, width // kw))

    @classmethod
    def sequence(cls, lq: int, lk: int) -> "TileGeometry":
        return cls(1, lq, lk, (1, 1), (1, 1))


def tile_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
    bias: Optional[torch.Tensor], dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, geometry: TileGeometry,
    scale: float, bias_grad: bool, programs_per_sm: int = PROGRAMS_PER_SM,
) -> Optional[torch.Tensor]:
    """Write dq, dk, dv (preallocated, any strides) and return the bias gradient (chunked for about
    ``programs_per_sm`` programs per SM).

    q, grad_out, dq: (B, Y, Xq, heads, d) views; k, v, dk, dv: (B, Y, Xk, heads, d); ``lse``: (B, Y, Xq, heads)
    fp32 base-2 log-sum-exp view; ``bias``: None or (heads or 1, Lq, Lk) in the group's row-major token order,
    shared over the batch. Returns the fp32 (heads, Lq, Lk) sum of dS over all groups when ``bias_grad`` (the
    caller reduces a head-broadcast bias over heads), else None.
    """
    batch, heads, d, v_dim = q.shape[0], q.shape[3], q.shape[4], v.shape[4]
    lq, lk = geometry.lq, geometry.lk
    if max(lq, lk) > MAX_TILE or d not in TILE_HEAD_DIMS or v_dim > MAX_TILE_V_DIM:
        raise ValueError(f"tile_attention_bwd: needs Lq, Lk <= {MAX_TILE}, head_dim in {TILE_HEAD_DIMS} and value "
                         f"head_dim <= {MAX_TILE_V_DIM}; got Lq={lq}, Lk={lk}, head_dim={d}, value head_dim={v_dim}")
    members = batch * geometry.groups[0] * geometry.groups[1]
    bias_grad = bias_grad and bias is not None
    if bias_grad:  # each program sums dS over its chunk of groups in registers, one fp32 partial per chunk
        per_chunk, n_chunks = chunk_split(members, heads, q.device, heads * lq * lk * 4, PARTIAL_BUDGET_BYTES,
                                          programs_per_sm=programs_per_sm)
        partial = torch.empty((n_chunks, heads, lq, lk), device=q.device, dtype=torch.float32)
    else:  # every (group, head) is its own program
        per_chunk, n_chunks, partial = 1, members, None
    bias_strides = (bias.stride(0) if bias.shape[0] > 1 else 0, bias.stride(1), bias.stride(2)) \
        if bias is not None else (0, 0, 0)
    part_strides = partial.stride() if bias_grad else (0, 0, 0, 0)
    launch(_tile_attention_bwd_kernel, (n_chunks, heads),
           q, k, v, grad_out, lse, bias if bias is not None else q, dq, dk, dv, partial if bias_grad else q,
           *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(), *dk.stride(), *dv.stride(),
           *lse.stride(), *bias_strides, *part_strides,
           lq, lk, geometry.q_cols, geometry.k_cols, geometry.rows, *geometry.dilation, *geometry.groups,
           members, per_chunk, scale, scale * LOG2E_PY,
           HEAD_DIM=d, V_DIM=v_dim, V_BLOCK=value_block(v_dim), BLOCK_Q=next_block(lq), BLOCK_K=next_block(lk),
           HAS_BIAS=bias is not None, BIAS_GRAD=bias_grad)
    if not bias_grad:
        return None
    return partial[0] if n_chunks == 1 else partial.sum(0)
