"""Agent-Swin: Swin Transformer with agent attention, registered in timm as ``agent_swin_{t,s,b}``.

Paper: Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention", ECCV 2024
(https://arxiv.org/abs/2312.08874). Official code: https://github.com/LeapLabTHU/Agent-Attention
(``agent_transformer/models/agent_swin.py``, configs ``cfgs/agent_swin_{t,s,b}.yaml``; the mmdet backbone
``downstream/detection/mmdet/models/backbones/agent_swin.py`` for other input sizes).

Architecture, as in the official classification code and configs:

* Swin layout: 4x4 patch embedding + LayerNorm, four stages (Swin's PatchMerging between them: LayerNorm(4C) and a
  bias-free 4C -> 2C linear), pre-norm blocks with a 4x GELU MLP, final LayerNorm, average pool, linear head.
* ``attn_type`` picks each block's attention (official ``MODEL.AGENT.ATTN_TYPE``): T ``AAAB``, S ``AABB``, B
  ``AAMB2`` (stage 3 of Agent-Swin-B: two agent blocks, then sixteen window blocks); agents per stage 9-16-49-49.
* Agent blocks (``A``): the official ``WINDOW_SIZE`` is ``img_size / 4`` (56 at 224, 72 at 288, 96 at 384), so an
  agent block's "window" is always the whole stage map: global agent attention (agents = adaptive average pool of
  q), agent biases learned for the stage map at ``img_size``, a 3x3 depthwise conv on V added before ``proj``.
  Agent blocks never shift (the official classification code clamps their shift to 0; the mmdet backbone forces it).
* Window blocks (``B``): plain Swin W-MSA / SW-MSA with a relative-position bias, window ``max(7, WINDOW_SIZE // 8)``
  (7 at 224); as in the official ``SwinTransformerBlock`` a window no smaller than the stage map at ``img_size``
  shrinks to the map and does not shift (``always_partition=True`` keeps window and shift, like the mmdet backbone);
  odd blocks of a stage shift by ``window // 2`` with the Swin cyclic roll and -100 region mask.

Other input sizes (the mmdet backbone's behaviour, never a crop): the patch embedding and the patch merging zero-pad
bottom/right to even sizes; agent blocks attend over the whole runtime map with biases bilinearly resized to it
(``downstream_agent_shapes`` also resizes the agent grid, e.g. the detection configs' (9, 9), (12, 12), (14, 14),
(7, 7)); window blocks zero-pad the normalized map to window multiples (before the roll, as in mmdet) and, unlike
mmdet and timm, MASK the padded keys, so padding never leaks into real tokens. At the training size nothing is
padded and the model is the official classification model.

Attention ops: agent blocks call :func:`vitzoo.ops.pooled_agent_attention`; unshifted, unpadded window blocks call
:func:`vitzoo.ops.neighborhood_attention_2d` with ``stride == kernel == window`` and the Swin table as its rpb; shifted
or padded window blocks need per-window masks the neighborhood op cannot express, so they run
:func:`vitzoo.ops.biased_attention` on the rolled windows with the dense (rpb + mask) bias. All three dispatch to
Triton on CUDA and to the torch reference on CPU.

Layout differences to the official checkpoints (handled by :func:`checkpoint_filter_fn`): PatchMerging closes stage
``i`` there and opens stage ``i + 1`` here (timm's Swin layout, so each stage output is a stride 4/8/16/32 feature).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.swin_transformer import PatchMerging, get_relative_position_index

from vitzoo.ops import biased_attention, neighborhood_attention_2d

from ._agent_attn import (AgentAttentionBase, adapt_agent_bias_param, init_official_weights, parse_attn_types,
                          reset_linear_head, unwrap_state_dict)
from ._linear import convert_linears
from ._norm import LayerNorm
from ._partition_attn import check_attn_backend, split_qkv

__all__ = ["AgentSwinTransformer", "AgentSwinAttention", "WindowAttention", "AgentSwinBlock", "AgentSwinStage",
           "checkpoint_filter_fn", "DOWNSTREAM_AGENT_SHAPES"]

PAPER_NAME = "Agent Attention: On the Integration of Softmax and Linear Attention"
IntPair = Tuple[int, int]
# official detection / segmentation configs (``*_9-12-14-7.py``): agent grids per stage for dense tasks
DOWNSTREAM_AGENT_SHAPES = ((9, 9), (12, 12), (14, 14), (7, 7))
_SHIFT_MASK = -100.0  # the official SW-MSA mask value
_PAD_MASK = -1e4  # padded keys: finite, so a padded query whose window region is all padding gets no NaN


class AgentSwinAttention(AgentAttentionBase):
    """Agent attention over a whole (B, H, W, C) stage map (official ``AgentAttention`` of ``agent_swin.py``).

    Parameters (official names): ``qkv`` (dim -> 3 dim; q | k | v, heads split head-major), the agent biases sized
    for ``grid`` (the stage map at the training size), ``dwc``, ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, agent_num: int, grid: IntPair, qkv_bias: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(dim, num_heads, agent_num, grid, grid, **kwargs)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        q, k, v = self.qkv(x).view(batch, height * width, 3, channels).unbind(2)
        out = self.agent_mix(q, k, v, (height, width), (height, width))
        v_map = v.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return self.output(out, v_map).view(batch, height, width, channels)


