"""HaloNet on vitzoo's halo-attention op.

Paper: `Scaling Local Self-Attention for Parameter Efficient Visual Backbones` (Vaswani et al., CVPR 2021)
    - https://arxiv.org/abs/2103.12731

timm's ``halonet26t``, ``halonet50ts`` and ``halonet_h1`` are ByobNet configs whose self-attention layer is
``timm.layers.HaloAttn``. We build the very same ByobNet configs with the self-attention layer swapped for
:class:`HaloAttnVz` (a ``HaloAttn`` subclass: same parameters, same key names, same init) whose attention core is one
:func:`vitzoo.ops.halo_attention_2d` call on the natural (B, H, W, heads, d) layout, instead of the unfold of
``(block + 2 * halo)^2`` key/value windows per block, the explicit logits tensor and the relative-logit pad/reshape
tricks. So ``load_state_dict(timm_model.state_dict())`` works unchanged and gives timm's outputs. In inference on the
GPU the conv-BN-ReLU layers and the blocks' residual tails run as fused cuDNN convolutions with the BatchNorms
folded (:mod:`vitzoo.models._conv_norm_act`).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers.halo_attn import HaloAttn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.byoanet import model_cfgs as timm_byoa_cfgs
from timm.models.byobnet import ByoBlockCfg, ByoModelCfg, ByobNet, checkpoint_filter_fn as byob_filter_fn

from vitzoo.ops import BACKENDS, halo_attention_2d

from ._batch_norm_act import fuse_batch_norm_acts
from ._conv_norm_act import fuse_conv_norm_acts
from ._linear import convert_linears

__all__ = ["HaloAttnVz", "HaloNetVz", "checkpoint_filter_fn"]


class HaloAttnVz(HaloAttn):
    """timm ``HaloAttn`` (same ``q``, ``kv``, ``pos_embed.height_rel/width_rel`` parameters and init) with the
    attention core computed by :func:`vitzoo.ops.halo_attention_2d`.

    ``feat_reduction`` (set by :class:`HaloNetVz`) is how much the image is downsampled before this layer; it only
    makes the input-size error message name the image-size multiple.
    """

    def __init__(self, dim: int, *args, attn_backend: str = "auto", **kwargs):
        super().__init__(dim, *args, **kwargs)
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {BACKENDS}, got {attn_backend!r}")
        self.attn_backend = attn_backend
        self.feat_reduction: Optional[int] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if H % self.block_size or W % self.block_size:
            hint = ""
            if self.feat_reduction is not None:
                hint = (f"; this layer sees the image downsampled {self.feat_reduction}x, so the input image height "
                        f"and width must be multiples of {self.block_size * self.feat_reduction}")
            raise ValueError(f"halo attention needs a feature map that is a multiple of block_size={self.block_size}, "
                             f"got {H}x{W}{hint}")
        heads, dqk, dv = self.num_heads, self.dim_head_qk, self.dim_head_v
        q = self.q(x)  # (B, heads * dqk, H / block_stride, W / block_stride), channels head-major as in timm
        kv = self.kv(x)  # (B, heads * (dqk + dv), H, W), per head [k | v]
        q = q.permute(0, 2, 3, 1).unflatten(3, (heads, dqk))
        k, v = kv.permute(0, 2, 3, 1).unflatten(3, (heads, dqk + dv)).split([dqk, dv], dim=-1)
        rel_h, rel_w = self.pos_embed.height_rel, self.pos_embed.width_rel
        if self.scale_pos_embed:  # (q.k + q.rel) * scale == scale * q.k + q.(rel * scale)
            rel_h, rel_w = rel_h * self.scale, rel_w * self.scale
        out = halo_attention_2d(q, k, v, self.block_size, self.halo_size, rel_h=rel_h, rel_w=rel_w,
                                scale=self.scale, backend=self.attn_backend)
        out = out.flatten(3).permute(0, 3, 1, 2)  # (B, heads * dv, Hq, Wq), channel = head * dv + d as in timm
        return self.pool(out)


def _vz_block_cfg(cfg: ByoBlockCfg, attn_backend: str) -> ByoBlockCfg:
    if cfg.self_attn_layer != "halo":
        return cfg
    return replace(cfg, self_attn_layer=HaloAttnVz,
                   self_attn_kwargs=dict(cfg.self_attn_kwargs or {}, attn_backend=attn_backend))


def vz_halo_cfg(cfg: ByoModelCfg, attn_backend: str = "auto") -> ByoModelCfg:
    """The same ByobNet config with every ``'halo'`` self-attention layer (model- or block-level) made vitzoo's."""
    blocks = tuple(
        tuple(_vz_block_cfg(b, attn_backend) for b in blk) if isinstance(blk, (tuple, list))
        else _vz_block_cfg(blk, attn_backend)
        for blk in cfg.blocks
    )
    cfg = replace(cfg, blocks=blocks)
    if cfg.self_attn_layer == "halo":
        cfg = replace(cfg, self_attn_layer=HaloAttnVz,
                      self_attn_kwargs=dict(cfg.self_attn_kwargs or {}, attn_backend=attn_backend))
    return cfg


