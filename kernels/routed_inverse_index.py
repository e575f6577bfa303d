"""Inverse routing of bi-level routing attention (BiFormer, Zhu et al., CVPR 2023) as one kernel: for every key
region, the query regions that routed to it, as a CSR list the dk/dv kernel walks.

Why a kernel: in torch this is a sort, a search and a handful of index ops per backward call. At BiFormer's sizes the
GPU work is negligible, but on the H100 machine each of those ops cost 30-60 us of host time, and the whole backward
is host-bound (kernels/README.md, "Sixth run"). One launch does it all, with no device-to-host sync.

One program per batch element holds that element's (regions, topk) index in registers and, for each key region in
turn, marks the query regions whose row holds it, ranks them with a prefix sum and scatters them to the region's
slice of the list. Lists are in increasing query-region order (what a stable sort of the flattened index gives), so
the dk/dv sums run in a fixed order: deterministic. A query region that lists a key region several times (never
produced by ``torch.topk``, but legal input) appears that many times, as the forward attends to it that many times.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._routed_common import next_pow2

__all__ = ["inverse_routing"]


@triton.jit
def _routed_inverse_index_kernel(
    IDX, OFFSETS, QLIST,
    stride_ib, stride_ir, stride_ik,
    BATCH, R, TOPK,
    R_PAD: tl.constexpr, K_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    offs_r = tl.arange(0, R_PAD)
    offs_k = tl.arange(0, K_PAD)
    in_range = (offs_r[:, None] < R) & (offs_k[None, :] < TOPK)
    routed = tl.load(IDX + b.to(tl.int64) * stride_ib + offs_r[:, None] * stride_ir + offs_k[None, :] * stride_ik,
                     mask=in_range, other=-1).to(tl.int32)  # region ids < 2**31: half the registers of int64
    # every query region routes to exactly TOPK key regions, so batch element b owns entries [b*R*TOPK, (b+1)*R*TOPK)
    start = b.to(tl.int64) * R * TOPK
    for r in range(0, R):
        hits = tl.sum((routed == r).to(tl.int32), axis=1)  # (R_PAD,) times each query region listed r
        first = tl.cumsum(hits, axis=0) - hits  # entries of earlier query regions in r's list
        for repeat in range(0, tl.max(hits, axis=0)):
            tl.store(QLIST + start + first + repeat, offs_r, mask=hits > repeat)
        tl.store(OFFSETS + b * R + r, start.to(tl.int32))
        start += tl.sum(hits, axis=0)
    tl.store(OFFSETS + BATCH * R, start.to(tl.int32), mask=b == BATCH - 1)


def inverse_routing(index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """CSR of the inverse routing of a (B, regions, topk) int32/int64 index of region ids: ``offsets``
    (B * regions + 1,) int32 and ``query_regions`` (B * regions * topk,) int32, so the query regions of batch b that
    routed to key region r are ``query_regions[offsets[b * regions + r] : offsets[b * regions + r + 1]]`` in
    increasing order."""
    batch, regions, topk = index.shape
    if batch * regions * topk >= 2 ** 31:
        raise ValueError(f"inverse_routing: B * regions * topk must be < 2**31 (int32 offsets), got {index.shape}")
    offsets = torch.empty(batch * regions + 1, device=index.device, dtype=torch.int32)
    query_regions = torch.empty(batch * regions * topk, device=index.device, dtype=torch.int32)
    launch(_routed_inverse_index_kernel, (batch,),
           index, offsets, query_regions, *index.stride(), batch, regions, topk,
           R_PAD=next_pow2(regions), K_PAD=next_pow2(topk))
    return offsets, query_regions
