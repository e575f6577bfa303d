"""Forward Triton kernel of generalized 2-D neighborhood attention (NAT/DiNAT, MaxViT block/grid, Swin/EfficientViT
windows; Hassani et al., "Neighborhood Attention Transformer", CVPR 2023, and NATTEN's generalized NA).

One program owns a 2-D tile of queries of one (batch, head) inside one dilation group, reads the union of their
windows (tile + kernel halo, in dilated sub-lattice coordinates) straight from the (B, H, W, heads, d) tensors by
index arithmetic, in chunks of ``BLOCK_N`` keys, masks each key outside its query's window, adds the relative
position bias / dense bias gathered from the tiny tables, and runs an fp32 online softmax (base 2). It writes the
output and the per-query log-sum-exp (base 2) that the backward kernels reuse. Nothing of size (N, N) or
(N, kernel) ever reaches HBM.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import _neighborhood_common as common
from ._neighborhood_common import LOG2E, MAX, SUM, bounded_configs, next_pow2, value_block, window_start
from ._launch import launch

__all__ = ["neighborhood_fwd", "query_tile"]

# Queries per program in the sliding-window case: an 8x8 tile reads a (8+k-1)^2 key union for 64 queries.
NA_TILE = (8, 8)
# Window case (stride == kernel): one window per program, padded to a power of two; beyond this size the 2-D tile
# (whose key union is then at most 2x the window per axis) keeps the register tiles bounded.
MAX_WINDOW_BLOCK = 128
MIN_DOT = 16  # tl.dot needs every operand dimension >= 16 on GPUs


def query_tile(kernel: Sequence[int], stride: Sequence[int]) -> Tuple[int, int]:
    """Tile of queries (rows, cols) per program: exactly one window when stride == kernel (window attention), else
    the 8x8 sliding-window tile."""
    kh, kw = kernel
    if tuple(stride) == (kh, kw) and MIN_DOT <= next_pow2(kh * kw) <= MAX_WINDOW_BLOCK:
        return kh, kw
    return NA_TILE


_CONFIGS = [
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=2),
]


@triton.autotune(
    configs=bounded_configs(_CONFIGS),
    key=["H", "W", "NHEADS", "DIL_Y", "DIL_X", "KH", "KW", "SH", "SW", "TILE_Y", "TILE_X", "HEAD_DIM", "V_DIM"],
)
@triton.jit
def _neighborhood_fwd_kernel(
    Q, K, V, O, LSE, RPB, BIAS,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,
    stride_rh, stride_ry, stride_rx,  # rpb (heads, 2kh-1, 2kw-1)
    stride_bh, stride_bq, stride_bk,  # dense bias (heads, kh*kw, kh*kw)
    H, W, NHEADS, DIL_Y, DIL_X, TILES_Y, TILES_X,
    qk_scale,  # softmax scale * log2(e)
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,  # value head dim, padded to a power of 2
    HAS_RPB: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # ---- which (batch, head, dilation group, tile) this program owns; a 1-D grid has no per-axis size limit
    pid = tl.program_id(0)
    tiles_per_group = TILES_Y * TILES_X
    n_tiles = tiles_per_group * DIL_Y * DIL_X
    tile = pid % n_tiles
    bh = pid // n_tiles
    b = bh // NHEADS
    h = bh % NHEADS
    grp = tile // tiles_per_group
    t = tile % tiles_per_group
    gy = grp // DIL_X
    gx = grp % DIL_X
    ty0 = (t // TILES_X) * TILE_Y  # first query of the tile, sub-lattice coordinates
    tx0 = (t % TILES_X) * TILE_X
    glen_y = (H - gy + DIL_Y - 1) // DIL_Y  # length of this dilation group's sub-lattice
    glen_x = (W - gx + DIL_X - 1) // DIL_X

    # ---- key union of the tile: window starts are monotone, so it spans [start(first), start(last) + k)
    ty_last = tl.minimum(ty0 + TILE_Y, glen_y) - 1
    tx_last = tl.minimum(tx0 + TILE_X, glen_x) - 1
    key_y0 = window_start(ty0, glen_y, KH, SH)
    key_x0 = window_start(tx0, glen_x, KW, SW)
    span_y = window_start(ty_last, glen_y, KH, SH) + KH - key_y0
    span_x = window_start(tx_last, glen_x, KW, SW) + KW - key_x0
    tile_live = (ty0 < glen_y) & (tx0 < glen_x)  # tiles past a short group's end own no query
    n_keys = tl.where(tile_live, span_y * span_x, 0)

    # ---- the query tile
    offs_m = tl.arange(0, BLOCK_M)
    qyi = ty0 + offs_m // TILE_X
    qxi = tx0 + offs_m % TILE_X
    q_valid = (offs_m < TILE_Y * TILE_X) & (qyi < glen_y) & (qxi < glen_x)
    qsy = window_start(qyi, glen_y, KH, SH)  # each query's own window start
    qsx = window_start(qxi, glen_x, KW, SW)
    qy = gy + DIL_Y * qyi
    qx = gx + DIL_X * qxi
    offs_d = tl.arange(0, HEAD_DIM)
    offs_e = tl.arange(0, V_BLOCK)
    e_in = offs_e < V_DIM  # all-true (folded away) unless the value dim is padded
    b64 = b.to(tl.int64)
    q_ptrs = Q + b64 * stride_qb + h * stride_qh + qy[:, None] * stride_qy + qx[:, None] * stride_qx
    q = tl.load(q_ptrs + offs_d[None, :] * stride_qd, mask=q_valid[:, None], other=0.0)
    k_base = K + b64 * stride_kb + h * stride_kh
    v_base = V + b64 * stride_vb + h * stride_vh
    if HAS_BIAS:
        bias_row = ((qyi - qsy) * KW + (qxi - qsx)) * stride_bq  # the query's slot in its window

    # Finite initial max: rows (padding queries) that never see a key stay NaN-free.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, V_BLOCK], dtype=tl.float32)
    for n0 in range(0, n_keys, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_in = offs_n < n_keys
        kyi = key_y0 + offs_n // span_x
        kxi = key_x0 + offs_n % span_x
        ky = gy + DIL_Y * kyi
        kx = gx + DIL_X * kxi
        kt = tl.load(k_base + ky[None, :] * stride_ky + kx[None, :] * stride_kx + offs_d[:, None] * stride_kd,
                     mask=k_in[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale
        ra = kyi[None, :] - qsy[:, None]  # key's slot in the query's window, per axis
        rb = kxi[None, :] - qsx[:, None]
        in_win = (ra >= 0) & (ra < KH) & (rb >= 0) & (rb < KW) & k_in[None, :]
        if HAS_RPB:  # table index = key - query (sub-lattice) + k - 1
            r_off = (kyi[None, :] - qyi[:, None] + KH - 1) * stride_ry \
                + (kxi[None, :] - qxi[:, None] + KW - 1) * stride_rx
            s += tl.load(RPB + h * stride_rh + r_off, mask=in_win, other=0.0).to(tl.float32) * LOG2E
        if HAS_BIAS:
            b_off = bias_row[:, None] + (ra * KW + rb) * stride_bk
            s += tl.load(BIAS + h * stride_bh + b_off, mask=in_win, other=0.0).to(tl.float32) * LOG2E
        s = tl.where(in_win, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, MAX))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, SUM)
        v = tl.load(v_base + ky[:, None] * stride_vy + kx[:, None] * stride_vx + offs_e[None, :] * stride_vd,
                    mask=k_in[:, None] & e_in[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = O + b64 * stride_ob + h * stride_oh + qy[:, None] * stride_oy + qx[:, None] * stride_ox
    tl.store(o_ptrs + offs_e[None, :] * stride_od, out.to(O.dtype.element_ty),
             mask=q_valid[:, None] & e_in[None, :])
    lse_ptrs = LSE + (bh.to(tl.int64) * H + qy) * W + qx  # (B, heads, H, W), base-2 log-sum-exp
    tl.store(lse_ptrs, m_i + tl.math.log2(l_safe), mask=q_valid)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (``ieee``); 16-bit inputs use tensor cores regardless of this flag."""
    return "ieee" if dtype == torch.float32 else "tf32"