def _stage_strides(cfg: ByoModelCfg) -> List[int]:
    return [(blk[0] if isinstance(blk, (tuple, list)) else blk).s for blk in cfg.blocks]


class HaloNetVz(ByobNet):
    """timm ByobNet (HaloNet configs) whose halo layers run on :func:`vitzoo.ops.halo_attention_2d`.

    Input height and width must be multiples of ``input_multiple`` (block_size times the deepest halo layer's
    reduction, 256 for the timm configs); other sizes raise a ValueError naming that multiple.
    """

    def __init__(self, cfg: ByoModelCfg, attn_backend: str = "auto", **kwargs):
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {BACKENDS}, got {attn_backend!r}")
        super().__init__(vz_halo_cfg(cfg, attn_backend), **kwargs)
        fuse_conv_norm_acts(self)  # inference on CUDA: BN folded, conv + bias (+ residual) + ReLU in one cuDNN call
        fuse_batch_norm_acts(self, attn_backend)  # graphed training on CUDA: BN + (residual +) activation as one op
        self.attn_backend = attn_backend
        self.input_multiple = self._annotate_reductions(_stage_strides(cfg))

    def _annotate_reductions(self, strides: List[int]) -> int:
        """Set each halo layer's ``feat_reduction`` (from the per-stage output reductions in feature_info; a stage's
        first block sees the previous stage's resolution) and return the image-size multiple they need."""
        out_red: Dict[int, int] = {}
        for info in self.feature_info:  # 'stage' s + 1 entries carry stage s's output reduction
            out_red[info["stage"] - 1] = info["reduction"]
        multiple = 1
        for s, stage in enumerate(self.stages):
            stage_out = out_red[s]
            for j, block in enumerate(stage):
                attn = getattr(block, "self_attn", None)
                if isinstance(attn, HaloAttnVz):
                    attn.feat_reduction = stage_out // strides[s] if j == 0 else stage_out
                    need = attn.block_size * attn.feat_reduction
                    multiple = multiple * need // math.gcd(multiple, need)
        return multiple

    def _check_input(self, x: torch.Tensor) -> None:
        H, W = x.shape[-2:]
        if H % self.input_multiple or W % self.input_multiple:
            raise ValueError(
                f"HaloNet input height and width must be multiples of {self.input_multiple} (block_size x the "
                f"reduction of the deepest halo-attention layer), got {H}x{W}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return super().forward_features(x)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        self._check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's HaloNet checkpoints load as-is (identical keys); defer to ByobNet's filter for other layouts."""
    return byob_filter_fn(state_dict, model)


def _create_halonet(variant: str, pretrained: bool = False, **kwargs) -> HaloNetVz:
    base = variant[len("vz_"):]
    return convert_linears(build_model_with_cfg(
        HaloNetVz, variant, pretrained,
        model_cfg=timm_byoa_cfgs[base],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    ))


def _cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 256, 256), "pool_size": (8, 8), "crop_pct": 0.95,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv", "classifier": "head.fc", "fixed_input_size": False,
        "min_input_size": (3, 256, 256), "license": "apache-2.0", "paper_ids": "arXiv:2103.12731", **kwargs,
    }


_TIMM_WEIGHTS = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-attn-weights/"

default_cfgs = generate_default_cfgs({
    "vz_halonet_h1.untrained": _cfg(),
    "vz_halonet26t.a1h_in1k": _cfg(url=_TIMM_WEIGHTS + "halonet26t_a1h_256-3083328c.pth",
                                   hf_hub_id="timm/halonet26t.a1h_in1k"),
    "vz_halonet50ts.a1h_in1k": _cfg(url=_TIMM_WEIGHTS + "halonet50ts_a1h2_256-f3a3daee.pth",
                                    hf_hub_id="timm/halonet50ts.a1h_in1k", crop_pct=0.94),
})


@register_model
def vz_halonet_h1(pretrained: bool = False, **kwargs) -> HaloNetVz:
    """HaloNet-H1 (timm ``halonet_h1``): halo attention in all stages, as in the paper."""
    return _create_halonet("vz_halonet_h1", pretrained=pretrained, **kwargs)


@register_model
def vz_halonet26t(pretrained: bool = False, **kwargs) -> HaloNetVz:
    """HaloNet with a ResNet26-t backbone (timm ``halonet26t``): halo attention in the last two stages."""
    return _create_halonet("vz_halonet26t", pretrained=pretrained, **kwargs)


@register_model
def vz_halonet50ts(pretrained: bool = False, **kwargs) -> HaloNetVz:
    """HaloNet with a ResNet50-t backbone, SiLU (timm ``halonet50ts``): halo attention in the last three stages."""
    return _create_halonet("vz_halonet50ts", pretrained=pretrained, **kwargs)
