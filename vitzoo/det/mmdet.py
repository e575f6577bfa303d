"""mmdet 3 plugin: registers :class:`~vitzoo.det.backbone.VitzooBackbone` and ``EfficientViTFPN`` in
``mmdet.registry.MODELS``.

Use it from a config::

    custom_imports = dict(imports=['vitzoo.det.mmdet'], allow_failed_imports=False)
    model = dict(backbone=dict(type='VitzooBackbone', model_name='biformer_s', model_kwargs=dict(n_win=16),
                               init_cfg=dict(type='Pretrained', checkpoint='biformer_s.pth')), ...)

Importing this module needs mmdet's registry, mmengine and ``mmcv.cnn`` only (all work with mmcv-lite); it never
imports ``mmdet.models`` or ``mmcv.ops`` (mmcv's compiled ops), which full training needs for the detector heads.

``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None, key=None)`` is handled by the adapter itself, not by
mmengine's ``load_checkpoint``: mmengine 0.10 calls ``torch.load`` without ``weights_only``, which on torch >= 2.6
refuses runner-saved checkpoints (``UnpicklingError``); :func:`vitzoo.det.backbone.load_checkpoint_file` loads plain
state dicts safely and falls back to a full unpickle for trusted checkpoints with other objects, and the family's
checkpoint filter maps official layouts (classifier head dropped, missing / unexpected keys reported).
"""
from __future__ import annotations

import copy
import logging
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule

from .backbone import VitzooBackbone as _VitzooBackbone

__all__ = ["VitzooBackbone", "EfficientViTFPN"]

InitCfg = Optional[Union[dict, List[dict]]]


@MODELS.register_module(name="VitzooBackbone")
class VitzooBackbone(_VitzooBackbone, BaseModule):
    """:class:`vitzoo.det.backbone.VitzooBackbone` as an mmengine ``BaseModule`` (same arguments plus ``init_cfg``).

    ``init_cfg``: ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix=None, key=None)`` loads weights through
    :meth:`~vitzoo.det.backbone.VitzooBackbone.load_checkpoint` (``prefix``: take the keys under it, e.g.
    ``'backbone.'``; ``key``: the checkpoint entry, e.g. ``'ema'`` of a vitzoo train.py checkpoint; ``strict``:
    raise on missing / unexpected keys; ``map_location`` is accepted and unused: tensors are read on the CPU and copied
    into the module wherever it lives); other init types are applied by mmengine. Without ``init_cfg`` the model keeps
    its own (timm) initialisation.
    """

    def __init__(
            self,
            model_name: str,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            out_norm: bool = True,
            checkpoint: Optional[str] = None,
            model_kwargs: Optional[dict] = None,
            drop_path_rate: Optional[float] = None,
            init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(model_name, out_indices=out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval,
                         out_norm=out_norm, checkpoint=checkpoint, model_kwargs=model_kwargs,
                         drop_path_rate=drop_path_rate)
        self.init_cfg = copy.deepcopy(init_cfg)  # BaseModule.__init__ ran (through the MRO) with init_cfg=None

    def init_weights(self) -> None:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get("type") == "Pretrained"]
        others = [c for c in cfgs if c.get("type") != "Pretrained"]
        if len(pretrained) > 1:
            raise ValueError(f"init_cfg has {len(pretrained)} Pretrained entries, expected at most one")
        if others:
            from mmengine.model import initialize

            initialize(self, others)
        for cfg in pretrained:
            unknown = set(cfg) - {"type", "checkpoint", "prefix", "key", "map_location", "strict"}
            if unknown:
                raise ValueError(f"init_cfg Pretrained: unknown keys {sorted(unknown)}")
            report = self.load_checkpoint(cfg["checkpoint"], prefix=cfg.get("prefix"), key=cfg.get("key"),
                                          strict=cfg.get("strict", False))
            print_log(f"VitzooBackbone({self.model_name}) init_cfg Pretrained: {report.summary()}", logger="current",
                      level=logging.WARNING if report.missing or report.unexpected else logging.INFO)
        self._is_init = True


