"""The window-logit table of the neighborhood-attention forward and dK/dV kernels (torch code; no kernel lives here).

Inside a query tile every query's window is fixed by its *class* ``(ly, lx)`` (its own slot in its window) and every
key is placed relative to that window by ``(ra, rb) = key - window start`` (sub-lattice units). Whether the key is in
the window, the relative-position bias it gets and the dense-bias entry it gets are all functions of ``(ly, lx, ra,
rb)`` alone. So one small per-head table ``T[h, ly, lx, ra, rb]`` -- ``rpb + bias`` inside the window, ``-inf``
outside -- replaces the kernels' per-score masks (four compares), rpb index arithmetic and up to two gathers with one
integer subtraction and one gather: their hot loops were instruction-bound (ncu, H100: 218-255 registers, 12.5 %
occupancy), not memory-bound.

The table covers every ``(ra, rb)`` either kernel can form (:func:`table_geometry` derives the extents from the
constexprs they use), so no lookup needs a bounds check.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from ._intmath import cdiv
from ._neighborhood_common import MIN_DOT, next_pow2

__all__ = ["TableGeometry", "table_geometry", "max_start_shift", "window_logit_table", "launch_table", "MAX_KEY_ROWS",
           "window_block_row", "window_logit_block"]

MAX_KEY_ROWS = 8  # most union rows per forward key block (neighborhood_fwd.key_rows): the table covers its padding


class TableGeometry(NamedTuple):
    """Extents of the table and of the forward's 2-D key block along each axis (sub-lattice units)."""
    shift_y: int  # ra = key - window start runs over [-shift_y, rows - shift_y)
    shift_x: int  # rb over [-shift_x, cols - shift_x)
    key_w: int  # forward key-block width: a power of two >= the widest key union of a tile
    rows: int
    cols: int


