"""Backward Triton kernel for dQ, delta and the relative-position-bias gradient of generalized 2-D neighborhood
attention (flash-style; Hassani et al., "Neighborhood Attention Transformer", CVPR 2023).

One program owns the forward's query tile (one (batch, head, dilation group)) and walks the same key blocks
(``KEY_ROWS`` union rows x ``KEY_W`` columns, window masks and rpb from the window-logit table of
``_neighborhood_table.py``). It recomputes ``P`` from the saved base-2 log-sum-exp and accumulates, with three
``tl.dot`` per block, ``dQ = scale * dS K`` where ``dS = P * (dO V^T - delta)`` and ``delta = rowsum(dO * O)`` (computed
here and written for the dK/dV kernel).

The rpb gradient sums ``dS`` over all (query, key) pairs at each offset ``key - query``. In the program's layout the
queries are a ``QUERY_ROWS x QUERY_COLS`` grid and a key block a ``KEY_ROWS x KEY_W`` grid, so the offset along x
depends on (query column, key column) only, and along y on (query row, key row) only. Permuting ``dS`` to rows (query
row, key row) x columns (query column, key column) turns the sum into two small one-hot matmuls: rows -> y offset per
block, accumulated over the blocks, then columns -> x offset once per program. No atomics, no (N, window) intermediate.
Each program writes its partial; the host sums them in a fixed order (deterministic). A dense bias (indexed by the
query's own slot as well) takes ``neighborhood_bwd_dq_dense_bias.py`` instead.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import _neighborhood_common as common
from ._neighborhood_common import (LOG2E, MIN_DOT, SUM, bounded_configs, key_block_columns, key_union, next_pow2,
                                   query_code, tile_origin)
from ._launch import launch
from .neighborhood_fwd import key_rows, tiled_launch

__all__ = ["neighborhood_bwd_dq", "query_rows"]

# First config = the default when autotuning is off; the same key-block shapes as the forward's configs.
_CONFIGS = [
    triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 32}, num_warps=8, num_stages=2),
]


@triton.jit
def _tf32_split(x):
    """x = head + rest with head exact in tf32 (low 13 mantissa bits cleared) and rest exact in fp32."""
    head = ((x.to(tl.uint32, bitcast=True) >> 13) << 13).to(tl.float32, bitcast=True)
    return head, x - head


# The rpb sums are matmuls with a 0/1 operand (exact in tf32): splitting the other one into a tf32 head and its
# remainder gives two tf32 tensor-core products accurate to ~2^-21 of each term. Plain tf32 would truncate every dS to
# 10 bits, and the rpb sums cancel heavily (each query's dS sums to zero).
@triton.jit
def _onehot_times(onehot, x):
    head, rest = _tf32_split(x)
    return tl.dot(onehot, head, input_precision="tf32") + tl.dot(onehot, rest, input_precision="tf32")


@triton.jit
def _times_onehot(x, onehot):
    head, rest = _tf32_split(x)
    return tl.dot(head, onehot, input_precision="tf32") + tl.dot(rest, onehot, input_precision="tf32")


def query_cols(nargs) -> int:
    """Query-grid columns: the tile width padded to a power of two (>= 2, so a column x key-column operand of the
    rpb sums has >= 16 rows with the narrowest, 8-wide, key block)."""
    return max(2, next_pow2(nargs["TILE_X"]))


def query_rows(nargs) -> int:
    """Query-grid rows: the tile height padded to a power of two, more where a tl.dot operand of the rpb sums
    (query rows x key rows) or the query block itself would be under 16."""
    return max(next_pow2(nargs["TILE_Y"]), MIN_DOT // nargs["KEY_ROWS"], MIN_DOT // nargs["QUERY_COLS"])


@triton.autotune(
    configs=bounded_configs(_CONFIGS),
    key=["H", "W", "NHEADS", "DIL_Y", "DIL_X", "KH", "KW", "SH", "SW", "TILE_Y", "TILE_X", "HEAD_DIM", "V_DIM"],
)
@triton.heuristics({"KEY_ROWS": key_rows, "QUERY_COLS": query_cols, "QUERY_ROWS": query_rows})
@triton.jit
def _neighborhood_bwd_dq_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ, TAB, RPB_PART,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,  # O
    stride_gb, stride_gy, stride_gx, stride_gh, stride_gd,  # dO
    stride_dqb, stride_dqy, stride_dqx, stride_dqh, stride_dqd,
    stride_th,  # window-logit table (heads or 1, KH*KW * TAB_ROWS * TAB_COLS), contiguous per head
    H, W, NHEADS, DIL_Y, DIL_X, TILES_Y, TILES_X,
    qk_scale, sm_scale,  # softmax scale * log2(e), softmax scale
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
    SHIFT_Y: tl.constexpr, SHIFT_X: tl.constexpr, TAB_ROWS: tl.constexpr, TAB_COLS: tl.constexpr,
    KEY_W: tl.constexpr,  # key-block width, >= any tile's key-union width
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,  # value head dim, padded to a power of 2
    HAS_RPB: tl.constexpr, RPB_ROWS: tl.constexpr, RPB_COLS: tl.constexpr,  # rpb partial tile, >= (2kh-1, 2kw-1)
    DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr,
    KEY_ROWS: tl.constexpr, QUERY_COLS: tl.constexpr, QUERY_ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    b, h, gy, gx, ty0, tx0, glen_y, glen_x = tile_origin(pid, H, W, NHEADS, DIL_Y, DIL_X, TILES_Y, TILES_X,
                                                         TILE_Y, TILE_X)
    key_y0, key_x0, n_rows = key_union(ty0, tx0, glen_y, glen_x, TILE_Y, KH, KW, SH, SW)

    # ---- the query tile as a QUERY_ROWS x QUERY_COLS grid (rows / columns past the tile are padding)
    offs_m = tl.arange(0, QUERY_ROWS * QUERY_COLS)
    qyi = ty0 + offs_m // QUERY_COLS
    qxi = tx0 + offs_m % QUERY_COLS
    q_valid = (offs_m // QUERY_COLS < TILE_Y) & (offs_m % QUERY_COLS < TILE_X) & (qyi < glen_y) & (qxi < glen_x)
    cyi = tl.where(q_valid, qyi, ty0)  # padding queries take the tile's first query's window (in-table codes)
    cxi = tl.where(q_valid, qxi, tx0)
    q_code = query_code(cyi, cxi, glen_y, glen_x, KH, KW, SH, SW, SHIFT_Y, SHIFT_X, TAB_ROWS, TAB_COLS)
    qy = gy + DIL_Y * qyi
    qx = gx + DIL_X * qxi
    offs_d = tl.arange(0, HEAD_DIM)
    offs_e = tl.arange(0, V_BLOCK)
    e_in = offs_e < V_DIM
    b64 = b.to(tl.int64)
    m2 = q_valid[:, None]
    m2e = m2 & e_in[None, :]
    q = tl.load(Q + b64 * stride_qb + h * stride_qh + qy[:, None] * stride_qy + qx[:, None] * stride_qx
                + offs_d[None, :] * stride_qd, mask=m2, other=0.0)
    o = tl.load(O + b64 * stride_ob + h * stride_oh + qy[:, None] * stride_oy + qx[:, None] * stride_ox
                + offs_e[None, :] * stride_od, mask=m2e, other=0.0)
    do = tl.load(DO + b64 * stride_gb + h * stride_gh + qy[:, None] * stride_gy + qx[:, None] * stride_gx
                 + offs_e[None, :] * stride_gd, mask=m2e, other=0.0)
    row = ((b64 * NHEADS + h) * H + qy) * W + qx  # LSE / DELTA: contiguous (B, heads, H, W)
    delta = tl.reduce(do.to(tl.float32) * o.to(tl.float32), 1, SUM)
    tl.store(DELTA + row, delta, mask=q_valid)
    # +inf for padding queries: exp2(s - inf) = 0, so they add nothing to the rpb sums whatever their logits
    lse = tl.load(LSE + row, mask=q_valid, other=float("inf"))
    k_base = K + b64 * stride_kb + h * stride_kh
    v_base = V + b64 * stride_vb + h * stride_vh
    tab = TAB + h * stride_th

    offs_n, kxi, kx, kx_in = key_block_columns(key_x0, gx, glen_x, DIL_X, KEY_ROWS, KEY_W)

    # ---- rpb sums, y first: rows of the permuted dS are (query row r, key row j), the y offset of a block is
    # key_y0 + r0 + j - ty0 - r; one-hot onto the rpb row (offset + kh - 1), accumulated over the blocks per
    # (query column, key column); the x offsets (fixed per program) are summed once after the loop
    if HAS_RPB:
        offs_rj = tl.arange(0, QUERY_ROWS * KEY_ROWS)
        rpb_rows = tl.arange(0, RPB_ROWS)
        by_row = tl.zeros([RPB_ROWS, QUERY_COLS * KEY_W], dtype=tl.float32)

    dq = tl.zeros([QUERY_ROWS * QUERY_COLS, HEAD_DIM], dtype=tl.float32)
    for r0 in range(0, n_rows, KEY_ROWS):
        kyi = key_y0 + r0 + offs_n // KEY_W
        ky = gy + DIL_Y * kyi
        k_in = kx_in & (kyi < glen_y)  # loads only: the table masks keys outside each query's window
        k = tl.load(k_base + ky[:, None] * stride_ky + kx[:, None] * stride_kx + offs_d[None, :] * stride_kd,
                    mask=k_in[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        s += tl.load(tab + ((kyi * TAB_COLS + kxi)[None, :] - q_code[:, None])) * LOG2E
        p = tl.math.exp2(s - lse[:, None])
        v = tl.load(v_base + ky[:, None] * stride_vy + kx[:, None] * stride_vx + offs_e[None, :] * stride_vd,
                    mask=k_in[:, None] & e_in[None, :], other=0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
        if HAS_RPB:
            ds4 = tl.reshape(ds, [QUERY_ROWS, QUERY_COLS, KEY_ROWS, KEY_W])
            ds_rows = tl.reshape(tl.permute(ds4, (0, 2, 1, 3)), [QUERY_ROWS * KEY_ROWS, QUERY_COLS * KEY_W])
            rpb_row = key_y0 + r0 - ty0 + offs_rj % KEY_ROWS - offs_rj // KEY_ROWS + KH - 1
            by_row += _onehot_times((rpb_rows[:, None] == rpb_row[None, :]).to(tl.float32), ds_rows)

    tl.store(DQ + b64 * stride_dqb + h * stride_dqh + qy[:, None] * stride_dqy + qx[:, None] * stride_dqx
             + offs_d[None, :] * stride_dqd, (dq * sm_scale).to(DQ.dtype.element_ty), mask=m2)
    if HAS_RPB:
        # x offset of (query column c, key column j): key_x0 + j - tx0 - c; one-hot onto the rpb column
        offs_cj = tl.arange(0, QUERY_COLS * KEY_W)
        rpb_col = key_x0 - tx0 + offs_cj % KEY_W - offs_cj // KEY_W + KW - 1
        rpb_cols = tl.arange(0, RPB_COLS)
        rpb_grad = _times_onehot(by_row, (rpb_col[:, None] == rpb_cols[None, :]).to(tl.float32))
        part = RPB_PART + pid.to(tl.int64) * (RPB_ROWS * RPB_COLS)
        tl.store(part + rpb_rows[:, None] * RPB_COLS + rpb_cols[None, :], rpb_grad)


def neighborhood_bwd_dq(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rpb: Optional[torch.Tensor],
    kernel: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    scale: float,
    table: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Launch the dQ kernel (no dense bias: see ``neighborhood_bwd_dq_dense_bias``). ``table``: the forward's
    window-logit table, rebuilt from ``rpb`` when None. Returns dq (q's dtype), delta (B, heads, H, W) float32 and,
    with an rpb, its gradient (heads, 2kh-1, 2kw-1) float32 (None without)."""
    batch, height, width, heads, _ = q.shape
    kh, kw = kernel
    dq = common.alloc(q.shape, device=q.device, dtype=q.dtype)
    delta = common.alloc((batch, heads, height, width), device=q.device, dtype=torch.float32)
    t = tiled_launch(q, v, rpb, None, kernel, dilation, stride, table)
    rpb_rows, rpb_cols = max(MIN_DOT, next_pow2(2 * kh - 1)), max(MIN_DOT, next_pow2(2 * kw - 1))
    # one (rpb_rows, rpb_cols) partial per program, programs ordered (batch, head, tile)
    part = (common.alloc((batch, heads, t.n_programs // (batch * heads), rpb_rows, rpb_cols), device=q.device,
                         dtype=torch.float32) if rpb is not None else delta)
    launch(_neighborhood_bwd_dq_kernel, (t.n_programs,),
        q, k, v, out, grad_out, lse, delta, dq, t.table, part,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(), *dq.stride(), *t.grid_args,
        scale * LOG2E, scale,
        **t.constexprs, KEY_W=t.geom.key_w, HAS_RPB=rpb is not None, RPB_ROWS=rpb_rows, RPB_COLS=rpb_cols,
    )
    if rpb is None:
        return dq, delta, None
    return dq, delta, part.sum((0, 2))[:, :2 * kh - 1, :2 * kw - 1].contiguous()
