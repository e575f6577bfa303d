"""Per-family training configs (configs/cls/*.yaml), tools/benchmark.py on the CPU, and bad input for train.py,
validate.py and benchmark.py (one line on stderr, exit code 2, no traceback)."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import timm
import vitzoo  # noqa: F401
from vitzoo.config import DEFAULTS, load_config
from vitzoo.data import create_datasets
from vitzoo.tools_common import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "cls", "*.yaml")))
RECIPES = [c for c in CONFIGS if not c.endswith("quickstart_digits.yaml")]
QUICKSTART = os.path.join(ROOT, "configs", "cls", "quickstart_digits.yaml")
# the small variant of every family the project trains (agent attention: agent_swin_t)
FAMILIES = {"biformer_s", "nat_tiny", "dinat_tiny", "vz_maxvit_tiny_224", "vz_davit_tiny", "vz_efficientvit_m5",
            "vz_halonet26t", "agent_swin_t"}


def _keys(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) and prefix + (key,) != ("model", "kwargs"):
            yield from _keys(value, prefix + (key,))
        else:
            yield prefix + (key,)


def test_one_recipe_config_per_family():
    assert {load_config(c)["model"]["name"] for c in RECIPES} == FAMILIES


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    for split in ("train", "val"):
        for c in range(2):
            os.makedirs(root / split / f"class{c}")
            for i in range(2):
                image = Image.new("RGB", (40 + 8 * i, 36), (60 + 100 * c, 90, 30 * i))
                image.save(root / split / f"class{c}" / f"{i}.png")
    return str(root)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(c)[:-5] for c in CONFIGS])
def test_config_loads_names_a_registered_model_and_builds(path, tiny_imagefolder):
    raw = yaml.safe_load(open(path))
    cfg = load_config(path)  # unknown keys / bad YAML / bad choices raise ConfigError
    name = cfg["model"]["name"]
    assert timm.is_model(name), f"{os.path.basename(path)}: model {name!r} is not registered with timm"
    assert set(_keys(raw)) <= set(_keys(DEFAULTS)), "every key is a vitzoo.config key"
    text = open(path).read()
    if path in RECIPES:
        assert "Source: http" in text or "Source: timm" in text, "each recipe names its source"
        assert cfg["data"]["dataset"] == "imagefolder" and cfg["data"]["root"] is None and cfg["data"]["in_chans"] == 3
        # the data pipeline of the recipe builds (RandAugment strings, interpolation names, crop) and yields a sample
        data_cfg = dict(cfg["data"], root=tiny_imagefolder)
        pretrained = timm.models.get_pretrained_cfg(name)
        train, val, n = create_datasets(data_cfg, pretrained_cfg=pretrained.to_dict() if pretrained else None)
        image, label = train[(0, (0, 0, 0, 0))]
        size = cfg["data"]["img_size"]
        assert n == 2 and tuple(image.shape) == (3, size, size) and tuple(val[0][0].shape) == (3, size, size)
    try:  # meta device: no weight memory or init time; some constructors need real tensors
        with torch.device("meta"):
            model = build_model(cfg, num_classes=1000)
    except (NotImplementedError, RuntimeError):
        model = build_model(cfg, num_classes=1000)
    assert model.num_classes == 1000


def test_imagefolder_augmentation_is_keyed_not_worker_dependent(tiny_imagefolder):
    """SeededAugmentation + make_loader: the same batches whatever the worker count, a repeated index (repeated
    augmentation) augmented differently per repeat, and the global RNGs untouched (resume stays bit-for-bit)."""
    from vitzoo.tools_common import epoch_batches, make_loader

    cfg = load_config(os.path.join(ROOT, "configs", "cls", "biformer_s.yaml"),
                      ["data.img_size=32", f"data.root={tiny_imagefolder}"])
    train, _, _ = create_datasets(cfg["data"], seed=3)
    batches = epoch_batches(len(train), 2, epoch=1, seed=3, shuffle=True, rank=0, world=1, drop_last=True, repeats=3)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(train) and max(flat.count(i) for i in set(flat)) == 3
    state = torch.get_rng_state()
    runs = [torch.cat([x for x, _ in make_loader(train, batches, workers, torch.device("cpu"), key=(3, 1, 0))])
            for workers in (0, 2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0], runs[1])
    resumed = torch.cat([x for x, _ in make_loader(train, batches[1:], 0, torch.device("cpu"), key=(3, 1, 0),
                                                   first_batch=1)])  # a resumed epoch sees the same images
    assert torch.equal(resumed, runs[0][2:])
    first = flat.index(flat[0], 1)  # the second copy of the first image
    assert not torch.equal(runs[0][0], runs[0][first])


def test_repeated_augmentation_split_over_ranks():
    from vitzoo.tools_common import epoch_batches

    n, world = 1000, 2
    per_rank = [[i for b in epoch_batches(n, 8, 5, 0, True, r, world, drop_last=False, repeats=3) for i in b]
                for r in range(world)]
    assert [len(p) for p in per_rank] == [n // 256 * 256 // world] * world  # timm RepeatAugSampler's epoch length
    both = per_rank[0] + per_rank[1]
    assert max(both.count(i) for i in set(both)) <= 3 and len(set(both)) < len(both)


# ----------------------------------------------------------------------------------------------- benchmark
# CPU smoke setting: one tiny step of each kind
SMOKE = ["--img-size", "64", "--infer-batch", "1", "--train-batch", "2", "--warmup", "0", "--iters", "1",
         "--windows", "1", "--dtype", "fp32", "--mode", "eager"]


def test_benchmark_cpu_smoke_side_by_side(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import benchmark

    rows = benchmark.main(["--models", "vz_efficientvit_m0", "--pairs", *SMOKE, "--out", str(tmp_path)])
    assert [r["model"] for r in rows] == ["vz_efficientvit_m0", "efficientvit_m0"]
    data = json.load(open(tmp_path / "benchmark.json"))
    # the schema tools/make_cards.py reads
    assert {"torch", "timm", "triton", "vitzoo", "date", "device"} <= set(data["env"])
    assert data["setting"]["amp"] == "fp32" and data["setting"]["infer_batch"] == 1
    assert data["setting"]["train_batch"] == 2
    for r in data["rows"]:
        assert r["compiled"] is False and r["img"] == 64 and r["params_M"] > 0 and r["gflops"] > 0
        assert r["infer_img_s"] > 0 and r["train_img_s"] > 0, r
    assert data["rows"][0]["vs"] == "efficientvit_m0"
    assert (tmp_path / "benchmark.csv").is_file() and (tmp_path / "benchmark.png").is_file()
    out = capsys.readouterr().out
    assert "x ref (inf/train)" in out and "efficientvit_m0" in out.split("x ref")[1]


def test_profile_step_cpu_smoke(tmp_path, capsys):
    """tools/profile_step.py on the CPU: wall time per step, the operator table and the CSVs (GPU columns empty)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import profile_step

    for mode in ("train", "infer"):
        out = tmp_path / mode
        rows = profile_step.main(["--models", "vz_efficientvit_m0", "--mode", mode, "--device", "cpu", "--batch", "2",
                                  "--img-size", "64", "--warmup", "0", "--steps", "1", "--out", str(out)])
        assert rows[0]["wall_ms_per_step"] > 0 and rows[0]["gpu_ms_per_step"] is None and rows[0]["mode"] == mode
        with open(out / "vz_efficientvit_m0_ops.csv") as f:
            ops = f.read()
        assert "aten::" in ops and ("convolution_backward" in ops) == (mode == "train")
        assert (out / "summary.csv").is_file() and (out / "vz_efficientvit_m0_table.txt").stat().st_size > 0
    assert "busy -" in capsys.readouterr().out