@MODELS.register_module()
class EfficientViTFPN(BaseModule):
    """FPN of the official EfficientViT detectors (microsoft/Cream, ``EfficientViT/downstream/efficientvit_fpn.py``).

    mmdet's FPN on the backbone levels, plus ``num_extra_trans_convs`` 2x2 stride-2 transposed convs that grow finer
    levels from the finest lateral (EfficientViT's levels are at strides 16 / 32 / 64: one transposed conv adds
    stride 8 for RetinaNet, two add strides 8 and 4 for Mask R-CNN). Outputs, finest first: the transposed-conv
    levels, the backbone levels, then ``num_outs - ...`` extra levels (max-pool, or stride-2 convs when
    ``add_extra_convs``). Same arguments and parameter names as the official module.
    """

    def __init__(
            self,
            in_channels: List[int],
            out_channels: int,
            num_outs: int,
            start_level: int = 0,
            end_level: int = -1,
            add_extra_convs: Union[bool, str] = False,
            relu_before_extra_convs: bool = False,
            no_norm_on_lateral: bool = False,
            num_extra_trans_convs: int = 0,
            conv_cfg: Optional[dict] = None,
            norm_cfg: Optional[dict] = None,
            act_cfg: Optional[dict] = None,
            upsample_cfg: Optional[dict] = None,
            init_cfg: InitCfg = dict(type="Xavier", layer="Conv2d", distribution="uniform"),
    ) -> None:
        super().__init__(init_cfg)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.num_extra_trans_convs = num_extra_trans_convs
        self.upsample_cfg = dict(upsample_cfg or dict(mode="nearest"))
        self.backbone_end_level = self.num_ins if end_level == -1 else end_level
        if not start_level < self.backbone_end_level <= self.num_ins:
            raise ValueError(f"need start_level < end_level <= {self.num_ins}, got {start_level}, {end_level}")
        self.start_level = start_level
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in (False, "on_input", "on_lateral", "on_output"):
            raise ValueError(f"add_extra_convs must be False/True/'on_input'/'on_lateral'/'on_output', got "
                             f"{add_extra_convs!r}")
        self.add_extra_convs = add_extra_convs
        used = self.backbone_end_level - start_level
        extra_levels = num_outs - used - num_extra_trans_convs
        if extra_levels < 0:
            raise ValueError(f"num_outs ({num_outs}) < backbone levels used ({used}) + num_extra_trans_convs "
                             f"({num_extra_trans_convs})")

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvModule(
                in_channels[i], out_channels, 1, conv_cfg=conv_cfg,
                norm_cfg=None if no_norm_on_lateral else norm_cfg, act_cfg=act_cfg, inplace=False))
            self.fpn_convs.append(ConvModule(
                out_channels, out_channels, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                inplace=False))
        if add_extra_convs:
            for i in range(extra_levels):
                ch = in_channels[self.backbone_end_level - 1] if i == 0 and add_extra_convs == "on_input" \
                    else out_channels
                self.fpn_convs.append(ConvModule(
                    ch, out_channels, 3, stride=2, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                    act_cfg=act_cfg, inplace=False))
        self.extra_trans_convs = nn.ModuleList()
        self.extra_fpn_convs = nn.ModuleList()
        for _ in range(num_extra_trans_convs):
            # mmcv's 'deconv' conv type is nn.ConvTranspose2d (the official TransposedConvModule swaps it in)
            self.extra_trans_convs.append(ConvModule(
                out_channels, out_channels, 2, stride=2, padding=0, conv_cfg=dict(type="deconv"),
                norm_cfg=None if no_norm_on_lateral else norm_cfg, act_cfg=act_cfg, inplace=False))
            self.extra_fpn_convs.append(ConvModule(
                out_channels, out_channels, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                inplace=False))

    def forward(self, inputs: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} input levels, got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            if "scale_factor" in self.upsample_cfg:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(
                    laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)
        extra_laterals: List[torch.Tensor] = []  # finer levels from the finest lateral, finest first
        prev = laterals[0]
        for trans in self.extra_trans_convs:
            prev = trans(prev)
            extra_laterals.insert(0, prev)
        used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        n_extra = self.num_outs - used - len(extra_laterals)
        if n_extra > 0:
            if not self.add_extra_convs:
                for _ in range(n_extra):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {"on_input": inputs[self.backbone_end_level - 1], "on_lateral": laterals[-1],
                          "on_output": outs[-1]}[self.add_extra_convs]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, used + n_extra):
                    outs.append(self.fpn_convs[i](F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        # the official order pairs extra_fpn_convs[i] with the i-th finest extra lateral
        extra_outs = [conv(lat) for conv, lat in zip(self.extra_fpn_convs, extra_laterals)]
        return tuple(extra_outs + outs)

