"""COCO-format detection data: a validated dataset class, COCO mAP, and the embedded "coins" quick-start set.

:class:`CocoDetection` reads an annotation JSON + an image folder and checks everything at construction time, so a
bad file fails before training starts, with the file, image or annotation id named:

- malformed JSON, missing top-level keys, wrong types or missing keys in images / annotations / categories, duplicate
  ids, annotations pointing at unknown images or categories, malformed segmentations -> :class:`DatasetError`
  (all problems listed, up to 20);
- image files that are missing, unreadable, or whose size differs from the JSON's width/height -> DatasetError;
- boxes reaching outside the image are clipped to it (counted in ``stats["clipped"]``);
- boxes with width or height < ``min_box_size`` after clipping are skipped with one warning that counts them and
  names their ids (``stats["degenerate"]``); they are dropped from the evaluation ground truth too;
- images without boxes are kept as negatives (torchvision's detectors accept empty targets) unless ``skip_empty``;
- ``iscrowd`` annotations are not trained on (as in torchvision's references) but stay in the evaluation ground
  truth, where COCOeval ignores detections that fall on them.

The "coins" set (:func:`build_coins_dataset`) is built at run time from ``skimage.data.coins()`` -- a real 303x384
photograph of 24 coins that ships inside the scikit-image wheel, nothing is downloaded -- segmented with the
scikit-image tutorial's recipe (Sobel elevation map + watershed from intensity markers + hole filling), which finds
exactly the 24 coins. It is an overfitting smoke set, not a benchmark: the train images are random crops of randomly
flipped/rotated/rescaled/brightness-jittered copies of the one photograph, and the val images are the photograph
itself and its three flips, i.e. the same 24 coins the model trained on.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from contextlib import redirect_stdout
from io import StringIO
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DatasetError", "CocoDetection", "collate", "coco_evaluate", "detections_to_coco",
           "coins_segmentation", "build_coins_dataset", "COINS_VERSION"]

COINS_VERSION = 1  # bump when the coins recipe changes: a stale build on disk is then rebuilt
_MAX_LISTED = 20


class DatasetError(ValueError):
    """A detection dataset that cannot be trained on; the message names the file and the offending entries."""


# ----------------------------------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _segmentation_problem(seg: Any, height: int, width: int) -> Optional[str]:
    """None if ``seg`` is a COCO polygon list or RLE for an image of this size, else what is wrong with it."""
    if isinstance(seg, list):
        if not seg:
            return "'segmentation' is an empty list"
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(_is_num(v) for v in poly):
                return "'segmentation' polygons must be lists of >= 6 numbers (x, y pairs)"
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "RLE 'segmentation' needs 'counts' and 'size'"
        if list(seg["size"]) != [height, width]:
            return f"RLE 'segmentation' size {seg['size']} differs from the image's [height, width] {[height, width]}"
        if not isinstance(seg["counts"], (str, list)):
            return "RLE 'counts' must be a string (compressed) or a list of ints (uncompressed)"
        return None
    return f"'segmentation' must be a polygon list or an RLE dict, got {type(seg).__name__}"


def _validate(data: Any, ann_file: str, need_masks: bool) -> None:
    """Raise one DatasetError listing every structural problem of a COCO annotation dict."""
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be a JSON object with 'images', 'annotations' and "
                           f"'categories', got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(f"{ann_file}: missing top-level key(s) {missing}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{ann_file}: '{key}' must be a list, got {type(data[key]).__name__}")
    problems: List[str] = []
    cat_ids, img_sizes = set(), {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            problems.append(f"categories[{i}]: needs an int 'id' and a str 'name', got {cat!r:.120}")
        elif cat["id"] in cat_ids:
            problems.append(f"categories[{i}]: duplicate category id {cat['id']}")
        else:
            cat_ids.add(cat["id"])
    if not data["categories"]:
        problems.append("'categories' is empty")
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]" + (f" (id {img.get('id')})" if isinstance(img, dict) and "id" in img else "")
        if not isinstance(img, dict):
            problems.append(f"{where}: must be an object, got {type(img).__name__}")
            continue
        bad = [k for k, ok in (("id", _is_int(img.get("id"))), ("file_name", isinstance(img.get("file_name"), str)),
                               ("width", _is_int(img.get("width")) and img.get("width", 0) > 0),
                               ("height", _is_int(img.get("height")) and img.get("height", 0) > 0)) if not ok]
        if bad:
            problems.append(f"{where}: missing or invalid {bad} (need int id, str file_name, positive int "
                            f"width/height)")
        elif img["id"] in img_sizes:
            problems.append(f"{where}: duplicate image id {img['id']}")
        else:
            img_sizes[img["id"]] = (img["height"], img["width"])
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{i}]: must be an object, got {type(ann).__name__}")
            continue
        where = f"annotation id {ann['id']}" if _is_int(ann.get("id")) else f"annotations[{i}]"
        if not _is_int(ann.get("id")):
            problems.append(f"{where}: missing or non-int 'id'")
        elif ann["id"] in ann_ids:
            problems.append(f"{where}: duplicate annotation id")
        else:
            ann_ids.add(ann["id"])
        if ann.get("image_id") not in img_sizes:
            problems.append(f"{where}: 'image_id' {ann.get('image_id')!r} is not an image id in 'images'")
        if ann.get("category_id") not in cat_ids:
            problems.append(f"{where}: 'category_id' {ann.get('category_id')!r} is not a category id")
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_is_num(v) for v in box):
            problems.append(f"{where}: 'bbox' must be a list of 4 finite numbers [x, y, w, h], got {box!r:.80}")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            problems.append(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        if "area" in ann and not _is_num(ann["area"]):
            problems.append(f"{where}: 'area' must be a number, got {ann['area']!r:.40}")
        if "segmentation" in ann and ann.get("image_id") in img_sizes:
            problem = _segmentation_problem(ann["segmentation"], *img_sizes[ann["image_id"]])
            if problem:
                problems.append(f"{where}: {problem}")
        elif need_masks and not ann.get("iscrowd"):
            problems.append(f"{where}: no 'segmentation' (Mask R-CNN needs a mask for every annotation)")
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise DatasetError(f"{ann_file}: {len(problems)} problem(s){more}:\n  " +
                           "\n  ".join(problems[:_MAX_LISTED]))


def _check_images(images: List[Dict[str, Any]], image_dir: str, ann_file: str, verify: bool) -> None:
    missing = [img["file_name"] for img in images if not os.path.isfile(os.path.join(image_dir, img["file_name"]))]
    if missing:
        raise DatasetError(f"{ann_file}: {len(missing)} image file(s) missing under {image_dir}: "
                           f"{missing[:_MAX_LISTED]}")
    if not verify:
        return
    from PIL import Image

    for img in images:
        path = os.path.join(image_dir, img["file_name"])
        try:
            with Image.open(path) as im:
                size = im.size
                im.verify()  # checks the container (PNG CRCs, truncation) without decoding every pixel
        except Exception as e:  # PIL raises many types for corrupt files
            raise DatasetError(f"{ann_file}: image id {img['id']}: cannot read {path}: {e}") from e
        if size != (img["width"], img["height"]):
            raise DatasetError(f"{ann_file}: image id {img['id']}: {path} is {size[0]}x{size[1]} (w x h), the JSON "
                               f"says {img['width']}x{img['height']}")


# ----------------------------------------------------------------------------------------------- dataset
class CocoDetection(Dataset):
    """A COCO-format split as ``(image float[3, H, W] in [0, 1], target dict)`` for torchvision's detectors.

    ``target``: ``boxes`` float[N, 4] (x1, y1, x2, y2, clipped to the image), ``labels`` int64[N] in
    ``1..num_classes-1`` (COCO category ids mapped in sorted order), ``image_id``, and ``masks`` uint8[N, H, W] when
    ``masks=True`` (from polygons or RLE via pycocotools). ``hflip`` is the probability of a horizontal flip, drawn
    as a pure function of (seed, epoch, index) so a resumed run sees the same flips. ``self.coco`` is a pycocotools
    ``COCO`` over the cleaned annotations (the evaluation ground truth).
    """

    def __init__(self, ann_file: str, image_dir: str, *, masks: bool = False, hflip: float = 0.0, seed: int = 0,
                 skip_empty: bool = False, verify_images: bool = True, min_box_size: float = 1.0) -> None:
        try:
            with open(ann_file) as f:
                data = json.load(f)
        except FileNotFoundError as e:
            raise DatasetError(f"annotation file not found: {ann_file}") from e
        except json.JSONDecodeError as e:
            raise DatasetError(f"{ann_file}: not valid JSON: {e}") from e
        _validate(data, ann_file, need_masks=masks)
        _check_images(data["images"], image_dir, ann_file, verify_images)
        self.ann_file, self.image_dir = ann_file, image_dir
        self.masks, self.hflip, self.seed, self.epoch = masks, float(hflip), int(seed), 0

        images = {img["id"]: img for img in data["images"]}
        clipped, degenerate, kept = 0, [], []
        for ann in data["annotations"]:
            img = images[ann["image_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1 = min(max(x, 0.0), img["width"]), min(max(y, 0.0), img["height"])
            x2, y2 = min(max(x + w, 0.0), img["width"]), min(max(y + h, 0.0), img["height"])
            if x2 - x1 < min_box_size or y2 - y1 < min_box_size:
                degenerate.append(ann["id"])
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                clipped += 1
            ann = dict(ann, bbox=[x1, y1, x2 - x1, y2 - y1], iscrowd=int(ann.get("iscrowd", 0)))
            ann.setdefault("area", (x2 - x1) * (y2 - y1))
            kept.append(ann)
        if degenerate:
            warnings.warn(f"{ann_file}: skipped {len(degenerate)} annotation(s) whose box has width or height "
                          f"< {min_box_size} px after clipping to the image; ids {degenerate[:_MAX_LISTED]}"
                          f"{' ...' if len(degenerate) > _MAX_LISTED else ''}", stacklevel=2)
        self.stats = {"images": len(images), "annotations": len(kept), "clipped": clipped,
                      "degenerate": len(degenerate), "crowd": sum(a["iscrowd"] for a in kept)}

        from pycocotools.coco import COCO

        clean = dict(data, annotations=kept)
        self.coco = COCO()
        self.coco.dataset = clean
        with redirect_stdout(StringIO()):  # pycocotools prints progress lines
            self.coco.createIndex()
        self.cat_ids: List[int] = sorted(c["id"] for c in data["categories"])
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.class_names = [next(c["name"] for c in data["categories"] if c["id"] == cid) for cid in self.cat_ids]
        self.num_classes = len(self.cat_ids) + 1  # + background
        self.ids: List[int] = sorted(images)
        if skip_empty:
            self.ids = [i for i in self.ids if any(not a["iscrowd"] for a in self.coco.imgToAnns[i])]
        self.stats["empty_images"] = sum(1 for i in images if not any(not a["iscrowd"] for a in
                                                                         self.coco.imgToAnns[i]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def _flip(self, idx: int) -> bool:
        if self.hflip <= 0:
            return False
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_007 + int(idx))
        return bool(torch.rand((), generator=gen) < self.hflip)

    def load_image(self, image_id: int) -> torch.Tensor:
        from PIL import Image

        info = self.coco.imgs[image_id]
        path = os.path.join(self.image_dir, info["file_name"])
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # a file damaged after the load-time check: name it
            raise DatasetError(f"image id {image_id}: cannot decode {path}: {e}") from e
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        image_id = self.ids[idx]
        image = self.load_image(image_id)
        h, w = image.shape[-2:]
        anns = [a for a in self.coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target: Dict[str, torch.Tensor] = {
            "boxes": boxes, "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns],
                                                   dtype=torch.int64),
            "image_id": torch.tensor(image_id)}
        if self.masks:
            from pycocotools import mask as mask_utils

            masks = np.zeros((len(anns), h, w), dtype=np.uint8)
            for i, a in enumerate(anns):
                seg = a["segmentation"]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) else (
                    mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg)
                masks[i] = mask_utils.decode(rle)
            target["masks"] = torch.from_numpy(masks)
        if self._flip(idx):
            image = image.flip(-1)
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]):
    """Detection batches stay lists: torchvision's transform resizes and pads them itself."""
    return [b[0] for b in batch], [b[1] for b in batch]