def max_start_shift(tile: int, kernel: int, stride: int) -> int:
    """Largest ``start(t0 + tile - 1) - start(t0)`` over tiles (``t0`` a multiple of ``tile``). Unclamped window
    leaders move by ``stride`` once per stride run; the border clamps only shrink differences, and the residue of
    ``t0`` modulo ``stride`` repeats with period ``stride``."""
    return max(((j * tile + tile - 1) // stride - (j * tile) // stride) * stride for j in range(stride))


@functools.lru_cache(maxsize=64)
def table_geometry(kernel: Tuple[int, int], stride: Tuple[int, int], tile: Tuple[int, int]) -> TableGeometry:
    """Table extents covering both kernels that read it. Forward (query tile, keys = the union of its windows, read
    in blocks of KEY_ROWS rows x key_w columns): ra >= -(start shift inside the tile) and ra < shift + k +
    KEY_ROWS - 1 (row padding of the last block); rb < key_w. dK/dV (key tile, queries whose windows touch it):
    window starts lie in [first key - k + 1, last key], so -(tile - 1) <= ra <= tile + k - 2."""
    extents = []
    for kern, st, t in zip(kernel, stride, tile):
        shift = max_start_shift(t, kern, st)
        lo = max(shift, t - 1)
        extents.append((shift, lo, next_pow2(shift + kern)))
    (shift_y, lo_y, _), (shift_x, lo_x, key_w) = extents
    key_w = max(key_w, MIN_DOT // 2)  # 8+: two rows of the smallest block already fill a tl.dot operand
    rows = lo_y + max(shift_y + kernel[0] + MAX_KEY_ROWS - 1, tile[0] + kernel[0] - 1)
    cols = lo_x + max(key_w, tile[1] + kernel[1] - 1)
    return TableGeometry(lo_y, lo_x, key_w, rows, cols)


@functools.lru_cache(maxsize=64)
def _table_index(kernel: Tuple[int, int], geom: TableGeometry, device: torch.device
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid mask, rpb index, dense-bias index), each (kh*kw * rows * cols,) over [ly, lx, ry, rx]. Indices point
    into the flattened per-head rpb / bias with one extra ``-inf`` column appended: entries outside the window read
    that column, so a table is one pad and one gather."""
    kh, kw = kernel
    ly, lx, ry, rx = torch.meshgrid(torch.arange(kh), torch.arange(kw), torch.arange(geom.rows),
                                    torch.arange(geom.cols), indexing="ij")
    return _entry_index(kernel, ly, lx, ry - geom.shift_y, rx - geom.shift_x, device)


def _entry_index(kernel: Tuple[int, int], ly: torch.Tensor, lx: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor,
                 device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened (valid, rpb index, dense-bias index) of the entries for query slot (ly, lx) and key (ra, rb)
    relative to the window start; invalid entries index the ``-inf`` column past the end."""
    kh, kw = kernel
    valid = (ra >= 0) & (ra < kh) & (rb >= 0) & (rb < kw)
    n_rpb, n_bias = (2 * kh - 1) * (2 * kw - 1), (kh * kw) ** 2
    rpb_idx = torch.where(valid, (ra - ly + kh - 1) * (2 * kw - 1) + (rb - lx + kw - 1), n_rpb)
    bias_idx = torch.where(valid, (ly * kw + lx) * (kh * kw) + ra * kw + rb, n_bias)
    return tuple(t.reshape(-1).to(device) for t in (valid, rpb_idx, bias_idx))  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _mask_table(kernel: Tuple[int, int], geom: TableGeometry, device: torch.device) -> torch.Tensor:
    valid = _table_index(kernel, geom, device)[0]
    return torch.where(valid, 0.0, -math.inf).to(torch.float32)[None]


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    flat = torch.nn.functional.pad(values.reshape(values.shape[0], -1).float(), (0, 1), value=-math.inf)
    return torch.index_select(flat, 1, index)  # not flat[:, index]: advanced indexing costs more host time


def window_logit_table(rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], kernel: Sequence[int],
                       geom: TableGeometry, device: torch.device) -> torch.Tensor:
    """(heads or 1, kh*kw*rows*cols) float32 contiguous: ``rpb + bias`` (natural-log logits; the kernels scale by
    log2(e)) in the window, ``-inf`` out. rpb: (heads, 2kh-1, 2kw-1); bias: (heads, kh*kw, kh*kw); either may be
    None (no bias: one cached 0 / -inf table shared by all heads)."""
    kernel = (int(kernel[0]), int(kernel[1]))
    if rpb is None and bias is None:
        return _mask_table(kernel, geom, device)
    _, rpb_idx, bias_idx = _table_index(kernel, geom, device)
    if bias is None:
        return _gather(rpb, rpb_idx)
    if rpb is None:
        return _gather(bias, bias_idx)
    return _gather(rpb, rpb_idx) + _gather(bias, bias_idx)


def launch_table(rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], kernel: Sequence[int],
                 stride: Sequence[int], tile: Tuple[int, int], device: torch.device,
                 table: Optional[torch.Tensor] = None) -> Tuple[TableGeometry, torch.Tensor, int]:
    """What a launcher passes: the geometry (its constexprs), the table (``table`` when the caller already built it
    for these arguments, e.g. the forward's, reused by the backward), and the table's head stride (0 when one table
    serves every head)."""
    geom = table_geometry((int(kernel[0]), int(kernel[1])), (int(stride[0]), int(stride[1])), tile)
    if table is None:
        table = window_logit_table(rpb, bias, kernel, geom, device)
    return geom, table, table.stride(0) if table.shape[0] > 1 else 0


# ---- The dense window block: windows only (stride == kernel, one window per program)
#
# When a program owns exactly one window, every query of it shares the window start, so a score's entry depends only
# on the query's class and the key's lane in the forward's key block (``row * KEY_W + column`` inside the window).
# A per-head block ``B[h, class, lane]`` then gives every query row 32 consecutive, 128-byte aligned floats per key
# block, where the table gather above reads one misaligned float per score (ncu, H100: the window forward was
# L1-bound on that gather, 17.8 of every 32 bytes per sector used). 7x7 windows + rpb at 56x56, B 64, 3 heads, bf16:
# 0.165 -> 0.097 ms (kernels/README.md, eighth run).


def window_block_row(kernel: Sequence[int], key_w: int) -> int:
    """Row length of the window block: every lane a key block can read (the window's rows padded by up to
    MAX_KEY_ROWS - 1 rows of the last block), rounded up to 32 floats (one 128-byte line per 32-lane block)."""
    return cdiv((int(kernel[0]) + MAX_KEY_ROWS - 1) * key_w, 32) * 32


@functools.lru_cache(maxsize=64)
def _block_index(kernel: Tuple[int, int], key_w: int, device: torch.device
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid mask, rpb index, dense-bias index), each (kh*kw * row,) over [class (ly, lx), lane], pointing into the
    flattened per-head rpb / bias with one extra ``-inf`` column (as :func:`_table_index`)."""
    kh, kw = kernel
    row = window_block_row(kernel, key_w)
    ly, lx, lane = torch.meshgrid(torch.arange(kh), torch.arange(kw), torch.arange(row), indexing="ij")
    return _entry_index(kernel, ly, lx, lane // key_w, lane % key_w, device)


@functools.lru_cache(maxsize=64)
def _mask_block(kernel: Tuple[int, int], key_w: int, device: torch.device) -> torch.Tensor:
    valid = _block_index(kernel, key_w, device)[0]
    return torch.where(valid, 0.0, -math.inf).to(torch.float32)[None]


def window_logit_block(rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], kernel: Sequence[int],
                       key_w: int, device: torch.device) -> torch.Tensor:
    """(heads or 1, kh*kw * row) float32 contiguous: ``(rpb + bias) * log2(e)`` (already in the kernel's base-2
    units) at ``[class, lane]`` inside the window, ``-inf`` at every other lane. Without rpb and bias: one cached
    0 / -inf block shared by all heads."""
    kernel = (int(kernel[0]), int(kernel[1]))
    if rpb is None and bias is None:
        return _mask_block(kernel, key_w, device)
    _, rpb_idx, bias_idx = _block_index(kernel, key_w, device)
    block = None if rpb is None else _gather(rpb, rpb_idx)
    if bias is not None:
        block = _gather(bias, bias_idx) if block is None else block + _gather(bias, bias_idx)
    return block * math.log2(math.e)  # the kernels' LOG2E
