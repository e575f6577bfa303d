"""timm's own ``HaloAttn`` attention core as a competitor / same-precision baseline for the HaloNet benchmark and GPU
check: the real ``HaloAttn.forward`` (unfold-based windows, ``PosEmbedRel`` relative logits) with its q / kv 1x1-conv
projections replaced by modules returning given tensors, so only the attention core runs. Torch + timm only."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class _Given(nn.Module):
    """Stands in for a projection: returns the tensor it holds, whatever the input."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, x):
        return self.value


class TimmHaloCore:
    """``core(q_nchw, kv_nchw)`` runs timm's HaloAttn on already-projected q (B, heads * d_qk, Hq, Wq) and kv
    (B, heads * (d_qk + d_v), H, W) (timm's channel order: per head, d_qk key channels then d_v value channels)."""

    def __init__(self, heads, d_qk, d_v, block, halo, stride, rel_h, rel_w):
        from timm.layers.halo_attn import HaloAttn

        self.attn = HaloAttn(dim=1, dim_out=heads * d_v, stride=stride, num_heads=heads, dim_head=d_qk,
                             block_size=block, halo_size=halo)
        assert self.attn.block_stride == stride and isinstance(self.attn.pool, nn.Identity)
        self.attn.q, self.attn.kv = _Given(), _Given()
        self.attn.pos_embed.height_rel = nn.Parameter(rel_h.detach().clone(), requires_grad=rel_h.requires_grad)
        self.attn.pos_embed.width_rel = nn.Parameter(rel_w.detach().clone(), requires_grad=rel_w.requires_grad)
        self.attn.to(rel_h.device)

    @property
    def rel_tables(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.attn.pos_embed.height_rel, self.attn.pos_embed.width_rel

    def __call__(self, q_nchw: torch.Tensor, kv_nchw: torch.Tensor) -> torch.Tensor:
        self.attn.q.value, self.attn.kv.value = q_nchw, kv_nchw
        b, _, h, w = kv_nchw.shape
        shape_only = kv_nchw.new_empty(1).expand(b, 1, h, w)  # HaloAttn.forward reads x's shape only
        return self.attn(shape_only)


def to_timm_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, heads, d) q/k/v -> timm's contiguous q (B, heads * d_qk, Hq, Wq) and kv (B, heads*(d_qk+d_v), H, W)."""
    b, h, w, heads, _ = k.shape
    q_nchw = q.permute(0, 3, 4, 1, 2).reshape(b, -1, *q.shape[1:3]).contiguous()
    kv = torch.cat([k, v], dim=-1).permute(0, 3, 4, 1, 2).reshape(b, -1, h, w).contiguous()
    return q_nchw, kv


def from_timm_layout(out_nchw: torch.Tensor, heads: int) -> torch.Tensor:
    """timm's (B, heads * d_v, Hq, Wq) output -> (B, Hq, Wq, heads, d_v)."""
    b, c, h, w = out_nchw.shape
    return out_nchw.view(b, heads, c // heads, h, w).permute(0, 3, 4, 1, 2)


def timm_halo_attention(q, k, v, block, halo, rel_h, rel_w) -> torch.Tensor:
    """timm's result for our-layout inputs (differentiable w.r.t. q, k, v; rel tables are copied, so use
    :class:`TimmHaloCore` directly for their gradients)."""
    heads, d_qk, d_v = k.shape[3], k.shape[4], v.shape[4]
    core = TimmHaloCore(heads, d_qk, d_v, block, halo, k.shape[1] // q.shape[1], rel_h, rel_w)
    return from_timm_layout(core(*to_timm_layout(q, k, v)), heads)
