"""BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023), registered in timm.

Paper: https://arxiv.org/abs/2303.08810 -- released code and checkpoints: https://github.com/rayleizhu/BiFormer (MIT).

Architecture (every detail as in the release, ``models/biformer.py`` + ``ops/bra_legacy.py`` + ``models/_common.py``):

* stem: conv3x3/s2 (C/2) + BN + GELU + conv3x3/s2 (C) + BN; stages 2-4 start with conv3x3/s2 + BN.
* block (pre-norm, NHWC): ``x = x + dwconv3x3(x)`` (conv positional embedding), ``x = x + attn(LN(x))``,
  ``x = x + mlp(LN(x))`` with LayerNorm eps 1e-6, MLP ratio 3 with exact GELU, no layer scale (release value -1).
* stages 1-3: bi-level routing attention (BRA). One biased linear gives q, k (``qk_dim`` channels each) and v
  (``dim``); heads = ``qk_dim // 32``; the logit scale is ``qk_dim ** -0.5`` (the FULL qk width, not the head width,
  as in the release); the map is split into ``n_win x n_win`` regions, regions are routed on the (detached,
  parameter-free) region means of q and k over all heads' channels, each query region attends token-wise to its
  ``topk`` (1 / 4 / 16) routed key regions, all heads sharing the routing; a 5x5 depthwise conv of v (LCE,
  ``side_dwconv``) is added before the output projection.
* stage 4 (release ``topk=-2``: ``AttentionLePE``): plain global attention with 8 heads whatever the width
  (the release never passes ``num_heads`` there), bias-free qkv, scale ``head_dim ** -0.5``, plus a 5x5 depthwise
  conv of the block's (normalized) INPUT, not of v, before the projection. ``topk=-1`` is the same without LePE.
* BatchNorm2d final norm, global average pool, linear head.

Inputs whose maps are not divisible by ``n_win``: the routed op pads to ``n_win`` regions of ``ceil(H / n_win)``
tokens and MASKS the padded keys (region means over real tokens only); nothing is cropped. The release
(``auto_pad=True``) instead zero-pads ``x`` BEFORE the qkv projection, so its padded tokens carry the qkv bias, are
attended to, enter the region means and the LCE conv sees them; its outputs therefore differ from ours on such
sizes. At 224x224 (56/28/14 maps, n_win 7) every stage is divisible and both agree to rounding error.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

try:
    from timm.layers import LayerScale
except ImportError:  # older timm keeps it in the ViT module
    from timm.models.vision_transformer import LayerScale

from ..ops import routed_attention
from ._linear import convert_linears
from ._norm import LayerNorm

__all__ = ["BiFormer", "BiLevelRoutingAttention", "AttentionLePE", "BiFormerBlock", "BiFormerStage",
           "checkpoint_filter_fn"]

PAPER_NAME = "BiFormer: Vision Transformer with Bi-Level Routing Attention"


def _per_stage(value: Union[Any, Sequence[Any]], name: str, num_stages: int) -> Tuple[Any, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} must have one entry per stage ({num_stages}), got {len(value)}: {value!r}")
        return tuple(value)
    return (value,) * num_stages


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention (BiFormer, CVPR 2023) on an NHWC map, computed by :func:`vitzoo.ops.routed_attention`.

    Parameter layout: ``qkv`` (dim -> 2*qk_dim + dim, biased; q | k | v along the output), ``lepe`` (depthwise
    ``side_dwconv`` conv of v, the paper's LCE), ``proj`` (dim -> dim). Heads split channels head-major.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_win: int = 7,
        topk: int = 4,
        qk_dim: Optional[int] = None,
        qk_scale: Optional[float] = None,
        side_dwconv: int = 5,
        attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"qk_dim ({self.qk_dim}) and dim ({dim}) must be divisible by num_heads ({num_heads})")
        if n_win < 1:
            raise ValueError(f"n_win must be a positive number of regions per side, got {n_win}")
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(f"topk must be in 1..n_win**2 = 1..{n_win * n_win} routed regions, got {topk}")
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or self.qk_dim ** -0.5  # the release scales by the full qk width, not the head width
        self.attn_backend = attn_backend
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim)
        self.lepe = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                     if side_dwconv > 0 else None)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, dim) -> (B, H, W, dim)."""
        B, H, W, _ = x.shape
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        heads = self.num_heads
        out = routed_attention(
            q.unflatten(-1, (heads, -1)), k.unflatten(-1, (heads, -1)), v.unflatten(-1, (heads, -1)),
            n_win=self.n_win, topk=self.topk, scale=self.scale, backend=self.attn_backend,
        ).reshape(B, H, W, self.dim)
        if self.lepe is not None:
            # v is a strided slice of the qkv output: one dense channels_last copy, saved for the backward, instead
            # of the conv's own copy in its forward and again in its backward
            out = out + _to_nhwc(self.lepe(_to_nchw(v).contiguous(memory_format=torch.channels_last)))
        return self.proj(out)


