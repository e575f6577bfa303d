"""Backward of biased dense attention: orchestrates the three backward kernels (no kernel of its own).

Calls whose queries and keys each fit one register tile (at most 64: Agent attention at 7x7 maps, PVT's last
stage) take the one-pass ``tile_attention_bwd`` instead; calls where only the shorter side fits one tile (the agents
of Agent attention against the N tokens) take the one-pass ``strip_attention_bwd``. Otherwise:

1. ``biased_attention_bwd_delta``: delta = rowsum(dO * O).
2. ``biased_attention_bwd_dkdv``: dk, dv (programs over key tiles, loop over queries).
3. ``biased_attention_bwd_dq``: dq (programs over query tiles, loop over keys).

The bias gradient (summed over the bias's broadcast batch / head dims) is produced by exactly one of 2 and 3, the
*owner*, chosen so the reduction runs in registers when possible: the kernel whose inner loop is a single tile
(<= REGISTER_DBIAS_MAX rows) owns it. For Agent attention that is always the case (one side is the agents).
Otherwise the owner with fewer inner tiles read-modify-writes its own fp32 partial strip. The owner splits each bias
slot's members (batch, head pairs) into chunks to fill the GPU; the fp32 partials (one per chunk) are summed here.
Deterministic: no atomics anywhere.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import strip_attention_bwd as strip
from . import tile_attention_bwd as tile
from ._biased_attention_common import (DBIAS_GLOBAL, DBIAS_NONE, DBIAS_REGISTERS, REGISTER_DBIAS_MAX, bias_strides,
                                       check_head_dims, chunk_split, next_block, sm_count)
from ._layout import empty_in_layout_of
from .biased_attention_bwd_delta import biased_attention_bwd_delta
from .biased_attention_bwd_dkdv import biased_attention_bwd_dkdv
from .biased_attention_bwd_dq import biased_attention_bwd_dq

__all__ = ["biased_attention_bwd"]

_PLANNING_BLOCK = 64  # typical program tile, only used to estimate the owner's program count when chunking
# Bias-gradient chunking of the one-tile kernel on dense sequences: fewer, longer chunks than its window default
# (H100, Agent-Swin-T stage 4 shape, 3072 (batch, head) pairs of 49 x 49, the agent op's fwd+bwd: 238 us at 8
# programs per SM, 223 at 4, 212 at 2; `h100_agent_op_ab_2026-11-24o.txt`).
DENSE_TILE_PROGRAMS_PER_SM = 2


def biased_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
    out: torch.Tensor, lse: torch.Tensor, scale: float, bias_grad: bool,
    grads: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Gradients (dq, dk, dv, d_bias) of :func:`biased_attention_fwd`. ``bias`` is None or 4-D (1|B, 1|H, Lq, Lk);
    d_bias has the bias's shape and dtype (None unless ``bias_grad``). dq, dk, dv have q's dtype and the memory
    order of q, k, v (:func:`~._layout.empty_in_layout_of`), or are ``grads``: three tensors of q's, k's and v's
    shapes in any strides (e.g. the slices of one packed gradient buffer), overwritten and returned."""
    batch, heads, lq, head_dim = q.shape
    lk, v_dim = k.shape[2], v.shape[3]
    check_head_dims(head_dim, v_dim)
    if grads is None:
        # each gradient in its input's memory order, so the backward of the caller's head-split view is a view too
        dq, dk, dv = empty_in_layout_of(q), empty_in_layout_of(k), empty_in_layout_of(v)
    else:
        dq, dk, dv = grads
        if dq.shape != q.shape or dk.shape != k.shape or dv.shape != v.shape:
            raise ValueError(f"biased_attention_bwd: grads must have the shapes of q, k, v {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(v.shape)}; got {tuple(dq.shape)}, {tuple(dk.shape)}, "
                             f"{tuple(dv.shape)}")
    if _fits_one_tile(lq, lk, bias, bias_grad):
        return dq, dk, dv, _tile_backward(grad_out, q, k, v, bias, lse, dq, dk, dv, scale, bias_grad)
    if _fits_strip(batch, heads, lq, lk, q.device):
        d_bias = strip.strip_attention_bwd(grad_out, q, k, v, bias, out, lse, dq, dk, dv, scale, bias_grad)
        return dq, dk, dv, (d_bias.to(bias.dtype) if d_bias is not None else None)
    delta = biased_attention_bwd_delta(out, grad_out)
    strides = bias_strides(bias, batch, heads, lq, lk)
    trivial = (batch, heads, 1, 1, 1, 1)  # slot_b, slot_h, h_rep, members, members_per_chunk, n_chunks

    if bias is None or not bias_grad:
        biased_attention_bwd_dkdv(q, k, v, bias, grad_out, lse, delta, dk, dv, dq, strides, scale, trivial,
                                  DBIAS_NONE)
        biased_attention_bwd_dq(q, k, v, bias, grad_out, lse, delta, dq, dq, strides, scale, trivial, DBIAS_NONE)
        return dq, dk, dv, None

    slot_b, slot_h = bias.shape[0], bias.shape[1]
    h_rep = heads // slot_h
    members = (batch // slot_b) * h_rep
    q_single = next_block(lq) <= REGISTER_DBIAS_MAX  # dkdv's inner loop (queries) is one tile
    k_single = next_block(lk) <= REGISTER_DBIAS_MAX  # dq's inner loop (keys) is one tile
    if q_single and (not k_single or lq <= lk):
        owner, mode, program_len = "dkdv", DBIAS_REGISTERS, lk
    elif k_single:
        owner, mode, program_len = "dq", DBIAS_REGISTERS, lq
    elif lq <= lk:
        owner, mode, program_len = "dkdv", DBIAS_GLOBAL, lk
    else:
        owner, mode, program_len = "dq", DBIAS_GLOBAL, lq

    programs_per_chunk = -(-program_len // _PLANNING_BLOCK) * slot_b * slot_h
    per_chunk, n_chunks = chunk_split(members, programs_per_chunk, q.device, slot_b * slot_h * lq * lk * 4)
    partial = torch.empty(n_chunks, slot_b, slot_h, lq, lk, device=q.device, dtype=torch.float32)
    split = (slot_b, slot_h, h_rep, members, per_chunk, n_chunks)

    dkdv_split, dkdv_mode = (split, mode) if owner == "dkdv" else (trivial, DBIAS_NONE)
    dq_split, dq_mode = (split, mode) if owner == "dq" else (trivial, DBIAS_NONE)
    biased_attention_bwd_dkdv(q, k, v, bias, grad_out, lse, delta, dk, dv, partial, strides, scale, dkdv_split,
                              dkdv_mode)
    biased_attention_bwd_dq(q, k, v, bias, grad_out, lse, delta, dq, partial, strides, scale, dq_split, dq_mode)
    dbias = partial[0] if n_chunks == 1 else partial.sum(0)
    return dq, dk, dv, dbias.to(bias.dtype)


def _fits_one_tile(lq: int, lk: int, bias: Optional[torch.Tensor], bias_grad: bool) -> bool:
    """Whether ``tile_attention_bwd`` takes this call: both sides fit one register tile and the bias (if its
    gradient is wanted) is shared over the batch, so one program's batch elements sum into one register tile."""
    return (tile.ENABLED and max(lq, lk) <= tile.MAX_TILE
            and (bias is None or bias.shape[0] == 1 or (not bias_grad and bias.stride(0) == 0)))


def _fits_strip(batch: int, heads: int, lq: int, lk: int, device: torch.device) -> bool:
    """Whether ``strip_attention_bwd`` takes this call: the shorter side fits one register tile, and there are enough
    (batch, head) pairs to fill the GPU with the strip kernel's one program per pair."""
    return (strip.ENABLED and min(lq, lk) <= strip.MAX_FIXED
            and batch * heads >= strip.MIN_PAIRS_PER_SM * sm_count(device))


def _tile_backward(grad_out, q, k, v, bias, lse, dq, dk, dv, scale: float, bias_grad: bool) -> Optional[torch.Tensor]:
    """dq, dk, dv (written in place) and d_bias in one pass: every (batch, head) sequence is one tile, seen as one
    row of a (B, 1, L, heads, d) map."""
    def as_row(t):  # (B, H, L, d) -> (B, 1, L, H, d) view
        return t.transpose(1, 2).unsqueeze(1)

    d_bias = tile.tile_attention_bwd(
        as_row(grad_out), as_row(q), as_row(k), as_row(v), lse.transpose(1, 2).unsqueeze(1),
        None if bias is None else bias[0], as_row(dq), as_row(dk), as_row(dv),
        tile.TileGeometry.sequence(q.shape[2], k.shape[2]), scale, bias_grad, DENSE_TILE_PROGRAMS_PER_SM)
    if d_bias is None:
        return None
    if bias.shape[1] == 1:  # one bias for every head
        d_bias = d_bias.sum(0, keepdim=True)
    return d_bias.unsqueeze(0).to(bias.dtype)
