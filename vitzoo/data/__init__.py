"""Datasets for vitzoo's training tools: the embedded digits set (quick start, CI) and ImageFolder (ImageNet layout)."""
from .datasets import (DigitsDataset, SeededAugmentation, create_datasets, image_folder, imagefolder_eval_transform,
                       timm_data_config)

__all__ = ["create_datasets", "DigitsDataset", "SeededAugmentation", "image_folder", "imagefolder_eval_transform",
           "timm_data_config"]
