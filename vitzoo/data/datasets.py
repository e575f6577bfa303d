"""Dataset construction.

``digits``: scikit-learn's bundled UCI handwritten digits (1,797 real 8x8 grey-scale scans of 10 classes, shipped
inside the scikit-learn wheel, so nothing is downloaded), upsampled to ``img_size`` and split into a stratified,
fixed train/val partition. Augmentation (random translation) is a pure function of (seed, epoch, index), so a resumed
run sees exactly the batches the killed run would have seen.

``imagefolder``: ``root/train`` and ``root/val`` in the ImageNet layout, with timm's transforms.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DigitsDataset", "create_datasets", "DIGITS_MEAN", "DIGITS_STD"]

DIGITS_MEAN, DIGITS_STD = 0.3, 0.4  # of the [0, 1]-scaled digits pixels; rounded


class DigitsDataset(Dataset):
    """One split of the embedded digits set as (C, img_size, img_size) float tensors."""

    num_classes = 10

    def __init__(self, split: str, img_size: int = 32, in_chans: int = 1, val_fraction: float = 0.2,
                 augment: bool = False, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        index = torch.arange(len(labels))
        # the partition is part of the benchmark definition: fixed random_state, independent of the training seed
        train_idx, val_idx = train_test_split(index.numpy(), test_size=val_fraction, stratify=labels.numpy(),
                                              random_state=0)
        keep = torch.as_tensor(train_idx if split == "train" else val_idx)
        images = F.interpolate(images[keep, None], size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.images = ((images - DIGITS_MEAN) / DIGITS_STD).expand(-1, in_chans, -1, -1).contiguous()
        self.labels = labels[keep]
        self.augment = augment
        self.max_shift = max(1, img_size // 8)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image = self.images[idx]
        if self.augment:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_007 + int(idx))
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=gen).tolist()
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
            # roll wraps around; blank the wrapped band with the background value instead
            background = (0.0 - DIGITS_MEAN) / DIGITS_STD
            if dy > 0:
                image[:, :dy] = background
            elif dy < 0:
                image[:, dy:] = background
            if dx > 0:
                image[:, :, :dx] = background
            elif dx < 0:
                image[:, :, dx:] = background
        return image, self.labels[idx]


def create_datasets(data_cfg: Dict[str, Any], seed: int = 0, model=None):
    """Return (train_dataset, val_dataset, num_classes) for a config's ``data`` section."""
    name = data_cfg["dataset"]
    if name == "digits":
        common = dict(img_size=data_cfg["img_size"], in_chans=data_cfg["in_chans"],
                      val_fraction=data_cfg["val_fraction"], seed=seed)
        return (DigitsDataset("train", augment=data_cfg["augment"], **common), DigitsDataset("val", **common),
                DigitsDataset.num_classes)
    if name == "imagefolder":
        import os

        from timm.data import create_transform, resolve_data_config
        from torchvision.datasets import ImageFolder

        root = data_cfg["root"]
        if not root or not os.path.isdir(os.path.join(root, "train")) or not os.path.isdir(os.path.join(root, "val")):
            raise ValueError(f"data.root must be a folder with train/ and val/ subfolders (ImageNet layout), got {root!r}")
        tcfg = resolve_data_config({}, model=model) if model is not None else {}
        tcfg["input_size"] = (data_cfg["in_chans"], data_cfg["img_size"], data_cfg["img_size"])
        train = ImageFolder(os.path.join(root, "train"), create_transform(**tcfg, is_training=data_cfg["augment"]))
        val = ImageFolder(os.path.join(root, "val"), create_transform(**tcfg, is_training=False))
        return train, val, len(train.classes)
    raise ValueError(f"data.dataset must be 'digits' or 'imagefolder', got {name!r}")
