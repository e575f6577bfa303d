"""Pieces shared by the HaloNet attention kernels (``halo_attention_fwd``, ``halo_attention_bwd``,
``halo_attention_bwd_dkv``): tile sizes and the register-level gathers of the relative-position logits.

Geometry (HaloNet, Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones", as
implemented by timm's ``HaloAttn``): the key map (H, W) is cut into ``block x block`` blocks; query block
``(by, bx)`` holds ``block_q x block_q`` queries (``block_q = block // stride``) and attends to the
``win x win`` window (``win = block + 2 * halo``) of the zero-padded key map whose top-left corner is
``(by * block - halo, bx * block - halo)``. The relative logit of query ``(qy, qx)`` (its position inside its query
block) and window key ``(ky, kx)`` is ``q . rel_h[ky - qy + win - 1] + q . rel_w[kx - qx + win - 1]``.

In-kernel the products ``q . rel[r]`` for all ``r < 2 * win - 1`` come from one ``tl.dot`` (``rq``, shape
(BLOCK_Q, REL_P)); the per-query shift by ``qy`` (or ``qx``) is a register gather done as a loop of
select-and-reduce over the ``win`` window columns, because ``tl.gather`` is not available on every supported
Triton version.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from ._intmath import next_pow2
from ._tuning import autotune_enabled

MIN_DOT = 16  # tl.dot needs every operand dimension >= 16 on NVIDIA tensor cores
MAX_HEAD_DIM = 128  # q/k and v head dims the kernels keep in registers (padded to a power of two)

# Launchers autotune their tile configs unless switched off here (gpu_check does, to bound compile time) or under the
# CPU interpreter (where a benchmarking sweep would only cost time); then they use the heuristic configs below.
TUNING = {"autotune": autotune_enabled()}
AUTOTUNE_KEY = ["win", "block_q", "d_qk", "d_v", "HAS_REL"]  # triton adds the tensor arguments' dtypes
DEFAULT_KEY_TILE = 64  # keys per tile of the query-centric kernels when not autotuning (ROWS = 64 // KX_P)


def default_rows(kx_p: int, key_tile: int = DEFAULT_KEY_TILE) -> int:
    return max(1, key_tile // kx_p)


@dataclass(frozen=True)
class HaloTiles:
    """Power-of-two tile sizes of one halo-attention call (all >= 16 where they feed ``tl.dot``)."""

    block_q: int  # queries per block side
    win: int  # window side
    BLOCK_Q: int  # padded queries per block (block_q ** 2 rounded up)
    BLOCK_K: int  # padded keys per key block (block ** 2 rounded up), backward dk/dv kernel
    KX_P: int  # padded window width: one window row of keys occupies KX_P tile columns
    WIN_P: int  # padded window side for per-row tables (rel logits, window-row sums)
    REL_P: int  # padded rows of a relative table (2 * win - 1 rounded up)
    D_QK_P: int
    D_V_P: int


def _pow2(n: int, floor: int = MIN_DOT) -> int:
    return max(floor, next_pow2(n))


def halo_tiles(block: int, block_q: int, halo: int, d_qk: int, d_v: int) -> HaloTiles:
    win = block + 2 * halo
    return HaloTiles(
        block_q=block_q,
        win=win,
        BLOCK_Q=_pow2(block_q * block_q),
        BLOCK_K=_pow2(block * block),
        KX_P=_pow2(win),
        WIN_P=_pow2(win, floor=1),
        REL_P=_pow2(2 * win - 1),
        D_QK_P=_pow2(d_qk),
        D_V_P=_pow2(d_v),
    )


def dot_precision(dtype) -> str:
    """fp32 inputs use exact fp32 products (no TF32) so fp32 matches the fp32 torch reference; 16-bit ignore it."""
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def rel_to_window(rq, shift, col_of_n, win, BLOCK_Q: tl.constexpr, REL_P: tl.constexpr, N: tl.constexpr):
    """x[i, n] = rq[i, col_of_n[n] - shift[i] + win - 1] for col_of_n[n] < win, else 0.

    rq: (BLOCK_Q, REL_P) fp32 products ``q_i . rel[r]``; shift: (BLOCK_Q,) the query's row (or column) in its
    block; col_of_n: (N,) the window row (or column) each output column stands for.
    """
    r = tl.arange(0, REL_P)
    x = tl.zeros((BLOCK_Q, N), dtype=tl.float32)
    for j in range(0, win):
        col = tl.sum(tl.where(r[None, :] == (j - shift + win - 1)[:, None], rq, 0.0), axis=1)
        x = tl.where(col_of_n[None, :] == j, col[:, None], x)
    return x


@triton.jit
def window_to_rel(x, shift, col_of_n, win, BLOCK_Q: tl.constexpr, REL_P: tl.constexpr):
    """Adjoint of :func:`rel_to_window`: y[i, r] = sum_n x[i, n] * [r == col_of_n[n] - shift[i] + win - 1].

    Used for the gradients: columns of ``x`` that stand for the same window row/column are summed.
    """
    r = tl.arange(0, REL_P)
    y = tl.zeros((BLOCK_Q, REL_P), dtype=tl.float32)
    for j in range(0, win):
        col = tl.sum(tl.where(col_of_n[None, :] == j, x, 0.0), axis=1)
        y += tl.where(r[None, :] == (j - shift + win - 1)[:, None], col[:, None], 0.0)
    return y


@triton.jit
def window_rows_to_tile(xh, row0, row_of_n, ROWS: tl.constexpr, WIN_P: tl.constexpr, BLOCK_Q: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    """Spread the per-window-row values ``xh`` (BLOCK_Q, WIN_P) over a key tile that covers window rows
    ``row0 .. row0 + ROWS - 1`` (tile column n sits in row ``row0 + row_of_n[n]``):
    out[i, n] = xh[i, row0 + row_of_n[n]].
    """
    j = tl.arange(0, WIN_P)
    out = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    for r in tl.static_range(ROWS):
        col = tl.sum(tl.where(j[None, :] == row0 + r, xh, 0.0), axis=1)
        out = tl.where(row_of_n[None, :] == r, col[:, None], out)
    return out


@triton.jit
def tile_to_window_rows(t, row0, row_of_n, ROWS: tl.constexpr, WIN_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Adjoint of :func:`window_rows_to_tile`: (BLOCK_Q, WIN_P) with the tile's per-row sums placed at their rows."""
    j = tl.arange(0, WIN_P)
    out = tl.zeros((BLOCK_Q, WIN_P), dtype=tl.float32)
    for r in tl.static_range(ROWS):
        col = tl.sum(tl.where(row_of_n[None, :] == r, t, 0.0), axis=1)
        out = tl.where(j[None, :] == row0 + r, col[:, None], out)
    return out


