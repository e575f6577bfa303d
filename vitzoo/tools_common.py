"""Pieces shared by ``tools/train.py``, ``tools/validate.py`` and ``tools/benchmark.py``.

Bad input (a missing file or folder, an unknown model name, a bad config key or YAML, an image size a model cannot
take, a checkpoint that does not fit the model) is reported by ``run_cli`` as one line on stderr with exit code 2;
``VITZOO_DEBUG=1`` shows the full traceback instead.
"""
from __future__ import annotations

import csv
import difflib
import math
import os
import random
import sys
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["UserError", "run_cli", "check_model_name", "build_model", "load_checkpoint_file",
           "is_training_checkpoint", "state_dict_from_checkpoint", "amp_dtype", "autocast_ctx", "epoch_batches",
           "make_loader", "evaluate", "load_state_dict_or_explain", "to_channels_last", "setup_distributed",
           "capture_rng", "restore_rng", "seed_everything", "save_atomic"]

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr (no traceback) by ``run_cli``."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original message
        text = text.strip().splitlines()[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines)


def _close_progress_bars() -> None:
    """Close open tqdm bars so that an error message starts on its own line."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def run_cli(main: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]] = None,
            prog: Optional[str] = None) -> int:
    """Run a tool's ``main``; bad input becomes ``<tool>: error: <message>`` on one stderr line and exit code 2."""
    from vitzoo.config import ConfigError

    prog = prog or (os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "vitzoo")
    if os.environ.get("VITZOO_DEBUG"):
        main(argv)
        return 0
    try:
        main(argv)
    except (UserError, ConfigError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        # ValueError covers the models' own argument / input-size checks (they raise ValueError with a clear text)
        _close_progress_bars()
        sys.stderr.write(f"{prog}: error: {_one_line(exc)}\n")
        sys.stderr.flush()
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    return 0


# ----------------------------------------------------------------------------------------------- models
def check_model_name(name: str, what: str = "model.name") -> None:
    """Raise UserError for a name timm does not know, suggesting close registered names."""
    import timm

    if isinstance(name, str) and timm.is_model(name):
        return
    close = difflib.get_close_matches(str(name), timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"{what} {name!r} is not a registered timm/vitzoo model{hint} "
                    f"(see timm.list_models(); vitzoo models appear after `import vitzoo`)")


def load_checkpoint_file(path: str, what: str = "checkpoint") -> Any:
    """torch.load on CPU with one-line errors. Tries ``weights_only=True`` first; vitzoo's own training checkpoints
    (RNG states) and some official releases (argparse Namespaces) need a full unpickle: only load files you trust."""
    if not path:
        raise UserError(f"{what}: no file given")
    if not os.path.exists(path):
        raise UserError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder, not a checkpoint file")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{what} {path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                        f"{_one_line(exc)[:200]})") from None


def is_training_checkpoint(obj: Any) -> bool:
    """``last.pth`` / ``best.pth`` written by tools/train.py (they carry the training config)."""
    return isinstance(obj, dict) and isinstance(obj.get("config"), dict) and isinstance(obj.get("model"), dict)


