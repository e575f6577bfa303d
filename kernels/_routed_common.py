"""Pieces shared by the bi-level routing attention kernels (BiFormer, Zhu et al., CVPR 2023): region/token address
arithmetic, tile layouts and autotune pruning. The kernels themselves live one per file: ``routed_fwd.py``,
``routed_bwd_dq.py``, ``routed_bwd.py``.

Geometry. The (H, W) token map is cut into ``n_win x n_win`` regions of ``RH x RW = ceil(H / n_win) x
ceil(W / n_win)`` tokens (conceptually padded to ``n_win * RH x n_win * RW``). Region ``r`` covers rows
``(r // n_win) * RH ...`` and columns ``(r % n_win) * RW ...``; its token ``t`` (row-major, ``0 <= t < T = RH * RW``)
sits at ``(y, x) = (.. + t // RW, .. + t % RW)``. Tokens with ``y >= H`` or ``x >= W`` are padding: never loaded,
never attended, never stored.

Tile layout. A program holds a *stationary* tile (queries in the forward/dq kernels, keys in the dk/dv kernel) and
streams the other side. ``TP = next_pow2(T)``. The stationary tile of ``S_BLOCK`` rows covers ``GROUPS`` regions of
``S_BLOCK // GROUPS = min(S_BLOCK, TP)`` token slots each: small regions (2x2 = 4 tokens) are packed several per
program so ``tl.dot`` sees >= 16 rows, big regions (e.g. 32x32) are split over several programs. The streamed tile of
``M_BLOCK`` rows is split evenly between the ``GROUPS`` stationary regions; each group's share holds ``SLOTS`` routed
regions of ``TOK`` token slots (``TOK = TP`` when several routed regions fit, else a ``TOK``-token chunk of one
region, looped over). Score entries pairing different groups are masked (block-diagonal), so packing trades wasted
MACs on tiny regions for tensor-core-sized dots.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl  # noqa: F401  (the interpreter needs it in the globals of region_tokens)

from ._intmath import next_pow2  # noqa: F401 - re-exported for the kernels of this family
from ._tuning import autotune_enabled

__all__ = ["region_tokens", "tile_layout", "tile_configs", "layout_pruner", "untuned_tile", "dot_precision",
           "next_pow2", "MIN_DOT", "MAX_HEAD_DIM", "KERNEL_ROLES"]

MIN_DOT = 16  # smallest tl.dot operand dimension on NVIDIA tensor cores
MAX_HEAD_DIM = 128  # beyond this the fp32 accumulators no longer fit the register file at these tile sizes
KERNEL_ROLES = ("fwd", "dq", "dkdv")
STATIONARY_CAP = 64  # untuned stationary tile: one whole region, or 64-token chunks of a bigger one
STREAMED_DEFAULT = 32  # untuned streamed rows per step
FWD_WIDE_STREAM = 128  # the forward streams this many key columns when small regions are routed to many others
FWD_WIDE_MIN_TOPK = 8


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use exact fp32 dots (the torch reference does not use TF32 either); 16-bit inputs ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def region_tokens(region, tok, N_WIN, RH, RW, T, H, W):
    """Map position (y, x) and validity of token ``tok`` of region ``region`` (broadcastable int tensors); valid =
    a real token of the region (``tok < T``) inside the map."""
    y = (region // N_WIN) * RH + tok // RW
    x = (region % N_WIN) * RW + tok % RW
    valid = (tok < T) & (y < H) & (x < W)
    return y, x, valid


def tile_layout(stationary_block: int, streamed_block: int, tp: int, max_slots: int) -> Optional[Tuple[int, int]]:
    """(GROUPS, SLOTS) of a (stationary_block, streamed_block) tile for regions of ``tp`` padded tokens, or None when
    the tile wastes work for nothing (more routed-region slots than exist, or over-packed tiny regions)."""
    groups = max(1, stationary_block // tp)
    if groups > 1 and stationary_block > max(MIN_DOT, 2 * tp):
        return None  # packing more tiny regions than needed for a legal dot only adds block-diagonal waste
    share = streamed_block // groups
    if share < 1:
        return None
    tok = min(share, tp)
    slots = share // tok
    if slots > next_pow2(max_slots):
        return None
    return groups, slots


def untuned_tile(role: str, tp: int, topk: int) -> Tuple[int, int]:
    """(stationary, streamed) rows of the tile a kernel runs with autotuning off, for regions of ``tp`` padded tokens
    routed to ``topk`` others. ``role``: "fwd" | "dq" | "dkdv".

    The rule reproduces the H100 autotune winners (bf16, d 32, all 4 warps / 2 stages) of the BiFormer stages at 224
    and 448: (tp, topk) = (64, 1), (16, 4), (4, 16), (256, 1), (64, 4), (16, 16); the first legal config, which was
    the untuned tile before, ran those kernels 1.5-4.9x slower (kernels/README.md, "Fifteenth run"). The forward
    wants long key streams when tiny regions fan out to many (4 query regions x 8 routed regions per step at
    stage 3); the backward kernels keep 16 streamed rows per packed stationary region, at least 32.
    """
    if role not in KERNEL_ROLES:
        raise ValueError(f"role must be one of {KERNEL_ROLES}, got {role!r}")
    stationary = min(STATIONARY_CAP, max(MIN_DOT, tp))
    groups = max(1, stationary // tp)
    if role == "fwd":
        wide = tp < STATIONARY_CAP and topk >= FWD_WIDE_MIN_TOPK
        return stationary, FWD_WIDE_STREAM if wide else STREAMED_DEFAULT
    return stationary, max(STREAMED_DEFAULT, MIN_DOT * groups)


def layout_pruner(stationary: str, streamed: str, slots_arg: str, interpret: bool, role: str) -> Callable:
    """``early_config_prune`` for ``triton.autotune``: keeps the configs whose tile layout is sensible for this
    call's ``TP`` and adds the derived ``GROUPS``/``SLOTS`` constexprs. Under the interpreter one config, the first
    legal one (no benchmarking); with VITZOO_AUTOTUNE=0 one config, :func:`untuned_tile`'s (4 warps) when it is
    legal, else the first legal one."""

    def prune(configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        tp, max_slots = int(args["TP"]), int(args[slots_arg])
        out = []
        for cfg in configs:
            layout = tile_layout(cfg.kwargs[stationary], cfg.kwargs[streamed], tp, max_slots)
            if layout is None:
                continue
            kw = dict(cfg.kwargs, GROUPS=layout[0], SLOTS=layout[1])
            out.append(triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        if not out:  # fall back to the smallest legal tile, always valid
            kw = {stationary: max(MIN_DOT, min(tp, 64)), streamed: MIN_DOT}
            groups, slots = tile_layout(kw[stationary], kw[streamed], tp, 1 << 30)
            out = [triton.Config(dict(kw, GROUPS=groups, SLOTS=slots), num_warps=4, num_stages=2)]
        if interpret:
            return out[:1]
        if autotune_enabled():
            return out
        tile = untuned_tile(role, tp, max_slots)
        chosen = [c for c in out if (c.kwargs[stationary], c.kwargs[streamed]) == tile and c.num_warps == 4]
        return chosen[:1] or out[:1]

    return prune


def tile_configs(blocks: List[Tuple[int, int]], stationary: str, streamed: str) -> List[triton.Config]:
    """Bounded autotune list: each (stationary, streamed) block pair with 4 and 8 warps."""
    return [
        triton.Config({stationary: s, streamed: m}, num_warps=w, num_stages=st)
        for (s, m) in blocks
        for (w, st) in ((4, 2), (8, 3))
        if not (w == 8 and s * m < 64 * 64)  # 8 warps only pay off on large tiles
    ]
