"""tools/validate.py end to end: train -> checkpoint -> resume -> validate on the embedded digits set, and validate.py
on a timm-layout state dict and on an official-release layout (through the model's checkpoint_filter_fn)."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")
VALIDATE = os.path.join(ROOT, "tools", "validate.py")
QUICKSTART = os.path.join(ROOT, "configs", "cls", "quickstart_digits.yaml")
TINY_KWARGS = ("model.kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], kernel_size: 3, "
               "mlp_ratio: 1.0}")
TINY = [TINY_KWARGS, "data.batch_size=16", "data.val_batch_size=128", "output.progress=false"]

sys.path.insert(0, os.path.join(ROOT, "tools"))
import validate  # noqa: E402


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("VITZOO_ATTN_BACKEND", None)
    return env


def _train(out_dir, *extra, resume=False):
    sets = [s for item in TINY + list(extra) for s in ("--set", item)]
    cmd = [sys.executable, TRAIN, "--config", QUICKSTART, "--set", f"output.dir={out_dir}", *sets]
    proc = subprocess.run(cmd + (["--resume"] if resume else []), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One epoch, then --resume for a second one (train.epochs raised to 2): last.pth / best.pth with EMA."""
    out = tmp_path_factory.mktemp("e2e")
    _train(out, "train.epochs=1", "train.max_steps_per_epoch=8", "train.ema_decay=0.9")
    first = torch.load(out / "last.pth", map_location="cpu", weights_only=False)
    assert first["epoch"] == 1 and first["ema"] is not None
    resumed = _train(out, "train.epochs=2", "train.max_steps_per_epoch=8", "train.ema_decay=0.9", resume=True)
    assert "resumed from" in resumed.stdout and "epoch 2:" in resumed.stdout
    return out


def test_validate_training_checkpoints_reproduce_the_training_eval(run_dir, tmp_path):
    last = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=False)
    best = torch.load(run_dir / "best.pth", map_location="cpu", weights_only=False)
    assert [r["epoch"] for r in last["history"]] == [1, 2]

    res = validate.main(["--checkpoint", str(run_dir / "best.pth"), "--out", str(tmp_path / "best"), "--no-progress"])
    assert res["images"] == 360 and res["weights"] == "model" and res["dataset"] == "digits"
    assert res["top1"] == best["metrics"]["val_top1"] and res["top5"] == best["metrics"]["val_top5"]
    assert res["loss"] == pytest.approx(best["metrics"]["val_loss"], rel=1e-12)

    ema = validate.main(["--checkpoint", str(run_dir / "last.pth"), "--ema", "--out", str(tmp_path / "ema"),
                         "--no-progress", "-b", "50"])  # another batch size: same numbers
    assert ema["weights"] == "ema" and ema["top1"] == last["history"][-1]["ema_val_top1"]

    saved = json.load(open(tmp_path / "ema" / "results.json"))
    assert saved["top1"] == ema["top1"] and saved["model"] == "nat_mini"
    rows = list(csv.DictReader(open(tmp_path / "ema" / "results.csv")))
    assert len(rows) == 1 and float(rows[0]["top1"]) == ema["top1"]


def test_validate_cli_on_timm_layout_state_dict(run_dir, tmp_path):
    """A plain state dict (DDP 'module.' prefixes, nested under 'state_dict' as timm's train.py saves it) needs the
    model definition from --config / --set; it loads strictly through timm's pretrained path."""
    last = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=False)
    path = tmp_path / "timm_layout.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in last["model"].items()}, "epoch": 2}, path)
    proc = subprocess.run([sys.executable, VALIDATE, "--checkpoint", str(path), "--config", QUICKSTART,
                           "--set", TINY_KWARGS, "--out", str(tmp_path / "out")], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top-1" in proc.stdout and "validate nat_mini" in proc.stderr  # result line + progress bar
    res = json.load(open(tmp_path / "out" / "results.json"))
    assert res["top1"] == last["history"][-1]["val_top1"] and res["images"] == 360


DAVIT = ["--set", "model.name=vz_davit_tiny",
         "--set", "model.kwargs={embed_dims: [16, 32, 32, 32], depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1]}"]


def _to_official_davit(key: str) -> str:
    """timm key -> dingmyu/davit release key (the official module tree), independent of the filter under test."""
    key = re.sub(r"^stem\.conv\.", "patch_embeds.0.proj.", key)
    key = re.sub(r"^stem\.norm\.", "patch_embeds.0.norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"patch_embeds.\1.proj.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"patch_embeds.\1.norm.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.", r"main_blocks.\1.", key)
    key = key.replace(".cpe1.", ".cpe.0.").replace(".cpe2.", ".cpe.1.")
    return key.replace("head.norm.", "norms.").replace("head.fc.", "head.")


def test_validate_official_release_layout_goes_through_the_checkpoint_filter(tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vz_davit_tiny", embed_dims=(16, 32, 32, 32), depths=(1, 1, 1, 1),
                              num_heads=(1, 1, 1, 1), in_chans=1, num_classes=10)
    sd = model.state_dict()
    torch.save(sd, tmp_path / "timm.pth")
    official = {_to_official_davit(k): v for k, v in sd.items()}
    assert "main_blocks.0.0.0.cpe.0.proj.weight" in official and "norms.weight" in official
    torch.save({"model": official}, tmp_path / "official.pth")

    common = ["--config", QUICKSTART, *DAVIT, "--img-size", "16", "--no-progress"]  # 16 px: 4x4 tokens, fast
    a = validate.main(["--checkpoint", str(tmp_path / "timm.pth"), "--out", str(tmp_path / "a"), *common])
    b = validate.main(["--checkpoint", str(tmp_path / "official.pth"), "--out", str(tmp_path / "b"), *common])
    assert (a["top1"], a["top5"], a["loss"]) == (b["top1"], b["top5"], b["loss"])

    # the same weights evaluated directly give the same loss: nothing (e.g. the head) was silently re-initialised
    from vitzoo.data import DigitsDataset

    val = DigitsDataset("val", img_size=16, in_chans=1)
    with torch.no_grad():
        logits = model.eval()(torch.stack([val[i][0] for i in range(len(val))]))
    assert a["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, val.labels).item(), rel=1e-5)

    # a release file missing a tensor is refused with a one-line reason, not loaded non-strictly
    broken = dict(official)
    broken.pop("norms.weight")
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(validate.UserError, match="does not fit model 'vz_davit_tiny'"):
        validate.main(["--checkpoint", str(tmp_path / "broken.pth"), "--out", str(tmp_path / "c"), *common])
