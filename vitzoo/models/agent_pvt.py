"""Agent-PVT: Pyramid Vision Transformer with agent attention, registered in timm as ``agent_pvt_{t,s,m,l}``.

Paper: Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention", ECCV 2024
(https://arxiv.org/abs/2312.08874). Official code: https://github.com/LeapLabTHU/Agent-Attention
(``agent_transformer/models/agent_pvt.py``, configs ``cfgs/agent_pvt_{t,s,m,b}.yaml``; the mmseg / mmdet backbone
``downstream/segmentation/mmseg/models/backbones/agent_pvt.py`` for other input sizes).

Architecture, as in the official classification code and configs:

* PVT-v1 layout: every stage opens with a patch embedding (conv 4x4/s4 for stage 1, 2x2/s2 after; LayerNorm
  eps 1e-5) and a learned absolute position embedding of the stage grid, then pre-norm blocks (LayerNorm eps 1e-6)
  with a GELU MLP of ratios 8-8-4-4; widths 64-128-320-512, heads 1-2-5-8 (head dim 64), biased q/kv.
* ``attn_type`` ``AAAA`` in every official config: all blocks use agent attention (agents 9-16-49-49 per stage)
  with ``agent_sr_ratios`` ``1111`` -- no spatial reduction, so the PVT ``sr_ratios`` (8-4-2-1) only apply to ``B``
  blocks (plain PVT spatial-reduction attention), which the released models do not use. With an agent sr ratio
  > 1 keys/values come from the official conv + LayerNorm reduction and V is bilinearly upsampled before the
  depthwise conv, as in the release.
* Agent attention: agents = adaptive average pool of q over the stage map, the six agent biases learned for the
  stage grid at ``img_size``, a 3x3 depthwise conv on V added before ``proj``.
* NO final norm and no class token (the release averages the last stage's tokens straight into the linear head).

Other input sizes (never a crop): inputs / maps that are not patch multiples are zero-padded bottom/right before the
patch embeddings (the release's strided conv would drop the remainder); position embeddings are bilinearly resized
to the runtime grid (the release's ``_get_pos_embed``), agent biases too (the mmseg backbone), and
``downstream_agent_shapes`` resizes the agent grid as the downstream configs do ((12, 12), (16, 16), (28, 28),
(28, 28)). Attention runs through :func:`vitzoo.ops.pooled_agent_attention` (``B`` blocks: :func:`vitzoo.ops.
biased_attention` without bias), Triton on CUDA, torch reference on CPU.

Layout differences to the official checkpoints (:func:`checkpoint_filter_fn`): ``patch_embed{i}`` / ``pos_embed{i}`` /
``block{i}.{j}`` live in ``stages.{i-1}.patch_embed`` / ``.pos_embed`` / ``.blocks.{j}`` here.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from vitzoo.ops import biased_attention

from ._agent_attn import (AgentAttentionBase, adapt_agent_bias_param, init_official_weights, parse_attn_types,
                          reset_linear_head, unwrap_state_dict)
from ._linear import convert_linears
from ._norm import LayerNorm
from ._partition_attn import check_attn_backend

__all__ = ["AgentPvt", "AgentPvtAttention", "SpatialReductionAttention", "AgentPvtBlock", "AgentPvtStage",
           "checkpoint_filter_fn", "DOWNSTREAM_AGENT_SHAPES"]

PAPER_NAME = "Agent Attention: On the Integration of Softmax and Linear Attention"
IntPair = Tuple[int, int]
# official detection / segmentation configs (``*_12-16-28-28.py``): agent grids per stage for dense tasks
DOWNSTREAM_AGENT_SHAPES = ((12, 12), (16, 16), (28, 28), (28, 28))


def _kv_tokens(x: torch.Tensor, sr_ratio: int, sr: Optional[nn.Module], norm: Optional[nn.Module]
               ) -> Tuple[torch.Tensor, IntPair]:
    """(B, H, W, C) -> key/value source tokens (B, Nk, C) and their grid: the map itself, or PVT's spatial reduction
    (conv k = s = sr_ratio, then LayerNorm)."""
    batch, height, width, channels = x.shape
    if sr_ratio == 1:
        return x.reshape(batch, height * width, channels), (height, width)
    if min(height, width) < sr_ratio:
        raise ValueError(f"a {height}x{width} map is smaller than the spatial-reduction ratio {sr_ratio}")
    y = sr(x.permute(0, 3, 1, 2))
    return norm(y.flatten(2).transpose(1, 2)), (y.shape[-2], y.shape[-1])


class AgentPvtAttention(AgentAttentionBase):
    """Agent attention of Agent-PVT (official ``AgentAttention`` of ``agent_pvt.py``) on a (B, H, W, C) map.

    Parameters (official names): ``q``, ``kv`` (k | v), optional ``sr`` conv + ``norm`` (sr_ratio > 1), the agent
    biases (queries on ``grid``, keys on ``grid // sr_ratio``), ``dwc``, ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, agent_num: int, grid: IntPair, sr_ratio: int = 1,
                 qkv_bias: bool = True, **kwargs: Any) -> None:
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be >= 1, got {sr_ratio}")
        super().__init__(dim, num_heads, agent_num, grid, (grid[0] // sr_ratio, grid[1] // sr_ratio), **kwargs)
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio) if sr_ratio > 1 else None
        self.norm = LayerNorm(dim) if sr_ratio > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        q = self.q(x).view(batch, height * width, channels)
        tokens, kv_size = _kv_tokens(x, self.sr_ratio, self.sr, self.norm)
        k, v = self.kv(tokens).view(batch, -1, 2, channels).unbind(2)
        out = self.agent_mix(q, k, v, (height, width), kv_size)
        v_map = v.reshape(batch, kv_size[0], kv_size[1], channels).permute(0, 3, 1, 2)
        if self.sr_ratio > 1:  # the release upsamples the reduced V to the query grid for the depthwise conv
            v_map = F.interpolate(v_map, size=(height, width), mode="bilinear", align_corners=False)
        return self.output(out, v_map).view(batch, height, width, channels)


class SpatialReductionAttention(nn.Module):
    """PVT's spatial-reduction attention (official ``Attention``; the ``B`` blocks): ``q``, ``kv``, optional
    ``sr`` + ``norm``, ``proj``; dense softmax attention via :func:`vitzoo.ops.biased_attention` without bias."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 attn_backend: str = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if attn_drop:
            raise ValueError(f"attn_drop must be 0.0: the fused attention op has no attention dropout, got {attn_drop}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.sr_ratio = sr_ratio
        self.attn_backend = check_attn_backend(attn_backend)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio) if sr_ratio > 1 else None
        self.norm = LayerNorm(dim) if sr_ratio > 1 else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        heads, d = self.num_heads, self.head_dim
        q = self.q(x).view(batch, height * width, heads, d).transpose(1, 2)
        tokens, _ = _kv_tokens(x, self.sr_ratio, self.sr, self.norm)
        k, v = self.kv(tokens).view(batch, -1, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = biased_attention(q, k, v, None, scale=self.scale, backend=self.attn_backend)
        out = out.transpose(1, 2).reshape(batch, height, width, channels)
        return self.proj_drop(self.proj(out))


class AgentPvtBlock(nn.Module):
    """Pre-norm block (LayerNorm eps 1e-6) on (B, H, W, C) with agent (``A``) or spatial-reduction (``B``)
    attention and a GELU MLP; official ``Block`` parameter names."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attn_type: str,
            grid: IntPair,
            agent_num: int = 49,
            sr_ratio: int = 1,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            dwc_kernel_size: int = 3,
            agent_shape: Optional[IntPair] = None,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        if attn_type == "A":
            self.attn: nn.Module = AgentPvtAttention(
                dim, num_heads, agent_num, grid, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
                dwc_kernel_size=dwc_kernel_size, agent_shape=agent_shape, proj_drop=proj_drop, attn_drop=attn_drop,
                attn_backend=attn_backend)
        elif attn_type == "B":
            self.attn = SpatialReductionAttention(
                dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop,
                attn_drop=attn_drop, attn_backend=attn_backend)
        else:
            raise ValueError(f"attn_type must be 'A' (agent) or 'B' (spatial reduction), got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AgentPvtStage(nn.Module):
    """Patch embedding (pads to patch multiples) + position embedding of ``grid`` + blocks; NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            num_heads: int,
            attn_types: Sequence[str],
            grid: IntPair,
            patch_size: int,
            sr_ratio: int = 1,
            agent_sr_ratio: int = 1,
            drop_path: Sequence[float] = (),
            proj_drop: float = 0.0,
            **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if len(attn_types) != depth:
            raise ValueError(f"attn_types must have one entry per block ({depth}), got {list(attn_types)}")
        self.grad_checkpointing = False
        self.grid = tuple(grid)
        self.patch_embed = PatchEmbed(None, patch_size, in_chs, dim, norm_layer=LayerNorm, output_fmt="NHWC",
                                      strict_img_size=False, dynamic_img_pad=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(proj_drop)
        self.blocks = nn.Sequential(*[
            AgentPvtBlock(dim, num_heads, kind, grid, sr_ratio=sr_ratio if kind == "B" else agent_sr_ratio,
                          drop_path=drop_path[j] if drop_path else 0.0, proj_drop=proj_drop, **block_kwargs)
            for j, kind in enumerate(attn_types)
        ])

    def _pos_embed(self, height: int, width: int) -> torch.Tensor:
        pos = self.pos_embed.view(1, self.grid[0], self.grid[1], -1)
        if (height, width) == self.grid:
            return pos
        # the release's _get_pos_embed: bilinear resize of the stage grid to the runtime grid
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self.pos_drop(x + self._pos_embed(x.shape[1], x.shape[2]))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


def _per_stage(value: Union[Any, Sequence[Any]], name: str, num_stages: int) -> Tuple[Any, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} must have one entry per stage ({num_stages}), got {value!r}")
        return tuple(value)
    return (value,) * num_stages


class AgentPvt(nn.Module):
    """Agent-PVT (Han et al., ECCV 2024, "Agent Attention: On the Integration of Softmax and Linear Attention").

    Stage outputs are NCHW (like timm's PVT-v2); ``forward_features`` returns the last stage's map UNnormed (the
    release has no final norm; ``self.norm`` is an Identity kept for the timm contract).

    Args:
        img_size: training resolution; sizes the position embeddings and agent biases (official stage grids
            ``img // 4``, then ``img // (4 * 2**(i-1)) // 2``).
        embed_dims, depths, num_heads, mlp_ratios: per stage.
        attn_type: official ``ATTN_TYPE`` (``AAAA``), see :func:`~vitzoo.models._agent_attn.parse_attn_types`.
        agent_num: agents per stage. sr_ratios: spatial reduction of ``B`` blocks; agent_sr_ratios: of agent blocks
            (official ``PVT_LA_SR_RATIOS`` '1111'; a string of digits or a sequence).
        downstream_agent_shapes: optional per-stage agent grids for dense tasks (:data:`DOWNSTREAM_AGENT_SHAPES`).
        drop_rate: classifier dropout; proj_drop_rate: the official ``drop_rate``; attn_drop_rate must be 0;
        drop_path_rate: linear over blocks. attn_backend: "auto" | "torch" | "triton".
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            depths: Sequence[int] = (2, 2, 2, 2),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Union[float, Sequence[float]] = (8, 8, 4, 4),
            attn_type: str = "AAAA",
            agent_num: Union[int, Sequence[int]] = (9, 16, 49, 49),
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            agent_sr_ratios: Union[str, Sequence[int]] = "1111",
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            dwc_kernel_size: int = 3,
            downstream_agent_shapes: Optional[Sequence[Optional[IntPair]]] = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be '' or 'avg', got {global_pool!r}")
        num_stages = len(depths)
        embed_dims = _per_stage(embed_dims, "embed_dims", num_stages)
        num_heads = _per_stage(num_heads, "num_heads", num_stages)
        mlp_ratios = _per_stage(mlp_ratios, "mlp_ratios", num_stages)
        agent_num = _per_stage(agent_num, "agent_num", num_stages)
        sr_ratios = _per_stage(sr_ratios, "sr_ratios", num_stages)
        agent_sr = tuple(int(c) for c in agent_sr_ratios) if isinstance(agent_sr_ratios, str) else agent_sr_ratios
        agent_sr = _per_stage(agent_sr, "agent_sr_ratios", num_stages)
        agent_shapes = _per_stage(downstream_agent_shapes, "downstream_agent_shapes", num_stages)
        attn_types = parse_attn_types(attn_type, depths)
        img_size = to_2tuple(img_size)
        # the release's PatchEmbed grids: img // patch, then (img // (2**(i-1) * patch)) // 2
        grids = [tuple(s // patch_size if i == 0 else s // (2 ** (i - 1) * patch_size) // 2 for s in img_size)
                 for i in range(num_stages)]
        if min(grids[-1]) < 1:
            raise ValueError(f"img_size {img_size} is too small for {num_stages} stages of patch {patch_size}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        self.attn_types = attn_types

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: meta-device safe
        stages, self.feature_info = [], []
        for i in range(num_stages):
            stages.append(AgentPvtStage(
                in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], depths[i], num_heads[i], attn_types[i],
                grids[i], patch_size if i == 0 else 2, sr_ratio=int(sr_ratios[i]), agent_sr_ratio=int(agent_sr[i]),
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], proj_drop=proj_drop_rate,
                agent_num=int(agent_num[i]), mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias, qk_scale=qk_scale,
                dwc_kernel_size=dwc_kernel_size, agent_shape=agent_shapes[i], attn_drop=attn_drop_rate,
                attn_backend=attn_backend,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=patch_size * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # the release has no final norm
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_official_weights)

    def set_attn_backend(self, backend: str) -> None:
        """Switch every attention layer to ``backend`` ("auto" | "torch" | "triton")."""
        check_attn_backend(backend)
        for m in self.modules():
            if isinstance(m, (AgentAttentionBase, SpatialReductionAttention)):
                m.attn_backend = backend

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Nothing beyond timm's default (1-D params and biases): the release decays its position embeddings and
        agent-bias tables (its ``no_weight_decay`` names only a ``cls_token`` it does not have)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.(?:patch_embed|pos_embed)",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.(?:patch_embed|pos_embed)", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        reset_linear_head(self, num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (NCHW, strides 4 / 8 / 16 / 32) at ``indices`` (int: last n; None: all). ``norm`` is
        accepted for the timm contract; the release has no final norm, so it changes nothing."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one ``indices`` needs (and optionally the head)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> last stage map (B, num_features, ceil(H/32), ceil(W/32)), no norm (release)."""
        return self.norm(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_OFFICIAL_RENAMES = (
    (re.compile(r"^patch_embed(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}.patch_embed."),
    (re.compile(r"^pos_embed(\d+)$"), lambda m: f"stages.{int(m.group(1)) - 1}.pos_embed"),
    (re.compile(r"^block(\d+)\.(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: AgentPvt) -> Dict[str, torch.Tensor]:
    """Map an official Agent-PVT classification checkpoint (or a vitzoo one) onto :class:`AgentPvt`.

    Official layout (``{'model': state_dict, ...}``, optionally ``module.``-prefixed): ``patch_embed{i}.{proj,norm}``,
    ``pos_embed{i}`` (1, N_i, C_i), ``block{i}.{j}.{norm1,norm2,mlp.fc1,mlp.fc2}``, ``block{i}.{j}.attn.{q,kv,proj,
    dwc,an_bias,na_bias,ah_bias,aw_bias,ha_bias,wa_bias}`` (``sr``/``norm`` when sr_ratio > 1), ``head``; i = 1..4.
    Renamed to ``stages.{i-1}.{patch_embed,pos_embed,blocks.{j}}``; ah/aw/ha/wa_bias lose their leading singleton
    axis (see :mod:`vitzoo.models._agent_attn`). A checkpoint of another resolution is adapted
    as the official ``load_pretrained`` does: position embeddings bicubically, ah/aw/ha/wa_bias linearly.
    """
    state_dict = unwrap_state_dict(state_dict)
    targets = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            key = pattern.sub(repl, key)
        target = targets.get(key)
        if target is not None and value.shape != target.shape:
            if key.endswith(".pos_embed"):
                grid = model.get_submodule(key[: -len(".pos_embed")]).grid
                side = int(round(value.shape[1] ** 0.5))
                if side * side != value.shape[1] or value.shape[2] != target.shape[2]:
                    raise ValueError(f"{key}: cannot resize a checkpoint position embedding of shape "
                                     f"{tuple(value.shape)} to {tuple(target.shape)}")
                pos = value.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
                pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
                value = pos.permute(0, 2, 3, 1).reshape(1, -1, value.shape[2]).to(value.dtype)
            else:
                value = adapt_agent_bias_param(key, value, target.shape)
        out[key] = value
    return out


def _create_agent_pvt(variant: str, pretrained: bool = False, **kwargs: Any) -> AgentPvt:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 2, 2))))))
    return convert_linears(build_model_with_cfg(
        AgentPvt, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    ))


_REPO = "https://github.com/LeapLabTHU/Agent-Attention"
_CHECKPOINTS = {  # official ImageNet-1k weights (TsinghuaCloud; not fetched: pretrained_cfg_overlay=dict(file=...))
    "agent_pvt_t": "https://cloud.tsinghua.edu.cn/f/13fdf0e0a7c5498c934f/?dl=1",
    "agent_pvt_s": "https://cloud.tsinghua.edu.cn/f/36b8be9a8863456685a3/?dl=1",
    "agent_pvt_m": "https://cloud.tsinghua.edu.cn/f/4d00ecacf18b45f9b88c/?dl=1",
    "agent_pvt_l": "https://cloud.tsinghua.edu.cn/f/040cfe0cfbbe4762ad09/?dl=1",
}
_RELEASE = {"agent_pvt_t": "Agent-PVT-T, 78.4 top-1, 11.6M params, 2.0 GFLOPs",
            "agent_pvt_s": "Agent-PVT-S, 82.2 top-1, 20.6M params, 4.0 GFLOPs",
            "agent_pvt_m": "Agent-PVT-M, 83.4 top-1, 35.9M params, 7.0 GFLOPs",
            "agent_pvt_l": "Agent-PVT-L, 83.7 top-1, 48.7M params, 10.4 GFLOPs (config agent_pvt_b.yaml)"}


def _cfg(name: str, **kwargs: Any) -> Dict[str, Any]:
    # eval transform of the official pipeline (TEST.CROP): resize 256, center crop 224, bicubic, ImageNet mean/std
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "fixed_input_size": False,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.patch_embed.proj", "classifier": "head",
        "license": "unspecified", "origin_url": _REPO, "paper_ids": "arXiv:2312.08874", "paper_name": PAPER_NAME,
        "notes": (f"release: {_RELEASE[name]}", f"official checkpoint: {_CHECKPOINTS[name]}",
                  "the official repository has no LICENSE file; its code builds on Apache-2.0-licensed PVT"),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg(name) for name in _CHECKPOINTS})
_PVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
            attn_type="AAAA", agent_num=(9, 16, 49, 49), agent_sr_ratios="1111")


@register_model
def agent_pvt_t(pretrained: bool = False, **kwargs: Any) -> AgentPvt:
    """Agent-PVT-T (11.6M; official ``agent_pvt_tiny``, drop_path 0.1): depths 2-2-2-2."""
    return _create_agent_pvt("agent_pvt_t", pretrained, **{**_PVT, "depths": (2, 2, 2, 2), **kwargs})


@register_model
def agent_pvt_s(pretrained: bool = False, **kwargs: Any) -> AgentPvt:
    """Agent-PVT-S (20.6M; ``agent_pvt_small``, drop_path 0.1): depths 3-4-6-3."""
    return _create_agent_pvt("agent_pvt_s", pretrained, **{**_PVT, "depths": (3, 4, 6, 3), **kwargs})


@register_model
def agent_pvt_m(pretrained: bool = False, **kwargs: Any) -> AgentPvt:
    """Agent-PVT-M (35.9M; ``agent_pvt_medium``, drop_path 0.3): depths 3-4-18-3."""
    return _create_agent_pvt("agent_pvt_m", pretrained, **{**_PVT, "depths": (3, 4, 18, 3), **kwargs})


@register_model
def agent_pvt_l(pretrained: bool = False, **kwargs: Any) -> AgentPvt:
    """Agent-PVT-L (48.7M; ``agent_pvt_large``, config ``agent_pvt_b.yaml``, drop_path 0.3): depths 3-8-27-3."""
    return _create_agent_pvt("agent_pvt_l", pretrained, **{**_PVT, "depths": (3, 8, 27, 3), **kwargs})
