"""tools/train.py: config validation, a real (tiny) training run with its outputs, kill-and-resume bit-for-bit, DDP."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vitzoo.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")
QUICKSTART = os.path.join(ROOT, "configs", "cls", "quickstart_digits.yaml")
# a smaller NAT than the quick start's, so each test run takes seconds
TINY = ["model.kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], kernel_size: 3, mlp_ratio: 1.0}",
        "data.batch_size=16", "data.val_batch_size=128"]


def _cmd(out_dir, *extra, launcher=(sys.executable,)):
    sets = [s for item in TINY + list(extra) for s in ("--set", item)]
    return [*launcher, TRAIN, "--config", QUICKSTART, "--set", f"output.dir={out_dir}", *sets]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("VITZOO_ATTN_BACKEND", None)
    return env


def test_unknown_config_keys_are_errors_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'; accepted keys here: .*lr"):
        load_config(QUICKSTART, ["optim.lrr=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="'data' must be a mapping"):
        load_config(None, ["data=3"])
    cfg = load_config(QUICKSTART, ["optim.lr=3e-4", "model.kwargs.anything=1"])  # model.kwargs is free-form
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["kwargs"]["anything"] == 1


def test_unknown_model_name_is_a_clear_error(tmp_path):
    proc = subprocess.run(_cmd(tmp_path, "model.name=nat_minni"), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "model.name 'nat_minni' is not a registered timm/vitzoo model" in proc.stderr
    assert "did you mean nat_mini" in proc.stderr  # close names from timm.list_models()
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_training_run_writes_all_outputs_and_learns(tmp_path):
    proc = subprocess.run(_cmd(tmp_path, "train.epochs=2", "train.max_steps_per_epoch=12", "train.ema_decay=0.9"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("last.pth", "best.pth", "metrics.csv", "curves.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    summary = json.load(open(tmp_path / "summary.json"))
    # 24 steps of a tiny NAT: far above chance (10 %) on real digits
    assert summary["final"]["val_top1"] > 30.0, summary
    assert "epoch 1/2" in proc.stderr  # tqdm progress bar


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


def test_sigkill_mid_epoch_then_resume_is_bit_for_bit(tmp_path):
    common = ("train.epochs=2", "train.max_steps_per_epoch=10", "output.checkpoint_every_steps=2",
              "output.progress=false")
    reference = tmp_path / "reference"
    subprocess.run(_cmd(reference, *common), env=_env(), check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed, *common), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = _wait_for_mid_epoch_checkpoint(proc, str(killed / "last.pth"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, "the run ended before a mid-epoch checkpoint could be seen"
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run(_cmd(killed, *common, launcher=(sys.executable,)) + ["--resume"], env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    a = torch.load(reference / "last.pth", map_location="cpu", weights_only=False)
    b = torch.load(killed / "last.pth", map_location="cpu", weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert [r["val_top1"] for r in a["history"]] == [r["val_top1"] for r in b["history"]]


def test_two_process_gloo_ddp(tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531")
    proc = subprocess.run(_cmd(tmp_path, "train.epochs=1", "train.max_steps_per_epoch=4", "output.progress=false",
                               launcher=launcher), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["world_size"] == 2
    assert 0.0 <= summary["final"]["val_top1"] <= 100.0