def test_profile_step_graph_kernels_flag(tmp_path, monkeypatch):
    """--graph-kernels profiles train steps run inside graph_step_kernels (the kernels of a graphed step);
    without it, eager steps keep torch's norm in training."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import profile_step
    from vitzoo.models._step_kernels import graph_step_kernels_enabled

    seen = []
    original = profile_step._step_fn

    def spying_step_fn(*args, **kwargs):
        step = original(*args, **kwargs)

        def spy():
            seen.append(graph_step_kernels_enabled())
            step()
        return spy

    monkeypatch.setattr(profile_step, "_step_fn", spying_step_fn)
    common = ["--models", "vz_efficientvit_m0", "--device", "cpu", "--batch", "2", "--img-size", "64", "--warmup", "0",
              "--steps", "1"]
    rows = profile_step.main(common + ["--graph-kernels", "--out", str(tmp_path / "graph")])
    assert rows[0]["graph_kernels"] is True and seen == [True, True]
    seen.clear()
    rows = profile_step.main(common + ["--out", str(tmp_path / "eager")])
    assert rows[0]["graph_kernels"] is False and seen == [False, False]


@pytest.fixture
def one_cpu_thread():
    """One intra-op thread: on a small CI box with a busy neighbour, OpenMP's spin-waits make these few-millisecond
    ops take seconds (10x slower than one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_cpu_smoke_official_competitor(tmp_path, capsys, one_cpu_thread):
    """A family timm does not have is measured against its official code (tools/competitors), and the card shows it."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import benchmark
    import make_cards

    # bf16 as on the GPU: inference, then training in the same autocast dtype (GFLOPs are counted in fp32)
    rows = benchmark.main(["--models", "agent_pvt_t", "--pairs", *SMOKE, "--dtype", "bf16", "--out", str(tmp_path)])
    assert [r["model"] for r in rows] == ["agent_pvt_t", "official:agent_pvt_t"]
    assert benchmark.SUITES["agent"][:2] == ["agent_swin_t", "official:agent_swin_t"]
    assert len(benchmark.SUITES["agent"]) == 14 and set(benchmark.SUITES["agent"]) <= set(benchmark.SUITES["issue6"])
    ours, theirs = json.load(open(tmp_path / "benchmark.json"))["rows"]
    assert ours["vs"] == "official:agent_pvt_t" and theirs["vs"] is None
    assert theirs["params_M"] == ours["params_M"]  # the same architecture
    # on CPU vitzoo's torch path is counted too; the two differ by how their helpers count (agent pooling: a mean
    # or GEMMs here, adaptive pooling there; bias resizes: GEMMs here, uncounted interpolation there)
    assert theirs["gflops"] == pytest.approx(ours["gflops"], rel=0.03)
    for r in (ours, theirs):  # a train step after inference mode (the benchmark's order) works for both
        assert r["infer_img_s"] > 0 and r["train_img_s"] > 0, r
    assert "official:agent_pvt_t" in capsys.readouterr().out.split("x ref")[1]
    card = make_cards.card("agent_pvt_t", make_cards.load_measurements([str(tmp_path / "benchmark.json")]))
    line = next(ln for ln in card.splitlines() if "`official:agent_pvt_t`" in ln)
    assert line.startswith("| official Agent-PVT code") and f"| {theirs['infer_img_s']:.0f} |" in line
    assert f"| {theirs['train_img_s']:.0f} |" in line


# ----------------------------------------------------------------------------------------------- bad input
TINY = "model.kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], kernel_size: 3, mlp_ratio: 1.0}"
MAXVIT = "model.kwargs={embed_dim: [32, 32, 32, 32], depths: [1, 1, 1, 1], img_size: 64, stem_width: 16}"
# run as real subprocesses (concurrently); every other case runs in-process through the same run_cli wrapper
SUBPROCESS = {"train_bad_yaml", "validate_missing_checkpoint", "benchmark_image_size"}


GRAPH = ["--device", "cpu", "--set", "train.cuda_graph=true"]  # the checks run before any data is read


def _bad_cases(tmp):
    """name -> (tool, argv, expected text in the error line)."""
    out = ["--set", f"output.dir={tmp}/out", "--set", "output.progress=false"]
    bad_yaml, bad_key = os.path.join(tmp, "bad.yaml"), os.path.join(tmp, "bad_key.yaml")  # written by the fixture
    state = os.path.join(tmp, "weights.pth")
    return {
        "train_missing_dataset_folder": ("train", ["--config", QUICKSTART, *out, "--set", "data.dataset=imagefolder",
                                                   "--set", f"data.root={tmp}/no_such_dir"],
                                         f"data.root: folder '{tmp}/no_such_dir' does not exist"),
        "train_dataset_folder_without_val": ("train", ["--config", QUICKSTART, *out, "--set",
                                                       "data.dataset=imagefolder", "--set", f"data.root={tmp}"],
                                             "has no train/ subfolder"),
        "train_wrong_model_name": ("train", ["--config", QUICKSTART, *out, "--set", "model.name=nat_minii"],
                                   "model.name 'nat_minii' is not a registered timm/vitzoo model; "
                                   "did you mean nat_mini"),
        "train_bad_yaml": ("train", ["--config", bad_yaml], f"{bad_yaml}: invalid YAML (line 3"),
        "train_unknown_key": ("train", ["--config", bad_key], "unknown config key 'optim.warmup'"),
        "train_bad_choice": ("train", ["--config", QUICKSTART, "--set", "train.amp=fp8"],
                             "config key 'train.amp' must be one of none, bf16, fp16"),
        "train_missing_config": ("train", ["--config", os.path.join(tmp, "nope.yaml")], "config file not found"),
        "train_cuda_graph_with_fp16": ("train", ["--config", QUICKSTART, *out, *GRAPH, "--set", "train.amp=fp16"],
                                       "train.cuda_graph: true does not combine with train.amp fp16"),
        "train_cuda_graph_with_grad_accum": ("train", ["--config", QUICKSTART, *out, *GRAPH, "--set",
                                                       "train.grad_accum=2"],
                                             "train.cuda_graph: true does not combine with train.grad_accum 2"),
        "train_cuda_graph_on_cpu": ("train", ["--config", QUICKSTART, *out, *GRAPH],
                                    "train.cuda_graph: true needs a CUDA device, got cpu"),
        "train_cuda_graph_bad_value": ("train", ["--config", QUICKSTART, "--set", "train.cuda_graph=maybe"],
                                       "config key 'train.cuda_graph' must be one of False, True"),
        "train_image_size": ("train", ["--config", QUICKSTART, *out, "--set", "model.name=vz_maxvit_tiny_224",
                                       "--set", MAXVIT], "input size (32, 32) is not supported: MaxViT"),
        "train_resume_without_checkpoint": ("train", ["--config", QUICKSTART, *out, "--resume"],
                                            f"--resume: no checkpoint at {tmp}/out/last.pth"),
        "validate_missing_checkpoint": ("validate", ["--checkpoint", os.path.join(tmp, "none.pth"), "--model",
                                                     "nat_mini"], f"--checkpoint file not found: {tmp}/none.pth"),
        "validate_wrong_model_name": ("validate", ["--checkpoint", state, "--model", "vz_davit_tiniy"],
                                      "did you mean vz_davit_tiny"),
        "validate_missing_data_dir": ("validate", ["--checkpoint", state, "--model", "nat_mini", "--data-dir",
                                                   os.path.join(tmp, "imagenet")], "--data-dir: folder"),
        "validate_checkpoint_does_not_fit": ("validate", ["--checkpoint", state, "--config", QUICKSTART],
                                             "does not fit model 'nat_mini'"),
        "validate_image_size": ("validate", ["--checkpoint", os.path.join(tmp, "maxvit.pth"), "--config", QUICKSTART,
                                             "--set", "model.name=vz_maxvit_tiny_224", "--set", MAXVIT,
                                             "--no-progress", "--out", f"{tmp}/val"],
                                "input size (32, 32) is not supported: MaxViT"),
        "benchmark_wrong_model_name": ("benchmark", ["--models", "biformer_ss", "--out", f"{tmp}/bench"],
                                       "--models 'biformer_ss' is not a registered timm/vitzoo model; did you mean"),
        "benchmark_image_size": ("benchmark", ["--models", "vz_halonet_h1", "--img-size", "100", "--out",
                                               f"{tmp}/bench"],
                                 "vz_halonet_h1: HaloNet input height and width must be multiples of"),
        "benchmark_nothing_to_do": ("benchmark", ["--out", f"{tmp}/bench"], "nothing to benchmark"),
        "benchmark_graph_on_cpu": ("benchmark", ["--models", "nat_mini", "--mode", "graph", "--device", "cpu", "--out",
                                                 f"{tmp}/bench"],
                                   "--mode graph: CUDA graphs need a CUDA device, got --device cpu"),
        "benchmark_unknown_competitor": ("benchmark", ["--models", "official:agent_pvt_x", "--out", f"{tmp}/bench"],
                                         "--models 'official:agent_pvt_x' is not a known competitor; known: "),
        "profile_wrong_model_name": ("profile_step", ["--models", "nat_minni", "--out", f"{tmp}/prof"],
                                     "--models 'nat_minni' is not a registered timm/vitzoo model; did you mean"),
        "profile_image_size": ("profile_step", ["--models", "vz_halonet_h1", "--img-size", "100", "--device", "cpu",
                                                "--out", f"{tmp}/prof"],
                               "HaloNet input height and width must be multiples of 256"),
        "profile_bad_steps": ("profile_step", ["--models", "nat_mini", "--steps", "0", "--device", "cpu"],
                              "--steps must be >= 1"),
    }


BAD_CASES = list(_bad_cases("TMP"))


@pytest.fixture(scope="module")
def bad_setup(tmp_path_factory):
    """Input files for the cases, and the subprocess cases run concurrently (each pays the imports once)."""
    tmp = str(tmp_path_factory.mktemp("bad"))
    with open(os.path.join(tmp, "bad.yaml"), "w") as f:
        f.write("model:\n  name: [nat_mini\n")
    with open(os.path.join(tmp, "bad_key.yaml"), "w") as f:
        f.write("optim:\n  lr: 0.1\n  warmup: 3\n")
    m = timm.create_model("nat_mini", **yaml.safe_load(TINY.split("=", 1)[1]), in_chans=1, num_classes=10)
    torch.save(m.state_dict(), os.path.join(tmp, "weights.pth"))  # a tiny NAT: does not fit the quick-start NAT
    m = timm.create_model("vz_maxvit_tiny_224", **yaml.safe_load(MAXVIT.split("=", 1)[1]), in_chans=1, num_classes=10)
    torch.save(m.state_dict(), os.path.join(tmp, "maxvit.pth"))  # built for 64 px: the digits' 32 px do not fit
    cases = _bad_cases(tmp)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("VITZOO_DEBUG", None)
    procs = {name: subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", f"{cases[name][0]}.py"),
                                     *cases[name][1]], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name in sorted(SUBPROCESS)}
    done = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        done[name] = (p.returncode, stderr)
    return cases, done


def _in_process(tool, argv, capsys, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    module = __import__(tool)
    monkeypatch.delenv("VITZOO_DEBUG", raising=False)
    monkeypatch.delenv("VITZOO_ATTN_BACKEND", raising=False)
    capsys.readouterr()
    try:
        code = module.run_cli(module.main, argv, prog=f"{tool}.py")
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", BAD_CASES, ids=BAD_CASES)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(case, bad_setup, capsys, monkeypatch):
    cases, done = bad_setup
    tool, argv, expected = cases[case]
    code, stderr = done[case] if case in done else _in_process(tool, argv, capsys, monkeypatch)
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln and "warnings.warn" not in ln]
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith(f"{tool}.py: error: "), lines[0]
    assert expected in lines[0], lines[0]
