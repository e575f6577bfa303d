#!/usr/bin/env python3
"""Train a torchvision RetinaNet / Faster R-CNN / Mask R-CNN (FPN) on a vitzoo backbone from a YAML config.

    python tools/train_det.py --config configs/det/quickstart_coins.yaml [--set optim.lr=2e-4 ...] [--resume]
    torchrun --nproc_per_node N tools/train_det.py --config ...      # DDP (NCCL on GPU, gloo on CPU)
    python tools/train_det.py --config ... --eval-only [--checkpoint PATH]   # COCO mAP of a checkpoint

Data: COCO-format annotation JSON + image folder per split (``data.dataset: coco``), or the embedded coins set
built at run time (``data.dataset: coins``); every annotation/image problem is reported at load time (see
vitzoo/det/coco_data.py). Writes to ``output.dir``: ``last.pth`` (atomic, every ``output.checkpoint_every_steps``
steps and every epoch), ``best.pth`` (best bbox mAP), ``metrics.csv`` (one row per epoch: losses, COCO bbox / segm
mAP), ``curves.png`` and ``summary.json``. ``--resume`` restores model, optimizer, scheduler, grad scaler,
epoch/step, partial-epoch sums and every rank's RNG state; the batch order and flips are pure functions of
(seed, epoch), so a resumed CPU run is bit-for-bit the same as an uninterrupted one.

The checkpoint / RNG / seeding / DDP helpers are vitzoo.tools_common's; the detector, optimizer and training
step are vitzoo.det.training's (shared with tools/bench_det.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout too

from timm.scheduler import create_scheduler_v2  # noqa: E402

import vitzoo  # noqa: E402,F401  (registers the vitzoo models with timm)
from vitzoo.det.coco_data import (CocoDetection, build_coins_dataset, coco_evaluate, collate,  # noqa: E402
                                  detections_to_coco)
from vitzoo.det.config import load_det_config  # noqa: E402
from vitzoo.det.training import build_detector_from_config, build_optimizer, grad_scaler, train_step  # noqa: E402
from vitzoo.tools_common import (capture_rng, epoch_batches, restore_rng, save_atomic, seed_everything,  # noqa: E402
                                 setup_distributed, write_rows_csv)

CHECKPOINT_VERSION = 1


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see vitzoo/det/config.py for every key and its default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=2e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from <output.dir>/last.pth")
    p.add_argument("--eval-only", action="store_true", help="only evaluate a checkpoint (writes eval.json)")
    p.add_argument("--checkpoint", default=None,
                   help="--eval-only: weights to evaluate (default <output.dir>/last.pth)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- data / model
def create_det_datasets(cfg: Dict[str, Any], rank: int, world: int):
    """(train, val) CocoDetection splits; the coins set is built by rank 0 while the other ranks wait."""
    d = cfg["data"]
    if d["dataset"] == "coins":
        if rank == 0:
            build_coins_dataset(d["root"], n_train=d["coins_train_images"])
        if world > 1:
            dist.barrier()
        paths = build_coins_dataset(d["root"], n_train=d["coins_train_images"])  # already there: just the paths
    else:
        paths = {k: d[k] for k in ("train_ann", "train_images", "val_ann", "val_images")}
    masks = cfg["model"]["arch"] == "maskrcnn"
    common = dict(masks=masks, verify_images=d["verify_images"], min_box_size=d["min_box_size"])
    train_set = CocoDetection(paths["train_ann"], paths["train_images"], hflip=d["hflip"], seed=cfg["train"]["seed"],
                              skip_empty=d["skip_empty"], **common)
    val_set = CocoDetection(paths["val_ann"], paths["val_images"], **common)
    if train_set.cat_ids != val_set.cat_ids:
        raise ValueError(f"train and val category ids differ: {train_set.cat_ids} vs {val_set.cat_ids}")
    if len(train_set) == 0:
        raise ValueError(f"{paths['train_ann']}: no training images left (data.skip_empty drops images without boxes)")
    return train_set, val_set


def _loader(dataset, batches: List[List[int]], workers: int, seed: int):
    # a private generator: DataLoader draws a base seed when iterated, which must not consume the global RNG stream
    # (a resumed run creates its iterator at a different point of that stream than the uninterrupted run)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(seed),
                                       persistent_workers=False)


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, dataset: CocoDetection, cfg: Dict[str, Any], device: torch.device, rank: int,
             world: int, show: bool = False) -> Dict[str, Any]:
    """COCO bbox (and segm for Mask R-CNN) mAP over the whole val set, each rank detecting on its shard.

    Runs in float32 whatever ``train.amp`` is. Detections are gathered to rank 0, which runs COCOeval and broadcasts
    the metrics, so every rank returns the same dict; ``val_images`` counts the images evaluated on all ranks
    together.
    """
    from tqdm import tqdm

    model.eval()
    masks = cfg["model"]["arch"] == "maskrcnn"
    batches = epoch_batches(len(dataset), cfg["data"]["val_batch_size"], 0, 0, False, rank, world, drop_last=False)
    bbox_res: List[Dict] = []
    segm_res: List[Dict] = []
    image_ids: List[int] = []
    for images, targets in tqdm(_loader(dataset, batches, cfg["data"]["workers"], 0), total=len(batches),
                                desc="eval", disable=not show, dynamic_ncols=True, leave=False):
        # no autocast here: bf16 boxes (8 mantissa bits: 2-px steps at 384 px) would cost mAP at high IoU
        outputs = model([im.to(device, non_blocking=True) for im in images])
        ids = [int(t["image_id"]) for t in targets]
        b, s = detections_to_coco(outputs, ids, dataset.label_to_cat, masks)
        bbox_res += b
        segm_res += s
        image_ids += ids
    if world > 1:
        gathered: List[Any] = [None] * world
        dist.all_gather_object(gathered, (bbox_res, segm_res, image_ids))
        bbox_res = [r for g in gathered for r in g[0]]
        segm_res = [r for g in gathered for r in g[1]]
        image_ids = [i for g in gathered for i in g[2]]
    metrics: List[Any] = [None]
    if rank == 0:
        ids = sorted(set(image_ids))
        out: Dict[str, Any] = {f"bbox_{k}": v for k, v in coco_evaluate(dataset.coco, bbox_res, "bbox", ids).items()}
        if masks:
            out.update({f"segm_{k}": v for k, v in coco_evaluate(dataset.coco, segm_res, "segm", ids).items()})
        out["val_images"] = len(ids)
        out["val_detections"] = len(bbox_res)
        metrics = [out]
    if world > 1:
        dist.broadcast_object_list(metrics, src=0)
    return metrics[0]


# ----------------------------------------------------------------------------------------------- outputs
def write_curves(rows: List[Dict[str, Any]], out_dir: str) -> None:
    """metrics.csv (every key of every row) and curves.png (training losses | COCO mAP) in ``out_dir``."""
    write_rows_csv(rows, os.path.join(out_dir, "metrics.csv"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    loss_keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("train_loss")]
    for key in loss_keys:
        ax_loss.plot(epochs, [r.get(key) for r in rows], marker="o", label=key.replace("train_", ""))
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("training loss"), ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=7), ax_loss.grid(alpha=0.3)
    for key in ("bbox_mAP", "bbox_mAP50", "segm_mAP", "segm_mAP50"):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax_map.plot(*zip(*pts), marker="o", label=key)
    ax_map.set_xlabel("epoch"), ax_map.set_ylabel("COCO mAP (%)"), ax_map.legend(), ax_map.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=100)
    plt.close(fig)


def _fmt(metrics: Dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.endswith(("mAP", "mAP50")) and v is not None)


# ----------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    cfg = load_det_config(args.config, args.overrides)
    if cfg["model"]["attn_backend"]:
        os.environ["VITZOO_ATTN_BACKEND"] = cfg["model"]["attn_backend"]
    rank, world, device = setup_distributed(args.device)
    tcfg, dcfg, ocfg = cfg["train"], cfg["data"], cfg["output"]
    out_dir = ocfg["dir"]
    os.makedirs(out_dir, exist_ok=True)
    seed_everything(tcfg["seed"] + rank, tcfg["deterministic"])
    show = ocfg["progress"] and rank == 0

    train_set, val_set = create_det_datasets(cfg, rank, world)
    # same weights on every rank before DDP broadcasts them anyway; seeded so runs are repeatable
    torch.manual_seed(tcfg["seed"])
    model = build_detector_from_config(cfg, train_set.num_classes).to(device)
    torch.manual_seed(tcfg["seed"] + rank)
    n_params = sum(p.numel() for p in model.parameters())
    last_path = os.path.join(out_dir, "last.pth")

    if args.eval_only:
        path = args.checkpoint or last_path
        model.load_state_dict(torch.load(path, map_location=device, weights_only=False)["model"])
        metrics = evaluate(model, val_set, cfg, device, rank, world, show)
        if rank == 0:
            with open(os.path.join(out_dir, "eval.json"), "w") as f:
                json.dump({"checkpoint": path, "world_size": world, **metrics}, f, indent=2)
            print(json.dumps(metrics))
        if world > 1:
            dist.destroy_process_group()
        return metrics

    batch = dcfg["batch_size"]
    steps_per_epoch = len(epoch_batches(len(train_set), batch, 0, 0, True, rank, world, drop_last=True))
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size {batch} x {world} process(es) is larger than the {len(train_set)} "
                         f"training images")
    if tcfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(tcfg["max_steps_per_epoch"]))

    params = [p for p in model.parameters() if p.requires_grad]  # frozen backbone stages stay out of the optimizer
    optimizer = build_optimizer(cfg, model)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=cfg["sched"]["name"], num_epochs=tcfg["epochs"], warmup_epochs=cfg["sched"]["warmup_epochs"],
        warmup_lr=cfg["sched"]["warmup_lr"], min_lr=cfg["sched"]["min_lr"], step_on_epochs=False,
        decay_milestones=tuple(cfg["sched"]["decay_milestones"]), decay_rate=cfg["sched"]["decay_rate"],
        updates_per_epoch=steps_per_epoch)
    scaler = grad_scaler(tcfg["amp"], device)

    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=tcfg["find_unused_parameters"])

    start_epoch, start_step, history = 0, 0, []
    best: Dict[str, Any] = {"bbox_mAP": -1.0, "epoch": -1}
    new_partial = lambda: {"losses": {}, "images": 0, "seconds": 0.0}  # noqa: E731
    partial = new_partial()
    if args.resume:
        if not os.path.exists(last_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        if ckpt.get("world_size", 1) != world:
            raise ValueError(f"--resume: {last_path} was written by {ckpt.get('world_size')} process(es), this run has "
                             f"{world}: the data order would differ")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step = ckpt["epoch"], ckpt["step"]
        history, best = ckpt["history"], ckpt["best"]
        partial, rng = ckpt["partial"][rank], ckpt["rng"][rank]
        restore_rng(rng)
        if rank == 0:
            print(f"resumed from {last_path}: epoch {start_epoch}, step {start_step}", flush=True)

    def checkpoint(epoch: int, step: int) -> None:
        state = (capture_rng(), partial)
        states: List[Any] = [state]
        if world > 1:  # every rank's RNG stream and partial sums, so each resumes exactly where it was
            states = [None] * world
            dist.all_gather_object(states, state)
        if rank == 0:
            save_atomic({"version": CHECKPOINT_VERSION, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "history": history,
                         "best": best, "partial": [s[1] for s in states], "rng": [s[0] for s in states],
                         "world_size": world, "config": cfg}, last_path)

    from tqdm import tqdm

    t_start = time.perf_counter()
    for epoch in range(start_epoch, num_epochs):
        train_set.set_epoch(epoch)
        batches = epoch_batches(len(train_set), batch, epoch, tcfg["seed"], True, rank, world, drop_last=True)
        batches = batches[:steps_per_epoch]
        train_model.train()
        bar = tqdm(total=len(batches), initial=start_step, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not show,
                   dynamic_ncols=True)
        loader = iter(_loader(train_set, batches[start_step:], dcfg["workers"], tcfg["seed"] + epoch))
        for step in range(start_step, len(batches)):
            tic = time.perf_counter()
            images, targets = next(loader)
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            try:
                loss, loss_dict = train_step(train_model, images, targets, optimizer, scaler, tcfg["amp"], device,
                                             cfg["optim"]["clip_grad"], params)
            except FloatingPointError as exc:
                ids = [int(t["image_id"]) for t in targets]
                raise FloatingPointError(f"{exc} at epoch {epoch} step {step} (image ids {ids}); last good "
                                         f"checkpoint: {last_path}") from None
            scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)

            n = len(images)
            for k, v in [("loss", loss), *loss_dict.items()]:
                partial["losses"][k] = partial["losses"].get(k, 0.0) + v.item() * n
            partial["images"] += n
            partial["seconds"] += time.perf_counter() - tic
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{partial['images'] * world / max(partial['seconds'], 1e-9):.1f}")
            bar.update(1)
            every = ocfg["checkpoint_every_steps"]
            if every and (step + 1) % every == 0 and step + 1 < len(batches):
                checkpoint(epoch, step + 1)
        bar.close()
        scheduler.step(epoch + 1)

        # the epoch's loss means over every rank's images (sum-reduced, then divided)
        keys = sorted(partial["losses"])
        sums = torch.tensor([partial["losses"][k] for k in keys] + [partial["images"], partial["seconds"]],
                            dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        sums = sums.tolist()
        images_seen, seconds = sums[-2], sums[-1] / world
        # columns: train_loss (the sum) first, then train_loss_<component> (torchvision's names, "loss_" dropped)
        means = {k: s / max(images_seen, 1) for k, s in zip(keys, sums)}
        row: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": means.pop("loss")}
        row.update({"train_loss_" + k.removeprefix("loss_"): v for k, v in means.items()})
        last_epoch = epoch + 1 == num_epochs
        if (epoch + 1) % max(int(tcfg["eval_every"]), 1) == 0 or last_epoch:
            row.update(evaluate(model, val_set, cfg, device, rank, world, show))
        else:
            row.update({"bbox_mAP": None, "bbox_mAP50": None})
        row.update(lr=optimizer.param_groups[0]["lr"], train_images=int(images_seen),
                   train_img_s=images_seen / max(seconds, 1e-9))
        history.append(row)
        partial = new_partial()
        start_step = 0
        is_best = row["bbox_mAP"] is not None and row["bbox_mAP"] > best["bbox_mAP"]
        if is_best:
            best = {"bbox_mAP": row["bbox_mAP"], "epoch": epoch + 1}
            if "segm_mAP" in row:
                best["segm_mAP"] = row["segm_mAP"]
        checkpoint(epoch + 1, 0)
        if rank == 0:
            if is_best:
                save_atomic({"model": model.state_dict(), "epoch": epoch + 1, "metrics": row, "config": cfg},
                            os.path.join(out_dir, "best.pth"))
            write_curves(history, out_dir)
            print(f"epoch {epoch + 1}: train_loss {row['train_loss']:.4f} {_fmt(row)}", flush=True)

    summary = {"arch": cfg["model"]["arch"], "backbone": cfg["model"]["backbone"], "params": n_params,
               "epochs": num_epochs, "world_size": world, "train_images": len(train_set), "val_images": len(val_set),
               "data_stats": {"train": train_set.stats, "val": val_set.stats},
               "seconds_this_process": time.perf_counter() - t_start,
               "final": history[-1] if history else None, "best": best, "output_dir": out_dir}
    if rank == 0:
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        final = summary["final"] or {}
        print(json.dumps({"final_bbox_mAP": final.get("bbox_mAP"), "best_bbox_mAP": best["bbox_mAP"],
                          **({"final_segm_mAP": final.get("segm_mAP")} if "segm_mAP" in final else {})}))
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
