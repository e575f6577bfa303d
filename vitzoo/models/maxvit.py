"""MaxViT on vitzoo's neighborhood-attention op.

Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022 (https://arxiv.org/abs/2204.01697).

Architecture and weights are timm's TF-ported MaxViT (``maxvit_{tiny,small,base}_tf_224``, registered here as
``vz_maxvit_{tiny,small,base}_224``): every block is
MBConv -> block (window) attention + MLP -> grid attention + MLP, with the TF relative-position table. timm's
non-attention pieces (stem, MBConv, norms, MLP, heads, configs) are imported from timm; the two attentions go through
:func:`vitzoo.ops.neighborhood_attention_2d` on the natural (B, H, W, heads, d) views of the qkv projection:

* block attention = non-overlapping ``window``-sized windows: ``kernel = stride = window, dilation = 1``;
* grid attention = timm's ``grid_partition`` (window slot ``a`` <-> row ``a * (H // grid) + cell``):
  ``kernel = stride = grid, dilation = H // grid``;
* the table ``T`` of timm's ``RelPosBiasTf`` gives ``bias[(i, j), (x, y)] = T[x - i + w - 1, y - j + w - 1]``
  (key minus query), which is the op's ``rpb`` convention, so it is passed as ``rpb`` unchanged.

MBConv is timm's block; its inference forward on the GPU folds the BatchNorms and fuses the depthwise conv with its
norm, GELU and "same" padding (:mod:`vitzoo.models._mbconv`). In CUDA-graphed training steps every BatchNorm
(+ GELU) of the stem and the MBConvs runs as one op (:mod:`vitzoo.models._batch_norm_act`), and so do SE's gating
with its gradients (:mod:`vitzoo.models._squeeze_excite`) and the stride-2 depthwise convs with their TF padding;
on the GPU the other "same" convolutions and the pooled shortcuts run without padded copies
(:mod:`vitzoo.models._tf_same`).

The state_dict layout is timm's: ``model.load_state_dict(timm_model.state_dict())`` works as is.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead, DropPath, LayerScale, Mlp, NormMlpClassifierHead, extend_tuple, get_act_layer, get_norm_layer,
    to_2tuple,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, named_apply, register_model
from timm.models._features import feature_take_indices
from timm.models.maxxvit import (
    ConvNeXtBlock, MaxxVitCfg, MaxxVitConvCfg, MaxxVitTransformerCfg, MbConvBlock, Stem, cfg_window_size,
    _init_conv, _init_transformer, _overlay_kwargs,
)
from timm.models.maxxvit import checkpoint_filter_fn as _timm_maxxvit_filter

from ._batch_norm_act import fuse_batch_norm_acts
from ._linear import convert_linears
from ._mbconv import fuse_mbconv_blocks
from ._norm import token_norm_layer
from ._partition_attn import PartitionAttention2d, check_attn_backend
from ._squeeze_excite import fuse_se_modules
from ._tf_same import fuse_tf_same

__all__ = ["MaxViT", "MaxViTBlock", "PartitionBlock"]

IntPair = Tuple[int, int]


def _down(size: IntPair) -> IntPair:
    """Output size of timm's stride-2 'same' convs (stem, MBConv downsample): ceil(size / 2)."""
    return tuple((r - 1) // 2 + 1 for r in size)  # type: ignore[return-value]


def stage_sizes(img_size: IntPair, num_stages: int) -> List[IntPair]:
    """Feature-map size of every stage for an input of ``img_size`` (stem stride 2, then stride 2 per stage)."""
    size, sizes = _down(img_size), []
    for _ in range(num_stages):
        size = _down(size)
        sizes.append(size)
    return sizes


class PartitionBlock(nn.Module):
    """Block- or grid-partitioned attention + MLP on a channels-last (B, H, W, C) map (timm's
    ``PartitionAttentionCl``, same parameter names)."""

    def __init__(
            self,
            dim: int,
            partition_type: str = "block",
            cfg: MaxxVitTransformerCfg = MaxxVitTransformerCfg(),
            drop_path: float = 0.0,
            attn_backend: str = "auto",
    ):
        super().__init__()
        if partition_type not in ("block", "grid"):
            raise ValueError(f"partition_type must be 'block' or 'grid', got {partition_type!r}")
        norm_layer = partial(token_norm_layer(cfg.norm_layer_cl), eps=cfg.norm_eps)
        act_layer = get_act_layer(cfg.act_layer)
        self.partition_block = partition_type == "block"
        self.partition_size = to_2tuple(cfg.window_size if self.partition_block else cfg.grid_size)
        if dim % cfg.dim_head != 0:
            raise ValueError(f"dim ({dim}) must be divisible by transformer dim_head ({cfg.dim_head})")

        self.norm1 = norm_layer(dim)
        self.attn = PartitionAttention2d(
            dim, dim // cfg.dim_head, qkv_bias=cfg.attn_bias, proj_bias=cfg.attn_bias, head_first=cfg.head_first,
            rel_pos_size=self.partition_size, proj_drop=cfg.proj_drop, attn_backend=attn_backend)
        self.ls1 = LayerScale(dim, init_values=cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * cfg.expand_ratio), act_layer=act_layer, drop=cfg.proj_drop)
        self.ls2 = LayerScale(dim, init_values=cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        ph, pw = self.partition_size
        if H % ph or W % pw:
            kind = "window" if self.partition_block else "grid"
            raise ValueError(f"MaxViT {kind} attention needs a feature map divisible by {kind}_size {(ph, pw)}, "
                             f"got {(H, W)}")
        dilation = (1, 1) if self.partition_block else (H // ph, W // pw)
        return self.attn(x, (ph, pw), dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self._partition_attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class MaxViTBlock(nn.Module):
    """MBConv (or ConvNeXt) -> block attention -> grid attention; NCHW in and out (timm's ``MaxxVitBlock``)."""

    def __init__(
            self,
            dim: int,
            dim_out: int,
            stride: int = 1,
            conv_cfg: MaxxVitConvCfg = MaxxVitConvCfg(),
            transformer_cfg: MaxxVitTransformerCfg = MaxxVitTransformerCfg(),
            drop_path: float = 0.0,
            attn_backend: str = "auto",
    ):
        super().__init__()
        conv_cls = ConvNeXtBlock if conv_cfg.block_type == "convnext" else MbConvBlock
        self.conv = fuse_mbconv_blocks(conv_cls(dim, dim_out, stride=stride, cfg=conv_cfg, drop_path=drop_path),
                                       backend=attn_backend)
        attn_kwargs = dict(dim=dim_out, cfg=transformer_cfg, drop_path=drop_path, attn_backend=attn_backend)
        self.attn_block = None if transformer_cfg.no_block_attn else PartitionBlock(**attn_kwargs)
        self.attn_grid = PartitionBlock(partition_type="grid", **attn_kwargs)

    def init_weights(self, scheme: str = "") -> None:
        if self.attn_block is not None:
            named_apply(partial(_init_transformer, scheme=scheme), self.attn_block)
        named_apply(partial(_init_transformer, scheme=scheme), self.attn_grid)
        named_apply(partial(_init_conv, scheme=scheme), self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # free view when the conv output is channels_last
        if self.attn_block is not None:
            x = self.attn_block(x)
        x = self.attn_grid(x)
        return x.permute(0, 3, 1, 2)


class MaxViTStage(nn.Module):
    """One resolution stage: ``depth`` MaxViT blocks, the first one with stride 2."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            conv_cfg: MaxxVitConvCfg,
            transformer_cfg: MaxxVitTransformerCfg,
            drop_path: List[float],
            attn_backend: str = "auto",
    ):
        super().__init__()
        self.grad_checkpointing = False
        blocks = []
        for i in range(depth):
            blocks.append(MaxViTBlock(
                in_chs if i == 0 else out_chs, out_chs, stride=2 if i == 0 else 1, conv_cfg=conv_cfg,
                transformer_cfg=transformer_cfg, drop_path=drop_path[i], attn_backend=attn_backend))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MaxViT(nn.Module):
    """MaxViT (Tu et al., ECCV 2022) with block/grid attention on :func:`vitzoo.ops.neighborhood_attention_2d`.

    Takes timm's ``MaxxVitCfg``; only MaxViT ('M') blocks with the TF relative-position table (``rel_pos_type=
    'bias_tf'``) are supported. Window and grid sizes default to ``img_size // 32`` (timm's ``partition_ratio``);
    every stage's feature map must be divisible by them, so inputs must be multiples of ``32 * lcm(window, grid)``
    per axis (224 for the 224 models); other sizes raise ``ValueError``.

    Args:
        cfg: timm ``MaxxVitCfg``.
        img_size: input size the window/grid sizes are derived from.
        in_chans, num_classes, global_pool, drop_rate, drop_path_rate: as in timm.
        attn_backend: "auto" | "torch" | "triton" for every attention call.
        **kwargs: ``transformer_*`` / ``conv_*`` overrides of the cfg (timm's convention).
    """

    def __init__(
            self,
            cfg: MaxxVitCfg,
            img_size: Union[int, IntPair] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            attn_backend: str = "auto",
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
            **kwargs: Any,
    ):
        super().__init__()
        img_size = to_2tuple(img_size)
        if kwargs:
            cfg = _overlay_kwargs(cfg, **kwargs)
        self._check_cfg(cfg)
        check_attn_backend(attn_backend)
        if min(img_size) < cfg.transformer_cfg.partition_ratio and cfg.transformer_cfg.window_size is None:
            raise ValueError(f"img_size {img_size} is too small: window/grid sizes are img_size // "
                             f"{cfg.transformer_cfg.partition_ratio}, so img_size must be a positive multiple of "
                             f"{cfg.transformer_cfg.partition_ratio}")
        transformer_cfg = cfg_window_size(cfg.transformer_cfg, img_size)
        self.window_size, self.grid_size = tuple(transformer_cfg.window_size), tuple(transformer_cfg.grid_size)
        self.img_size = img_size
        num_stages = len(cfg.embed_dim)
        if not len(cfg.depths) == len(cfg.block_type) == num_stages:
            raise ValueError("cfg.embed_dim, cfg.depths and cfg.block_type must have the same length")
        self._check_size(img_size, "img_size", num_stages)

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.embed_dim = cfg.embed_dim[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.attn_backend = attn_backend

        self.stem = Stem(
            in_chs=in_chans, out_chs=cfg.stem_width, padding=cfg.conv_cfg.padding, bias=cfg.stem_bias,
            act_layer=cfg.conv_cfg.act_layer, norm_layer=cfg.conv_cfg.norm_layer, norm_eps=cfg.conv_cfg.norm_eps)
        stride = self.stem.stride
        self.feature_info = [dict(num_chs=self.stem.out_chs, reduction=stride, module="stem")]
        # cpu: works under meta-device init
        dpr = torch.linspace(0, drop_path_rate, sum(cfg.depths), device="cpu").split(list(cfg.depths))
        dpr = [x.tolist() for x in dpr]
        in_chs, stages = self.stem.out_chs, []
        for i in range(num_stages):
            stages.append(MaxViTStage(
                in_chs, cfg.embed_dim[i], cfg.depths[i], cfg.conv_cfg, transformer_cfg, dpr[i], attn_backend))
            stride *= 2
            in_chs = cfg.embed_dim[i]
            self.feature_info.append(dict(num_chs=in_chs, reduction=stride, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        final_norm_layer = partial(get_norm_layer(cfg.transformer_cfg.norm_layer), eps=cfg.transformer_cfg.norm_eps)
        if cfg.head_hidden_size:
            self.norm = nn.Identity()
            self.head_hidden_size = cfg.head_hidden_size
            self.head = NormMlpClassifierHead(
                self.num_features, num_classes, hidden_size=self.head_hidden_size, pool_type=global_pool,
                drop_rate=drop_rate, norm_layer=final_norm_layer)
        else:
            self.head_hidden_size = self.num_features
            self.norm = final_norm_layer(self.num_features)
            self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

        fuse_batch_norm_acts(self, attn_backend)  # graphed training on CUDA: BatchNorm (+ GELU) as one op
        fuse_se_modules(self, attn_backend)  # graphed training: SE's gate multiply and its gradients in two passes
        fuse_tf_same(self, backend=attn_backend)  # on CUDA: stride-2 "same" convs and pooled shortcuts, no padded copy
        if cfg.weight_init:
            named_apply(partial(self._init_weights, scheme=cfg.weight_init), self)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    @staticmethod
    def _check_cfg(cfg: MaxxVitCfg) -> None:
        block_types = [extend_tuple(t, 1) for t in cfg.block_type]
        if any(t != "M" for ts in block_types for t in ts):
            raise ValueError(f"MaxViT supports block_type 'M' only (use timm for CoAtNet / parallel blocks), got "
                             f"{cfg.block_type}")
        tcfg = cfg.transformer_cfg
        if tcfg.rel_pos_type != "bias_tf":
            raise ValueError(f"transformer rel_pos_type must be 'bias_tf', got {tcfg.rel_pos_type!r}")
        if tcfg.attn_drop:
            raise ValueError(f"transformer attn_drop must be 0 (the fused attention op has no dropout), "
                             f"got {tcfg.attn_drop}")
        if tcfg.use_nchw_attn:
            raise ValueError("transformer use_nchw_attn=True is not supported (attention always runs channels-last)")

    def _check_size(self, size: IntPair, name: str, num_stages: Optional[int] = None) -> None:
        """Raise ValueError unless every stage's feature map is divisible by the window and grid sizes."""
        num_stages = num_stages if num_stages is not None else len(self.stages)
        for feat in stage_sizes(size, num_stages):
            if any(f % p for f, p in zip(feat, self.window_size)) or any(f % p for f, p in zip(feat, self.grid_size)):
                unit = tuple(2 ** (num_stages + 1) * math.lcm(w, g) for w, g in zip(self.window_size, self.grid_size))
                raise ValueError(
                    f"{name} {tuple(size)} is not supported: MaxViT with window_size {self.window_size} and grid_size "
                    f"{self.grid_size} needs every stage's feature map (here {stage_sizes(size, num_stages)}) to be "
                    f"divisible by both, i.e. {name} a multiple of {unit} (window/grid default to img_size // 32, so "
                    f"build the model with the img_size you feed it)")

    def _init_weights(self, module: nn.Module, name: str, scheme: str = "") -> None:
        if hasattr(module, "init_weights"):
            try:
                module.init_weights(scheme=scheme)
            except TypeError:
                module.init_weights()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {k for k, _ in self.named_parameters() if "relative_position_bias_table" in k}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

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
        """Forward returning intermediates: index 0 is the stem (stride 2), 1..4 the stages (strides 4..32).

        Args:
            x: input images (B, C, H, W).
            indices: last n features if int, all if None, else the listed indices (negative from the end).
            norm: apply the final norm to the last intermediate when it is taken.
            stop_early: stop after the last requested intermediate.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the intermediates.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_size(tuple(x.shape[-2:]), "input size")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        feat_idx = 0
        x = self.stem(x)
        if feat_idx in take_indices:
            intermediates.append(x)
        last_idx = len(self.stages)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index]
        for stage in stages:
            feat_idx += 1
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and optionally norm / head) not needed for ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(tuple(x.shape[-2:]), "input size")
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _tf_cfg() -> Dict[str, Any]:
    """Settings of the TF-ported MaxViT weights (same as timm's ``_tf_cfg``)."""
    return dict(
        conv_cfg=MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same"),
        transformer_cfg=MaxxVitTransformerCfg(
            norm_eps=1e-5, act_layer="gelu_tanh", head_first=False, rel_pos_type="bias_tf"),
    )


model_cfgs = dict(
    maxvit_tiny_tf=MaxxVitCfg(
        embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), block_type=("M",) * 4, stem_width=64, stem_bias=True,
        head_hidden_size=512, **_tf_cfg()),
    maxvit_small_tf=MaxxVitCfg(
        embed_dim=(96, 192, 384, 768), depths=(2, 2, 5, 2), block_type=("M",) * 4, stem_width=64, stem_bias=True,
        head_hidden_size=768, **_tf_cfg()),
    maxvit_base_tf=MaxxVitCfg(
        embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), block_type=("M",) * 4, stem_width=64, stem_bias=True,
        head_hidden_size=768, **_tf_cfg()),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm MaxViT checkpoints load as is (same key layout); timm's filter resizes relative-position tables for other
    window sizes (e.g. 224 weights into a 384 model) and reshapes conv <-> linear weights."""
    if "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    return _timm_maxxvit_filter(state_dict, model)


def _create_maxvit(variant: str, cfg_variant: str, pretrained: bool = False, **kwargs: Any) -> MaxViT:
    return convert_linears(build_model_with_cfg(
        MaxViT, variant, pretrained,
        model_cfg=model_cfgs[cfg_variant],
        feature_cfg=dict(flatten_sequential=True),
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs))


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1", "classifier": "head.fc",
        "fixed_input_size": True, "license": "apache-2.0", **kwargs,
    }


# Weights are timm's (same state_dict layout), fetched from timm's HF hub repos.
default_cfgs = generate_default_cfgs({
    "vz_maxvit_tiny_224.in1k": _cfg(hf_hub_id="timm/maxvit_tiny_tf_224.in1k"),
    "vz_maxvit_small_224.in1k": _cfg(hf_hub_id="timm/maxvit_small_tf_224.in1k"),
    "vz_maxvit_base_224.in1k": _cfg(hf_hub_id="timm/maxvit_base_tf_224.in1k"),
    "vz_maxvit_base_224.in21k": _cfg(hf_hub_id="timm/maxvit_base_tf_224.in21k", num_classes=21843),
})


@register_model
def vz_maxvit_tiny_224(pretrained: bool = False, **kwargs: Any) -> MaxViT:
    """MaxViT-T 224 (timm ``maxvit_tiny_tf_224``) on vitzoo attention."""
    return _create_maxvit("vz_maxvit_tiny_224", "maxvit_tiny_tf", pretrained=pretrained, **kwargs)


@register_model
def vz_maxvit_small_224(pretrained: bool = False, **kwargs: Any) -> MaxViT:
    """MaxViT-S 224 (timm ``maxvit_small_tf_224``) on vitzoo attention."""
    return _create_maxvit("vz_maxvit_small_224", "maxvit_small_tf", pretrained=pretrained, **kwargs)


@register_model
def vz_maxvit_base_224(pretrained: bool = False, **kwargs: Any) -> MaxViT:
    """MaxViT-B 224 (timm ``maxvit_base_tf_224``) on vitzoo attention."""
    return _create_maxvit("vz_maxvit_base_224", "maxvit_base_tf", pretrained=pretrained, **kwargs)
