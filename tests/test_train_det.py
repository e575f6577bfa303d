"""tools/train_det.py and vitzoo.det.{torchvision_det, coco_data, config}: the coins builder, every detector arch on a
tiny vitzoo backbone, bad-input handling, a real overfitting run, SIGKILL + --resume bit-for-bit, 2-process gloo DDP."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
# pycocotools 2.0.x vs numpy 2: a DeprecationWarning inside its mask decoder, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
pytest.importorskip("skimage")

from vitzoo.det.coco_data import (CocoDetection, DatasetError, build_coins_dataset, coco_evaluate, collate,  # noqa
                                  coins_segmentation, detections_to_coco)
from vitzoo.det.config import ConfigError, load_det_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train_det.py")
QUICKSTART = os.path.join(ROOT, "configs", "det", "quickstart_coins.yaml")
TINY_BACKBONE = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], kernel_size=3, mlp_ratio=1.0)
# a much smaller run than the quick start's (8 train crops, 160-px images, a 16-wide NAT): seconds per epoch
TINY = ["model.kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], kernel_size: 3, mlp_ratio: 1.0}",
        "model.fpn_channels=32", "model.representation_size=64", "model.min_size=160", "model.max_size=208",
        "model.rpn_batch_size_per_image=64", "model.box_batch_size_per_image=64", "data.coins_train_images=8",
        "output.progress=false"]


@pytest.fixture(scope="module")
def coins_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coins"))
    build_coins_dataset(root, n_train=8)
    return root


def _cmd(out_dir, coins_root, *extra, launcher=(sys.executable,)):
    sets = [s for item in TINY + [f"data.root={coins_root}"] + list(extra) for s in ("--set", item)]
    return [*launcher, TRAIN, "--config", QUICKSTART, "--set", f"output.dir={out_dir}", *sets]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("VITZOO_ATTN_BACKEND", None)
    return env


# ----------------------------------------------------------------------------------------------- coins builder
def test_coins_builder_matches_regionprops_and_loads_in_pycocotools(coins_root):
    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils
    from skimage import measure

    image, labels = coins_segmentation()
    props = measure.regionprops(labels)
    assert image.shape == (303, 384) and len(props) == 24  # the photograph's 24 coins, glare specks dropped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import io
        from contextlib import redirect_stdout

        with redirect_stdout(io.StringIO()):
            val, train = COCO(os.path.join(coins_root, "val.json")), COCO(os.path.join(coins_root, "train.json"))
    assert len(val.getImgIds()) == 4 and len(train.getImgIds()) == 8
    # val image 1 is the photograph itself: its boxes and masks are exactly regionprops' (COCO x, y, w, h)
    anns = sorted(val.loadAnns(val.getAnnIds(imgIds=[1])), key=lambda a: (a["bbox"][1], a["bbox"][0]))
    expected = sorted(([p.bbox[1], p.bbox[0], p.bbox[3] - p.bbox[1], p.bbox[2] - p.bbox[0]], p.label) for p in props)
    expected.sort(key=lambda e: (e[0][1], e[0][0]))
    assert [a["bbox"] for a in anns] == [e[0] for e in expected]
    for ann, (_, label) in zip(anns, expected):
        assert np.array_equal(mask_utils.decode(ann["segmentation"]), (labels == label).astype(np.uint8))
        assert ann["area"] == int((labels == label).sum()) and ann["iscrowd"] == 0
    # the flipped val copies have the mirrored boxes
    flipped = sorted(a["bbox"][0] for a in val.loadAnns(val.getAnnIds(imgIds=[2])))
    assert flipped == sorted(384 - b[0] - b[2] for b in (a["bbox"] for a in anns))
    # train crops: every box inside its crop, cut coins marked crowd, and the set loads through CocoDetection
    ds = CocoDetection(os.path.join(coins_root, "train.json"), os.path.join(coins_root, "train"), masks=True)
    assert ds.stats["clipped"] == 0 and ds.stats["degenerate"] == 0 and ds.num_classes == 2
    img, target = ds[0]
    assert img.shape == (3, 288, 288) and 0 <= img.min() and img.max() <= 1
    assert target["masks"].shape[0] == target["boxes"].shape[0] == target["labels"].shape[0] > 0
    # rebuilding with the same parameters reuses the files
    mtime = os.path.getmtime(os.path.join(coins_root, "train.json"))
    build_coins_dataset(coins_root, n_train=8)
    assert os.path.getmtime(os.path.join(coins_root, "train.json")) == mtime


def test_coco_evaluate_perfect_detections_give_100(coins_root):
    ds = CocoDetection(os.path.join(coins_root, "val.json"), os.path.join(coins_root, "val"), masks=True)
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        outputs.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
                        "masks": t["masks"][:, None].float()})
        ids.append(int(t["image_id"]))
    bbox, segm = detections_to_coco(outputs, ids, ds.label_to_cat, masks=True)
    assert coco_evaluate(ds.coco, bbox, "bbox")["mAP"] == pytest.approx(100.0)
    assert coco_evaluate(ds.coco, segm, "segm")["mAP"] == pytest.approx(100.0)
    assert coco_evaluate(ds.coco, [], "bbox")["mAP"] == 0.0


# ----------------------------------------------------------------------------------------------- config
def test_det_config_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.archh'; accepted keys here: .*arch"):
        load_det_config(QUICKSTART, ["model.archh=retinanet"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'data.batchsize'"):
        load_det_config(str(bad))
    with pytest.raises(ConfigError, match="model.arch must be one of retinanet, fasterrcnn, maskrcnn"):
        load_det_config(QUICKSTART, ["model.arch=yolo"])
    with pytest.raises(ConfigError, match="needs data.train_ann, data.train_images, data.val_ann, data.val_images"):
        load_det_config(QUICKSTART, ["data.dataset=coco"])
    cfg = load_det_config(QUICKSTART, ["optim.lr=3e-4", "model.kwargs.anything=1"])  # model.kwargs is free-form
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["kwargs"]["anything"] == 1


# ----------------------------------------------------------------------------------------------- detectors
@pytest.mark.parametrize("arch", ["retinanet", "fasterrcnn", "maskrcnn"])
def test_each_arch_builds_trains_and_evaluates_on_a_vitzoo_backbone(arch):
    from vitzoo.det.torchvision_det import build_detector, default_anchor_sizes

    torch.manual_seed(0)
    model = build_detector(arch, "nat_mini", num_classes=3, model_kwargs=TINY_BACKBONE, fpn_channels=32,
                           representation_size=64, mask_head_dim=32, min_size=128, max_size=160,
                           **({} if arch == "retinanet" else {"rpn_batch_size_per_image": 32,
                                                              "box_batch_size_per_image": 32}))
    neck = model.backbone
    assert neck.out_channels == 32
    # R-CNN: P2-P5 + pool (strides 4..64); RetinaNet: P3-P5 + P6/P7 (strides 8..128); one anchor set per level
    expected = [4, 8, 16, 32, 64] if arch != "retinanet" else [8, 16, 32, 64, 128]
    assert neck.strides == expected
    gen = model.anchor_generator if arch == "retinanet" else model.rpn.anchor_generator
    assert gen.sizes == default_anchor_sizes(arch, expected) and len(gen.sizes) == 5
    assert model.transform.size_divisible == 32  # lcm(NAT's size_divisor 1, coarsest backbone stride 32)
    assert model.transform.image_mean == [0.485, 0.456, 0.406]  # from nat_mini's pretrained_cfg

    images = [torch.rand(3, 120, 150), torch.rand(3, 128, 128)]
    masks = torch.zeros(2, 120, 150, dtype=torch.uint8)
    masks[0, 10:60, 20:70], masks[1, 50:100, 80:140] = 1, 1
    targets = [{"boxes": torch.tensor([[20.0, 10, 70, 60], [80, 50, 140, 100]]), "labels": torch.tensor([1, 2]),
                "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),  # an image without boxes
                "masks": torch.zeros(0, 128, 128, dtype=torch.uint8)}]
    model.train()
    losses = model(images, targets)
    want = {"retinanet": {"classification", "bbox_regression"},
            "fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}}
    want["maskrcnn"] = want["fasterrcnn"] | {"loss_mask"}
    assert set(losses) == want[arch]
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    body_grads = [p.grad for p in neck.body.parameters() if p.requires_grad]
    assert body_grads and all(g is not None and torch.isfinite(g).all() for g in body_grads)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # train.amp=bf16: torchvision's ops run under CPU autocast
        assert torch.isfinite(sum(model(images, targets).values()))

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "scores", "labels"} <= set(out[0])
    assert out[0]["boxes"].shape[1] == 4
    if arch == "maskrcnn":
        assert out[0]["masks"].shape[-2:] == (120, 150)  # pasted back at the original image size
    if len(out[0]["boxes"]):  # boxes in original image coordinates
        assert out[0]["boxes"][:, 2].max() <= 150 and out[0]["boxes"][:, 3].max() <= 120


def test_build_detector_rejects_bad_arguments():
    from vitzoo.det.torchvision_det import build_detector

    with pytest.raises(ValueError, match="must be one of retinanet, fasterrcnn, maskrcnn"):
        build_detector("yolo", "nat_mini", 2)
    with pytest.raises(TypeError, match=r"unknown torchvision detector argument\(s\) \['box_scor_thresh'\]"):
        build_detector("fasterrcnn", "nat_mini", 2, box_scor_thresh=0.1)
    with pytest.raises(ValueError, match="anchor_sizes needs one entry per FPN level"):
        build_detector("fasterrcnn", "nat_mini", 2, model_kwargs=TINY_BACKBONE, anchor_sizes=[[32], [64]])


# ----------------------------------------------------------------------------------------------- bad input
def _write_set(tmp_path, images=((1, "a.png", 40, 30),), annotations=(), categories=({"id": 1, "name": "x"},),
               files=None, raw=None):
    """A tiny COCO set under tmp_path: (id, file_name, width, height) images, PNGs written for ``files``."""
    from PIL import Image

    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    for _, name, w, h in images if files is None else files:
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(img_dir / name)
    ann = tmp_path / "ann.json"
    if raw is not None:
        ann.write_text(raw)
    else:
        ann.write_text(json.dumps({
            "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
            "annotations": list(annotations), "categories": list(categories)}))
    return str(ann), str(img_dir)


def _box(id_, bbox, image_id=1, **kw):
    return {"id": id_, "image_id": image_id, "category_id": 1, "bbox": bbox, **kw}


def test_malformed_json_is_a_load_time_error_naming_the_file(tmp_path):
    ann, img_dir = _write_set(tmp_path, raw='{"images": [')
    with pytest.raises(DatasetError, match=r"ann\.json: not valid JSON"):
        CocoDetection(ann, img_dir)
    ann, img_dir = _write_set(tmp_path, raw='{"images": [], "categories": []}')
    with pytest.raises(DatasetError, match=r"missing top-level key\(s\) \['annotations'\]"):
        CocoDetection(ann, img_dir)
    ann, img_dir = _write_set(tmp_path, raw='[1, 2]')
    with pytest.raises(DatasetError, match="top level must be a JSON object"):
        CocoDetection(ann, img_dir)
    with pytest.raises(DatasetError, match="annotation file not found"):
        CocoDetection(str(tmp_path / "nope.json"), img_dir)


def test_wrong_types_and_dangling_ids_are_listed_by_annotation_id(tmp_path):
    ann, img_dir = _write_set(tmp_path, images=[(1, "a.png", 40, 30), (2, "b.png", "40", 30)], annotations=[
        _box(7, "0 0 5 5"), _box(8, [0, 0, 5]), _box(9, [0, 0, 5, 5], image_id=99),
        _box(10, [0, 0, 5, 5], category_id=5),
        _box(11, [1, 1, 5, 5], segmentation=[[1, 2, 3]]), _box(11, [1, 1, 5, 5]), {"image_id": 1, "bbox": [0, 0, 1, 1]},
    ], files=[(1, "a.png", 40, 30), (2, "b.png", 40, 30)])
    with pytest.raises(DatasetError) as err:
        CocoDetection(ann, img_dir)
    msg = str(err.value)
    for expected in ["images[1] (id 2): missing or invalid ['width']", "annotation id 7: 'bbox' must be a list of 4",
                     "annotation id 8: 'bbox'", "annotation id 9: 'image_id' 99 is not an image id",
                     "annotation id 10: 'category_id' 5 is not a category id", "annotation id 11: 'segmentation' poly",
                     "annotation id 11: duplicate annotation id", "annotations[6]: missing or non-int 'id'"]:
        assert expected in msg, (expected, msg)
    # Mask R-CNN needs a mask for every annotation
    ann, img_dir = _write_set(tmp_path, annotations=[_box(3, [1, 1, 5, 5])])
    with pytest.raises(DatasetError, match="annotation id 3: no 'segmentation'"):
        CocoDetection(ann, img_dir, masks=True)
    bad_rle = {"counts": "x", "size": [3, 3]}
    ann, img_dir = _write_set(tmp_path, annotations=[_box(4, [1, 1, 5, 5], segmentation=bad_rle)])
    with pytest.raises(DatasetError, match=r"annotation id 4: RLE 'segmentation' size \[3, 3\] differs"):
        CocoDetection(ann, img_dir, masks=True)


def test_missing_and_mismatched_image_files_are_load_time_errors(tmp_path):
    ann, img_dir = _write_set(tmp_path, images=[(1, "a.png", 40, 30), (2, "gone.png", 40, 30)],
                              files=[(1, "a.png", 40, 30)])
    with pytest.raises(DatasetError, match=r"1 image file\(s\) missing under .*img: \['gone.png'\]"):
        CocoDetection(ann, img_dir)
    ann, img_dir = _write_set(tmp_path / "..", images=[(1, "c.png", 40, 30)], files=[(1, "c.png", 41, 30)])
    with pytest.raises(DatasetError, match=r"image id 1: .*c\.png is 41x30 \(w x h\), the JSON says 40x30"):
        CocoDetection(ann, img_dir)
    (tmp_path / "img" / "a.png").write_bytes(b"not a png")
    ann, img_dir = _write_set(tmp_path, images=[(1, "a.png", 40, 30)], files=[])
    with pytest.raises(DatasetError, match=r"image id 1: cannot read .*a\.png"):
        CocoDetection(ann, img_dir)


def test_boxes_are_clipped_degenerate_ones_skipped_with_a_counted_warning(tmp_path):
    ann, img_dir = _write_set(tmp_path, images=[(1, "a.png", 40, 30), (2, "empty.png", 40, 30)], annotations=[
        _box(1, [-5, -5, 20, 20]),  # clipped to (0, 0, 15, 15)
        _box(2, [30, 20, 50, 50]),  # clipped to (30, 20, 40, 30)
        _box(3, [10, 10, 0, 5]),  # zero width
        _box(4, [45, 5, 10, 10]),  # entirely right of the image: nothing left after clipping
        _box(5, [5, 5, -3, 4]),  # negative width
        _box(6, [2, 2, 8, 8], iscrowd=1),  # crowd: evaluation only
    ])
    with pytest.warns(UserWarning, match=r"skipped 3 annotation\(s\) .*ids \[3, 4, 5\]"):
        ds = CocoDetection(ann, img_dir)
    assert ds.stats == {"images": 2, "annotations": 3, "clipped": 2, "degenerate": 3, "crowd": 1, "empty_images": 1}
    assert len(ds) == 2  # the image without boxes is kept as a negative
    _, target = ds[0]
    assert target["boxes"].tolist() == [[0, 0, 15, 15], [30, 20, 40, 30]]
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert [a["id"] for a in ds.coco.dataset["annotations"]] == [1, 2, 6]  # the evaluation ground truth agrees
    with pytest.warns(UserWarning):
        assert len(CocoDetection(ann, img_dir, skip_empty=True)) == 1


def test_polygon_and_rle_masks_and_flips(tmp_path):
    from pycocotools import mask as mask_utils

    rle_mask = np.zeros((30, 40), np.uint8, order="F")
    rle_mask[5:15, 20:30] = 1
    rle = mask_utils.encode(rle_mask)
    rle["counts"] = rle["counts"].decode("ascii")
    ann, img_dir = _write_set(tmp_path, annotations=[
        _box(1, [0, 0, 10, 10], segmentation=[[0, 0, 10, 0, 10, 10, 0, 10]]),
        _box(2, [20, 5, 10, 10], segmentation=rle),
    ])
    ds = CocoDetection(ann, img_dir, masks=True)
    image, target = ds[0]
    assert target["masks"].shape == (2, 30, 40)
    assert target["masks"][0, :10, :10].all() and target["masks"][0].sum() >= 100
    assert torch.equal(target["masks"][1], torch.from_numpy(rle_mask.astype(np.uint8)))
    flipped = CocoDetection(ann, img_dir, masks=True, hflip=1.0)
    image_f, target_f = flipped[0]
    assert torch.equal(image_f, image.flip(-1)) and torch.equal(target_f["masks"], target["masks"].flip(-1))
    assert target_f["boxes"].tolist() == [[30, 0, 40, 10], [10, 5, 20, 15]]
    images, targets = collate([ds[0], flipped[0]])
    assert len(images) == len(targets) == 2


def test_bad_dataset_fails_the_trainer_before_training(tmp_path):
    ann, img_dir = _write_set(tmp_path, annotations=[_box(1, "oops")])
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, TRAIN, "--config", QUICKSTART, "--set", f"output.dir={out}",
                           "--set", "data.dataset=coco"] + [s for k in ("train", "val") for s in (
                               "--set", f"data.{k}_ann={ann}", "--set", f"data.{k}_images={img_dir}")],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "DatasetError" in proc.stderr and "annotation id 1: 'bbox' must be a list of 4" in proc.stderr
    assert not (out / "last.pth").exists()


# ----------------------------------------------------------------------------------------------- trainer runs
def test_trainer_overfits_the_coins_set(tmp_path, coins_root):
    proc = subprocess.run(_cmd(tmp_path, coins_root, "model.arch=fasterrcnn", "train.epochs=6", "optim.lr=1e-3",
                               "data.batch_size=2", "output.progress=true"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("last.pth", "best.pth", "metrics.csv", "curves.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert {"train_loss", "train_loss_classifier", "train_loss_objectness", "bbox_mAP", "bbox_mAP50"} <= set(rows[0])
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["final"]["val_images"] == 4 and summary["final"]["train_images"] == 8
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # 24 steps of a 16-wide NAT Faster R-CNN from scratch, on 160-px images of the 24 coins it trains on
    # (seeds 0-2 give mAP50 97.5-98.6, mAP 44-54)
    assert summary["final"]["bbox_mAP50"] > 80.0 and summary["final"]["bbox_mAP"] > 25.0, summary["final"]
    assert "epoch 1/6" in proc.stderr  # tqdm progress bar


def _wait_for_mid_epoch_checkpoint(proc, path, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
            except Exception:  # pragma: no cover - never torn (atomic rename), but be safe while polling
                ckpt = None
            if ckpt is not None and ckpt["step"] > 0:
                return ckpt
        time.sleep(0.02)
    return None


def test_sigkill_mid_epoch_then_resume_is_bit_for_bit(tmp_path, coins_root):
    # Faster R-CNN: its RPN / RoI samplers draw from the global RNG, so this also checks the RNG state round trip
    common = ("model.arch=fasterrcnn", "train.epochs=2", "data.batch_size=2", "output.checkpoint_every_steps=1")
    reference = tmp_path / "reference"
    killed = tmp_path / "killed"
    ref = subprocess.Popen(_cmd(reference, coins_root, *common), env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_cmd(killed, coins_root, *common), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = _wait_for_mid_epoch_checkpoint(proc, str(killed / "last.pth"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, "the run ended before a mid-epoch checkpoint could be seen"
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run(_cmd(killed, coins_root, *common) + ["--resume"], env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]

    a = torch.load(reference / "last.pth", map_location="cpu", weights_only=False)
    b = torch.load(killed / "last.pth", map_location="cpu", weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # every per-epoch number (losses, mAPs, detection counts) except the wall-clock throughput
    strip = lambda history: [{k: v for k, v in row.items() if k != "train_img_s"} for row in history]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert a["rng"][0]["torch"].equal(b["rng"][0]["torch"])


def test_two_process_gloo_ddp_gathers_detections_and_reduces_losses(tmp_path, coins_root):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537")
    # val_batch_size 1: both evaluations below run each image alone, so their detections match exactly
    # Mask R-CNN: the gathered results include RLE masks (segm mAP) as well as boxes
    run = ("model.arch=maskrcnn", "model.mask_head_dim=32", "data.val_batch_size=1")
    proc = subprocess.run(_cmd(tmp_path, coins_root, *run, "train.epochs=1", "data.batch_size=2", launcher=launcher),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    final = summary["final"]
    assert summary["world_size"] == 2
    # 8 train images = 2 steps x 2 images x 2 ranks, summed over ranks; every val image evaluated exactly once
    assert final["train_images"] == 8 and final["val_images"] == 4
    # the gathered 2-rank evaluation equals a 1-process evaluation of the same weights
    single = subprocess.run(_cmd(tmp_path, coins_root, *run) + ["--eval-only"], env=_env(), capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    evaluated = json.load(open(tmp_path / "eval.json"))
    assert evaluated["world_size"] == 1 and evaluated["val_images"] == 4
    for key in ("bbox_mAP", "bbox_mAP50", "segm_mAP", "segm_mAP50", "val_detections"):
        assert evaluated[key] == pytest.approx(final[key], abs=1e-6), key
