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
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from ._intmath import cdiv
from ._neighborhood_common import MIN_DOT, next_pow2

__all__ = ["TableGeometry", "table_geometry", "max_start_shift", "window_logit_table", "launch_table", "MAX_KEY_ROWS",
           "LogitBlock", "axis_tile_classes", "block_row", "block_dtype", "tile_logit_block"]

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


# ---- The dense logit block: tiles of one class share every logit
#
# A score's entry depends on the query's class (its slot in its window) and on the key relative to the query's window
# start. Inside a query tile both follow from the query's slot in the tile and the key's lane in the forward's key
# block (``union row * KEY_W + union column``), given the tile's per-axis *signature*: for each slot of the tile, its
# class and its window start relative to the start of the tile's key union. Along one axis only a few signatures
# occur (the first tile, the interior, one or two at the far border, per dilation group), so tiles fall into a few
# *classes*, and a per-head block ``B[h, class, slot, lane]`` holds every logit the forward reads. Its rows give each
# query contiguous, aligned lanes per key block (a 128-byte line of fp32), where the table above costs a gather of one
# misaligned float per score (ncu, H100: the forward was L1-bound on that gather, 17.8 of every 32 bytes per sector
# used). H100, bf16, B 64, d 32: NA 7x7 + rpb at 56x56, 3 heads 0.24 -> 0.14 ms (fp32 block), 0.12 ms (fp16); 7x7
# windows 0.165 -> 0.097 ms (kernels/README.md, eighth and tenth runs).


class LogitBlock(NamedTuple):
    """What the forward reads instead of the table: ``values`` (heads or 1, classes * BLOCK_M * row), fp32 or fp16,
    in base-2 units, ``-inf`` outside each query's window; ``classes`` int32: the class index along y of every
    (dilation group, tile) row, then along x of every (group, tile) column; the tile's block is
    ``class_y * n_classes_x + class_x``."""
    values: torch.Tensor
    classes: torch.Tensor
    n_classes_x: int
    row: int  # floats per (class, slot) row: every lane a key block reads, a multiple of 32
    geometry: Tuple[Tuple[int, int], ...]  # (kernel, dilation, stride, tile, map size) it was built for


