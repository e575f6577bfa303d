"""Forward Triton kernel of generalized 2-D neighborhood attention (NAT/DiNAT, MaxViT block/grid, Swin/EfficientViT
windows; Hassani et al., "Neighborhood Attention Transformer", CVPR 2023, and NATTEN's generalized NA).

One program owns a 2-D tile of queries of one (batch, head) inside one dilation group, reads the union of their
windows (tile + kernel halo, in dilated sub-lattice coordinates) straight from the (B, H, W, heads, d) tensors by
index arithmetic, as 2-D blocks of ``KEY_ROWS`` union rows by ``KEY_W`` columns, and runs an fp32 online softmax
(base 2). Window masks, the relative position bias and the dense bias all come from one gather per score out of the
window-logit table (``_neighborhood_table.py``: ``-inf`` outside the query's window), indexed by a single
subtraction ``key code - query code``, or, with ``LOGIT_BLOCK``, from the dense block of the tile's class (aligned
rows, no gather; inference and fixed weights, because the backward kernels index the table). It writes the output
and the per-query log-sum-exp (base 2) that the backward kernels reuse. Nothing of size (N, N) or (N, kernel) ever
reaches HBM.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from . import _neighborhood_common as common
from ._neighborhood_common import (INTERPRET, MAX, MIN_DOT, SUM, LOG2E, key_block_columns, key_union, next_pow2,
                                   query_code, tile_origin, value_block)
from ._neighborhood_table import (MAX_KEY_ROWS, LogitBlock, TableGeometry, block_dtype, launch_table,
                                 table_geometry, tile_logit_block)
from ._launch import launch
from ._tuning import autotune_enabled

__all__ = ["neighborhood_fwd", "query_tile", "tile_grid", "tiled_launch", "TiledLaunch", "dot_precision", "MIN_DOT",
           "logit_block"]

# Queries per program in the sliding-window case: an 8x8 tile reads a (8+k-1)^2 key union for 64 queries.
NA_TILE = (8, 8)
# Window case (stride == kernel): one window per program, padded to a power of two; beyond this size the 2-D tile
# (whose key union is then at most 2x the window per axis) keeps the register tiles bounded.
MAX_WINDOW_BLOCK = 128


def query_tile(kernel: Sequence[int], stride: Sequence[int]) -> Tuple[int, int]:
    """Tile of queries (rows, cols) per program: exactly one window when stride == kernel (window attention), else
    the 8x8 sliding-window tile."""
    kh, kw = kernel
    if tuple(stride) == (kh, kw) and MIN_DOT <= next_pow2(kh * kw) <= MAX_WINDOW_BLOCK:
        return kh, kw
    return NA_TILE


# First config = the default when autotuning is off. H100 sweeps (bf16, d 32; kernels/measurements/
# h100_na_sweeps_2026-11-23f.json): 32-key blocks were fastest, one stage for sliding windows (56x56: 0.27 ms vs 0.29
# with two), two for 7x7 windows and dilation 2 (0.18 vs 0.20 ms); 64-key blocks won only for dilation 2 at 28x28.
_CONFIGS = [
    triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3),  # best table config at 56x56 (0.242 vs 0.250 ms)
]


def key_rows(nargs) -> int:
    """Union rows per key block: ``BLOCK_N`` keys of ``KEY_W``-wide rows (at least one row, at most MAX_KEY_ROWS,
    the row padding the window-logit table is sized for)."""
    return min(MAX_KEY_ROWS, max(1, nargs["BLOCK_N"] // nargs["KEY_W"]))


# Untuned defaults (VITZOO_AUTOTUNE=0 on a GPU) of the logit-block path, by the block's storage. H100, bf16 inputs,
# d 32, B 64, ten NA / window / grid / dense-bias cases (kernels/measurements/h100_na_block_sweep_2026-11-24k.json):
# fp32 blocks: 64-key blocks, 2 stages, within 0.5 % of each case's best on average; fp16 blocks: 32-key blocks, 2
# stages, within 2.6 % (NA 7x7 56x56: 0.121 ms against 0.130 with 64-key blocks).
LOGIT_BLOCK_DEFAULT = {torch.float32: 2, torch.float16: 1}
assert [_CONFIGS[i].kwargs["BLOCK_N"] for i in LOGIT_BLOCK_DEFAULT.values()] == [64, 32]


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """All configs when autotuning; otherwise the first, or the logit-block default for the block's storage (under
    the interpreter the list holds the first config only)."""
    if autotune_enabled() or len(configs) == 1:
        return configs
    if not kwargs.get("LOGIT_BLOCK"):
        return [configs[0]]
    return [configs[LOGIT_BLOCK_DEFAULT[named_args["TAB"].dtype]]]


@triton.autotune(
    configs=_CONFIGS if not INTERPRET else _CONFIGS[:1],
    key=["H", "W", "NHEADS", "DIL_Y", "DIL_X", "KH", "KW", "SH", "SW", "TILE_Y", "TILE_X", "HEAD_DIM", "V_DIM",
         "LOGIT_BLOCK"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.heuristics({"KEY_ROWS": key_rows})
@triton.jit
def _neighborhood_fwd_kernel(
    Q, K, V, O, LSE,
    TAB,  # window-logit table (heads or 1, KH*KW * TAB_ROWS * TAB_COLS), or with LOGIT_BLOCK the dense logit block
          # (heads or 1, tile classes * BLOCK_M * BLOCK_ROW), already in base-2 units (_neighborhood_table.py)
    CLASSES,  # LOGIT_BLOCK: int32 tile class along y per (group, tile row), then along x per (group, tile column)
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,
    stride_th,  # TAB's head stride (0: one table for every head)
    H, W, NHEADS, DIL_Y, DIL_X, TILES_Y, TILES_X,
    N_CLASSES_X,  # LOGIT_BLOCK: tile classes along x
    qk_scale,  # softmax scale * log2(e)
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
    SHIFT_Y: tl.constexpr, SHIFT_X: tl.constexpr, TAB_ROWS: tl.constexpr, TAB_COLS: tl.constexpr,
    KEY_W: tl.constexpr,  # key-block width, >= any tile's key-union width
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,  # value head dim, padded to a power of 2
    DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KEY_ROWS: tl.constexpr,
    LOGIT_BLOCK: tl.constexpr, BLOCK_ROW: tl.constexpr,
):
    # ---- which (batch, head, dilation group, tile) this program owns
    b, h, gy, gx, ty0, tx0, glen_y, glen_x = tile_origin(tl.program_id(0), H, W, NHEADS, DIL_Y, DIL_X, TILES_Y,
                                                         TILES_X, TILE_Y, TILE_X)

    # ---- the union of the tile's windows: rows [key_y0, key_y0 + n_rows), columns from key_x0
    key_y0, key_x0, n_rows = key_union(ty0, tx0, glen_y, glen_x, TILE_Y, KH, KW, SH, SW)

    # ---- the query tile and each query's code into the table: (window start, class) folded into one integer
    offs_m = tl.arange(0, BLOCK_M)
    qyi = ty0 + offs_m // TILE_X
    qxi = tx0 + offs_m % TILE_X
    q_valid = (offs_m < TILE_Y * TILE_X) & (qyi < glen_y) & (qxi < glen_x)
    # Padding queries take the tile's first query's window: their codes must stay inside the table too.
    cyi = tl.where(q_valid, qyi, ty0)
    cxi = tl.where(q_valid, qxi, tx0)
    q_code = query_code(cyi, cxi, glen_y, glen_x, KH, KW, SH, SW, SHIFT_Y, SHIFT_X, TAB_ROWS, TAB_COLS)
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
    tab = TAB + h * stride_th
    if LOGIT_BLOCK:
        cls = (tl.load(CLASSES + gy * TILES_Y + ty0 // TILE_Y) * N_CLASSES_X
               + tl.load(CLASSES + DIL_Y * TILES_Y + gx * TILES_X + tx0 // TILE_X))
        tab_rows = tab + (cls * BLOCK_M + offs_m) * BLOCK_ROW

    offs_n, kxi, kx, kx_in = key_block_columns(key_x0, gx, glen_x, DIL_X, KEY_ROWS, KEY_W)

    # Finite initial max: rows (padding queries) that never see a key stay NaN-free.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, V_BLOCK], dtype=tl.float32)
    for r0 in range(0, n_rows, KEY_ROWS):
        kyi = key_y0 + r0 + offs_n // KEY_W
        ky = gy + DIL_Y * kyi
        k_in = kx_in & (kyi < glen_y)  # loads only: the table masks keys outside each query's window
        kt = tl.load(k_base + ky[None, :] * stride_ky + kx[None, :] * stride_kx + offs_d[:, None] * stride_kd,
                     mask=k_in[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale
        if LOGIT_BLOCK:
            s += tl.load(tab_rows[:, None] + (r0 * KEY_W + offs_n)[None, :]).to(tl.float32)  # aligned, base 2
        else:
            s += tl.load(tab + ((kyi * TAB_COLS + kxi)[None, :] - q_code[:, None])) * LOG2E
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
    lse_ptrs = LSE + ((b64 * NHEADS + h) * H + qy) * W + qx  # (B, heads, H, W), base-2 log-sum-exp
    tl.store(lse_ptrs, m_i + tl.math.log2(l_safe), mask=q_valid)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (``ieee``); 16-bit inputs use tensor cores regardless of this flag."""
    return "ieee" if dtype == torch.float32 else "tf32"


