"""torchvision RetinaNet / Faster R-CNN / Mask R-CNN with an FPN on any vitzoo backbone (no mmcv needed).

    from vitzoo.det.torchvision_det import build_detector
    model = build_detector("maskrcnn", "nat_mini", num_classes=2, min_size=512, max_size=800)

``num_classes`` counts the background (torchvision's convention): one object class -> ``num_classes=2``; labels
are ``1..num_classes-1`` for every arch (RetinaNet simply never predicts label 0).

The FPN levels follow the backbone's ``strides``: R-CNNs use every backbone level plus a max-pooled extra level (P2-P6
for strides 4/8/16/32), RetinaNet drops the stride-4 level and adds P6/P7 from P5 (P3-P7), as in the papers and in
torchvision's ResNet-50 models. Anchor sizes default to ``8 * stride`` (R-CNN, one size per level: 32 ... 512 on
P2-P6) and ``4 * stride * 2**(i/3), i = 0, 1, 2`` (RetinaNet: 32 ... 812 on P3-P7), so they stay matched to the
levels whatever ``out_indices`` gives. Image mean/std come from the backbone's timm ``pretrained_cfg`` (the
normalisation its classification weights were trained with) and the padding multiple (torchvision's
``GeneralizedRCNNTransform(size_divisible=...)``) is the least common multiple of ``backbone.size_divisor`` (what
windowed attention needs to tile the input) and the coarsest backbone stride (what torchvision's anchor generator
needs to place anchors at the right stride).
"""
from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

__all__ = ["ARCHS", "VitzooFPN", "build_detector", "default_anchor_sizes", "default_out_indices",
           "detector_kwarg_names"]

ARCHS = ("retinanet", "fasterrcnn", "maskrcnn")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_out_indices(arch: str, num_levels: int = 4) -> Tuple[int, ...]:
    """Backbone levels fed to the FPN: all of them for the R-CNNs, all but the stride-4 one for RetinaNet."""
    _check_arch(arch)
    return tuple(range(1, num_levels)) if arch == "retinanet" else tuple(range(num_levels))


def default_anchor_sizes(arch: str, strides: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """One tuple of anchor sizes per FPN output level (``strides`` includes the extra levels)."""
    _check_arch(arch)
    if arch == "retinanet":  # three octave scales per level, as in the RetinaNet paper
        return tuple(tuple(int(4 * s * 2 ** (i / 3)) for i in range(3)) for s in strides)
    return tuple((8 * s,) for s in strides)


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"detector arch must be one of {', '.join(ARCHS)}; got {arch!r}")


class VitzooFPN(nn.Module):
    """A multi-scale backbone (``forward -> tuple of NCHW maps``, ``out_channels``, ``strides``) + torchvision's FPN.

    Exposes what torchvision's detectors need: ``out_channels`` (an int, the FPN width) and a forward returning an
    ``OrderedDict`` of maps named "0", "1", ... plus the extra levels ("pool" or "p6", "p7").
    """

    def __init__(self, body: nn.Module, fpn_channels: int = 256, extra: str = "maxpool") -> None:
        super().__init__()
        if extra not in ("maxpool", "p6p7"):
            raise ValueError(f"extra must be 'maxpool' or 'p6p7', got {extra!r}")
        self.body = body
        in_channels = [int(c) for c in body.out_channels]
        # P6/P7 from P5 (in == out channels makes torchvision's LastLevelP6P7 take the FPN output, "v2" style)
        extra_blocks = LastLevelP6P7(fpn_channels, fpn_channels) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=extra_blocks)
        self.out_channels = fpn_channels
        strides = [int(s) for s in body.strides]
        n_extra = 2 if extra == "p6p7" else 1
        self.strides: List[int] = strides + [strides[-1] * 2 ** (i + 1) for i in range(n_extra)]
        self.feature_names: List[str] = [str(i) for i in range(len(strides))]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        if len(feats) != len(self.feature_names):
            raise RuntimeError(f"backbone returned {len(feats)} maps, expected {len(self.feature_names)}")
        return self.fpn(OrderedDict(zip(self.feature_names, feats)))


def _find_pretrained_cfg(module: nn.Module) -> Optional[Dict[str, Any]]:
    """The timm ``pretrained_cfg`` of the backbone (on the adapter itself or on the timm model it wraps)."""
    for m in [module, *module.modules()]:
        cfg = getattr(m, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("mean") is not None:
            return cfg
    return None


def detector_kwarg_names(arch: str) -> List[str]:
    """Keyword arguments the torchvision constructor of ``arch`` accepts (for config validation)."""
    _check_arch(arch)
    cls = {"retinanet": RetinaNet, "fasterrcnn": FasterRCNN, "maskrcnn": MaskRCNN}[arch]
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "backbone", "num_classes", "kwargs"}
    names |= {"size_divisible", "fixed_size", "_skip_resize"}  # forwarded to GeneralizedRCNNTransform
    return sorted(names)