def _window_starts(glen: int, kernel: int, stride: int) -> List[int]:
    """Sub-lattice window start of every query of a group of length ``glen`` (``_neighborhood_common.window_start``,
    on the host)."""
    leaders = [min((i // stride) * stride + stride // 2, glen - 1) for i in range(glen)]
    return [min(max(lead - kernel // 2, 0), glen - kernel) for lead in leaders]


@functools.lru_cache(maxsize=256)
def axis_tile_classes(size: int, dilation: int, tile: int, kernel: int, stride: int
                      ) -> Tuple[Tuple[int, ...], Tuple[Tuple[Tuple[int, int, bool], ...], ...]]:
    """Along one axis: the class of every (dilation group, tile), groups outer, and each class's signature, per slot
    ``(class in the window, window start - key-union start, slot holds a query)``. Tiles past a short group's end own
    no query and read nothing; they get the all-empty signature."""
    n_tiles = cdiv(cdiv(size, dilation), tile)
    ids, signatures = [], {}
    for group in range(dilation):
        glen = cdiv(size - group, dilation)
        starts = _window_starts(glen, kernel, stride)
        for t0 in range(0, n_tiles * tile, tile):
            union0 = starts[t0] if t0 < glen else 0
            sig = tuple((i - starts[i], starts[i] - union0, True) if i < glen else (0, 0, False)
                        for i in range(t0, t0 + tile))
            ids.append(signatures.setdefault(sig, len(signatures)))
    return tuple(ids), tuple(signatures)


def block_row(signatures_y: Sequence[Tuple[Tuple[int, int, bool], ...]], kernel_y: int, key_w: int) -> int:
    """Row length of the block: the widest key union (rows) plus the last key block's padding of up to
    MAX_KEY_ROWS - 1 rows, times KEY_W, rounded up to 32 floats (one 128-byte line per 32-lane block)."""
    union_rows = max([offset + kernel_y for sig in signatures_y for _, offset, valid in sig if valid], default=1)
    return cdiv((union_rows + MAX_KEY_ROWS - 1) * key_w, 32) * 32


@functools.lru_cache(maxsize=64)
def _block_index(kernel: Tuple[int, int], dilation: Tuple[int, int], stride: Tuple[int, int], tile: Tuple[int, int],
                 size: Tuple[int, int], key_w: int, device: torch.device):
    """(valid, rpb index, dense-bias index) over [class_y, class_x, slot, lane] (as :func:`_table_index`), the
    classes lookup, the number of x classes and the row length."""
    ids_y, sig_y = axis_tile_classes(size[0], dilation[0], tile[0], kernel[0], stride[0])
    ids_x, sig_x = axis_tile_classes(size[1], dilation[1], tile[1], kernel[1], stride[1])
    row = block_row(sig_y, kernel[0], key_w)
    slots = torch.arange(max(MIN_DOT, next_pow2(tile[0] * tile[1])))
    slot_y, slot_x = (slots // tile[1]).clamp(max=tile[0] - 1), slots % tile[1]
    lanes = torch.arange(row)
    per_y = torch.tensor(sig_y)[:, slot_y]  # (classes y, slots, 3)
    per_x = torch.tensor(sig_x)[:, slot_x]
    ly, lx = per_y[:, None, :, None, 0], per_x[None, :, :, None, 0]
    ra = (lanes // key_w)[None, None, None, :] - per_y[:, None, :, None, 1]
    rb = (lanes % key_w)[None, None, None, :] - per_x[None, :, :, None, 1]
    # padding slots and slots without a query read -inf everywhere
    has_query = per_y[:, None, :, None, 2].bool() & per_x[None, :, :, None, 2].bool() & (slots < tile[0] * tile[1])[
        None, None, :, None]
    shape = (len(sig_y), len(sig_x), len(slots), row)
    ra = torch.where(has_query, ra, -1)
    valid, rpb_idx, bias_idx = _entry_index(kernel, *(t.expand(shape) for t in (ly, lx, ra, rb)), device)
    classes = torch.tensor(ids_y + ids_x, dtype=torch.int32, device=device)
    return valid, rpb_idx, bias_idx, classes, len(sig_x), row


@functools.lru_cache(maxsize=64)
def _mask_block(kernel, dilation, stride, tile, size, key_w, device, dtype) -> LogitBlock:
    valid, _, _, classes, n_classes_x, row = _block_index(kernel, dilation, stride, tile, size, key_w, device)
    return LogitBlock(torch.where(valid, 0.0, -math.inf).to(dtype)[None], classes, n_classes_x, row,
                      (kernel, dilation, stride, tile, size))


def block_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The block's storage: fp32 for fp32 inputs (the table's exact logits), fp16 for 16-bit inputs. At fp32 the
    block was 2/3 of the bytes a key step loads (64 x 64 floats against two 64 x 32 half tiles); fp16 halves that
    (NA 7x7 56x56 forward, H100: 0.144 -> 0.130 ms with bf16 storage). Its rounding, relative 2^-11 of the bias
    only, is 4x finer than the bf16 rounding torch's autocast applies to the whole logit q.k."""
    return torch.float32 if input_dtype == torch.float32 else torch.float16


def tile_logit_block(rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], kernel: Sequence[int],
                     dilation: Sequence[int], stride: Sequence[int], tile: Sequence[int], size: Sequence[int],
                     key_w: int, device: torch.device, dtype: torch.dtype = torch.float32) -> LogitBlock:
    """The forward's dense logit block for a (size, dilation, stride, tile) geometry: ``(rpb + bias) * log2(e)`` (the
    kernels' base-2 units) in each query's window, ``-inf`` elsewhere, stored in ``dtype`` (:func:`block_dtype`).
    Without rpb and bias: one cached 0 / -inf block shared by all heads."""
    geometry = tuple((int(a[0]), int(a[1])) for a in (kernel, dilation, stride, tile, size))
    if rpb is None and bias is None:
        return _mask_block(*geometry, key_w, device, dtype)
    _, rpb_idx, bias_idx, classes, n_classes_x, row = _block_index(*geometry, key_w, device)
    values = None if rpb is None else _gather(rpb, rpb_idx)
    if bias is not None:
        values = _gather(bias, bias_idx) if values is None else values + _gather(bias, bias_idx)
    return LogitBlock((values * math.log2(math.e)).to(dtype), classes, n_classes_x, row,  # the kernels' LOG2E
                      geometry)
