"""Pieces shared by the biased dense-attention kernels (``biased_attention_fwd.py``, ``biased_attention_bwd_*.py``):
supported shapes, autotune config lists and pruning, the bias-reduction "slot / member" bookkeeping, and two tiny
``@triton.jit`` helpers. No kernel lives here.

Bias-gradient reduction (used by the two gradient kernels). The bias has shape (Bb, Hb, Lq, Lk) with Bb in {1, B} and
Hb in {1, H}; its gradient sums dS = dL/dlogits over the broadcast dims. A *slot* is one (bb, hb) slice of the bias;
its *members* are the G = (B / Bb) * (H / Hb) (batch, head) pairs whose dS tiles add into it. Member r of slot
(sb, sh) is (b, h) = (sb + r // H_REP, sh + r % H_REP) with H_REP = H / Hb (one of each pair is always 0). The
kernel that owns d_bias loops over a *chunk* of a slot's members inside one program, so the reduction over them
needs no atomics and no full-size (B, H, Lq, Lk) intermediate: each program writes one fp32 partial per chunk
(``n_chunks`` partials in all, summed by the launcher; one chunk -> no sum). The kernel that does not own d_bias
uses the same code with the trivial split (slots = B * H, one member each).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import next_pow2
from ._tuning import autotune_enabled, interpreting

__all__ = [
    "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES", "REGISTER_DBIAS_MAX", "DBIAS_NONE", "DBIAS_REGISTERS", "DBIAS_GLOBAL",
    "MIN_BLOCK", "MODE_REGISTERS", "MODE_GLOBAL", "check_head_dims", "interpreting", "make_configs", "make_pruner",
    "next_block", "sm_count", "default_tiles", "forward_default_tiles",
    "member_coords", "chunk_split", "bias_strides", "LOG2E", "LOG2E_PY",
]

# tl.dot needs every operand dim >= 16 on real GPUs and tl.arange needs powers of two, so head dims are exactly
# these; every other size (Lq, Lk) is handled by masked tiles of at least MIN_BLOCK rows.
SUPPORTED_HEAD_DIMS = (16, 32, 64)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_BLOCK = 16
# The d_bias owner keeps its (BLOCK_M, BLOCK_N) fp32 accumulator in registers when its inner loop is one tile
# (<= 64 rows: agent counts 9..49); 64 x 64 fp32 over 4 warps is 32 registers per thread.
REGISTER_DBIAS_MAX = 64
# DBIAS_MODE values (constexpr): no bias gradient in this kernel; accumulate in registers (inner loop is a single
# tile, so one tile per program); read-modify-write the program's own fp32 partial strip in global memory.
DBIAS_NONE, DBIAS_REGISTERS, DBIAS_GLOBAL = 0, 1, 2
# the same values as constexpr globals: compiled kernels may only read constexpr globals
MODE_REGISTERS: tl.constexpr = tl.constexpr(DBIAS_REGISTERS)
MODE_GLOBAL: tl.constexpr = tl.constexpr(DBIAS_GLOBAL)

LOG2E_PY = math.log2(math.e)  # logits are scaled by log2(e) once so the kernels use exp2 / log2
LOG2E: tl.constexpr = tl.constexpr(LOG2E_PY)


def check_head_dims(head_dim: int, v_dim: int) -> None:
    for name, value in (("head_dim", head_dim), ("v head_dim", v_dim)):
        if value not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"biased attention kernel: {name} must be one of {SUPPORTED_HEAD_DIMS}, got {value}")


def next_block(n: int) -> int:
    """Smallest power-of-two tile (>= MIN_BLOCK) covering ``n`` rows."""
    return max(MIN_BLOCK, next_pow2(int(n)))


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: only shapes the chunking, tests stay tiny


def make_configs(specs) -> List[triton.Config]:
    """Configs from (BLOCK_M, BLOCK_N, num_warps, num_stages) tuples, smallest tiles first (kept short: every config
    is compiled and benchmarked on first use of a shape). Under the interpreter warps / stages are irrelevant."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=1 if interpreting() else s)
               for m, n, w, s in specs]
    return configs


