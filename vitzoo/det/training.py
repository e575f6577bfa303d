"""The pieces of a detection training step shared by ``tools/train_det.py`` and ``tools/bench_det.py``: the detector
and optimizer from a detection config (``vitzoo.det.config``), and one optimizer step, so that the benchmark measures
exactly what the trainer runs."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from vitzoo.tools_common import autocast_ctx

__all__ = ["build_detector_from_config", "build_optimizer", "grad_scaler", "train_step"]


def build_detector_from_config(cfg: Dict[str, Any], num_classes: int) -> nn.Module:
    """``build_detector`` with the arguments of a detection config's ``model`` section (see vitzoo/det/config.py)."""
    from vitzoo.det.torchvision_det import build_detector

    m = cfg["model"]
    arch = m["arch"]
    post = ({"score_thresh": m["score_thresh"], "nms_thresh": m["nms_thresh"],
             "detections_per_img": m["detections_per_img"]} if arch == "retinanet" else
            {"box_score_thresh": m["score_thresh"], "box_nms_thresh": m["nms_thresh"],
             "box_detections_per_img": m["detections_per_img"],
             "rpn_batch_size_per_image": m["rpn_batch_size_per_image"],
             "box_batch_size_per_image": m["box_batch_size_per_image"]})
    return build_detector(arch, m["backbone"], num_classes, out_indices=m["out_indices"],
                          frozen_stages=m["frozen_stages"], norm_eval=m["norm_eval"], out_norm=m["out_norm"],
                          checkpoint=m["checkpoint"], model_kwargs=m["kwargs"], drop_path_rate=m["drop_path"],
                          fpn_channels=m["fpn_channels"], anchor_sizes=m["anchor_sizes"],
                          aspect_ratios=m["aspect_ratios"], min_size=m["min_size"], max_size=m["max_size"],
                          representation_size=m["representation_size"], mask_head_dim=m["mask_head_dim"],
                          head_norm=m["head_norm"], **post)


def build_optimizer(cfg: Dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer named by the config's ``optim`` section."""
    from timm.optim import create_optimizer_v2

    o = cfg["optim"]
    return create_optimizer_v2(model, opt=o["name"], lr=o["lr"], weight_decay=o["weight_decay"],
                               momentum=o["momentum"])


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA only; a disabled scaler (a pass-through) otherwise: bf16 needs none."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))


def train_step(model: nn.Module, images: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp: str, device: torch.device,
               clip_grad: Optional[float] = None, params: Optional[Sequence[torch.Tensor]] = None
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One optimizer step of a torchvision detector (forward under ``amp`` autocast, backward, optional grad-norm
    clipping of ``params``, step, zero_grad); returns (summed loss, torchvision's loss dict).

    A non-finite loss raises FloatingPointError (naming each loss term) before the weights are touched.
    """
    with autocast_ctx(amp, device):
        loss_dict = model(images, targets)
    loss = sum(loss_dict.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {({k: v.item() for k, v in loss_dict.items()})}")
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params if params is not None else model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss, loss_dict