class AttentionLePE(nn.Module):
    """Global multi-head attention of BiFormer's last stage (release ``topk=-2``; ``side_dwconv=0`` is ``topk=-1``).

    ``qkv`` is bias-free, the scale is ``head_dim ** -0.5`` and the LePE conv acts on the attention INPUT (as in the
    release's ``AttentionLePE``), added before ``proj``. Runs on ``F.scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, num_heads: int = 8, side_dwconv: int = 5, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                     if side_dwconv > 0 else None)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, dim) -> (B, H, W, dim)."""
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + _to_nhwc(self.lepe(_to_nchw(x)))
        return self.proj(out)


class BiFormerBlock(nn.Module):
    """BiFormer block on an NHWC map: depthwise-conv position embedding, pre-norm attention, pre-norm MLP.

    ``topk > 0``: bi-level routing attention; ``topk == -2``: global attention + LePE; ``topk == -1``: global
    attention without LePE (release semantics).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        topk: int,
        n_win: int = 7,
        qk_dim: Optional[int] = None,
        qk_scale: Optional[float] = None,
        full_attn_heads: int = 8,
        mlp_ratio: float = 3.0,
        side_dwconv: int = 5,
        before_attn_dwconv: int = 3,
        layer_scale_init_value: Optional[float] = None,
        drop_path: float = 0.0,
        attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.pos_embed = (nn.Conv2d(dim, dim, before_attn_dwconv, padding=before_attn_dwconv // 2, groups=dim)
                          if before_attn_dwconv > 0 else None)
        self.norm1 = LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn: nn.Module = BiLevelRoutingAttention(
                dim, num_heads, n_win=n_win, topk=topk, qk_dim=qk_dim, qk_scale=qk_scale, side_dwconv=side_dwconv,
                attn_backend=attn_backend)
        elif topk in (-1, -2):
            self.attn = AttentionLePE(dim, full_attn_heads, side_dwconv=side_dwconv if topk == -2 else 0)
        else:
            raise ValueError(f"topk must be > 0 (routed), -1 (global attention) or -2 (global + LePE), got {topk}")
        use_ls = layer_scale_init_value is not None and layer_scale_init_value > 0  # release: -1 means off
        self.ls1 = LayerScale(dim, layer_scale_init_value) if use_ls else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, layer_scale_init_value) if use_ls else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        if self.pos_embed is not None:
            x = x + _to_nhwc(self.pos_embed(_to_nchw(x)))
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class BiFormerStage(nn.Module):
    """Optional conv3x3/s2 + BN downsample (NCHW), then a sequence of :class:`BiFormerBlock` run in NHWC."""

    def __init__(self, in_dim: Optional[int], dim: int, depth: int, drop_path: Sequence[float],
                 **block_kwargs: Any) -> None:
        super().__init__()
        self.grad_checkpointing = False
        if in_dim is None:
            self.downsample: nn.Module = nn.Identity()
        else:
            self.downsample = nn.Sequential(nn.Conv2d(in_dim, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[BiFormerBlock(dim, drop_path=drop_path[i], **block_kwargs)
                                      for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W) -> (B, C, H', W') (channels-last strided)."""
        x = _to_nhwc(self.downsample(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return _to_nchw(x)


class BiFormer(nn.Module):
    """BiFormer (CVPR 2023, "BiFormer: Vision Transformer with Bi-Level Routing Attention").

    Args:
        depths, embed_dims: blocks and channels per stage.
        qk_dims: q/k width of the routed stages (default ``embed_dims``); routed heads = ``qk_dim // head_dim``.
        topks: per stage, routed regions (> 0) or -2 / -1 for global attention with / without LePE.
        n_win: regions per side of the routed stages (7 for classification; larger for dense tasks).
        full_attn_heads: heads of the global-attention stage (8 in every release).
        attn_backend: ``"auto" | "torch" | "triton"``, forwarded to :func:`vitzoo.ops.routed_attention`.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: Sequence[int] = (2, 2, 8, 2),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        qk_dims: Optional[Sequence[int]] = None,
        head_dim: int = 32,
        topks: Sequence[int] = (1, 4, 16, -2),
        n_win: int = 7,
        mlp_ratios: Union[float, Sequence[float]] = 3.0,
        side_dwconv: int = 5,
        before_attn_dwconv: int = 3,
        full_attn_heads: int = 8,
        qk_scale: Optional[float] = None,
        layer_scale_init_value: Optional[float] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        num_stages = len(depths)
        embed_dims = _per_stage(embed_dims, "embed_dims", num_stages)
        qk_dims = _per_stage(qk_dims if qk_dims is not None else embed_dims, "qk_dims", num_stages)
        topks = _per_stage(topks, "topks", num_stages)
        mlp_ratios = _per_stage(mlp_ratios, "mlp_ratios", num_stages)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, embed_dims[0] // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(embed_dims[0] // 2),
            nn.GELU(),
            nn.Conv2d(embed_dims[0] // 2, embed_dims[0], 3, stride=2, padding=1),
            nn.BatchNorm2d(embed_dims[0]),
        )
        total = sum(depths)  # stochastic depth rising linearly over all blocks (python floats: meta-device safe)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        dpr = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(num_stages)]
        stages, self.feature_info = [], []
        for i in range(num_stages):
            stages.append(BiFormerStage(
                None if i == 0 else embed_dims[i - 1], embed_dims[i], depths[i], dpr[i],
                num_heads=qk_dims[i] // head_dim, topk=topks[i], n_win=n_win, qk_dim=qk_dims[i], qk_scale=qk_scale,
                full_attn_heads=full_attn_heads, mlp_ratio=mlp_ratios[i], side_dwconv=side_dwconv,
                before_attn_dwconv=before_attn_dwconv, layer_scale_init_value=layer_scale_init_value,
                attn_backend=attn_backend,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # release init: truncated-normal linears, zero biases; convs keep PyTorch's default init
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond timm's default (1-D params): BiFormer has no pos/cls tokens (its conv pos-embed decays)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
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
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = next(self.parameters())  # the norm may have been pruned to Identity (prune_intermediate_layers)
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (NCHW, strides 4/8/16/32) at ``indices`` (int: last n; None: all); ``norm`` applies the
        final BatchNorm to the last stage's output."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        x = self.stem(x)
        feat_idx = -1
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one needed for ``indices`` (and optionally the final norm / head)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/32, W/32) after the final BatchNorm."""
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_BLOCK_RENAMES = (
    (re.compile(r"\.attn\.qkv\.qkv\."), ".attn.qkv."),  # BRA wraps its linear in QKVLinear
    (re.compile(r"\.attn\.wo\."), ".attn.proj."),
    (re.compile(r"\.mlp\.0\."), ".mlp.fc1."),  # release mlp: Linear, Identity (no mlp_dwconv), GELU, Linear
    (re.compile(r"\.mlp\.3\."), ".mlp.fc2."),
    (re.compile(r"\.gamma1$"), ".ls1.gamma"),
    (re.compile(r"\.gamma2$"), ".ls2.gamma"),
)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a released BiFormer checkpoint (rayleizhu/BiFormer) onto this module layout.

    Release layout (inside the ``'model'`` entry of the ``.pth``): ``downsample_layers.0.{0,1,3,4}`` (stem),
    ``downsample_layers.{1,2,3}.{0,1}``, ``stages.{i}.{j}.{pos_embed,norm1,norm2}``, routed stages
    ``stages.{i}.{j}.attn.{qkv.qkv,lepe,wo}``, global stage ``stages.3.{j}.attn.{qkv,lepe,proj}``,
    ``stages.{i}.{j}.mlp.{0,3}``, ``norm`` (BatchNorm2d), ``head``. A state dict already in vitzoo layout passes
    through unchanged.
    """
    for wrapper in ("model", "state_dict", "model_ema"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
            break
    if "stem.0.weight" in state_dict:
        return state_dict
    out = {}
    for k, v in state_dict.items():
        if k.startswith("module."):  # DDP-saved
            k = k[len("module."):]
        k = re.sub(r"^downsample_layers\.0\.", "stem.", k)
        k = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", k)
        k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        for pattern, repl in _BLOCK_RENAMES:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def _create_biformer(variant: str, pretrained: bool = False, **kwargs: Any) -> BiFormer:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return convert_linears(build_model_with_cfg(
        BiFormer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, flatten_sequential=True),
        **kwargs,
    ))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # Released weights (OneDrive / matix.li links in the release README) are not fetched automatically: load them
    # with ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)``. Eval transform as in the DeiT/UniFormer
    # pipeline the release trains with: resize 256, center crop 224, bicubic, ImageNet mean/std.
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0", "classifier": "head", "license": "mit",
        "paper_name": PAPER_NAME, "paper_ids": "arXiv:2303.08810",
        "origin_url": "https://github.com/rayleizhu/BiFormer",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "biformer_t.in1k": _cfg(notes=("release: BiFormer-T, 81.4 top-1, 13.1 M params, 2.2 GFLOPs",)),
    "biformer_s.in1k": _cfg(notes=("release: BiFormer-S, 83.8 top-1, 25.5 M params, 4.5 GFLOPs",)),
    "biformer_b.in1k": _cfg(notes=("release: BiFormer-B, 84.3 top-1, 56.8 M params, 9.8 GFLOPs",)),
})


@register_model
def biformer_t(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-T (release ``biformer_tiny``): depths 2-2-8-2, widths 64-128-256-512."""
    args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512), qk_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_t", pretrained, **dict(args, **kwargs))


@register_model
def biformer_s(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-S (release ``biformer_small``): depths 4-4-18-4, widths 64-128-256-512."""
    args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512), qk_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_s", pretrained, **dict(args, **kwargs))


@register_model
def biformer_b(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-B (release ``biformer_base``): depths 4-4-18-4, widths 96-192-384-768 (8 heads of 96 in stage 4)."""
    args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768), qk_dims=(96, 192, 384, 768))
    return _create_biformer("biformer_b", pretrained, **dict(args, **kwargs))
