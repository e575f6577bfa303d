"""Partitioned (window / grid) multi-head self-attention over a channels-last (B, H, W, C) token map, computed in
place by :func:`vitzoo.ops.neighborhood_attention_2d` (no window-partition copies).

Shared by MaxViT (block + grid attention with a TF-style relative-position table, Tu et al., "MaxViT: Multi-Axis
Vision Transformer", ECCV 2022) and DaViT (spatial window attention, Ding et al., "DaViT: Dual Attention Vision
Transformers", ECCV 2022). Parameter names follow timm (``qkv``, ``proj``, ``rel_pos.relative_position_bias_table``)
so timm state_dicts load unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from vitzoo.ops import BACKENDS, neighborhood_attention_2d

__all__ = ["check_attn_backend", "split_qkv", "RelPosTableTf", "PartitionAttention2d"]


def check_attn_backend(attn_backend: str) -> str:
    """Validate a model's ``attn_backend`` kwarg early (the op re-checks per call)."""
    if attn_backend not in BACKENDS:
        raise ValueError(f"attn_backend must be one of {BACKENDS}, got {attn_backend!r}")
    return attn_backend


def split_qkv(qkv: torch.Tensor, num_heads: int, head_first: bool = False) -> Tuple[torch.Tensor, ...]:
    """(B, H, W, 3*C) projection -> q, k, v as strided (B, H, W, heads, d) views (no copy).

    ``head_first=False``: channels ordered [qkv][head][d] (timm ``reshape(B, N, 3, heads, d)``, DaViT and the TF
    MaxViT weights); ``head_first=True``: [head][qkv][d] (timm ``AttentionCl(head_first=True)``).
    """
    B, H, W, C3 = qkv.shape
    d = C3 // (3 * num_heads)
    if head_first:
        return qkv.view(B, H, W, num_heads, 3, d).unbind(4)
    return qkv.view(B, H, W, 3, num_heads, d).unbind(3)


class RelPosTableTf(nn.Module):
    """TF-MaxViT relative-position table (heads, 2*wh-1, 2*ww-1) as in timm's ``RelPosBiasTf``.

    timm expands it to ``bias[h, (i, j), (x, y)] = table[h, x - i + wh - 1, y - j + ww - 1]`` (key minus query);
    that is exactly the ``rpb`` convention of :func:`vitzoo.ops.neighborhood_attention_2d`, so the table is passed
    to the op as is and never expanded to a dense (heads, N, N) bias.
    """

    def __init__(self, window_size: Tuple[int, int], num_heads: int):
        super().__init__()
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.empty(num_heads, 2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.relative_position_bias_table, std=0.02)

    def forward(self) -> torch.Tensor:
        return self.relative_position_bias_table


class PartitionAttention2d(nn.Module):
    """qkv projection -> non-overlapping window (``dilation == 1``) or grid (``dilation == size // kernel``)
    attention through the shared op -> output projection, on a (B, H, W, C) map.

    Args:
        dim: channels (input = output = attention width).
        num_heads: heads; ``dim`` must be divisible by it.
        qkv_bias, proj_bias: biases of the two projections.
        head_first: channel order of the qkv projection (see :func:`split_qkv`).
        rel_pos_size: partition size of a TF relative-position table, or None for no position bias.
        proj_drop: dropout after the output projection.
        attn_backend: op backend, "auto" | "torch" | "triton".
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            head_first: bool = False,
            rel_pos_size: Optional[Tuple[int, int]] = None,
            proj_drop: float = 0.0,
            attn_backend: str = "auto",
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.head_first = head_first
        self.attn_backend = check_attn_backend(attn_backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rel_pos = RelPosTableTf(rel_pos_size, num_heads) if rel_pos_size is not None else None
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
            self,
            x: torch.Tensor,
            kernel_size: Tuple[int, int],
            dilation: Tuple[int, int] = (1, 1),
            out_size: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """x: (B, H, W, C) with H, W multiples of ``kernel_size * dilation``. ``out_size``: crop the attended map to
        its top-left (h, w) before the (per-token) output projection: same values as timm's crop after it."""
        B, H, W, C = x.shape
        q, k, v = split_qkv(self.qkv(x), self.num_heads, self.head_first)
        rpb = self.rel_pos() if self.rel_pos is not None else None
        x = neighborhood_attention_2d(
            q, k, v, kernel_size, dilation=dilation, stride=kernel_size, rpb=rpb, scale=self.scale,
            backend=self.attn_backend)
        x = x.reshape(B, H, W, C)
        if out_size is not None and tuple(out_size) != (H, W):
            x = x[:, :out_size[0], :out_size[1]]
        return self.proj_drop(self.proj(x))