def tile_grid(size: Tuple[int, int], dilation: Sequence[int], tile: Tuple[int, int]) -> Tuple[int, int]:
    """Tiles per dilation group along (y, x): enough for the longest group, ceil(size / dilation)."""
    return tuple(cdiv(cdiv(n, d), t) for n, d, t in zip(size, dilation, tile))  # type: ignore


class TiledLaunch(NamedTuple):
    """What the forward, dQ and dK/dV launchers share: one program per (batch, head, dilation group, tile), the
    window-logit table, the runtime arguments after the tensors' strides, and the window constexprs."""
    n_programs: int
    geom: TableGeometry
    table: torch.Tensor
    grid_args: Tuple[int, ...]  # table head stride, H, W, heads, dilation y / x, tiles y / x
    constexprs: Dict[str, Any]


def tiled_launch(q: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                 kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int],
                 table: Optional[torch.Tensor] = None) -> TiledLaunch:
    """The shared launch geometry of q's tiling (``table``: an already built window-logit table to reuse)."""
    batch, height, width, heads, head_dim = q.shape
    tile = query_tile(kernel, stride)
    tiles_y, tiles_x = tile_grid((height, width), dilation, tile)
    geom, table, table_head_stride = launch_table(rpb, bias, kernel, stride, tile, q.device, table)
    constexprs = dict(KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], TILE_Y=tile[0], TILE_X=tile[1],
                      SHIFT_Y=geom.shift_y, SHIFT_X=geom.shift_x, TAB_ROWS=geom.rows, TAB_COLS=geom.cols,
                      HEAD_DIM=head_dim, V_DIM=v.shape[-1], V_BLOCK=value_block(v.shape[-1]),
                      DOT_PREC=dot_precision(q.dtype))
    return TiledLaunch(batch * heads * dilation[0] * dilation[1] * tiles_y * tiles_x, geom, table,
                       (table_head_stride, height, width, heads, dilation[0], dilation[1], tiles_y, tiles_x),
                       constexprs)


