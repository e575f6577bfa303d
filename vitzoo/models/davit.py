"""DaViT on vitzoo's neighborhood-attention op.

Ding et al., "DaViT: Dual Attention Vision Transformers", ECCV 2022 (https://arxiv.org/abs/2204.03645).

Architecture and weights are timm's ``davit_{tiny,small,base}`` (ported from https://github.com/dingmyu/davit): each
block pair is a spatial-window block then a channel-group block, both with depth-wise conv position encodings. timm's
stem, downsample, ConvPosEnc, MLP and head are imported from timm; its LayerNorm2d (stem, downsampling and head
norms) is the zoo's (same parameters: the inference norm kernel, ``_norm.py``). Spatial window attention runs through
:func:`vitzoo.ops.neighborhood_attention_2d` (``kernel = stride = window``) on (B, H, W, heads, d) views of the qkv
projection. Like timm (and the official code), maps that are not window multiples are zero-padded *after* norm1 and
the padded tokens are NOT masked (they attend and are attended to with their qkv-bias-only keys/values), then the
output is cropped; the same is done here, so outputs match for every input size. Channel attention keeps timm's
math (``softmax(scale * K^T V)`` applied to Q) as plain matmuls.

The state_dict layout is timm's; :func:`checkpoint_filter_fn` also maps the official dingmyu/davit layout
(``patch_embeds.*``, ``main_blocks.*``, ``cpe.0/1``, ``norms``, ``head``).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, NormMlpClassifierHead, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.davit import ConvPosEnc, Downsample, Stem
from timm.models.davit import checkpoint_filter_fn as _timm_davit_filter

from vitzoo.ops import bias_residual_add, channel_attention

from ._linear import convert_linears
from ._norm import token_norm_layer
from ._partition_attn import PartitionAttention2d, check_attn_backend
from ._step_kernels import host_cost_free

__all__ = ["DaViT", "SpatialBlock", "ChannelBlock", "ChannelAttention", "PosConv"]


class ChannelAttention(nn.Module):
    """DaViT channel-group attention over (B, N, C) tokens: per head, a (d, d) attention ``softmax(scale * K^T V)``
    mixes the channels of Q (timm's ``ChannelAttention``; the scale is applied to the (d, d) logits instead of K).

    Runs :func:`vitzoo.ops.channel_attention`: on CUDA Triton kernels reading q, k, v in place in the qkv output
    (torch's batched matmuls first copy each to head-major order, and the output back).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_backend: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_backend = check_attn_backend(attn_backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)  # (B, N, heads, d) views
        out = channel_attention(q, k, v, self.scale, backend=self.attn_backend)
        return self.proj(out.reshape(B, N, C))


class PosConv(ConvPosEnc):
    """timm's ``ConvPosEnc`` (``x + act(dwconv3x3(x))``, same parameters). Without an activation, on CUDA maps and
    where host time does not count (no autograd, or a graphed training step), the conv runs without its bias and
    :func:`vitzoo.ops.bias_residual_add` adds bias and residual in one pass: torch adds a conv bias to a channels_last
    bf16 map with a non-vectorized broadcast kernel, then the residual in a second pass (kernels/README.md, eleventh
    run)."""

    def __init__(self, dim: int, k: int = 3, act: bool = False, attn_backend: str = "auto"):
        super().__init__(dim=dim, k=k, act=act)
        self.backend = check_attn_backend(attn_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = (isinstance(self.act, nn.Identity) and self.proj.bias is not None
                 and (x.is_cuda or self.backend == "triton") and host_cost_free())
        if not fused:
            return super().forward(x)
        conv = self.proj
        feat = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        out = bias_residual_add(x.permute(0, 2, 3, 1), feat.permute(0, 2, 3, 1), conv.bias, backend=self.backend)
        return out.permute(0, 3, 1, 2)


class _DualBlockBase(nn.Module):
    """cpe1 -> norm1 -> token mixer -> residual -> cpe2 -> [norm2 -> MLP -> residual]; NCHW in and out. The mixer
    (``_mix``) sees the normalized map as (B, H, W, C)."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float,
            drop_path: float,
            act_layer: type,
            norm_layer: type,
            ffn: bool,
            cpe_act: bool,
            attn_backend: str = "auto",
    ):
        super().__init__()
        self.cpe1 = PosConv(dim=dim, k=3, act=cpe_act, attn_backend=attn_backend)
        self.norm1 = norm_layer(dim)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.cpe2 = PosConv(dim=dim, k=3, act=cpe_act, attn_backend=attn_backend)
        self.ffn = ffn
        if ffn:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
            self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        else:
            self.norm2 = self.mlp = self.drop_path2 = None

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.cpe1(x).permute(0, 2, 3, 1)  # (B, H, W, C); a free view for channels_last maps
        x = shortcut + self.drop_path1(self._mix(self.norm1(shortcut)))
        x = self.cpe2(x.permute(0, 3, 1, 2))
        if self.mlp is not None:
            x = x.permute(0, 2, 3, 1)
            x = (x + self.drop_path2(self.mlp(self.norm2(x)))).permute(0, 3, 1, 2)
        return x


class SpatialBlock(_DualBlockBase):
    """DaViT spatial-window block (timm's ``SpatialBlock``, same parameter names)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Union[int, Tuple[int, int]] = 7,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_path: float = 0.0,
            act_layer: type = nn.GELU,
            norm_layer: type = nn.LayerNorm,
            ffn: bool = True,
            cpe_act: bool = False,
            attn_backend: str = "auto",
    ):
        super().__init__(dim, mlp_ratio, drop_path, act_layer, norm_layer, ffn, cpe_act, attn_backend)
        self.window_size = to_2tuple(window_size)
        self.attn = PartitionAttention2d(dim, num_heads, qkv_bias=qkv_bias, attn_backend=attn_backend)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        wh, ww = self.window_size
        pad_r, pad_b = (ww - W % ww) % ww, (wh - H % wh) % wh
        if pad_r or pad_b:  # zeros after the norm, unmasked, exactly as timm / official DaViT
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        return self.attn(x, self.window_size, out_size=(H, W))


class ChannelBlock(_DualBlockBase):
    """DaViT channel-group block (timm's ``ChannelBlock``, same parameter names)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = False,
            drop_path: float = 0.0,
            act_layer: type = nn.GELU,
            norm_layer: type = nn.LayerNorm,
            ffn: bool = True,
            cpe_act: bool = False,
            attn_backend: str = "auto",
    ):
        super().__init__(dim, mlp_ratio, drop_path, act_layer, norm_layer, ffn, cpe_act, attn_backend)
        self.attn = ChannelAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_backend=attn_backend)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        return self.attn(x.reshape(B, H * W, C)).view(B, H, W, C)


class DaViTStage(nn.Module):
    """Optional downsample, then ``depth`` (spatial, channel) block pairs."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int = 1,
            downsample: bool = True,
            attn_types: Sequence[str] = ("spatial", "channel"),
            num_heads: int = 3,
            window_size: int = 7,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_path_rates: Sequence[float] = (0.0, 0.0),
            norm_layer: type = nn.LayerNorm,
            norm_layer_cl: type = nn.LayerNorm,
            ffn: bool = True,
            cpe_act: bool = False,
            down_kernel_size: int = 2,
            named_blocks: bool = False,
            attn_backend: str = "auto",
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = Downsample(in_chs, out_chs, kernel_size=down_kernel_size, norm_layer=norm_layer) \
            if downsample else nn.Identity()
        common = dict(dim=out_chs, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      norm_layer=norm_layer_cl, ffn=ffn, cpe_act=cpe_act)
        stage_blocks = []
        for block_idx in range(depth):
            pair = []
            for attn_type in attn_types:
                if attn_type == "spatial":
                    pair.append(("spatial_block", SpatialBlock(
                        window_size=window_size, drop_path=drop_path_rates[block_idx], attn_backend=attn_backend,
                        **common)))
                elif attn_type == "channel":
                    pair.append(("channel_block", ChannelBlock(drop_path=drop_path_rates[block_idx],
                                                               attn_backend=attn_backend, **common)))
                else:
                    raise ValueError(f"attn_types entries must be 'spatial' or 'channel', got {attn_type!r}")
            stage_blocks.append(
                nn.Sequential(OrderedDict(pair)) if named_blocks else nn.Sequential(*[b for _, b in pair]))
        self.blocks = nn.Sequential(*stage_blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class DaViT(nn.Module):
    """DaViT (Ding et al., ECCV 2022) with spatial window attention on :func:`vitzoo.ops.neighborhood_attention_2d`.

    Accepts any input size (the stem, downsamples and window attention pad like timm). Arguments are timm's
    ``DaVit`` arguments plus ``attn_backend`` ("auto" | "torch" | "triton"); the Florence-2 ``channel_attn_v2``
    variant is not provided.
    """

    def __init__(
            self,
            in_chans: int = 3,
            depths: Tuple[int, ...] = (1, 1, 3, 1),
            embed_dims: Tuple[int, ...] = (96, 192, 384, 768),
            num_heads: Tuple[int, ...] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            norm_layer: str = "layernorm2d",
            norm_layer_cl: str = "layernorm",
            norm_eps: float = 1e-5,
            attn_types: Tuple[str, ...] = ("spatial", "channel"),
            ffn: bool = True,
            cpe_act: bool = False,
            down_kernel_size: int = 2,
            named_blocks: bool = False,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            num_classes: int = 1000,
            global_pool: str = "avg",
            head_norm_first: bool = False,
            attn_backend: str = "auto",
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        num_stages = len(embed_dims)
        if not num_stages == len(num_heads) == len(depths):
            raise ValueError(f"embed_dims, num_heads and depths must have the same length, got {embed_dims}, "
                             f"{num_heads}, {depths}")
        check_attn_backend(attn_backend)
        norm_layer = partial(token_norm_layer(norm_layer), eps=norm_eps)
        norm_layer_cl = partial(token_norm_layer(norm_layer_cl), eps=norm_eps)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.attn_backend = attn_backend
        self.feature_info = []

        self.stem = Stem(in_chans, embed_dims[0], norm_layer=norm_layer)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        in_chs, stages = embed_dims[0], []
        for i in range(num_stages):
            stages.append(DaViTStage(
                in_chs, embed_dims[i], depth=depths[i], downsample=i > 0, attn_types=attn_types,
                num_heads=num_heads[i], window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                drop_path_rates=dpr[i], norm_layer=norm_layer, norm_layer_cl=norm_layer_cl, ffn=ffn, cpe_act=cpe_act,
                down_kernel_size=down_kernel_size, named_blocks=named_blocks, attn_backend=attn_backend))
            in_chs = embed_dims[i]
            self.feature_info.append(dict(num_chs=in_chs, reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        # head_norm_first: norm -> pool -> fc; default DaViT order: pool -> norm -> fc (like ConvNeXt)
        if head_norm_first:
            self.norm_pre = norm_layer(self.num_features)
            self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        else:
            self.norm_pre = nn.Identity()
            self.head = NormMlpClassifierHead(
                self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, norm_layer=norm_layer)
        self.apply(self._init_weights)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+).downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm_pre", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.set_grad_checkpointing(enable=enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the stage outputs (strides 4, 8, 16, 32) selected by ``indices``.

        Args:
            x: input images (B, C, H, W).
            indices: last n stages if int, all if None, else the listed indices (negative from the end).
            norm: apply ``norm_pre`` to the last intermediate when it is taken.
            stop_early: stop after the last requested stage.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the intermediates.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        last_idx = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        feat_idx = -1
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm_pre(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm_pre(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and optionally norm / head) not needed for ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm_pre = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.norm_pre(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm-layout checkpoints pass through; official dingmyu/davit checkpoints (optionally wrapped in
    ``state_dict`` / ``model``) are remapped by timm's filter:

    ``patch_embeds.0.{proj,norm}`` -> ``stem.{conv,norm}``, ``patch_embeds.i.{proj,norm}`` ->
    ``stages.i.downsample.{conv,norm}``, ``main_blocks.i.j.k.cpe.{0,1}`` -> ``stages.i.blocks.j.k.cpe{1,2}``,
    ``norms`` -> ``head.norm``, ``head`` -> ``head.fc``.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    return _timm_davit_filter(state_dict, model)


def _create_davit(variant: str, pretrained: bool = False, **kwargs: Any) -> DaViT:
    default_out_indices = tuple(range(len(kwargs.get("depths", (1, 1, 3, 1)))))
    out_indices = kwargs.pop("out_indices", default_out_indices)
    return convert_linears(build_model_with_cfg(
        DaViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs))


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "apache-2.0",
        **kwargs,
    }


# Weights are timm's ports of the official Microsoft weights (same state_dict layout), from timm's HF hub repos.
default_cfgs = generate_default_cfgs({
    "vz_davit_tiny.msft_in1k": _cfg(hf_hub_id="timm/davit_tiny.msft_in1k"),
    "vz_davit_small.msft_in1k": _cfg(hf_hub_id="timm/davit_small.msft_in1k"),
    "vz_davit_base.msft_in1k": _cfg(hf_hub_id="timm/davit_base.msft_in1k"),
})


@register_model
def vz_davit_tiny(pretrained: bool = False, **kwargs: Any) -> DaViT:
    """DaViT-Tiny (timm ``davit_tiny``) on vitzoo attention."""
    model_args = dict(depths=(1, 1, 3, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_davit("vz_davit_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vz_davit_small(pretrained: bool = False, **kwargs: Any) -> DaViT:
    """DaViT-Small (timm ``davit_small``) on vitzoo attention."""
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_davit("vz_davit_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vz_davit_base(pretrained: bool = False, **kwargs: Any) -> DaViT:
    """DaViT-Base (timm ``davit_base``) on vitzoo attention."""
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32))
    return _create_davit("vz_davit_base", pretrained=pretrained, **dict(model_args, **kwargs))