def build_detector(arch: str, backbone_name: str, num_classes: int, *, out_indices: Optional[Sequence[int]] = None,
                   frozen_stages: int = -1, norm_eval: bool = False, out_norm: bool = True,
                   checkpoint: Optional[str] = None, model_kwargs: Optional[Dict[str, Any]] = None,
                   drop_path_rate: Optional[float] = None, fpn_channels: int = 256,
                   anchor_sizes: Optional[Sequence[Sequence[int]]] = None,
                   aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), min_size: Any = 800, max_size: int = 1333,
                   image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
                   representation_size: int = 1024, mask_head_dim: int = 256, head_norm: Optional[str] = None,
                   backbone: Optional[nn.Module] = None, **detector_kwargs: Any) -> nn.Module:
    """A torchvision detector on a :class:`vitzoo.det.backbone.VitzooBackbone` of ``backbone_name``.

    Args:
        arch: "retinanet" | "fasterrcnn" | "maskrcnn".
        num_classes: object classes + 1 (background).
        out_indices .. drop_path_rate: passed to ``VitzooBackbone`` (out_indices default: see module docstring).
        fpn_channels: FPN width (256 in the papers; smaller is much cheaper on CPU).
        anchor_sizes: one sequence per FPN output level; default ``default_anchor_sizes(arch, strides)``.
        min_size, max_size: torchvision's resize (shorter side to ``min_size``, a tuple picks one at random while
            training, longer side capped at ``max_size``).
        image_mean, image_std: default: the backbone's pretrained_cfg (ImageNet when it has none).
        representation_size: width of the R-CNN box head's two FC layers (torchvision: 1024).
        mask_head_dim: width of the Mask R-CNN mask head's four convs (torchvision: 256).
        head_norm: "gn" puts GroupNorm in the RetinaNet head (torchvision's v2 head), None: no norm.
        backbone: an already-built multi-scale backbone to use instead of building one (tests, custom adapters).
        detector_kwargs: any other keyword of torchvision's ``RetinaNet`` / ``FasterRCNN`` / ``MaskRCNN``
            (e.g. ``box_score_thresh``, ``rpn_batch_size_per_image``, ``detections_per_img``).
    """
    _check_arch(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    unknown = sorted(set(detector_kwargs) - set(detector_kwarg_names(arch)))
    if unknown:
        raise TypeError(f"{arch}: unknown torchvision detector argument(s) {unknown}")
    if backbone is None:
        from vitzoo.det.backbone import VitzooBackbone  # imported late: the adapter imports timm + every vitzoo model

        backbone = VitzooBackbone(backbone_name, out_indices=tuple(out_indices or default_out_indices(arch)),
                                  frozen_stages=frozen_stages, norm_eval=norm_eval, out_norm=out_norm,
                                  checkpoint=checkpoint, model_kwargs=dict(model_kwargs or {}),
                                  drop_path_rate=drop_path_rate)
    # torchvision's AnchorGenerator derives each level's stride as padded_size // map_size, which is only right when
    # the padded batch is a multiple of the coarsest backbone stride (ResNet detectors use 32); families that need a
    # larger multiple (MaxViT 224, HaloNet 256) set it through backbone.size_divisor
    size_divisor = math.lcm(int(getattr(backbone, "size_divisor", 1)), max(int(s) for s in backbone.strides))
    pcfg = _find_pretrained_cfg(backbone) or {}
    mean = list(image_mean if image_mean is not None else pcfg.get("mean", _IMAGENET_MEAN))
    std = list(image_std if image_std is not None else pcfg.get("std", _IMAGENET_STD))

    neck = VitzooFPN(backbone, fpn_channels, extra="p6p7" if arch == "retinanet" else "maxpool")
    sizes = tuple(tuple(int(s) for s in level) for level in (anchor_sizes or default_anchor_sizes(arch, neck.strides)))
    if len(sizes) != len(neck.strides):
        raise ValueError(f"anchor_sizes needs one entry per FPN level ({len(neck.strides)}: strides "
                         f"{neck.strides}), got {len(sizes)}")
    anchors = AnchorGenerator(sizes, (tuple(float(a) for a in aspect_ratios),) * len(sizes))
    if isinstance(min_size, (list, tuple)):
        min_size = tuple(int(s) for s in min_size)
    common = dict(min_size=min_size, max_size=int(max_size), image_mean=mean, image_std=std,
                  size_divisible=size_divisor)

    if arch == "retinanet":
        norm_layer = None
        if head_norm == "gn":
            norm_layer = partial(nn.GroupNorm, min(32, fpn_channels))
        elif head_norm is not None:
            raise ValueError(f"head_norm must be 'gn' or None, got {head_norm!r}")
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm_layer)
        model: nn.Module = RetinaNet(neck, num_classes, anchor_generator=anchors, head=head,
                                     **{**common, **detector_kwargs})
    else:
        # the RoI poolers read only the backbone levels (not the extra one), named as VitzooFPN names them
        box_pool = MultiScaleRoIAlign(neck.feature_names, output_size=7, sampling_ratio=2)
        rcnn = dict(rpn_anchor_generator=anchors, box_roi_pool=box_pool,
                    box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
                    box_predictor=FastRCNNPredictor(representation_size, num_classes))
        if arch == "fasterrcnn":
            model = FasterRCNN(neck, num_classes=None, **rcnn, **{**common, **detector_kwargs})
        else:
            mask_pool = MultiScaleRoIAlign(neck.feature_names, output_size=14, sampling_ratio=2)
            # torchvision's default mask predictor hard-codes 256 input channels: build it for mask_head_dim
            model = MaskRCNN(neck, num_classes=None, **rcnn, mask_roi_pool=mask_pool,
                             mask_head=MaskRCNNHeads(fpn_channels, (mask_head_dim,) * 4, 1),
                             mask_predictor=MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes),
                             **{**common, **detector_kwargs})
    model.arch = arch  # type: ignore[assignment]
    model.num_classes = num_classes  # type: ignore[assignment]
    return model