def state_dict_from_checkpoint(obj: Any, use_ema: bool = False, path: str = "checkpoint") -> Dict[str, Any]:
    """The model state dict inside a training checkpoint or a foreign file (timm's nesting rules: ``state_dict_ema``
    / ``model_ema`` with ``use_ema``, else ``state_dict`` / ``model``, else the dict itself), prefixes
    ``module.`` / ``_orig_mod.`` removed."""
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    if is_training_checkpoint(obj):
        if use_ema:
            if not obj.get("ema"):
                raise UserError(f"--ema: {path} has no EMA weights (train with train.ema_decay > 0)")
            sd = obj["ema"]
        else:
            sd = obj["model"]
    elif use_ema:
        key = next((k for k in ("state_dict_ema", "model_ema", "ema") if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise UserError(f"--ema: {path} has no EMA weights (looked for state_dict_ema, model_ema, ema)")
        sd = obj[key]
    else:
        key = next((k for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        sd = obj[key] if key else obj
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    if not any(torch.is_tensor(v) for v in out.values()):
        raise UserError(f"{path} does not hold a state dict (no tensors found)")
    return out


def load_state_dict_or_explain(model: nn.Module, state_dict: Dict[str, Any], what: str) -> None:
    """``model.load_state_dict(strict=True)`` with a one-line summary of a mismatch."""
    result = model.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing keys (e.g. {', '.join(result.missing_keys[:3])})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. {', '.join(result.unexpected_keys[:3])})")
    if problems:
        raise UserError(f"{what} does not fit the model: {'; '.join(problems)}")


def _explain_load_error(exc: RuntimeError, what: str, name: str) -> UserError:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
    if "size mismatch" in str(exc):
        detail = next(ln for ln in lines if "size mismatch" in ln)
    return UserError(f"{what} does not fit model {name!r}: {detail[:300]}")


def build_model(cfg: Dict[str, Any], num_classes: int, weights: Optional[Dict[str, Any]] = None,
                weights_what: str = "checkpoint", keep_head: bool = True) -> nn.Module:
    """A timm model from a config's ``model`` section (+ ``data.in_chans``, ``train.drop_path`` and
    ``train.grad_checkpointing``).

    ``weights``: a state dict in any layout the model's ``checkpoint_filter_fn`` understands (vitzoo, timm or the
    official release), loaded through timm's pretrained path (``pretrained=True`` with the state dict in
    ``pretrained_cfg_overlay``), so the filter runs and the load is strict. ``keep_head=True`` requires the
    checkpoint's classifier to have ``num_classes`` outputs; ``False`` lets timm drop a classifier of another size
    (fine-tuning). ``model.pretrained_file`` in the config is loaded the fine-tuning way when ``weights`` is None.
    """
    import timm

    mcfg = cfg["model"]
    check_model_name(mcfg["name"])
    kwargs = dict(mcfg["kwargs"])
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("in_chans", cfg["data"]["in_chans"])
    if cfg.get("train", {}).get("drop_path") is not None:
        kwargs["drop_path_rate"] = cfg["train"]["drop_path"]
    if weights is None and mcfg.get("pretrained_file"):
        weights = state_dict_from_checkpoint(load_checkpoint_file(mcfg["pretrained_file"], "model.pretrained_file"),
                                             path=mcfg["pretrained_file"])
        weights_what, keep_head = f"model.pretrained_file {mcfg['pretrained_file']}", False
    if weights is not None:
        # claim the checkpoint's head has num_classes outputs: timm then loads it (strictly) instead of dropping it
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(state_dict=weights,
                                                                   num_classes=kwargs["num_classes"]))
    try:
        try:
            model = timm.create_model(mcfg["name"], **kwargs)
        except RuntimeError as exc:
            if weights is None or keep_head or "size mismatch" not in str(exc):
                raise
            # fine-tuning: a classifier of another size is dropped by timm (num_classes != pretrained num_classes)
            kwargs["pretrained_cfg_overlay"] = dict(state_dict=weights)
            model = timm.create_model(mcfg["name"], **kwargs)
    except TypeError as exc:  # e.g. a model without drop_path_rate, or a typo in model.kwargs
        raise UserError(f"model {mcfg['name']!r} does not accept these arguments: {_one_line(exc)}") from None
    except RuntimeError as exc:
        if "loading state_dict" in str(exc) or "size mismatch" in str(exc):
            raise _explain_load_error(exc, weights_what, mcfg["name"]) from None
        raise
    except KeyError as exc:  # a filter looking for a key the file does not have
        if weights is None:
            raise
        raise UserError(f"{weights_what} does not fit model {mcfg['name']!r}: key {exc} not found "
                        f"(wrong model for this checkpoint?)") from None
    except ValueError as exc:
        if weights is None:
            raise  # the model's own argument check: reported as is
        kwargs.pop("pretrained"), kwargs.pop("pretrained_cfg_overlay")
        timm.create_model(mcfg["name"], **kwargs)  # raises if the arguments, not the weights, are the problem
        raise UserError(f"{weights_what} does not fit model {mcfg['name']!r}: {_one_line(exc)}") from None
    if cfg.get("train", {}).get("grad_checkpointing"):
        model.set_grad_checkpointing(True)
    return model


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model.to(memory_format=torch.channels_last)`` for the 4-D tensors only: torch's own call fails on a model
    with 5-D parameters (e.g. Agent-Swin's agent biases), as channels_last is a 4-D layout."""
    with torch.no_grad():
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for key, t in store.items():
                    if t is not None and t.dim() == 4:
                        t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


# ----------------------------------------------------------------------------------------------- data + eval
def amp_dtype(amp: Optional[str]) -> Optional[torch.dtype]:
    """The autocast dtype an ``amp`` setting names; None for no autocast (None, "none", "fp32")."""
    if amp in (None, "none", "fp32"):
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast_ctx(amp: str, device: torch.device):
    dtype = amp_dtype(amp)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def epoch_batches(n: int, batch: int, epoch: int, seed: int, shuffle: bool, rank: int, world: int,
                  drop_last: bool, repeats: int = 0) -> List[List[int]]:
    """This rank's batches of dataset indices for one epoch: a pure function of its arguments (resumable).

    ``repeats`` > 1: repeated augmentation as DeiT's RASampler / timm's RepeatAugSampler: every shuffled index
    ``repeats`` times in a row, dealt round-robin to the ranks, each rank keeping ``n // world`` of them (rounded down
    to a multiple of 256 when the set is large), so an epoch has the usual length but ~n / repeats distinct images.
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    else:
        order = list(range(n))
    if shuffle and repeats and repeats > 1:
        order = [i for i in order for _ in range(repeats)]
        per_rank = math.ceil(len(order) / world)
        order = (order * 2)[: per_rank * world][rank::world]
        keep = (n // 256 * 256 if n >= 256 * world else n) // world
        order = order[:keep]
    elif world > 1:
        if shuffle:  # equal step counts on every rank (DDP needs them): wrap around
            per_rank = math.ceil(n / world)
            order = (order * 2)[: per_rank * world]
        order = order[rank::world]
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    if drop_last and batches and len(batches[-1]) < batch:
        batches = batches[:-1]
    return batches


def make_loader(dataset, batches: Sequence[Sequence[int]], workers: int, device: torch.device,
                key: Optional[Iterable[int]] = None, first_batch: int = 0):
    """DataLoader over precomputed batches of indices (the data order stays a pure function, see epoch_batches).

    A dataset with ``keyed = True`` (``vitzoo.data.SeededAugmentation``) receives ``(index, key + (batch, slot))``
    so that its random augmentation is a pure function of the position in the epoch (``first_batch``: the epoch
    position of ``batches[0]``, for a resumed epoch). The loader has its own
    generator, so iterating it never consumes the global RNG (resume stays bit-for-bit).
    """
    from torch.utils.data import DataLoader

    batches = [list(b) for b in batches]
    if getattr(dataset, "keyed", False):
        key = tuple(key or ())
        batches = [[(i, key + (first_batch + b, j)) for j, i in enumerate(idx)] for b, idx in enumerate(batches)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                      persistent_workers=False)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch: int, device: torch.device, amp: str = "none",
             channels_last: bool = False, rank: int = 0, world: int = 1, workers: int = 0, progress: bool = False,
             desc: str = "validate") -> Dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (%) over the dataset (sharded over the ranks, summed with all_reduce)."""
    from timm.utils import accuracy
    from tqdm import tqdm

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    criterion = nn.CrossEntropyLoss(reduction="sum")
    batches = epoch_batches(len(dataset), batch, 0, 0, False, rank, world, drop_last=False)
    bar = tqdm(total=len(batches), desc=desc, disable=not progress, dynamic_ncols=True)
    for images, target in make_loader(dataset, batches, workers, device):
        images, target = images.to(device, non_blocking=True), torch.as_tensor(target).to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_ctx(amp, device):
            logits = model(images)
        logits = logits.float()
        n = len(target)
        acc1, acc5 = accuracy(logits, target, topk=(1, min(5, logits.shape[1])))
        sums += torch.tensor([criterion(logits, target).item(), round(acc1.item() * n / 100),
                              round(acc5.item() * n / 100), n], dtype=torch.float64, device=device)
        bar.update(1)
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        raise UserError("the evaluation set is empty")
    return {"val_loss": loss / count, "val_top1": 100 * top1 / count, "val_top5": 100 * top5 / count}


# ----------------------------------------------------------------------------------------------- run state
def setup_distributed(device_arg: Optional[str]):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device_arg or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, device


def capture_rng() -> Dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def save_atomic(state: Dict[str, Any], path: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill at any moment leaves the old or the new
    checkpoint, never a torn one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_rows_csv(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """Rows as a CSV whose columns are the union of every row's keys, in first-seen order (rows may differ: an error
    row has no timings, a later epoch an extra metric)."""
    fields: List[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