# ----------------------------------------------------------------------------------------------- evaluation
def detections_to_coco(outputs: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int],
                       label_to_cat: Dict[int, int], masks: bool) -> Tuple[List[Dict], List[Dict]]:
    """torchvision detector outputs (original image coordinates) -> COCO result lists (bbox, segm)."""
    bbox_res, segm_res = [], []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores, labels = out["scores"].float().cpu().tolist(), out["labels"].cpu().tolist()
        for box, score, label in zip(xywh, scores, labels):
            bbox_res.append({"image_id": int(image_id), "category_id": label_to_cat[label], "bbox": box,
                             "score": score})
        if masks and "masks" in out:
            from pycocotools import mask as mask_utils

            binary = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            for m, score, label in zip(binary, scores, labels):
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode("ascii")
                segm_res.append({"image_id": int(image_id), "category_id": label_to_cat[label], "segmentation": rle,
                                 "score": score})
    return bbox_res, segm_res


_STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l")


def coco_evaluate(coco_gt, results: List[Dict[str, Any]], iou_type: str,
                  image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO mAP (percent) of ``results`` against ``coco_gt``: mAP (0.5:0.95), mAP50, mAP75 and by object size.

    Sizes with no ground truth come back as -1 (pycocotools' convention); no detections at all gives 0.
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in _STAT_NAMES}
    with redirect_stdout(StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes writes ids/areas into the dicts: copies
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) * 100 if v >= 0 else -1.0 for name, v in zip(_STAT_NAMES, ev.stats[:6])}


