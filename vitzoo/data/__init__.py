"""Datasets for vitzoo's training tools: the embedded digits set (quick start, CI) and ImageFolder (ImageNet layout)."""
from .datasets import create_datasets, DigitsDataset

__all__ = ["create_datasets", "DigitsDataset"]