class WindowAttention(nn.Module):
    """Swin (shifted-)window attention with a relative-position bias (official ``WindowAttention`` parameters:
    ``qkv``, ``relative_position_bias_table`` of shape ((2w-1)^2, heads), ``proj``), on a (B, H, W, C) map.

    ``shift_size > 0`` rolls the map by ``-shift`` and masks cross-region pairs with -100 (Swin SW-MSA). Maps that
    are not window multiples are zero-padded bottom/right before the roll and the padded keys are masked.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int,
            shift_size: int = 0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if window_size < 1 or not 0 <= shift_size < window_size:
            raise ValueError(f"need window_size >= 1 and 0 <= shift_size < window_size, got {window_size}, "
                             f"{shift_size}")
        if attn_drop:
            raise ValueError(f"attn_drop must be 0.0: the fused attention ops have no attention dropout, "
                             f"got {attn_drop}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.window_size = window_size
        self.shift_size = shift_size
        self.attn_backend = check_attn_backend(attn_backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        # official index (query minus key, row-major over the (2w-1)^2 table) = timm's; rebuilt, never loaded
        self.register_buffer("relative_position_index", get_relative_position_index(window_size, window_size),
                             persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _dense_rpb(self) -> torch.Tensor:
        """(heads, w*w, w*w) bias ``table[index]``, [query slot, key slot] as in the official forward."""
        n = self.window_size ** 2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def _window_mask(self, height: int, width: int, hp: int, wp: int, device: torch.device) -> torch.Tensor:
        """(num_windows, w*w, w*w) additive mask of the padded, rolled map: -100 between the shifted regions (the
        official ``img_mask`` slices) and :data:`_PAD_MASK` on padded keys."""
        ws, s = self.window_size, self.shift_size
        ys, xs = torch.arange(hp, device=device), torch.arange(wp, device=device)
        valid = (ys < height)[:, None] & (xs < width)[None, :]
        if s:
            # region ids 0/1/2 per axis over slices [0, -w), [-w, -s), [-s, end) of the rolled map
            rows = (ys >= hp - ws).long() + (ys >= hp - s).long()
            cols = (xs >= wp - ws).long() + (xs >= wp - s).long()
            region = rows[:, None] * 3 + cols[None, :]
            valid = valid.roll((-s, -s), (0, 1))  # padding moves with the roll
        else:
            region = torch.zeros(hp, wp, dtype=torch.long, device=device)

        def windows(t: torch.Tensor) -> torch.Tensor:
            return t.view(hp // ws, ws, wp // ws, ws).transpose(1, 2).reshape(-1, ws * ws)

        region, valid = windows(region), windows(valid)
        mask = (region[:, :, None] != region[:, None, :]).float() * _SHIFT_MASK
        return mask.masked_fill(~valid[:, None, :], _PAD_MASK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        ws, s, heads = self.window_size, self.shift_size, self.num_heads
        pad_b, pad_r = (-height) % ws, (-width) % ws
        if not (s or pad_b or pad_r):
            # plain non-overlapping windows: read in place by the neighborhood op; its rpb is indexed key minus
            # query, the Swin table query minus key, hence the flip
            q, k, v = split_qkv(self.qkv(x), heads)
            rpb = self.relative_position_bias_table.view(2 * ws - 1, 2 * ws - 1, heads).permute(2, 0, 1).flip(1, 2)
            out = neighborhood_attention_2d(q, k, v, ws, stride=ws, rpb=rpb, scale=self.scale,
                                            backend=self.attn_backend)
            return self.proj_drop(self.proj(out.reshape(batch, height, width, channels)))

        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # the mmdet backbone's order: pad, then roll
        hp, wp = height + pad_b, width + pad_r
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        nh, nw, n, d = hp // ws, wp // ws, ws * ws, self.head_dim
        # windows x heads folded into the head axis, so the per-window bias broadcasts over the batch
        qkv = self.qkv(x).view(batch, nh, ws, nw, ws, 3, heads, d).permute(5, 0, 1, 3, 6, 2, 4, 7)
        q, k, v = qkv.reshape(3, batch, nh * nw * heads, n, d).unbind(0)
        bias = self._dense_rpb()[None] + self._window_mask(height, width, hp, wp, x.device)[:, None]
        out = biased_attention(q, k, v, bias.reshape(1, -1, n, n), scale=self.scale, backend=self.attn_backend)
        out = out.view(batch, nh, nw, heads, ws, ws, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, hp, wp, channels)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return self.proj_drop(self.proj(out[:, :height, :width]))

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, window_size={self.window_size}, shift_size={self.shift_size}, "
                f"backend={self.attn_backend!r}")


class AgentSwinBlock(nn.Module):
    """Pre-norm block ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` on (B, H, W, C), attention ``A`` (agent) or
    ``B`` (window); official ``SwinTransformerBlock`` parameter names."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attn_type: str,
            grid: IntPair,
            agent_num: int = 49,
            window_size: int = 7,
            shift_size: int = 0,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            dwc_kernel_size: int = 3,
            agent_shape: Optional[IntPair] = None,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            norm_layer: Type[nn.Module] = LayerNorm,
            attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_type == "A":
            self.attn: nn.Module = AgentSwinAttention(
                dim, num_heads, agent_num, grid, qkv_bias=qkv_bias, dwc_kernel_size=dwc_kernel_size,
                agent_shape=agent_shape, proj_drop=proj_drop, attn_drop=attn_drop, attn_backend=attn_backend)
        elif attn_type == "B":
            self.attn = WindowAttention(
                dim, num_heads, window_size, shift_size, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop,
                attn_drop=attn_drop, attn_backend=attn_backend)
        else:
            raise ValueError(f"attn_type must be 'A' (agent) or 'B' (window), got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AgentSwinStage(nn.Module):
    """Optional Swin PatchMerging (stages 2-4; pads odd maps) then the stage's blocks; NHWC in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            attn_types: Sequence[str],
            grid: IntPair,
            window_size: int,
            downsample: bool = True,
            always_partition: bool = False,
            drop_path: Sequence[float] = (),
            norm_layer: Type[nn.Module] = LayerNorm,
            **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim, out_dim, norm_layer=norm_layer) if downsample else nn.Identity()
        blocks = []
        for j in range(depth):
            ws, shift = window_size, (0 if j % 2 == 0 else window_size // 2)
            if attn_types[j] == "B" and not always_partition and min(grid) <= ws:
                ws, shift = min(grid), 0  # official: one window covering the map, no shift
            blocks.append(AgentSwinBlock(
                out_dim, num_heads, attn_types[j], grid, window_size=ws, shift_size=shift,
                drop_path=drop_path[j] if drop_path else 0.0, norm_layer=norm_layer, **block_kwargs))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _per_stage(value: Union[Any, Sequence[Any]], name: str, num_stages: int) -> Tuple[Any, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} must have one entry per stage ({num_stages}), got {value!r}")
        return tuple(value)
    return (value,) * num_stages


class AgentSwinTransformer(nn.Module):
    """Agent-Swin (Han et al., ECCV 2024, "Agent Attention: On the Integration of Softmax and Linear Attention").

    Token maps are NHWC (``output_fmt = 'NHWC'``, like timm's Swin): ``forward_features`` returns the normed
    (B, H/32, W/32, C) map, ``features_only`` NHWC maps, ``forward_intermediates`` NCHW by default.

    Args:
        img_size: training resolution; sizes the agent biases (stage maps ``img_size // 4 // 2**i``) and the default
            window (the official ``WINDOW_SIZE`` is ``img_size // 4``). Other input sizes run too (module doc).
        embed_dim, depths, num_heads: Swin widths (``embed_dim * 2**i``), blocks and heads per stage.
        attn_type: official ``ATTN_TYPE`` string (see :func:`~vitzoo.models._agent_attn.parse_attn_types`).
        agent_num: agents per stage (perfect squares). window_size: window of the ``B`` blocks (default
            ``max(7, img_size // 4 // 8)`` as in the official code). always_partition: keep window and shift even
            where the stage map is no larger than a window (the mmdet backbone's behaviour).
        dwc_kernel_size: depthwise conv on V in agent blocks (3). downstream_agent_shapes: optional per-stage agent
            grids for dense tasks (:data:`DOWNSTREAM_AGENT_SHAPES`); the learned biases are resized to them.
        drop_rate: classifier dropout; proj_drop_rate: the official ``drop_rate`` (after the patch embedding, the
            attention projection and in the MLP); attn_drop_rate must be 0; drop_path_rate: linear over blocks.
        attn_backend: "auto" | "torch" | "triton" for every attention op.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            attn_type: str = "AAAB",
            agent_num: Union[int, Sequence[int]] = (9, 16, 49, 49),
            window_size: Optional[int] = None,
            always_partition: bool = False,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            dwc_kernel_size: int = 3,
            downstream_agent_shapes: Optional[Sequence[Optional[IntPair]]] = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_layer: Type[nn.Module] = LayerNorm,
            attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be '' or 'avg', got {global_pool!r}")
        num_stages = len(depths)
        num_heads = _per_stage(num_heads, "num_heads", num_stages)
        agent_num = _per_stage(agent_num, "agent_num", num_stages)
        agent_shapes = _per_stage(downstream_agent_shapes, "downstream_agent_shapes", num_stages)
        attn_types = parse_attn_types(attn_type, depths)
        img_size = to_2tuple(img_size)
        grid0 = (img_size[0] // patch_size, img_size[1] // patch_size)
        grids = [(grid0[0] // 2 ** i, grid0[1] // 2 ** i) for i in range(num_stages)]  # official floor sizes
        if min(grids[-1]) < 1:
            raise ValueError(f"img_size {img_size} is too small for {num_stages} stages of patch {patch_size}")
        window_size = window_size if window_size is not None else max(7, min(grid0) // 8)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.grad_checkpointing = False
        dims = [int(embed_dim * 2 ** i) for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.attn_types = attn_types

        # zero-pads inputs that are not patch multiples (the mmdet backbone's PatchEmbed)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer=norm_layer,
                                      output_fmt="NHWC", strict_img_size=False, dynamic_img_pad=True)
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: meta-device safe
        stages, self.feature_info = [], []
        for i in range(num_stages):
            stages.append(AgentSwinStage(
                dims[max(i - 1, 0)], dims[i], depths[i], num_heads[i], attn_types[i], grids[i], window_size,
                downsample=i > 0, always_partition=always_partition,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer=norm_layer,
                agent_num=int(agent_num[i]), mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                dwc_kernel_size=dwc_kernel_size, agent_shape=agent_shapes[i], proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, attn_backend=attn_backend,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_official_weights)

    def set_attn_backend(self, backend: str) -> None:
        """Switch every attention layer to ``backend`` ("auto" | "torch" | "triton")."""
        check_attn_backend(backend)
        for m in self.modules():
            if isinstance(m, (AgentAttentionBase, WindowAttention)):
                m.attn_backend = backend

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Relative-position tables, as the official ``no_weight_decay_keywords``; the agent biases are decayed there
        (their names end in ``_bias``, not ``.bias``) and here."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.downsample", (0,)),
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.layers:
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
        """Stage outputs (strides 4 / 8 / 16 / 32) at ``indices`` (int: last n; None: all); ``norm`` applies the final
        norm to the last stage's map; ``output_fmt`` "NCHW" or "NHWC"."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        stages = self.layers if torch.jit.is_scripting() or not stop_early else self.layers[:max_index + 1]
        x = self.pos_drop(self.patch_embed(x))
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                x_inter = self.norm(x) if norm and i == last else x
                intermediates.append(x_inter.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else x_inter)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one ``indices`` needs (and optionally the final norm / head)."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> normed NHWC map (B, ceil(H/32), ceil(W/32), num_features)."""
        x = self.pos_drop(self.patch_embed(x))
        return self.norm(self.layers(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_OFFICIAL_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: AgentSwinTransformer) -> Dict[str, torch.Tensor]:
    """Map an official Agent-Swin classification checkpoint (or a vitzoo one) onto :class:`AgentSwinTransformer`.

    Official layout (``{'model': state_dict, ...}``, optionally ``module.``-prefixed): ``patch_embed.{proj,norm}``,
    ``layers.{i}.blocks.{j}.{norm1,norm2,mlp.fc1,mlp.fc2}``, agent blocks ``...attn.{qkv,proj,dwc,an_bias,na_bias,
    ah_bias,aw_bias,ha_bias,wa_bias}``, window blocks ``...attn.{qkv,proj,relative_position_bias_table}`` (plus the
    buffers ``relative_position_index`` / ``attn_mask``, dropped: rebuilt here), ``layers.{i}.downsample.{norm,
    reduction}`` for i = 0..2, ``norm``, ``head``. The downsample moves (``layers.{i}.downsample`` ->
    ``layers.{i+1}.downsample``) and ah/aw/ha/wa_bias lose their leading singleton axis (see
    :mod:`vitzoo.models._agent_attn`); nothing else changes. A checkpoint of another resolution is adapted as the
    official ``load_pretrained`` does: ah/aw/ha/wa_bias linearly, relative-position tables bicubically.
    """
    state_dict = unwrap_state_dict(state_dict)
    official = any(k.startswith("layers.0.downsample.") for k in state_dict)
    targets = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        if official:
            key = _OFFICIAL_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        target = targets.get(key)
        if target is not None and value.shape != target.shape:
            if key.endswith("relative_position_bias_table"):
                (l_old, heads), (l_new, heads_new) = value.shape, target.shape
                if heads != heads_new:
                    raise ValueError(f"{key}: checkpoint has {heads} heads, model has {heads_new}")
                s_old, s_new = int(l_old ** 0.5), int(l_new ** 0.5)
                value = F.interpolate(value.float().t().reshape(1, heads, s_old, s_old), size=(s_new, s_new),
                                      mode="bicubic", align_corners=False).reshape(heads, l_new).t().to(value.dtype)
            else:
                value = adapt_agent_bias_param(key, value, target.shape)
        out[key] = value
    return out


def _create_agent_swin(variant: str, pretrained: bool = False, **kwargs: Any) -> AgentSwinTransformer:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 6, 2))))))
    return convert_linears(build_model_with_cfg(
        AgentSwinTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    ))


_REPO = "https://github.com/LeapLabTHU/Agent-Attention"
_CHECKPOINTS = {  # official ImageNet-1k weights (TsinghuaCloud; not fetched: pretrained_cfg_overlay=dict(file=...))
    "agent_swin_t": "https://cloud.tsinghua.edu.cn/f/a2ddc1190c224f768a41/?dl=1",
    "agent_swin_s": "https://cloud.tsinghua.edu.cn/f/f607172c9fea4d6e99bb/?dl=1",
    "agent_swin_b": "https://cloud.tsinghua.edu.cn/f/4fcd2d0114bb490483c3/?dl=1",
}
_RELEASE = {"agent_swin_t": "Agent-Swin-T, 82.6 top-1, 29M params, 4.5 GFLOPs",
            "agent_swin_s": "Agent-Swin-S, 83.7 top-1, 50M params, 8.7 GFLOPs",
            "agent_swin_b": "Agent-Swin-B, 84.0 top-1, 88M params, 15.4 GFLOPs"}


def _cfg(name: str, **kwargs: Any) -> Dict[str, Any]:
    # eval transform of the official (Swin) pipeline: resize 256, center crop 224, bicubic, ImageNet mean/std
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "fixed_input_size": False,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "unspecified", "origin_url": _REPO, "paper_ids": "arXiv:2312.08874", "paper_name": PAPER_NAME,
        "notes": (f"release: {_RELEASE[name]}", f"official checkpoint: {_CHECKPOINTS[name]}",
                  "the official repository has no LICENSE file; its code builds on MIT-licensed Swin"),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg(name) for name in _CHECKPOINTS})


@register_model
def agent_swin_t(pretrained: bool = False, **kwargs: Any) -> AgentSwinTransformer:
    """Agent-Swin-T (29M; official ``cfgs/agent_swin_t.yaml``, trained with drop_path 0.2): Swin-T, ``AAAB``."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_type="AAAB",
                agent_num=(9, 16, 49, 49))
    return _create_agent_swin("agent_swin_t", pretrained, **dict(args, **kwargs))


@register_model
def agent_swin_s(pretrained: bool = False, **kwargs: Any) -> AgentSwinTransformer:
    """Agent-Swin-S (50M; ``cfgs/agent_swin_s.yaml``, drop_path 0.3): Swin-S, ``AABB``."""
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), attn_type="AABB",
                agent_num=(9, 16, 49, 49))
    return _create_agent_swin("agent_swin_s", pretrained, **dict(args, **kwargs))


@register_model
def agent_swin_b(pretrained: bool = False, **kwargs: Any) -> AgentSwinTransformer:
    """Agent-Swin-B (88M; ``cfgs/agent_swin_b.yaml``, drop_path 0.5): Swin-B, ``AAMB2`` (stage 3: 2 agent blocks,
    then 16 window blocks)."""
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), attn_type="AAMB2",
                agent_num=(9, 16, 49, 49))
    return _create_agent_swin("agent_swin_b", pretrained, **dict(args, **kwargs))