# ----------------------------------------------------------------------------------------------- coins
def coins_segmentation() -> Tuple[np.ndarray, np.ndarray]:
    """``skimage.data.coins()`` (uint8 303x384) and its label image: 24 coins labelled 1..24, background 0."""
    from scipy import ndimage as ndi
    from skimage import data, filters, measure, segmentation

    image = data.coins()
    # scikit-image's segmentation tutorial: watershed of the Sobel elevation map from dark/bright markers
    markers = np.zeros_like(image)
    markers[image < 30], markers[image > 150] = 1, 2
    foreground = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(image), markers) == 2)
    labels = measure.label(foreground)
    keep = [p.label for p in measure.regionprops(labels) if p.area >= 100]  # drops a few specks of glare
    out = np.zeros_like(labels)
    for new, old in enumerate(keep, 1):
        out[labels == old] = new
    return image, out


def _coins_params(n_train: int, crop: int, seed: int) -> Dict[str, Any]:
    return {"version": COINS_VERSION, "n_train": n_train, "crop": crop, "seed": seed}


def _objects(labels: np.ndarray, full_area: Dict[int, int], min_visible: float) -> List[Dict[str, Any]]:
    """COCO annotations (bbox, RLE mask, iscrowd) for every label visible in ``labels``.

    A coin cut by the crop border is an object if >= ``min_visible`` of it is visible, else an ``iscrowd`` region:
    not trained on, and COCOeval ignores detections on it, so a half-visible coin is neither a miss nor a false
    positive.
    """
    from pycocotools import mask as mask_utils
    from skimage import measure

    anns = []
    for p in measure.regionprops(labels):
        r0, c0, r1, c1 = p.bbox
        mask = np.asfortranarray((labels == p.label).astype(np.uint8))
        rle = mask_utils.encode(mask)
        rle["counts"] = rle["counts"].decode("ascii")
        visible = p.area / full_area[p.label]
        anns.append({"bbox": [int(c0), int(r0), int(c1 - c0), int(r1 - r0)], "area": int(p.area),
                     "segmentation": rle, "iscrowd": int(visible < min_visible), "category_id": 1})
    return anns


