#!/usr/bin/env python3
"""Top-1 / top-5 accuracy and cross-entropy of a checkpoint on an ImageFolder split or the embedded digits set.

    python tools/validate.py --checkpoint runs/quickstart/best.pth                  # vitzoo training checkpoint
    python tools/validate.py --checkpoint runs/quickstart/last.pth --ema            # ... its EMA weights
    python tools/validate.py --checkpoint davit_tiny.pth --model vz_davit_tiny --data-dir /data/imagenet
    python tools/validate.py --checkpoint ckpt.pth --config configs/cls/nat_tiny.yaml --set data.root=/data/imagenet

Checkpoints: (a) ``last.pth`` / ``best.pth`` written by tools/train.py (model, data and transforms come from the
config stored in them; ``--ema`` picks the EMA weights); (b) plain timm state dicts and (c) the official releases'
layouts (``{'model': ...}``, ``{'state_dict': ...}``, ``module.`` prefixes; ``--ema`` picks ``state_dict_ema`` /
``model_ema``), both loaded through timm's pretrained path, i.e. through the model's ``checkpoint_filter_fn``, and
strictly. Files are unpickled in full when they need it (as timm and the releases' own scripts do): only evaluate
checkpoints you trust.

Data: ``--data-dir DIR`` evaluates the ImageFolder ``DIR/<split>`` (or ``DIR`` itself when it holds the class
folders) with the model's eval transform (resize, center crop ``crop_pct``, mean/std from its pretrained_cfg, or from
``--img-size`` / ``--crop-pct`` / ``--interpolation``); ``--dataset digits`` the embedded digits set. The class
folders must be the checkpoint's classes (ImageNet: the 1,000 synset folders, sorted as ImageFolder sorts them).

Prints one result line and writes ``results.json`` and ``results.csv`` to ``--out``. Bad input (missing file or folder,
unknown model name, a checkpoint that does not fit the model, an image size the model cannot take) is one line on
stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout too

import timm  # noqa: E402

import vitzoo  # noqa: E402,F401  (registers the vitzoo models with timm)
from vitzoo.config import config_from_dict, load_config  # noqa: E402
from vitzoo.data import DigitsDataset, image_folder, imagefolder_eval_transform, timm_data_config  # noqa: E402
from vitzoo.tools_common import (UserError, build_model, check_model_name, evaluate,  # noqa: E402
                                 is_training_checkpoint, load_checkpoint_file, run_cli, state_dict_from_checkpoint,
                                 to_channels_last)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint, timm state dict or official release file")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights stored in the checkpoint")
    p.add_argument("--model", default=None, help="timm/vitzoo model name (default: from the checkpoint or --config)")
    p.add_argument("--config", default=None, help="YAML config for the model (name, kwargs) and data")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.kwargs.img_size=288 (repeatable)")
    p.add_argument("--dataset", choices=("imagefolder", "digits"), default=None,
                   help="default: imagefolder with --data-dir, else the config's")
    p.add_argument("--data-dir", default=None, help="ImageFolder root (with <split>/) or the class-folder parent")
    p.add_argument("--split", default="val", help="ImageFolder subfolder / digits split (default: val)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: config or model's)")
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--crop-pct", type=float, default=None, help="eval center-crop fraction (default: model's)")
    p.add_argument("--interpolation", default=None, help="resize interpolation (default: model's)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs of the checkpoint (default: number of classes in the data)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default: config's data.val_batch_size")
    p.add_argument("-j", "--workers", type=int, default=None, help="DataLoader workers (default: config's)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="autocast (default: config's)")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="runs/validate", help="folder for results.json and results.csv")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace, ckpt: Any) -> Dict[str, Any]:
    """The config the checkpoint is evaluated with: --config, else the one stored in a training checkpoint, else
    defaults sized from the model's pretrained_cfg; then --set and the command-line flags."""
    from_training = is_training_checkpoint(ckpt)
    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif from_training:
        cfg = config_from_dict(ckpt["config"], args.overrides)
    else:
        cfg = load_config(None, args.overrides)
    if args.model:
        cfg["model"]["name"] = args.model
    elif not args.config and not from_training:
        raise UserError(f"--model is required for {args.checkpoint} (not a tools/train.py checkpoint; or pass "
                        f"--config)")
    check_model_name(cfg["model"]["name"], "--model" if args.model else "model.name")
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise UserError(f"--data-dir: folder {args.data_dir!r} does not exist")
    data = cfg["data"]
    if not args.config and not from_training:  # no config: the model's own input size, ImageFolder data
        pretrained = timm.models.get_pretrained_cfg(cfg["model"]["name"])
        in_chans, _, size = (pretrained.input_size if pretrained else (3, 224, 224))
        data.update(dataset="imagefolder", img_size=size, in_chans=in_chans)
    if args.dataset:
        data["dataset"] = args.dataset
    elif args.data_dir:
        data["dataset"] = "imagefolder"
    for flag, key in (("img_size", "img_size"), ("in_chans", "in_chans"), ("crop_pct", "crop_pct"),
                      ("interpolation", "interpolation"), ("batch_size", "val_batch_size"), ("workers", "workers")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    if args.amp is not None:
        cfg["train"]["amp"] = args.amp
    if args.channels_last:
        cfg["train"]["channels_last"] = True
    # evaluation needs none of the training-time model options
    cfg["train"].update(drop_path=None, grad_checkpointing=False)
    cfg["model"]["pretrained_file"] = None
    return cfg


def eval_dataset(cfg: Dict[str, Any], args: argparse.Namespace, model) -> Any:
    data = cfg["data"]
    if data["dataset"] == "digits":
        if args.split not in ("train", "val"):
            raise UserError(f"--split for the digits set must be train or val, got {args.split!r}")
        return DigitsDataset(args.split, img_size=data["img_size"], in_chans=data["in_chans"],
                             val_fraction=data["val_fraction"], augment=False)
    root = args.data_dir or data["root"]
    if not root:
        raise UserError("no data: pass --data-dir (an ImageFolder root) or --dataset digits")
    if not os.path.isdir(root):
        raise UserError(f"--data-dir: folder {root!r} does not exist")
    folder = os.path.join(root, args.split)
    if not os.path.isdir(folder):
        folder = root  # the class folders themselves
    transform = imagefolder_eval_transform(timm_data_config(data, model=model))
    return image_folder(folder, transform, "--data-dir")


def count_classes(cfg: Dict[str, Any], args: argparse.Namespace) -> int:
    if cfg["data"]["dataset"] == "digits":
        return DigitsDataset.num_classes
    root = args.data_dir or cfg["data"]["root"]
    if not root or not os.path.isdir(root):
        return 0  # reported by eval_dataset
    folder = os.path.join(root, args.split) if os.path.isdir(os.path.join(root, args.split)) else root
    return sum(1 for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def write_results(result: Dict[str, Any], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result))
        writer.writeheader()
        writer.writerow(result)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    ckpt = load_checkpoint_file(args.checkpoint, "--checkpoint")
    cfg = resolve_config(args, ckpt)
    if cfg["model"]["attn_backend"]:
        os.environ["VITZOO_ATTN_BACKEND"] = cfg["model"]["attn_backend"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state_dict = state_dict_from_checkpoint(ckpt, use_ema=args.ema, path=args.checkpoint)
    del ckpt
    num_classes = args.num_classes or count_classes(cfg, args) or 1000
    try:
        model = build_model(cfg, num_classes, weights=state_dict, weights_what=f"--checkpoint {args.checkpoint}")
    except UserError as exc:
        hint = "" if args.num_classes else " (set --num-classes to the checkpoint's number of classes)"
        raise UserError(f"{exc}{hint if 'size mismatch' in str(exc) else ''}") from None
    model = model.to(device).eval()
    if cfg["train"]["channels_last"]:
        model = to_channels_last(model)
    dataset = eval_dataset(cfg, args, model)

    tic = time.perf_counter()
    metrics = evaluate(model, dataset, cfg["data"]["val_batch_size"], device, amp=cfg["train"]["amp"],
                       channels_last=cfg["train"]["channels_last"], workers=cfg["data"]["workers"],
                       progress=not args.no_progress, desc=f"validate {cfg['model']['name']}")
    seconds = time.perf_counter() - tic
    data = cfg["data"]
    result = {
        "model": cfg["model"]["name"], "checkpoint": os.path.abspath(args.checkpoint),
        "weights": "ema" if args.ema else "model",
        "dataset": data["dataset"] if data["dataset"] == "digits" else os.path.abspath(args.data_dir or data["root"]),
        "split": args.split, "images": len(dataset), "num_classes": num_classes,
        "img_size": data["img_size"], "top1": metrics["val_top1"], "top5": metrics["val_top5"],
        "loss": metrics["val_loss"], "batch_size": data["val_batch_size"], "amp": cfg["train"]["amp"],
        "channels_last": cfg["train"]["channels_last"], "device": str(device), "seconds": seconds,
        "img_s": len(dataset) / max(seconds, 1e-9),
    }
    write_results(result, args.out)
    print(f"{result['model']} ({result['weights']} weights, {result['images']} images): top-1 {result['top1']:.3f}% "
          f"top-5 {result['top5']:.3f}% loss {result['loss']:.4f}  -> {os.path.join(args.out, 'results.json')}")
    print(json.dumps({k: result[k] for k in ("model", "top1", "top5", "loss", "images")}))
    return copy.deepcopy(result)


if __name__ == "__main__":
    sys.exit(run_cli(main))