def logit_block(rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], kernel: Sequence[int],
                dilation: Sequence[int], stride: Sequence[int], size: Sequence[int], device: torch.device,
                input_dtype: torch.dtype) -> LogitBlock:
    """The dense logit block the forward reads for these weights on a ``size`` = (H, W) map and q / k / v of
    ``input_dtype`` (what ``block=`` takes)."""
    kernel, stride = (int(kernel[0]), int(kernel[1])), (int(stride[0]), int(stride[1]))
    tile = query_tile(kernel, stride)
    key_w = table_geometry(kernel, stride, tile).key_w
    return tile_logit_block(rpb, bias, kernel, dilation, stride, tile, size, key_w, device, block_dtype(input_dtype))


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
    block: Optional[LogitBlock] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Launch the forward kernel. q, k: (B, H, W, heads, d), v: (B, H, W, heads, d_v), any strides, one dtype.
    Returns the output (B, H, W, heads, d_v) in q's dtype, the base-2 log-sum-exp (B, heads, H, W) float32 and the
    window-logit table it read (the backward kernels take it instead of building it again), or None when it read a
    dense logit block.

    ``block``: the dense logit block (:func:`logit_block`) for these
    weights and this geometry, e.g. cached by the caller for fixed weights. Without rpb and bias the forward always
    reads the cached mask block."""
    batch, height, width, heads, _ = q.shape
    if block is None and rpb is None and bias is None:
        block = logit_block(None, None, kernel, dilation, stride, (height, width), q.device, q.dtype)
    out = common.alloc((batch, height, width, heads, v.shape[-1]), device=q.device, dtype=q.dtype)
    lse = common.alloc((batch, heads, height, width), device=q.device, dtype=torch.float32)
    t = tiled_launch(q, v, rpb, bias, kernel, dilation, stride, None if block is None else block.values)
    block_m = max(MIN_DOT, next_pow2(t.constexprs["TILE_Y"] * t.constexprs["TILE_X"]))
    if block is not None:
        _check_block(block, t, (kernel, dilation, stride, (height, width)))
    launch(_neighborhood_fwd_kernel, (t.n_programs,),
        q, k, v, out, lse, t.table, t.table if block is None else block.classes,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *t.grid_args,
        0 if block is None else block.n_classes_x,
        scale * LOG2E,
        **t.constexprs, KEY_W=t.geom.key_w, BLOCK_M=block_m,
        LOGIT_BLOCK=block is not None, BLOCK_ROW=0 if block is None else block.row,
    )
    return out, lse, t.table if block is None else None


def _check_block(block: LogitBlock, t: TiledLaunch, call: Tuple[Sequence[int], ...]) -> None:
    """A block built for another geometry (map size, kernel, dilation, stride) or head count would give wrong logits
    or be read out of bounds: refuse it."""
    kernel, dilation, stride, size = (tuple(int(v) for v in a) for a in call)
    tile = (t.constexprs["TILE_Y"], t.constexprs["TILE_X"])
    heads = t.grid_args[3]
    if block.geometry != (kernel, dilation, stride, tile, size) or block.values.shape[0] not in (1, heads):
        raise ValueError(f"the logit block does not fit this call's geometry: built for (kernel, dilation, stride, "
                         f"tile, map size) {block.geometry} and {block.values.shape[0]} head(s), called with "
                         f"{(kernel, dilation, stride, tile, size)} and {heads} heads; build it with logit_block() for "
                         f"the call's map size, kernel, dilation and stride")
