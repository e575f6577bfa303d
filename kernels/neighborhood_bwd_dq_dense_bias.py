"""Backward Triton kernel for dQ, delta and the position-bias gradients of generalized 2-D neighborhood attention
with a **dense bias** (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023; EfficientViT's attention
biases are the one user). Calls without a dense bias take the faster tiled kernel (``neighborhood_bwd_dq.py``), whose
rpb gradient relies on the rpb depending on the key - query offset alone; a dense bias depends on the query's own slot
in its window too, which is what this kernel's grouping by that slot provides.

Queries are processed grouped by their *local class* ``(ly, lx)``: their own slot in their window, per axis. All
queries of one class see their window at the same relative offsets, so for a fixed window slot ``(a, b)`` the
relative-position bias ``rpb[h, a - ly + kh - 1, b - lx + kw - 1]`` and the dense bias ``bias[h, ly*kw + lx,
a*kw + b]`` are scalars for the whole program, and their gradients are plain sums of ``dS`` over the program's
queries. A program owns ``BLOCK_M`` queries of one class and one head (a work item listed by the host), loops over
the ``kh*kw`` slots gathering one key / value row per query (rows are contiguous ``d``-vectors), and accumulates in
fp32: ``dQ = scale * sum_slot dS * K``, ``dS = P * (dP - delta)``, ``delta = rowsum(dO * O)`` (written for the
dK/dV kernel), and one partial bias gradient per slot. The partials, ``(heads, work items, kh*kw)``, i.e. 1/BLOCK_M
of the (N, kh*kw) score size, are reduced by the host in a fixed order: deterministic, no atomics.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import _neighborhood_common as common
from ._neighborhood_common import LOG2E, SUM, bounded_configs, next_pow2, value_block
from ._launch import launch

__all__ = ["neighborhood_bwd_dq_dense_bias", "DQ_BLOCK_M"]

DQ_BLOCK_M = 64  # queries per work item; the host builds its work list with this size

_CONFIGS = [
    triton.Config({}, num_warps=4, num_stages=2),
    triton.Config({}, num_warps=8, num_stages=2),
]


@triton.autotune(configs=bounded_configs(_CONFIGS), key=["H", "W", "NHEADS", "KH", "KW", "HEAD_DIM", "V_DIM"])
@triton.jit
def _neighborhood_bwd_dq_dense_bias_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ, RPB, BIAS, GPART,
    WORK, ORDER_Y, SEG_Y, ORDER_X, SEG_X,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,  # O
    stride_gb, stride_gy, stride_gx, stride_gh, stride_gd,  # dO
    stride_dqb, stride_dqy, stride_dqx, stride_dqh, stride_dqd,
    stride_rh, stride_ry, stride_rx,
    stride_bh, stride_bq, stride_bk,
    BATCH, H, W, NHEADS, DIL_Y, DIL_X, N_WORK,
    qk_scale, sm_scale,
    KH: tl.constexpr, KW: tl.constexpr,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,  # value head dim, padded to a power of 2
    HAS_RPB: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    work = pid % N_WORK
    h = pid // N_WORK
    cls = tl.load(WORK + 2 * work)  # local class ly * KW + lx
    first = tl.load(WORK + 2 * work + 1)  # first flat (batch, i, j) index of this work item inside the class
    ly = cls // KW
    lx = cls % KW
    y_lo = tl.load(SEG_Y + ly)  # the class's rows are ORDER_Y[SEG_Y[ly]:SEG_Y[ly+1]], columns likewise
    ny = tl.load(SEG_Y + ly + 1) - y_lo
    x_lo = tl.load(SEG_X + lx)
    nx = tl.load(SEG_X + lx + 1) - x_lo

    offs = first + tl.arange(0, BLOCK_M)
    valid = offs < BATCH * ny * nx
    b = (offs // (ny * nx)).to(tl.int64)
    y = tl.load(ORDER_Y + y_lo + (offs // nx) % ny, mask=valid, other=0)
    x = tl.load(ORDER_X + x_lo + offs % nx, mask=valid, other=0)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_e = tl.arange(0, V_BLOCK)
    m2 = valid[:, None]
    m2e = m2 & (offs_e < V_DIM)[None, :]  # value-dim loads: padded lanes read as 0

    q = tl.load(Q + (b * stride_qb + h * stride_qh + y * stride_qy + x * stride_qx)[:, None]
                + offs_d[None, :] * stride_qd, mask=m2, other=0.0).to(tl.float32)
    o = tl.load(O + (b * stride_ob + h * stride_oh + y * stride_oy + x * stride_ox)[:, None]
                + offs_e[None, :] * stride_od, mask=m2e, other=0.0).to(tl.float32)
    do = tl.load(DO + (b * stride_gb + h * stride_gh + y * stride_gy + x * stride_gx)[:, None]
                 + offs_e[None, :] * stride_gd, mask=m2e, other=0.0).to(tl.float32)
    row = ((b * NHEADS + h) * H + y) * W + x  # LSE / DELTA: contiguous (B, heads, H, W)
    delta = tl.reduce(do * o, 1, SUM)
    tl.store(DELTA + row, delta, mask=valid)
    lse = tl.load(LSE + row, mask=valid, other=0.0)

    # Window slot (a, c) of a query of class (ly, lx) is key = query + dilation * ((a, c) - (ly, lx)): pointers start
    # at slot (0, 0) and advance by constant steps (loop-carried, so the slot loop does no integer multiplies).
    k_row = K + (b * stride_kb + h * stride_kh + (y - ly * DIL_Y) * stride_ky + (x - lx * DIL_X) * stride_kx)[:, None] \
        + offs_d[None, :] * stride_kd
    v_row = V + (b * stride_vb + h * stride_vh + (y - ly * DIL_Y) * stride_vy + (x - lx * DIL_X) * stride_vx)[:, None] \
        + offs_e[None, :] * stride_vd
    rpb_row = RPB + h * stride_rh + (KH - 1 - ly) * stride_ry + (KW - 1 - lx) * stride_rx
    bias_ptr = BIAS + h * stride_bh + cls * stride_bq  # this class's row of the dense bias, at key slot 0
    offs_k = tl.arange(0, BLOCK_K)
    g = tl.zeros([BLOCK_K], dtype=tl.float32)  # per-slot sum of dS over this program's queries
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_step_x = DIL_X * stride_kx
    v_step_x = DIL_X * stride_vx
    k_step_y = DIL_Y * stride_ky
    v_step_y = DIL_Y * stride_vy
    slot = 0
    for _a in range(0, KH):
        k_ptrs = k_row
        v_ptrs = v_row
        rpb_ptr = rpb_row
        for _c in range(0, KW):
            k = tl.load(k_ptrs, mask=m2, other=0.0).to(tl.float32)
            v = tl.load(v_ptrs, mask=m2e, other=0.0).to(tl.float32)
            s = tl.reduce(q * k, 1, SUM) * qk_scale
            if HAS_RPB:
                s += tl.load(rpb_ptr).to(tl.float32) * LOG2E
            if HAS_BIAS:
                s += tl.load(bias_ptr).to(tl.float32) * LOG2E
            p = tl.math.exp2(s - lse)
            ds = tl.where(valid, p * (tl.reduce(do * v, 1, SUM) - delta), 0.0)
            dq += ds[:, None] * k
            if HAS_RPB or HAS_BIAS:
                g = tl.where(offs_k == slot, g + tl.reduce(ds, 0, SUM), g)
            k_ptrs += k_step_x
            v_ptrs += v_step_x
            rpb_ptr += stride_rx
            bias_ptr += stride_bk
            slot += 1
        k_row += k_step_y
        v_row += v_step_y
        rpb_row += stride_ry

    dq_ptrs = DQ + (b * stride_dqb + h * stride_dqh + y * stride_dqy + x * stride_dqx)[:, None]
    tl.store(dq_ptrs + offs_d[None, :] * stride_dqd, (dq * sm_scale).to(DQ.dtype.element_ty), mask=m2)
    if HAS_RPB or HAS_BIAS:
        tl.store(GPART + pid.to(tl.int64) * BLOCK_K + offs_k, g)


def neighborhood_bwd_dq_dense_bias(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rpb: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kernel: Sequence[int],
    dilation: Sequence[int],
    scale: float,
    work: torch.Tensor,
    order_y: torch.Tensor,
    seg_y: torch.Tensor,
    order_x: torch.Tensor,
    seg_x: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Launch the dQ kernel. Host tables (int32, on q's device): ``order_y`` (H,) positions sorted by their local
    window slot, ``seg_y`` (kh+1,) class boundaries in it (same along x), ``work`` (n_work, 2) rows ``(class,
    first flat index)`` with ``DQ_BLOCK_M`` queries each. Returns dq, delta (B, heads, H, W) float32 and, when rpb
    or bias is given, the per-work-item slot partials (heads, n_work, BLOCK_K) float32."""
    batch, height, width, heads, head_dim = q.shape
    v_dim = v.shape[-1]
    kh, kw = kernel
    n_work = work.shape[0]
    dq = common.alloc(q.shape, device=q.device, dtype=q.dtype)
    delta = common.alloc((batch, heads, height, width), device=q.device, dtype=torch.float32)
    block_k = next_pow2(kh * kw)
    has_pos = rpb is not None or bias is not None
    gpart = common.alloc((heads, n_work, block_k), device=q.device, dtype=torch.float32) if has_pos else None
    launch(_neighborhood_bwd_dq_dense_bias_kernel, (n_work * heads,),
        q, k, v, out, grad_out, lse, delta, dq,
        rpb if rpb is not None else q, bias if bias is not None else q, gpart if has_pos else delta,
        work, order_y, seg_y, order_x, seg_x,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(), *dq.stride(),
        *(rpb.stride() if rpb is not None else (0, 0, 0)), *(bias.stride() if bias is not None else (0, 0, 0)),
        batch, height, width, heads, dilation[0], dilation[1], n_work,
        scale * LOG2E, scale,
        KH=kh, KW=kw, HEAD_DIM=head_dim, V_DIM=v_dim, V_BLOCK=value_block(v_dim),
        HAS_RPB=rpb is not None, HAS_BIAS=bias is not None,
        BLOCK_M=DQ_BLOCK_M, BLOCK_K=block_k,
    )
    return dq, delta, gpart
