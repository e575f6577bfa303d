"""NAT and DiNAT backbones on vitzoo's generalized neighborhood-attention op.

Papers:
    * Neighborhood Attention Transformer (NAT), Hassani et al., CVPR 2023 -- https://arxiv.org/abs/2204.07143
    * Dilated Neighborhood Attention Transformer (DiNAT), Hassani & Shi, 2022 -- https://arxiv.org/abs/2209.15001

Architecture follows the official classification code (SHI-Labs/Neighborhood-Attention-Transformer,
``classification/nat.py`` / ``dinat.py``) with NATTEN's ``NeighborhoodAttention2D`` module:

* stem ("ConvTokenizer"): two 3x3 stride-2 convs (no activation between them) + LayerNorm, NHWC output;
* four levels of pre-norm blocks ``x + drop_path(gamma1 * attn(norm1(x)))``, ``x + drop_path(gamma2 * mlp(norm2(x)))``
  (``gamma`` only when ``layer_scale`` is set), GELU MLP, qkv bias, a learnable relative-position bias (RPB) table
  per attention layer, drop-path rates linear in the global block index;
* a "ConvDownsampler" (3x3 stride-2 conv without bias + LayerNorm, channels x2) between levels;
* final LayerNorm, global average pool, linear head.

Layout differences to the official code (handled by :func:`checkpoint_filter_fn`): the downsampler that the official
code runs at the *end* of level ``i`` lives at the *start* of level ``i + 1`` here (as in timm's Swin), so every level
output is a feature map at stride 4 / 8 / 16 / 32 for ``features_only``. Every other key is unchanged.

Small feature maps: like NATTEN's module, an attention layer whose token map is smaller than
``kernel_size * dilation`` along an axis zero-pads its (normalized) input on the bottom / right up to that size,
runs qkv + attention on the padded map and crops the output back before the output projection; padded tokens are
real keys (their k / v are the qkv bias), exactly as in the official models. Dilation is never reduced and nothing
is cropped from the input, so any input size (non-square, odd) runs; the stem and downsamplers round up
(``ceil(size / 2)`` each).

The official RPB table is indexed ``rpb[h, (key - query) / dilation + k - 1]`` per axis (NATTEN's ``pi + ki``),
which is exactly vitzoo's convention, so tables are used as stored (no flip).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from vitzoo.ops import neighborhood_attention_2d
from vitzoo.ops._backend import BACKENDS

from ._linear import convert_linears
from ._norm import LayerNorm

__all__ = ["Nat", "NatBlock", "NatStage", "NeighborhoodAttention2d", "checkpoint_filter_fn"]


class ConvTokenizer(nn.Module):
    """NAT stem: conv3x3/s2 (C/2) -> conv3x3/s2 (C) -> LayerNorm; NCHW image in, NHWC tokens out (stride 4)."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, norm_layer: Type[nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """NAT downsampler: conv3x3/s2 without bias (C -> 2C) + LayerNorm, NHWC in and out."""

    def __init__(self, dim: int, out_dim: int, norm_layer: Type[nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NeighborhoodAttention2d(nn.Module):
    """(Dilated) neighborhood attention with a relative-position bias, NATTEN ``NeighborhoodAttention2D`` semantics.

    Parameter names (``qkv``, ``rpb``, ``proj``) match NATTEN's module, so official checkpoints load unchanged.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            rel_pos_bias: bool = True,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if kernel_size < 2 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be an odd integer > 1 (as in NATTEN), got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be an integer >= 1, got {dilation}")
        if attn_drop:
            raise ValueError(
                f"attn_drop must be 0.0: the fused neighborhood-attention op has no attention dropout, got {attn_drop}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        window = self.kernel_size * self.dilation
        pad_b, pad_r = max(0, window - height), max(0, window - width)
        if pad_b or pad_r:  # NATTEN: zero-pad the normalized input bottom/right, attend, crop (see module doc)
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = height + pad_b, width + pad_r
        q, k, v = self.qkv(x).view(batch, hp, wp, 3, self.num_heads, self.head_dim).unbind(3)
        x = neighborhood_attention_2d(
            q, k, v, self.kernel_size, self.dilation, rpb=self.rpb, scale=self.scale, backend=self.backend,
        )
        x = x.reshape(batch, hp, wp, channels)
        if pad_b or pad_r:
            x = x[:, :height, :width]
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, rel_pos_bias={self.rpb is not None}, backend={self.backend!r}")


class NatBlock(nn.Module):
    """NAT / DiNAT transformer layer (official ``NATLayer``): pre-norm NA + MLP, optional layer scale gamma1/2."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            layer_scale: Optional[float] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = LayerNorm,
            attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2d(
            dim, num_heads, kernel_size=kernel_size, dilation=dilation, qkv_bias=qkv_bias, qk_scale=qk_scale,
            attn_drop=attn_drop, proj_drop=proj_drop, backend=attn_backend,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)


class NatStage(nn.Module):
    """One NAT level: optional ConvDownsampler (levels 1..3) followed by ``depth`` NatBlocks; NHWC in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            kernel_size: int = 7,
            dilations: Optional[Sequence[int]] = None,
            downsample: bool = True,
            drop_path: Union[float, Sequence[float]] = 0.0,
            norm_layer: Type[nn.Module] = LayerNorm,
            **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if dilations is not None and len(dilations) != depth:
            raise ValueError(f"dilations must have one entry per block ({depth}), got {list(dilations)}")
        self.grad_checkpointing = False
        self.downsample = ConvDownsampler(dim, out_dim, norm_layer) if downsample else nn.Identity()
        drop_path = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.Sequential(*[
            NatBlock(
                out_dim, num_heads, kernel_size=kernel_size, dilation=1 if dilations is None else dilations[i],
                drop_path=drop_path[i], norm_layer=norm_layer, **block_kwargs,
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class Nat(nn.Module):
    """NAT (https://arxiv.org/abs/2204.07143) and, with per-block ``dilations``, DiNAT
    (https://arxiv.org/abs/2209.15001).

    Token maps are NHWC throughout (``output_fmt = 'NHWC'``, like timm's Swin): ``forward_features`` returns the
    normed (B, H/32, W/32, C) map, ``features_only`` returns NHWC maps, ``forward_intermediates`` NCHW by default.
    ``attn_backend`` ("auto" | "torch" | "triton") is passed to every :func:`vitzoo.ops.neighborhood_attention_2d`.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 64,
            depths: Sequence[int] = (3, 4, 6, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            kernel_size: int = 7,
            dilations: Optional[Sequence[Sequence[int]]] = None,
            mlp_ratio: float = 3.0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            layer_scale: Optional[float] = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.2,
            norm_layer: Type[nn.Module] = LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
            attn_backend: str = "auto",
    ) -> None:
        """
        Args:
            depths, num_heads: blocks and heads per level; channels are ``embed_dim * 2**level``.
            kernel_size: neighborhood size (odd); dilations: per level, one dilation per block (DiNAT) or None.
            layer_scale: init value of the per-channel residual scales ``gamma1/gamma2`` (None: no layer scale).
            drop_rate: classifier dropout; proj_drop_rate: dropout after the stem, attention projection and MLP
                (the official ``drop_rate``); attn_drop_rate must be 0 (not supported by the fused op).
            drop_path_rate: stochastic depth, linear from 0 over all blocks.
            attn_backend: backend of the neighborhood-attention op.
        """
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be '' or 'avg', got {global_pool!r}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths and num_heads must have the same length, got {depths} and {num_heads}")
        if dilations is not None and len(dilations) != len(depths):
            raise ValueError(f"dilations must have one list per level ({len(depths)}), got {len(dilations)}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.grad_checkpointing = False
        num_levels = len(depths)
        dims = [int(embed_dim * 2 ** i) for i in range(num_levels)]
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = ConvTokenizer(in_chans, embed_dim, norm_layer)
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: works under meta init
        self.feature_info: List[Dict[str, Any]] = []
        levels = []
        for i in range(num_levels):
            levels.append(NatStage(
                dim=dims[max(i - 1, 0)],
                out_dim=dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                kernel_size=kernel_size,
                dilations=None if dilations is None else dilations[i],
                downsample=i > 0,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                norm_layer=norm_layer,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                layer_scale=layer_scale,
                act_layer=act_layer,
                attn_backend=attn_backend,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"levels.{i}"))
        self.levels = nn.Sequential(*levels)
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official init: trunc-normal(0.02) Linear weights, zero biases, unit LayerNorm; convs keep torch defaults.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_attn_backend(self, backend: str) -> None:
        """Switch every attention layer to ``backend`` ("auto" | "torch" | "triton")."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for m in self.modules():
            if isinstance(m, NeighborhoodAttention2d):
                m.backend = backend

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Relative-position-bias tables (the official code's ``no_weight_decay_keywords = {'rpb'}``)."""
        return {n for n, _ in self.named_parameters() if n.endswith(".rpb")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^levels\.(\d+)" if coarse else [
                (r"^levels\.(\d+)\.downsample", (0,)),
                (r"^levels\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for level in self.levels:
            level.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be '' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Level outputs (strides 4 / 8 / 16 / 32) selected by ``indices`` (int: last n, sequence: those, None: all).

        ``norm`` applies the final norm to the last level's map; ``output_fmt`` is "NCHW" or "NHWC".
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        x = self.pos_drop(self.patch_embed(x))
        last = len(self.levels) - 1
        levels = self.levels if torch.jit.is_scripting() or not stop_early else self.levels[:max_index + 1]
        for i, level in enumerate(levels):
            x = level(x)
            if i in take_indices:
                x_inter = self.norm(x) if norm and i == last else x
                intermediates.append(x_inter.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else x_inter)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the levels after the last one ``indices`` needs (and optionally the final norm / head)."""
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        self.levels = self.levels[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> normed NHWC map (B, ceil(H/32), ceil(W/32), num_features)."""
        x = self.pos_drop(self.patch_embed(x))
        x = self.levels(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_OFFICIAL_DOWNSAMPLE = re.compile(r"^levels\.(\d+)\.downsample\.")


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: Nat) -> Dict[str, torch.Tensor]:
    """Map an official SHI-Labs NAT / DiNAT classification checkpoint (or a vitzoo one) onto :class:`Nat`.

    Accepts the raw state dict or one wrapped in ``'model'`` / ``'state_dict'`` (optionally ``module.``-prefixed).
    Official layout is recognised by ``levels.0.downsample.*`` (its downsampler closes a level; ours opens the next):
    ``levels.{i}.downsample.*`` -> ``levels.{i+1}.downsample.*``. All other keys (``patch_embed.proj.{0,1}``,
    ``patch_embed.norm``, ``levels.i.blocks.j.{norm1,attn.qkv,attn.rpb,attn.proj,norm2,mlp.fc1,mlp.fc2,gamma1,
    gamma2}``, ``norm``, ``head``) are identical. RPB tables of another kernel size are resized bicubically (as the
    official 11x11 checkpoints were made).
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    state_dict = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    official = any(k.startswith("levels.0.downsample.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if official:
            key = _OFFICIAL_DOWNSAMPLE.sub(lambda m: f"levels.{int(m.group(1)) + 1}.downsample.", key)
        if key.endswith(".attn.rpb"):
            target = model.get_submodule(key[: -len(".rpb")]).rpb
            if target is not None and value.shape != target.shape:
                if value.shape[0] != target.shape[0]:
                    raise ValueError(f"{key}: checkpoint has {value.shape[0]} heads, model has {target.shape[0]}")
                value = F.interpolate(
                    value[None].float(), size=tuple(target.shape[1:]), mode="bicubic", align_corners=False,
                )[0].to(value.dtype)
        out[key] = value
    return out


def _create_nat(variant: str, pretrained: bool = False, **kwargs: Any) -> Nat:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (3, 4, 6, 5))))))
    return convert_linears(build_model_with_cfg(
        Nat, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    ))


_REPO = "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer"
_PAPERS = {
    "nat": dict(paper_ids="arXiv:2204.07143", paper_name="Neighborhood Attention Transformer"),
    "dinat": dict(paper_ids="arXiv:2209.15001", paper_name="Dilated Neighborhood Attention Transformer"),
}
_CHECKPOINTS = {
    # Official ImageNet-1k checkpoints (not fetched automatically: load with pretrained_cfg_overlay=dict(file=...)).
    "nat_mini": "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth",
    "nat_tiny": "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth",
    "nat_small": "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth",
    "nat_base": "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth",
    "dinat_mini": "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth",
    "dinat_tiny": "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth",
    "dinat_small": "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth",
    "dinat_base": "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth",
}


def _cfg(model: str, **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "fixed_input_size": False,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0", "classifier": "head",
        "license": "mit", "origin_url": _REPO, **_PAPERS[model.split("_")[0]],
        "notes": (f"official checkpoint: {_CHECKPOINTS[model]}",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg(name) for name in _CHECKPOINTS})

# DiNAT's published per-block dilations for 224x224 inputs (feature maps 56 / 28 / 14 / 7): dilation * 7 <= size.
_DINAT_DILATIONS_MINI = ((1, 8, 1), (1, 4, 1, 4), (1, 2) * 3, (1,) * 5)
_DINAT_DILATIONS = ((1, 8, 1), (1, 4, 1, 4), (1, 2) * 9, (1,) * 5)


@register_model
def nat_mini(pretrained: bool = False, **kwargs: Any) -> Nat:
    """NAT-Mini (20M): depths 3-4-6-5, dim 64, mlp 3."""
    args = dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2)
    return _create_nat("nat_mini", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def nat_tiny(pretrained: bool = False, **kwargs: Any) -> Nat:
    """NAT-Tiny (28M): depths 3-4-18-5, dim 64, mlp 3."""
    args = dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2)
    return _create_nat("nat_tiny", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def nat_small(pretrained: bool = False, **kwargs: Any) -> Nat:
    """NAT-Small (51M): depths 3-4-18-5, dim 96, mlp 2, layer scale 1e-5."""
    args = dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2.0, drop_path_rate=0.3,
                layer_scale=1e-5)
    return _create_nat("nat_small", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def nat_base(pretrained: bool = False, **kwargs: Any) -> Nat:
    """NAT-Base (90M): depths 3-4-18-5, dim 128, mlp 2, layer scale 1e-5."""
    args = dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2.0, drop_path_rate=0.5,
                layer_scale=1e-5)
    return _create_nat("nat_base", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def dinat_mini(pretrained: bool = False, **kwargs: Any) -> Nat:
    """DiNAT-Mini (20M): NAT-Mini with alternating dilated blocks."""
    args = dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2,
                dilations=_DINAT_DILATIONS_MINI)
    return _create_nat("dinat_mini", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs: Any) -> Nat:
    """DiNAT-Tiny (28M): NAT-Tiny with alternating dilated blocks."""
    args = dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2,
                dilations=_DINAT_DILATIONS)
    return _create_nat("dinat_tiny", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def dinat_small(pretrained: bool = False, **kwargs: Any) -> Nat:
    """DiNAT-Small (51M): NAT-Small layout with alternating dilated blocks (official config: no layer scale)."""
    args = dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2.0, drop_path_rate=0.3,
                dilations=_DINAT_DILATIONS)
    return _create_nat("dinat_small", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def dinat_base(pretrained: bool = False, **kwargs: Any) -> Nat:
    """DiNAT-Base (90M): NAT-Base layout with alternating dilated blocks, layer scale 1e-5."""
    args = dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2.0, drop_path_rate=0.5,
                layer_scale=1e-5, dilations=_DINAT_DILATIONS)
    return _create_nat("dinat_base", pretrained=pretrained, **dict(args, **kwargs))