def _write_split(root: str, split: str, items: List[Tuple[np.ndarray, List[Dict[str, Any]]]]) -> None:
    from PIL import Image

    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for i, (img, anns) in enumerate(items, 1):
        name = f"{split}_{i:03d}.png"
        Image.fromarray(img).save(os.path.join(img_dir, name))
        images.append({"id": i, "file_name": name, "height": int(img.shape[0]), "width": int(img.shape[1])})
        for ann in anns:
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=i))
    data = {"info": {"description": f"vitzoo coins quick-start set ({split}), built from skimage.data.coins()"},
            "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "coin"}]}
    tmp = os.path.join(root, f"{split}.json.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(root, f"{split}.json"))


def build_coins_dataset(root: str, n_train: int = 32, crop: int = 288, seed: int = 0,
                        min_visible: float = 0.5) -> Dict[str, str]:
    """Write the coins set under ``root`` (``train.json`` + ``train/``, ``val.json`` + ``val/``) unless an identical
    build is already there; returns the four paths.

    train: ``n_train`` crops (``crop`` x ``crop``) of the photograph after a random flip/rotation by 90 degrees,
    rescaling by 0.8-1.25 (at least enough for the crop) and brightness/contrast jitter. val: the photograph and its
    horizontal, vertical and double flip (96 whole coins). Masks are RLE; ``min_visible``: see :func:`_objects`.
    """
    from skimage import transform

    paths = {"train_ann": os.path.join(root, "train.json"), "train_images": os.path.join(root, "train"),
             "val_ann": os.path.join(root, "val.json"), "val_images": os.path.join(root, "val")}
    stamp = os.path.join(root, "build.json")
    params = _coins_params(n_train, crop, seed)
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params and all(os.path.exists(p) for p in paths.values()):
                return paths
    os.makedirs(root, exist_ok=True)
    image, labels = coins_segmentation()
    full_area = {int(v): int(c) for v, c in zip(*np.unique(labels, return_counts=True)) if v}

    val = []
    for flip_axes in ((), (1,), (0,), (0, 1)):
        img, lab = image, labels
        for ax in flip_axes:
            img, lab = np.flip(img, ax), np.flip(lab, ax)
        val.append((np.ascontiguousarray(img), _objects(np.ascontiguousarray(lab), full_area, min_visible)))

    rng = np.random.default_rng(seed)
    train = []
    for _ in range(n_train):
        # the smallest scale still leaves room for the crop (the photograph's short side is 303 px)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        scale = float(rng.uniform(max(0.8, (crop + 1) / min(image.shape)), 1.25))
        img, lab = np.rot90(image, k), np.rot90(labels, k)
        if flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        shape = (round(img.shape[0] * scale), round(img.shape[1] * scale))
        img = transform.resize(img, shape, order=1, preserve_range=True, anti_aliasing=scale < 1)
        lab = transform.resize(lab, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
        area = {int(v): int(c) for v, c in zip(*np.unique(lab, return_counts=True)) if v}
        y0 = int(rng.integers(0, shape[0] - crop + 1))
        x0 = int(rng.integers(0, shape[1] - crop + 1))
        img, lab = img[y0:y0 + crop, x0:x0 + crop], np.ascontiguousarray(lab[y0:y0 + crop, x0:x0 + crop])
        gain, bias = float(rng.uniform(0.75, 1.25)), float(rng.uniform(-25, 25))
        img = np.clip(img * gain + bias, 0, 255).round().astype(np.uint8)
        train.append((img, _objects(lab, area, min_visible)))
    _write_split(root, "train", train)
    _write_split(root, "val", val)
    with open(stamp, "w") as f:  # written last: a build killed half-way is redone
        json.dump(params, f)
    return paths