@triton.jit
def load_rel_table(REL, n_rel, d_qk, REL_P: tl.constexpr, D_QK_P: tl.constexpr):
    """(REL_P, D_QK_P) tile of a contiguous (2 * win - 1, d_qk) relative table, zero-padded."""
    r = tl.arange(0, REL_P)
    d = tl.arange(0, D_QK_P)
    return tl.load(REL + r[:, None] * d_qk + d[None, :], mask=(r[:, None] < n_rel) & (d[None, :] < d_qk), other=0.0)


@triton.jit
def window_key_tile(row0, y0, x0, height, width, win, KX_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tile covering window rows ``row0 .. row0 + BLOCK_N // KX_P - 1`` of a window whose top-left key sits at
    (y0, x0) on the key map. Returns (y, x, in_window, in_image, row_of_n): tile column n is window key
    (row0 + row_of_n[n], n % KX_P). Keys ``in_window`` take part in the softmax; of those, keys outside the image are
    HaloNet's zero padding (loaded as 0 via ``in_image``, their logit is the relative term only).
    """
    n = tl.arange(0, BLOCK_N)
    row_of_n = n // KX_P
    kx = n % KX_P
    ky = row0 + row_of_n
    y = y0 + ky
    x = x0 + kx
    in_window = (ky < win) & (kx < win)
    in_image = in_window & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return y, x, in_window, in_image, row_of_n
