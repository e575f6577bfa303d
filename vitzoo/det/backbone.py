"""Any vitzoo (or timm) classification model as a multi-scale detection backbone.

:class:`VitzooBackbone` builds the classification model with timm (head dropped), takes its stage outputs through
``forward_intermediates`` and returns NCHW maps, one per ``out_indices`` entry.

Levels and strides (``out_indices`` index the family's resolution stages; stems below stride 4 are not levels):

========================================  ==============  ==================================================
family                                    levels/strides  size_divisor (input padded bottom/right to it)
========================================  ==============  ==================================================
biformer_*                                4 / 4-8-16-32   1: routed attention pads-and-masks inside
nat_*, dinat_*                            4 / 4-8-16-32   1: any size (NATTEN: maps < kernel*dilation padded)
vz_davit_*                                4 / 4-8-16-32   1: windows padded inside, unmasked (as timm/official)
vz_efficientvit_m*                        3 / 16-32-64    1: windows padded inside, unmasked (as official)
vz_maxvit_*_224                           4 / 4-8-16-32   224 = 32 x window 7 (the stride-2 stem is no level)
vz_halonet*                               4 / 4-8-16-32   model.input_multiple (256: block 8 x stride 32)
agent_swin_*                              4 / 4-8-16-32   1: global agent attention; window blocks pad + mask
agent_pvt_*                               4 / 4-8-16-32   1: global agent attention; patch embeds pad inside
========================================  ==============  ==================================================

EfficientViT has three levels, so its ``out_indices`` are within ``(0, 1, 2)`` (strides 16 / 32 / 64); the default
``(0, 1, 2, 3)`` is an error there. The official EfficientViT detectors feed these three maps to an FPN that adds
stride-8 (RetinaNet) or stride-8 and stride-4 (Mask R-CNN) levels with transposed convs (``EfficientViTFPN``, see
:mod:`vitzoo.det.mmdet`).

Padding: where ``size_divisor > 1`` the image is zero-padded at the bottom/right and every output is cropped back to
``ceil(H / s) x ceil(W / s)``. The padded pixels are NOT masked (as in the official code of those families: MaxViT's
block/grid and HaloNet's halo attention see the padding), so outputs near the border depend on the padding; outputs
on inputs that already are multiples of ``size_divisor`` are exactly the model's own features.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["VitzooBackbone", "LoadReport", "load_checkpoint_file", "family_size_divisor"]

_LOGGER = logging.getLogger(__name__)

# Detection defaults under the user's model_kwargs. EfficientViT sizes its attention-bias tables from img_size; 512
# makes every stage's map >= 7 at build time, so all stages get the 7x7 local-window tables (as the official detection
# backbone) and run any input size; 224-trained tables are resized by the family's checkpoint filter.
_FAMILY_DEFAULTS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("vz_efficientvit_", dict(img_size=512)),
)
# Top-level classification-only modules: replaced by Identity (never run by forward_intermediates), their checkpoint
# keys are reported as dropped, not as unexpected.
_CLASSIFIER_MODULES = ("head", "head_dist", "head_drop", "fc_norm", "global_pool")
_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state", "net")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of an NCHW map (the per-output ``norm{i}`` of the official NAT / Swin / BiFormer
    detection backbones, which normalise channels-last tokens before handing NCHW maps to the neck)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@dataclass
class LoadReport:
    """What :meth:`VitzooBackbone.load_checkpoint` did with each key."""

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # backbone weights the checkpoint lacks (left at init)
    new: List[str] = field(default_factory=list)  # detection-only weights (output norms), freshly initialised
    unexpected: List[str] = field(default_factory=list)  # checkpoint keys the backbone has no place for
    dropped: List[str] = field(default_factory=list)  # classifier head / final norm / pruned stages

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "new", "dropped"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                lines.append(f"  {name} ({len(keys)}): {shown}")
        return "\n".join(lines)


def load_checkpoint_file(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a local checkpoint file (URLs are refused: nothing is downloaded at run time) safely when possible.

    ``.safetensors`` files load with safetensors. Pickled files load with ``torch.load(weights_only=True)`` (torch >=
    2.6's default): plain state dicts and dicts of tensors / numbers / strings. Checkpoints that pickle other objects
    (mmengine runner checkpoints: ``message_hub``, ``meta``; vitzoo train.py ``last.pth`` with its RNG states) are
    refused by that unpickler and re-read with ``weights_only=False``, which runs pickled code: only load checkpoints
    you trust (mmengine on torch < 2.6 did so for every checkpoint).
    """
    path = os.fspath(path)
    if re.match(r"^https?://", path):
        # vitzoo never downloads at run time: the user fetches release files once and points at the local copy
        raise ValueError(
            f"checkpoint must be a local file, got the URL {path!r}: download it by hand and pass its path")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device=str(map_location))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        _LOGGER.warning("%s holds objects that torch.load(weights_only=True) refuses (%s); loading it with "
                        "weights_only=False (trusted checkpoints only)", path, str(err).strip().splitlines()[0])
        return torch.load(path, map_location=map_location, weights_only=False)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(ckpt: Any, key: Optional[str]) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: ``ckpt[key]`` if given, else the first of model / state_dict / ... that is
    a state dict (vitzoo train.py ``{'model', 'ema', ...}``, timm / mmengine ``{'state_dict', ...}``, releases
    ``{'model'}``), else ``ckpt`` itself (a plain state dict)."""
    if key is not None:
        if not isinstance(ckpt, Mapping) or key not in ckpt:
            found = list(ckpt.keys())[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise KeyError(f"checkpoint has no entry {key!r} (top-level entries: {found})")
        sd = ckpt[key]
        if not _is_state_dict(sd):
            raise ValueError(f"checkpoint entry {key!r} is not a state dict (got {type(sd).__name__})")
        return dict(sd)
    if _is_state_dict(ckpt):
        return dict(ckpt)
    if isinstance(ckpt, Mapping):
        for name in _WRAPPER_KEYS:
            if _is_state_dict(ckpt.get(name)):
                return dict(ckpt[name])
        raise ValueError(f"no state dict found in checkpoint: top-level entries {list(ckpt.keys())[:10]}, none of "
                         f"{_WRAPPER_KEYS} is a dict of tensors (pass key=... to choose one)")
    raise ValueError(f"checkpoint is a {type(ckpt).__name__}, not a state dict")


def _strip(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def family_size_divisor(model: nn.Module) -> int:
    """Multiple the input height/width must be for ``model`` (1: any size runs, the family pads inside)."""
    multiple = getattr(model, "input_multiple", None)  # HaloNet: block size x deepest halo layer's reduction
    if multiple:
        return int(multiple)
    window, grid = getattr(model, "window_size", None), getattr(model, "grid_size", None)
    stages = getattr(model, "stages", None)
    if window is not None and grid is not None and stages is not None:  # MaxViT: every stage map % window and grid
        unit = [2 ** (len(stages) + 1) * math.lcm(w, g) for w, g in zip(window, grid)]
        return math.lcm(*unit)
    return 1


class VitzooBackbone(nn.Module):
    """Multi-scale NCHW features of a vitzoo / timm model for detection (FPN-style necks).

    Args:
        model_name: timm model name (``import vitzoo`` registers the vitzoo families).
        out_indices: levels to return, indexing the family's stages (see the module doc for strides).
        frozen_stages: -1 trains everything; ``k >= 0`` freezes the stem and the first ``k`` stages (and their
            output norms): ``requires_grad=False`` and kept in eval mode.
        norm_eval: keep every BatchNorm in eval mode (frozen running statistics) while training.
        out_norm: a channels LayerNorm ``norm{i}`` on every output (official NAT / Swin / BiFormer detection code).
        checkpoint: classification (or detection) checkpoint loaded at build, see :meth:`load_checkpoint`.
        model_kwargs: extra ``timm.create_model`` kwargs (detection settings, e.g. BiFormer ``n_win=16``,
            DiNAT COCO ``dilations``).
        drop_path_rate: stochastic depth of the model (None: the model's default).

    Attributes: ``out_channels``, ``strides`` (one per out index), ``size_divisor``.
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
    ) -> None:
        super().__init__()
        import vitzoo  # noqa: F401  registers the vitzoo models with timm

        kwargs: Dict[str, Any] = {}
        for prefix, defaults in _FAMILY_DEFAULTS:
            if model_name.startswith(prefix):
                kwargs.update(defaults)
        kwargs.update(model_kwargs or {})
        for reserved in ("features_only", "out_indices", "pretrained", "num_classes"):
            if reserved in kwargs:
                raise ValueError(f"model_kwargs must not set {reserved!r}: the adapter controls it")
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        self.model_name = model_name
        self._model_kwargs = dict(kwargs, num_classes=0)
        model = timm.create_model(model_name, pretrained=False, **self._model_kwargs)

        info = [dict(f) for f in model.feature_info]
        # levels: stage outputs at stride >= 4 (MaxViT / HaloNet also report their stride-2 stem, which is no level)
        first = next((i for i, f in enumerate(info) if f["reduction"] >= 4), 0)
        self._level_feature = list(range(first, len(info)))
        num_levels = len(self._level_feature)
        level_desc = ", ".join(f"{i}: stride {info[j]['reduction']}" for i, j in enumerate(self._level_feature))
        out_indices = [int(i) for i in out_indices]
        for i in out_indices:
            if not -num_levels <= i < num_levels:
                raise ValueError(f"out_indices {tuple(out_indices)} out of range: {model_name} has {num_levels} levels "
                                 f"({level_desc}); use indices within 0..{num_levels - 1}")
        out_indices = [i % num_levels for i in out_indices]
        if len(set(out_indices)) != len(out_indices) or out_indices != sorted(out_indices):
            raise ValueError(f"out_indices must be increasing and distinct, got {tuple(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.num_levels = num_levels
        # positions in model.feature_info (forward_intermediates indices) of the returned levels
        self.feature_indices = [self._level_feature[i] for i in out_indices]
        self.out_channels: List[int] = [int(info[j]["num_chs"]) for j in self.feature_indices]
        self.strides: List[int] = [int(info[j]["reduction"]) for j in self.feature_indices]

        # stage groups for frozen_stages, from the full (unpruned) model: group 0 stem, 1..num_levels the stages
        self._groups = self._stage_groups(model, num_levels)

        if not hasattr(model, "forward_intermediates"):
            raise TypeError(f"{model_name} has no forward_intermediates (timm's feature API), which the adapter uses")
        if hasattr(model, "prune_intermediate_layers"):  # drop later stages and the final norm (unused weights)
            # prune_head=False: the model was built with num_classes=0 and the head is replaced just below
            # (BiFormer's reset_classifier reads norm.weight, which prune_norm has just removed)
            model.prune_intermediate_layers(self.feature_indices, prune_norm=True, prune_head=False)
        for name in _CLASSIFIER_MODULES:
            if isinstance(getattr(model, name, None), nn.Module) and not isinstance(getattr(model, name), nn.Identity):
                setattr(model, name, nn.Identity())
        self.model = model
        self.size_divisor = family_size_divisor(model)

        self.out_norm = out_norm
        for i, ch in zip(self.out_indices, self.out_channels):
            self.add_module(f"norm{i}", ChannelLayerNorm(ch) if out_norm else nn.Identity())

        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if frozen_stages >= 0 and self._groups is None:
            raise NotImplementedError(f"frozen_stages: cannot tell the stem and stages of {model_name} apart (its "
                                      f"group_matcher does not give one group per stage)")
        if frozen_stages > num_levels:
            raise ValueError(f"frozen_stages must be in -1..{num_levels} for {model_name}, got {frozen_stages}")
        self._freeze_stages()
        self.last_load_report: Optional[LoadReport] = None
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    # -- structure -------------------------------------------------------------------------------------------------

    @staticmethod
    def _stage_groups(model: nn.Module, num_levels: int) -> Optional[List[List[str]]]:
        """Parameter names per group: [stem, stage 0, ..., stage n-1] from timm's coarse ``group_matcher``; groups
        after the last stage (final norm / conv) join the last stage. None when the groups do not fit."""
        if not hasattr(model, "group_matcher"):
            return None
        from timm.models import group_parameters

        matcher = model.group_matcher(coarse=True)
        grouped = group_parameters(model, matcher)
        ordered = [grouped[k] for k in sorted(grouped)]
        if "stem" not in matcher or len(ordered) < num_levels + 1:
            return None
        stem_names = set(ordered[0])
        if not all(re.match(matcher["stem"], n) for n in stem_names):
            return None
        groups = [list(g) for g in ordered[:num_levels + 1]]
        for extra in ordered[num_levels + 1:]:
            groups[-1].extend(extra)
        return groups

    def _frozen_names(self) -> set:
        """Names (in this module) of the parameters ``frozen_stages`` freezes: stem, first stages, their out norms."""
        if self.frozen_stages < 0 or self._groups is None:
            return set()
        names = {f"model.{n}" for g in self._groups[:self.frozen_stages + 1] for n in g}
        for i in self.out_indices:
            if i < self.frozen_stages:  # the output norm of a frozen stage is frozen with it (as mmdet's Swin)
                names.update(f"norm{i}.{n}" for n, _ in getattr(self, f"norm{i}").named_parameters())
        return names

    def _frozen_modules(self, frozen: set) -> List[nn.Module]:
        """Largest modules all of whose parameters are frozen (kept in eval mode: BN statistics, dropout)."""
        mods: List[nn.Module] = []

        def visit(prefix: str, module: nn.Module) -> None:
            names = [f"{prefix}{n}" for n, _ in module.named_parameters()]
            if names and all(n in frozen for n in names):
                mods.append(module)
                return
            for child_name, child in module.named_children():
                visit(f"{prefix}{child_name}.", child)

        for child_name, child in self.named_children():
            visit(f"{child_name}.", child)
        return mods

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = self._frozen_names()
        # by name: parameters held directly by a partly frozen module (e.g. a stage's position embedding) included
        for name, p in self.named_parameters():
            if name in frozen:
                p.requires_grad = False
        for module in self._frozen_modules(frozen):
            module.eval()

    def train(self, mode: bool = True) -> "VitzooBackbone":
        super().train(mode)
        self._freeze_stages()  # frozen parts stay in eval (BatchNorm statistics, dropout, drop-path)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # -- forward ---------------------------------------------------------------------------------------------------

    def _features(self, x: torch.Tensor) -> List[torch.Tensor]:
        return list(self.model.forward_intermediates(
            x, indices=self.feature_indices, intermediates_only=True, norm=False, stop_early=True))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> one (B, C_i, ceil(H / s_i), ceil(W / s_i)) NCHW map per out index."""
        H, W = x.shape[-2:]
        div = self.size_divisor
        pad_b, pad_r = (-H) % div, (-W) % div
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        outs = []
        for i, ch, s, feat in zip(self.out_indices, self.out_channels, self.strides, self._features(x)):
            if feat.ndim != 4:
                raise RuntimeError(f"{self.model_name} level {i}: expected a 4-D map, got shape {tuple(feat.shape)}")
            if feat.shape[1] != ch and feat.shape[-1] == ch:  # an NHWC family (NAT, Swin-like) despite NCHW request
                feat = feat.permute(0, 3, 1, 2)
            h, w = -(-H // s), -(-W // s)
            if feat.shape[1] != ch or feat.shape[2] < h or feat.shape[3] < w:
                raise RuntimeError(f"{self.model_name} level {i}: got {tuple(feat.shape)}, expected (B, {ch}, >={h}, "
                                   f">={w})")
            feat = feat[:, :, :h, :w]
            outs.append(getattr(self, f"norm{i}")(feat).contiguous())
        return tuple(outs)

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def _reference_model(self) -> nn.Module:
        """The full (unpruned) model the family's checkpoint filter expects; on the meta device when it builds there."""
        try:
            with torch.device("meta"):
                return timm.create_model(self.model_name, pretrained=False, **self._model_kwargs)
        except Exception:  # some families compute python values from tensors at build: not meta-safe
            return timm.create_model(self.model_name, pretrained=False, **self._model_kwargs)

    def load_checkpoint(
            self,
            checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
            prefix: Optional[str] = None,
            key: Optional[str] = None,
            strict: bool = False,
    ) -> LoadReport:
        """Load classification weights (head dropped) or weights of a detector built on this adapter.

        Accepts a path / URL or an already loaded object: vitzoo ``train.py`` checkpoints (``'model'`` entry; pass
        ``key='ema'`` for the EMA weights), timm state dicts and ``{'state_dict': ...}`` checkpoints, official release
        layouts (mapped by the family's ``checkpoint_filter_fn``), mmengine runner checkpoints of a detector
        (``backbone.`` keys, or give ``prefix``). The classifier head, final norm and pruned stages are dropped; the
        rest is reported (``missing`` / ``unexpected``; logged as a warning, an error if ``strict``).
        """
        source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<state dict>"
        ckpt = load_checkpoint_file(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        sd = _unwrap(ckpt, key)
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}  # DDP / ModelEma
        if prefix:
            sd = _strip(sd, prefix)
            if not sd:
                raise ValueError(f"{source}: no keys start with prefix {prefix!r}")
        elif any(k.startswith("backbone.") for k in sd):  # a detector's checkpoint: take its backbone
            sd = _strip(sd, "backbone.")

        own = self.state_dict()
        norm_keys = {k for k in own if re.match(r"norm\d+\.", k)}
        report = LoadReport(source=source)
        if sd and all(k.startswith("model.") or re.match(r"norm\d+\.", k) for k in sd):  # this adapter's layout
            target = sd
        else:  # classification layout of the family, possibly an official release layout
            ref = self._reference_model()
            module = sys.modules.get(type(self.model).__module__)
            filter_fn = getattr(module, "checkpoint_filter_fn", None)
            if filter_fn is not None:
                sd = filter_fn(sd, ref)
            ref_keys = set(ref.state_dict().keys())
            target = {}
            for k, v in sd.items():
                if f"model.{k}" in own:
                    target[f"model.{k}"] = v
                elif k in ref_keys or k.split(".")[0] in _CLASSIFIER_MODULES or k.split(".")[0] == "norm":
                    report.dropped.append(k)
                else:
                    report.unexpected.append(k)
            del ref
        for k in list(target):
            if k not in own:
                report.unexpected.append(k)
                del target[k]
        mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                      for k, v in target.items() if tuple(v.shape) != tuple(own[k].shape)]
        if mismatched:
            raise ValueError(f"{source}: {len(mismatched)} shape mismatches (another variant or model_kwargs?):\n  "
                             + "\n  ".join(mismatched[:20]))
        if not target:
            raise ValueError(f"{source}: no key matches {self.model_name} (checkpoint keys start with "
                             f"{sorted({k.split('.')[0] for k in sd})[:10]}); wrong model or checkpoint?")
        self.load_state_dict(target, strict=False)
        report.loaded = sorted(target)
        report.new = sorted(k for k in norm_keys if k not in target)
        report.missing = sorted(k for k in own if k not in target and k not in norm_keys)
        self.last_load_report = report
        text = report.summary()
        if report.missing or report.unexpected:
            if strict:
                raise RuntimeError(text)
            _LOGGER.warning(text)
        else:
            _LOGGER.info(text)
        return report

    def extra_repr(self) -> str:
        return (f"model_name={self.model_name!r}, out_indices={self.out_indices}, strides={self.strides}, "
                f"out_channels={self.out_channels}, size_divisor={self.size_divisor}, "
                f"frozen_stages={self.frozen_stages}, norm_eval={self.norm_eval}")