def make_pruner(program_len: str, loop_len: str, program_block: str, loop_block: str,
                defaults: Optional[Callable[[int, int], Tuple[int, int]]] = None):
    """``early_config_prune`` for a kernel whose programs tile ``program_len`` and loop over ``loop_len``.

    Drops tiles larger than the (padded) extent they cover. A kernel owning d_bias in registers
    (DBIAS_MODE == DBIAS_REGISTERS) needs its loop tile to cover the whole loop extent. Without autotuning one config
    is kept: under the interpreter the first (smallest) survivor, so CPU tests stay cheap; on a GPU with
    VITZOO_AUTOTUNE=0 the survivor closest to ``defaults`` (:func:`default_tiles` unless given; the smallest 16 x 16
    tile would loop 196 times over Agent-Swin-T's 3136 keys).
    """

    def prune(configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        p_cap, l_need = next_block(args[program_len]), next_block(args[loop_len])
        single = args.get("DBIAS_MODE", DBIAS_NONE) == DBIAS_REGISTERS
        kept = [c for c in configs if c.kwargs[program_block] <= p_cap and c.kwargs[loop_block] <= l_need
                and (not single or c.kwargs[loop_block] >= l_need)]
        if not kept:  # every tile overshoots: keep the smallest that satisfies the register-mode constraint
            kept = [min((c for c in configs if not single or c.kwargs[loop_block] >= l_need),
                        key=lambda c: (c.kwargs[program_block], c.kwargs[loop_block]))]
        if autotune_enabled():
            return kept
        if interpreting():
            return kept[:1]
        want = (defaults or default_tiles)(p_cap, l_need)
        return [min(kept, key=lambda c: _tile_distance((c.kwargs[program_block], c.kwargs[loop_block]), want))]

    return prune


# Untuned default tile (no autotuning): programs of up to DEFAULT_PROGRAM_TILE rows, looping in tiles of up to
# DEFAULT_LOOP_TILE (twice that when the program tile is the minimum, e.g. 9-16 agents reading thousands of keys).
DEFAULT_PROGRAM_TILE = 64
DEFAULT_LOOP_TILE = 64


def default_tiles(program_extent: int, loop_extent: int) -> Tuple[int, int]:
    """(program tile, loop tile) wanted when autotuning is off, for padded extents ``next_block(...)``."""
    program = min(program_extent, DEFAULT_PROGRAM_TILE)
    loop_cap = 2 * DEFAULT_LOOP_TILE if program <= MIN_BLOCK else DEFAULT_LOOP_TILE
    return program, min(loop_extent, loop_cap)


# Untuned forward loop tile under a 64-row program tile: the (64, 64) tile needs 229 registers per thread (2 programs
# per SM, 23 % of HBM bandwidth at Agent-Swin-T stage 3). H100, bf16, batch 128, us, (64, 16) against (64, 64):
# stage 3 agents 44 / 59, stage 3 queries 60 / 93, stage 4 33 / 49, Agent-PVT-T stage 4 (d 64) 14 / 19.
FORWARD_WIDE_PROGRAM_LOOP_TILE = 16


def forward_default_tiles(program_extent: int, loop_extent: int) -> Tuple[int, int]:
    """:func:`default_tiles` for the forward kernel: narrow loop tiles under wide (>= 64-row) program tiles."""
    program, loop = default_tiles(program_extent, loop_extent)
    if program >= DEFAULT_PROGRAM_TILE:
        loop = min(loop, FORWARD_WIDE_PROGRAM_LOOP_TILE)
    return program, loop


def _tile_distance(tiles: Tuple[int, int], want: Tuple[int, int]) -> float:
    return sum(abs(math.log2(t) - math.log2(w)) for t, w in zip(tiles, want))


def chunk_split(members: int, programs_per_chunk: int, device: torch.device, partial_bytes_per_chunk: int,
                partial_budget_bytes: int = 1 << 28, programs_per_sm: int = 4) -> tuple:
    """(members_per_chunk, n_chunks) for the d_bias owner: enough chunks to fill the GPU (about ``programs_per_sm``
    programs per SM), bounded by the fp32 partial buffers' memory; no chunk is empty."""
    want = max(1, math.ceil(programs_per_sm * sm_count(device) / max(1, programs_per_chunk)))
    cap = max(1, partial_budget_bytes // max(1, partial_bytes_per_chunk))
    n_chunks = max(1, min(members, want, cap))
    per_chunk = math.ceil(members / n_chunks)
    return per_chunk, math.ceil(members / per_chunk)


def bias_strides(bias: Optional[torch.Tensor], batch: int, heads: int, lq: int, lk: int) -> Tuple[int, int, int, int]:
    """Strides of ``bias`` viewed as (batch, heads, Lq, Lk): 0 on broadcast dims (no copy); zeros when absent."""
    if bias is None:
        return 0, 0, 0, 0
    return tuple(bias.expand(batch, heads, lq, lk).stride())  # type: ignore[return-value]


@triton.jit
def member_coords(slot, r, SLOT_H, H_REP):
    """(batch, head) of member ``r`` of bias slot ``slot`` (see the module docstring)."""
    b = slot // SLOT_H + r // H_REP
    h = slot % SLOT_H + r % H_REP
    return b, h
