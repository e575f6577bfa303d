#!/usr/bin/env python3
"""Train a vitzoo (or timm) image classifier from a YAML config.

    python tools/train.py --config configs/cls/quickstart_digits.yaml [--set optim.lr=1e-3 ...] [--resume]
    torchrun --nproc_per_node N tools/train.py --config ...     # DDP (NCCL on GPU, gloo on CPU)

Writes to ``output.dir``: ``last.pth`` (atomic, every ``output.checkpoint_every_steps`` steps and every epoch),
``best.pth`` (model and EMA weights of the best epoch), ``metrics.csv`` (one row per epoch), ``curves.png`` and
``summary.json``. ``train.cuda_graph: true`` (CUDA, one process) captures the
whole step once and replays it (``vitzoo.cuda_graph``): the host no longer limits models with many small layers.
``--resume`` continues from ``last.pth``: model, optimizer, scheduler, EMA, grad scaler, epoch/step,
partial-epoch sums and every RNG state are restored, the data order is a pure function of (seed, epoch) and ImageFolder
augmentation a pure function of (seed, epoch, rank, position) whatever ``data.workers`` is, so a resumed CPU run is
bit-for-bit the same as an uninterrupted one. ``tools/validate.py`` evaluates the checkpoints.

Bad input (config, model name, dataset folder, image size, checkpoint) is one line on stderr and exit code 2
(``VITZOO_DEBUG=1``: full traceback).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout too

import timm  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.scheduler import create_scheduler_v2  # noqa: E402

import vitzoo  # noqa: E402,F401  (registers the vitzoo models with timm)
from vitzoo.config import load_config  # noqa: E402
from vitzoo.data import create_datasets  # noqa: E402
from vitzoo.tools_common import (UserError, amp_dtype, autocast_ctx, build_model, capture_rng,  # noqa: E402,F401
                                 check_model_name, epoch_batches, evaluate, load_checkpoint_file,
                                 load_state_dict_or_explain, make_loader, restore_rng, run_cli, save_atomic,
                                 seed_everything, setup_distributed, to_channels_last)

CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------------------------- setup helpers
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see vitzoo/config.py for every key and its default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from <output.dir>/last.pth")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- loops
def write_curves(rows: List[Dict[str, Any]], out_dir: str) -> None:
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="val")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("cross-entropy"), ax_loss.legend(), ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, [r["val_top1"] for r in rows], marker="o", label="val top-1")
    if rows[0].get("ema_val_top1") is not None:
        ax_acc.plot(epochs, [r["ema_val_top1"] for r in rows], marker="o", label="EMA val top-1")
    ax_acc.set_xlabel("epoch"), ax_acc.set_ylabel("accuracy (%)"), ax_acc.legend(), ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=100)
    plt.close(fig)


def make_criterion(tcfg: Dict[str, Any], mixup_active: bool) -> nn.Module:
    """CE (label smoothing), soft-target CE under mixup/cutmix (smoothing goes into the mixed targets), or timm's
    BinaryCrossEntropy (``train.loss: bce``, as in the ResNet-strikes-back recipes)."""
    if tcfg["loss"] == "bce":
        from timm.loss import BinaryCrossEntropy

        return BinaryCrossEntropy(target_threshold=tcfg["bce_target_thresh"],
                                  smoothing=0.0 if mixup_active else tcfg["label_smoothing"])
    if mixup_active:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=tcfg["label_smoothing"])


def check_cuda_graph_setting(tcfg: Dict[str, Any], world: int, device: torch.device) -> None:
    """``train.cuda_graph``: what a replayed whole step cannot include, as an error naming the conflicting key."""
    conflicts = {
        "train.amp fp16 (its GradScaler reads the inf check back to the host every step; use bf16 or none)":
            tcfg["amp"] == "fp16",
        f"train.grad_accum {tcfg['grad_accum']} (one replay is one optimizer step; use 1)": tcfg["grad_accum"] != 1,
        "train.compile (use one of the two)": bool(tcfg["compile"]),
        f"{world} processes (DDP's gradient all-reduce is not captured; run one process)": world > 1,
    }
    for what, bad in conflicts.items():
        if bad:
            raise UserError(f"train.cuda_graph: true does not combine with {what}")
    if device.type != "cuda":
        raise UserError(f"train.cuda_graph: true needs a CUDA device, got {device}")


def create_optimizer(model: nn.Module, ocfg: Dict[str, Any], capturable: bool) -> torch.optim.Optimizer:
    """timm's optimizer; ``capturable``: its step state on the GPU where the class has the option (torch's Adam
    family; SGD keeps no host state and has none)."""
    kwargs = dict(opt=ocfg["name"], lr=ocfg["lr"], weight_decay=ocfg["weight_decay"], momentum=ocfg["momentum"])
    if capturable:
        try:
            return create_optimizer_v2(model, capturable=True, **kwargs)
        except TypeError:  # no such option: the capture itself tells whether its step can be replayed
            pass
    return create_optimizer_v2(model, **kwargs)


def capture_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                       images: torch.Tensor, target: torch.Tensor, amp: str, clip_fn, cfg: Dict[str, Any]):
    """The whole step captured at the first batch's shape (every batch has it: batches are full)."""
    from vitzoo.cuda_graph import GraphedTrainStep

    try:  # fp16 was refused by check_cuda_graph_setting
        return GraphedTrainStep(model, optimizer, criterion, images, target, amp_dtype(amp), clip_grad=clip_fn)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"train.cuda_graph: capturing the train step of {cfg['model']['name']} with optim.name "
                        f"{cfg['optim']['name']!r} failed ({str(exc).splitlines()[0]}); set train.cuda_graph: false"
                        ) from None


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg["model"]["attn_backend"]:
        os.environ["VITZOO_ATTN_BACKEND"] = cfg["model"]["attn_backend"]
    check_model_name(cfg["model"]["name"])
    rank, world, device = setup_distributed(args.device)
    tcfg, dcfg, ocfg = cfg["train"], cfg["data"], cfg["output"]
    use_graph = tcfg["cuda_graph"]
    if use_graph:
        check_cuda_graph_setting(tcfg, world, device)
    out_dir = ocfg["dir"]
    last_path = os.path.join(out_dir, "last.pth")
    if args.resume and not os.path.exists(last_path):
        raise UserError(f"--resume: no checkpoint at {last_path} (output.dir = {out_dir})")
    os.makedirs(out_dir, exist_ok=True)
    seed_everything(tcfg["seed"] + rank, tcfg["deterministic"])

    pretrained_cfg = timm.models.get_pretrained_cfg(cfg["model"]["name"])
    train_set, val_set, num_classes = create_datasets(
        dcfg, seed=tcfg["seed"], pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None)
    model = build_model(cfg, num_classes).to(device)
    if tcfg["channels_last"]:
        model = to_channels_last(model)
    n_params = sum(p.numel() for p in model.parameters())

    grad_accum = int(tcfg["grad_accum"])
    if grad_accum < 1:
        raise UserError(f"train.grad_accum must be >= 1, got {grad_accum}")
    batch = dcfg["batch_size"]
    repeats = int(dcfg["aug_repeats"] or 0)
    steps_per_epoch = len(epoch_batches(len(train_set), batch, 0, 0, True, rank, world, drop_last=True,
                                        repeats=repeats))
    if steps_per_epoch == 0:
        raise UserError(f"data.batch_size {batch} x {world} process(es) is larger than the training set "
                        f"({len(train_set)} images): no full batch per epoch")
    if tcfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(tcfg["max_steps_per_epoch"]))
    updates_per_epoch = max(1, steps_per_epoch // grad_accum)

    optimizer = create_optimizer(model, cfg["optim"], capturable=use_graph)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=cfg["sched"]["name"], num_epochs=tcfg["epochs"], warmup_epochs=cfg["sched"]["warmup_epochs"],
        warmup_lr=cfg["sched"]["warmup_lr"], min_lr=cfg["sched"]["min_lr"],
        cooldown_epochs=cfg["sched"]["cooldown_epochs"], step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=(tcfg["amp"] == "fp16" and device.type == "cuda"))
    ema = None
    if tcfg["ema_decay"]:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=tcfg["ema_decay"])

    mixup_fn = None
    if tcfg["mixup"] or tcfg["cutmix"]:
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=tcfg["mixup"], cutmix_alpha=tcfg["cutmix"],
                         label_smoothing=tcfg["label_smoothing"], num_classes=num_classes)
    criterion = make_criterion(tcfg, mixup_fn is not None)
    clip_grad, clip_mode = cfg["optim"]["clip_grad"], cfg["optim"]["clip_mode"]
    from timm.utils import dispatch_clip_grad

    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    if tcfg["compile"]:
        train_model = torch.compile(train_model)
    clip_fn = (lambda: dispatch_clip_grad(model.parameters(), clip_grad, mode=clip_mode)) if clip_grad else None
    graph_step = None  # captured at the first step (the batch shape is known then)

    start_epoch, start_step, history, best = 0, 0, [], {"val_top1": -1.0, "epoch": -1}
    partial = {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}
    if args.resume:
        ckpt = load_checkpoint_file(last_path, "--resume checkpoint")
        if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "rng" not in ckpt:
            raise UserError(f"--resume: {last_path} is not a tools/train.py checkpoint")
        load_state_dict_or_explain(model, ckpt["model"], f"--resume checkpoint {last_path}")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:
            raise UserError(f"--resume: the optimizer state in {last_path} does not fit optim.name "
                            f"{cfg['optim']['name']!r}: {exc}") from None
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            if ckpt.get("ema") is None:
                raise UserError(f"--resume: {last_path} has no EMA state but train.ema_decay is set")
            ema.load_state_dict(ckpt["ema"])
        start_epoch, start_step = ckpt["epoch"], ckpt["step"]
        history, best, partial = ckpt["history"], ckpt["best"], ckpt["partial"]
        restore_rng(ckpt["rng"][rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        if rank == 0:
            print(f"resumed from {last_path}: epoch {start_epoch}, step {start_step}")

    def checkpoint(epoch: int, step: int) -> None:
        rng = capture_rng()
        if world > 1:
            gathered: List[Any] = [None] * world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        if rank == 0:
            save_atomic({"version": CHECKPOINT_VERSION, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                         "epoch": epoch, "step": step, "history": history, "best": best, "partial": partial,
                         "rng": rng, "config": cfg}, last_path)

    def run_eval(net: nn.Module, desc: str) -> Dict[str, float]:
        return evaluate(net, val_set, dcfg["val_batch_size"], device, amp=tcfg["amp"],
                        channels_last=tcfg["channels_last"], rank=rank, world=world, workers=dcfg["workers"],
                        desc=desc)

    show = ocfg["progress"] and rank == 0
    from tqdm import tqdm

    for epoch in range(start_epoch, num_epochs):
        train_set.set_epoch(epoch) if hasattr(train_set, "set_epoch") else None
        batches = epoch_batches(len(train_set), batch, epoch, tcfg["seed"], True, rank, world, drop_last=True,
                                repeats=repeats)
        batches = batches[:steps_per_epoch]
        loader = make_loader(train_set, batches[start_step:], dcfg["workers"], device,
                             key=(tcfg["seed"], epoch, rank), first_batch=start_step)
        train_model.train()
        bar = tqdm(total=len(batches), initial=start_step, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not show,
                   dynamic_ncols=True)
        tic = time.perf_counter()
        for step, (images, target) in zip(range(start_step, len(batches)), loader):
            images, target = images.to(device, non_blocking=True), torch.as_tensor(target).to(device)
            n = len(target)
            if mixup_fn is not None:
                images, target = mixup_fn(images, target)
            if tcfg["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            sync = (step + 1) % grad_accum == 0 or step + 1 == len(batches)
            if use_graph:
                if graph_step is None:
                    graph_step = capture_train_step(model, optimizer, criterion, images, target, tcfg["amp"],
                                                    clip_fn, cfg)
                loss = graph_step(images, target)  # forward, backward, clipping and the optimizer step
            else:
                skip_allreduce = world > 1 and not sync and hasattr(train_model, "no_sync")
                no_sync = train_model.no_sync if skip_allreduce else nullcontext
                with no_sync(), autocast_ctx(tcfg["amp"], device):
                    loss = criterion(train_model(images), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch} step {step}")
            if not use_graph:
                scaler.scale(loss / grad_accum).backward()
                if sync:
                    if clip_grad:
                        scaler.unscale_(optimizer)
                        clip_fn()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            if sync:
                update = epoch * updates_per_epoch + (step + 1) // grad_accum
                scheduler.step_update(num_updates=update)
                if ema is not None:
                    ema.update(model, step=update)
            partial["loss_sum"] += loss.item() * n
            partial["samples"] += n
            partial["seconds"] += time.perf_counter() - tic
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}",
                            img_s=f"{partial['samples'] * world / max(partial['seconds'], 1e-9):.0f}")
            bar.update(1)
            every = ocfg["checkpoint_every_steps"]
            if every and (step + 1) % every == 0 and step + 1 < len(batches):
                checkpoint(epoch, step + 1)
            tic = time.perf_counter()
        bar.close()
        scheduler.step(epoch + 1)

        metrics = run_eval(model, "val")
        row = {"epoch": epoch + 1, "train_loss": partial["loss_sum"] / max(partial["samples"], 1), **metrics,
               "lr": optimizer.param_groups[0]["lr"],
               "train_img_s": partial["samples"] * world / max(partial["seconds"], 1e-9)}
        row["ema_val_top1"] = run_eval(ema.module, "val (EMA)")["val_top1"] if ema is not None else None
        history.append(row)
        partial = {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}
        start_step = 0
        is_best = row["val_top1"] > best["val_top1"]
        if is_best:
            best = {"val_top1": row["val_top1"], "epoch": epoch + 1}
        checkpoint(epoch + 1, 0)
        if rank == 0:
            if is_best:
                save_atomic({"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                             "epoch": epoch + 1, "metrics": row, "config": cfg}, os.path.join(out_dir, "best.pth"))
            write_curves(history, out_dir)
            print(f"epoch {epoch + 1}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                  f"val_top1 {row['val_top1']:.2f}% val_top5 {row['val_top5']:.2f}%", flush=True)

    summary = {"model": cfg["model"]["name"], "params": n_params, "epochs": num_epochs, "world_size": world,
               "final": history[-1] if history else None, "best": best, "output_dir": out_dir}
    if rank == 0:
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps({"final_val_top1": summary["final"]["val_top1"], "best_val_top1": best["val_top1"]}))
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))
