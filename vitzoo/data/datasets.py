"""Dataset construction.

``digits``: scikit-learn's bundled UCI handwritten digits (1,797 real 8x8 grey-scale scans of 10 classes, shipped
inside the scikit-learn wheel, so nothing is downloaded), upsampled to ``img_size`` and split into a stratified,
fixed train/val partition. Augmentation (random translation) is a pure function of (seed, epoch, index), so a resumed
run sees exactly the batches the killed run would have seen.

``imagefolder``: ``root/train`` and ``root/val`` in the ImageNet layout, with timm's transforms (RandAugment, colour
jitter, random erasing from the config; mean/std, interpolation and eval crop from the model's pretrained_cfg unless
the config sets them). Training augmentation is seeded per sample (``SeededAugmentation``), so it does not depend on
the number of DataLoader workers and a resumed run sees the augmentation the uninterrupted one would have.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DigitsDataset", "SeededAugmentation", "create_datasets", "image_folder", "timm_data_config",
           "imagefolder_eval_transform", "DIGITS_MEAN", "DIGITS_STD"]

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


class SeededAugmentation(Dataset):
    """Wrap a dataset whose transform is random so that each sample's augmentation is a pure function of a key.

    Items are requested as ``(index, key)`` (see ``vitzoo.tools_common.make_loader``): python's, numpy's and torch's
    global RNGs are seeded from ``(seed, key)`` around the transform and restored afterwards. The same batches then
    get the same augmentation whatever the number of DataLoader workers and after a mid-epoch resume, and a repeated
    index (repeated augmentation) gets a different augmentation per repeat because its key differs.
    """

    keyed = True

    def __init__(self, base: Dataset, seed: int = 0):
        self.base = base
        self.seed = seed
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        import random

        import numpy as np

        idx, key = item if isinstance(item, tuple) else (item, (item,))
        mixed = self.seed
        for part in key:
            mixed = (mixed * 1_000_003 + int(part)) % (1 << 61)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(mixed)  # the CPU generator only: CUDA RNGs stay untouched
                random.seed(mixed)
                np.random.seed(mixed % (1 << 32))
                return self.base[idx]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def image_folder(path: str, transform=None, what: str = "data.root"):
    """torchvision ImageFolder with one-line errors for a missing or empty folder."""
    import os

    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise ValueError(f"{what}: folder {path!r} does not exist")
    try:
        return ImageFolder(path, transform)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise ValueError(f"{what}: {str(exc).splitlines()[0]}") from None


def timm_data_config(data_cfg: Dict[str, Any], model=None, pretrained_cfg=None) -> Dict[str, Any]:
    """timm data config (input size, interpolation, crop_pct, mean, std) for a config's ``data`` section: the model's
    pretrained_cfg values unless the config sets them."""
    from timm.data import resolve_data_config

    args: Dict[str, Any] = {"input_size": (data_cfg["in_chans"], data_cfg["img_size"], data_cfg["img_size"])}
    if data_cfg.get("interpolation"):
        args["interpolation"] = data_cfg["interpolation"]
    if data_cfg.get("crop_pct"):
        args["crop_pct"] = data_cfg["crop_pct"]
    return resolve_data_config(args, pretrained_cfg=pretrained_cfg, model=model)


def imagefolder_eval_transform(data_config: Dict[str, Any]):
    from timm.data import create_transform

    return create_transform(**data_config, is_training=False)


def create_datasets(data_cfg: Dict[str, Any], seed: int = 0, model=None, pretrained_cfg=None):
    """Return (train_dataset, val_dataset, num_classes) for a config's ``data`` section.

    ``model`` or ``pretrained_cfg`` (a dict) supply the imagefolder defaults (mean/std, interpolation, crop_pct).
    """
    name = data_cfg["dataset"]
    if name == "digits":
        common = dict(img_size=data_cfg["img_size"], in_chans=data_cfg["in_chans"],
                      val_fraction=data_cfg["val_fraction"], seed=seed)
        return (DigitsDataset("train", augment=data_cfg["augment"], **common), DigitsDataset("val", **common),
                DigitsDataset.num_classes)
    if name == "imagefolder":
        import os

        from timm.data import create_transform

        root = data_cfg["root"]
        if not root:
            raise ValueError("data.root is not set: the imagefolder dataset needs a folder with train/ and val/ "
                             "class subfolders (ImageNet layout)")
        if not os.path.isdir(root):
            raise ValueError(f"data.root: folder {root!r} does not exist")
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                raise ValueError(f"data.root {root!r} has no {split}/ subfolder (expected the ImageNet layout: "
                                 f"train/<class>/<image>, val/<class>/<image>)")
        cfg = timm_data_config(data_cfg, model=model, pretrained_cfg=pretrained_cfg)
        train_cfg = dict(cfg, interpolation=data_cfg.get("train_interpolation") or cfg["interpolation"])
        train_tf = create_transform(
            **train_cfg, is_training=True, auto_augment=data_cfg["auto_augment"],
            color_jitter=data_cfg["color_jitter"] or None, re_prob=data_cfg["reprob"],
        ) if data_cfg["augment"] else imagefolder_eval_transform(cfg)
        train = image_folder(os.path.join(root, "train"), train_tf, "data.root train/")
        val = image_folder(os.path.join(root, "val"), imagefolder_eval_transform(cfg), "data.root val/")
        if train.classes != val.classes:
            raise ValueError(f"data.root {root!r}: train/ and val/ have different class folders "
                             f"({len(train.classes)} vs {len(val.classes)})")
        return SeededAugmentation(train, seed), val, len(train.classes)
    raise ValueError(f"data.dataset must be 'digits' or 'imagefolder', got {name!r}")