def tile_grid(size: Tuple[int, int], dilation: Sequence[int], tile: Tuple[int, int]) -> Tuple[int, int]:
    """Tiles per dilation group along (y, x): enough for the longest group, ceil(size / dilation)."""
    return tuple(triton.cdiv(triton.cdiv(n, d), t) for n, d, t in zip(size, dilation, tile))  # type: ignore


def neighborhood_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kernel: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. q, k: (B, H, W, heads, d), v: (B, H, W, heads, d_v), any strides, one dtype.
    Returns the output (B, H, W, heads, d_v) in q's dtype and the base-2 log-sum-exp (B, heads, H, W) float32."""
    batch, height, width, heads, head_dim = q.shape
    v_dim = v.shape[-1]
    out = common.alloc((batch, height, width, heads, v_dim), device=q.device, dtype=q.dtype)
    lse = common.alloc((batch, heads, height, width), device=q.device, dtype=torch.float32)
    tile = query_tile(kernel, stride)
    tiles_y, tiles_x = tile_grid((height, width), dilation, tile)
    n_programs = batch * heads * dilation[0] * dilation[1] * tiles_y * tiles_x
    rpb_t = rpb if rpb is not None else q  # placeholder pointer, never read when HAS_RPB is False
    bias_t = bias if bias is not None else q
    rpb_strides = rpb.stride() if rpb is not None else (0, 0, 0)
    bias_strides = bias.stride() if bias is not None else (0, 0, 0)
    launch(_neighborhood_fwd_kernel, (n_programs,),
        q, k, v, out, lse, rpb_t, bias_t,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *rpb_strides, *bias_strides,
        height, width, heads, dilation[0], dilation[1], tiles_y, tiles_x,
        scale * LOG2E,
        KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], TILE_Y=tile[0], TILE_X=tile[1],
        HEAD_DIM=head_dim, V_DIM=v_dim, V_BLOCK=value_block(v_dim),
        HAS_RPB=rpb is not None, HAS_BIAS=bias is not None,
        DOT_PREC=dot_precision(q.dtype), BLOCK_M=max(MIN_DOT, next_pow2(tile[0] * tile[1])),
    )
    return out, lse
