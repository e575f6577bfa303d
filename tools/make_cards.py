#!/usr/bin/env python3
"""Generate ``model_cards/<name>.md`` for every registered vitzoo model and the README zoo table, from measurements.

    python tools/make_cards.py [--measurements FILE ...] [--check]

Numbers come only from the measurements file (written by ``tools/benchmark.py`` on the GPU) and from the models
themselves (exact parameter counts, pretrained_cfg); the papers' ImageNet-1K top-1 is cited from ``REPORTED`` and
marked as reported. ``--check`` regenerates in memory and fails if any card or the README table differs (CI test).
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import timm  # noqa: E402
from timm.models._registry import _model_entrypoints  # noqa: E402

import vitzoo  # noqa: E402,F401

CARDS_DIR = os.path.join(ROOT, "model_cards")
README = os.path.join(ROOT, "README.md")
TABLE_START, TABLE_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"

# Family text: one paragraph, paper, official code. The reference is what the benchmark compares against.
_AGENT_PAPER = "Agent Attention: On the Integration of Softmax and Linear Attention (Han et al., ECCV 2024)"
FAMILIES = {
    "agent_swin": dict(
        title="Agent-Swin", paper=_AGENT_PAPER, code="https://github.com/LeapLabTHU/Agent-Attention",
        reference="official Agent-Swin code (eager)",
        text="Swin Transformer whose early stages use agent attention: a few agent tokens (9 / 16 / 49, average-pooled "
             "from the queries) first attend to every key of the stage map, then every query attends to the agents "
             "(two small softmax attentions, linear cost in the number of tokens), with learned agent biases and a "
             "3x3 depthwise conv on V. Agent blocks see the whole stage map; the other blocks are Swin "
             "(shifted-)window attention (T: AAAB, S: AABB, B: AAMB2). vitzoo runs the agent softmaxes and the "
             "windows on its biased-attention and neighborhood-attention Triton kernels."),
    "agent_pvt": dict(
        title="Agent-PVT", paper=_AGENT_PAPER, code="https://github.com/LeapLabTHU/Agent-Attention",
        reference="official Agent-PVT code (eager)",
        text="PVT-v1 pyramid (a patch embedding and a learned position embedding per stage, MLP ratios 8-8-4-4) in "
             "which every block uses agent attention over the full stage map (9 / 16 / 49 / 49 agents pooled from "
             "the queries, agent biases, 3x3 depthwise conv on V) instead of spatial-reduction attention; no final "
             "norm. vitzoo runs both agent softmaxes on its biased-attention Triton kernel."),
    "biformer": dict(
        title="BiFormer", paper="BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023)",
        code="https://github.com/rayleizhu/BiFormer", reference="official BiFormer code (eager; team anchor)",
        text="Four-stage hierarchical transformer. Stages 1-3 use bi-level routing attention: the map is split into "
             "n_win x n_win regions, region means of q and k pick the top-k key regions per query region (shared by "
             "all heads), and tokens attend to the tokens of those regions, plus a 5x5 depthwise conv on V (LCE). "
             "Stage 4 uses full attention with LePE; 3x3 depthwise positional convs, MLP ratio 3, BatchNorm final "
             "norm. vitzoo runs the routed attention with a fused Triton kernel that reads routed regions by index "
             "(no k-fold gathered K/V)."),
    "nat": dict(
        title="NAT", paper="Neighborhood Attention Transformer (Hassani et al., CVPR 2023)",
        code="https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        reference="timm Swin of the same size (same setting)",
        text="Hierarchical transformer whose attention is 7x7 neighborhood attention (a sliding window per query, "
             "shifted inward at the borders) with a learnable relative-position bias; convolutional tokenizer and "
             "downsamplers. vitzoo runs it on its generalized neighborhood-attention Triton kernel."),
    "dinat": dict(
        title="DiNAT", paper="Dilated Neighborhood Attention Transformer (Hassani & Shi, 2022)",
        code="https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        reference="timm Swin of the same size (same setting)",
        text="NAT with dilated neighborhood attention interleaved with local neighborhood attention per block "
             "(published dilation schedules), for a receptive field that grows exponentially with depth. Same "
             "Triton kernel as NAT, dilation read by index arithmetic."),
    "vz_maxvit": dict(
        title="MaxViT (timm tf-ported architecture)", paper="MaxViT: Multi-Axis Vision Transformer (Tu et al., "
        "ECCV 2022)", code="https://github.com/google-research/maxvit", reference="timm maxvit_*_tf_224",
        text="Hybrid network: every block is MBConv, then block attention (non-overlapping 7x7 windows) and grid "
             "attention (a 7x7 grid of tokens H/7 apart), both with a relative-position bias. Loads timm's state "
             "dicts unchanged; windows and grids are read in place by the neighborhood-attention kernel "
             "(stride = kernel, and dilation = H/7 for the grid)."),
    "vz_davit": dict(
        title="DaViT", paper="DaViT: Dual Attention Vision Transformers (Ding et al., ECCV 2022)",
        code="https://github.com/dingmyu/davit", reference="timm davit_*",
        text="Alternates spatial window attention (7x7 windows) with channel group attention (softmax over channel "
             "groups, global over tokens); convolutional position encodings. Loads timm's state dicts unchanged; "
             "spatial windows go through the neighborhood-attention kernel, channel attention stays on cuBLAS."),
    "vz_efficientvit": dict(
        title="EfficientViT (MSRA)", paper="EfficientViT: Memory Efficient Vision Transformer with Cascaded Group "
        "Attention (Liu et al., CVPR 2023)", code="https://github.com/microsoft/Cream/tree/main/EfficientViT",
        reference="timm efficientvit_m*",
        text="Small, fast ViT: sandwich layout (one attention between FFNs) and cascaded group attention, where each "
             "head attends over 7x7 local windows (key dim 16, LeViT attention biases) and feeds its output to the "
             "next head. Loads timm's state dicts unchanged. Inference runs every head of a layer in one Triton "
             "kernel (vitzoo.ops.cascaded_group_attention: projection, query conv, window attention, a window "
             "carried through all heads); training runs each head's window attention as one neighborhood-attention "
             "launch (M0, M1) or two (M2-M5, whose value head dims 80-112 are split into chunks of at most 64 "
             "channels; kernels/README.md)."),
    "vz_halonet": dict(
        title="HaloNet (timm architecture)", paper="Scaling Local Self-Attention for Parameter Efficient Visual "
        "Backbones (Vaswani et al., CVPR 2021)", code="https://github.com/huggingface/pytorch-image-models",
        reference="timm halonet*",
        text="ResNet-like network with blocked local self-attention: queries in b x b blocks attend to the "
             "(b + 2h)^2 haloed window around them (zero-padded at borders) with factorized relative-position "
             "logits. timm's own architectures; loads timm's state dicts unchanged; the haloed windows are read in "
             "place by vitzoo's halo-attention kernel (no unfold)."),
}

# ImageNet-1K top-1 (%) at the default resolution as reported in the papers (not measured by vitzoo).
REPORTED: Dict[str, float] = {
    "agent_swin_t": 82.6, "agent_swin_s": 83.7, "agent_swin_b": 84.0,
    "agent_pvt_t": 78.4, "agent_pvt_s": 82.2, "agent_pvt_m": 83.4, "agent_pvt_l": 83.7,
    "biformer_t": 81.4, "biformer_s": 83.8, "biformer_b": 84.3,
    "nat_mini": 81.8, "nat_tiny": 83.2, "nat_small": 83.7, "nat_base": 84.3,
    "dinat_mini": 81.8, "dinat_tiny": 82.7, "dinat_small": 83.8, "dinat_base": 84.4,
    "vz_maxvit_tiny_224": 83.6, "vz_maxvit_small_224": 84.4, "vz_maxvit_base_224": 84.9,
    "vz_davit_tiny": 82.8, "vz_davit_small": 84.2, "vz_davit_base": 84.6,
    "vz_efficientvit_m0": 63.2, "vz_efficientvit_m1": 68.4, "vz_efficientvit_m2": 70.8,
    "vz_efficientvit_m3": 73.4, "vz_efficientvit_m4": 74.3, "vz_efficientvit_m5": 77.1,
}
# official-code anchors measured by the team in the same setting (shared/anchors2-h100.json)
OFFICIAL_ANCHORS = {"biformer_t": dict(infer_img_s=3742.0, train_img_s=1124.3, train_peak_GB=12.29),
                    "biformer_s": dict(infer_img_s=1777.2, train_img_s=561.5, train_peak_GB=24.23)}
SWIN_T = "swin_tiny_patch4_window7_224"
# NAT / DiNAT have no runnable official code here (it needs NATTEN with relative position biases, which PyPI does not
# ship): the reference is timm's Swin of the same size class (the NAT paper's own comparison)
SWIN_OF_SIZE = {"mini": SWIN_T, "tiny": SWIN_T, "small": "swin_small_patch4_window7_224",
                "base": "swin_base_patch4_window7_224"}


def vitzoo_models() -> List[str]:
    return sorted(n for n, fn in _model_entrypoints.items() if fn.__module__.startswith("vitzoo."))


def family(name: str) -> str:
    for key in sorted(FAMILIES, key=len, reverse=True):
        if name.startswith(key):
            return key
    raise KeyError(f"no family text for {name}")


@functools.lru_cache(maxsize=None)
def exact_params(name: str) -> int:
    try:  # no weight memory or init time; some constructors (drop-path schedules via .tolist()) need real tensors
        with torch.device("meta"):
            model = timm.create_model(name)
    except (NotImplementedError, RuntimeError):
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters())


TRAIN_KEYS = ("train_img_s", "train_peak_GB")


TRAIN_KEPT = "train_step_unchanged"  # a row's flag: its run left the train step out because that code is unchanged


def train_left_out(row: Dict) -> bool:
    """A row of a run that measured no train step (``--skip-train``): neither a number nor a failure."""
    return row.get("train_img_s") is None and not row.get("train_error")


def merge_row(old: Optional[Dict], new: Dict) -> Dict:
    """``new`` replaces ``old``, except that a row flagged ``train_step_unchanged`` (its run left the train step out,
    whose code had not changed) keeps ``old``'s train numbers, with the file they came from as ``_train_file``. A run
    that left the train step out for another reason (its old numbers no longer apply) shows none."""
    if old is None or not new.get(TRAIN_KEPT) or not train_left_out(new) or train_left_out(old):
        return new
    return dict(new, **{k: old[k] for k in TRAIN_KEYS if k in old}, _train_file=old.get("_train_file", old["_file"]))


def load_measurements(paths: List[str]) -> Dict:
    """Rows of every file (a later file's row replaces an earlier one's, see :func:`merge_row`); each row keeps its
    file and environment."""
    merged: Dict = {"by_model": {}, "compiled": {}, "graph": {}}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for r in data["rows"]:
            bucket = "compiled" if r.get("compiled") else "graph" if r.get("mode") == "graph" else "by_model"
            merged[bucket][r["model"]] = merge_row(merged[bucket].get(r["model"]), dict(
                r, _file=os.path.relpath(path, ROOT), _env=data["env"], _setting=data["setting"]))
        merged["env"], merged["setting"] = data["env"], data["setting"]
    return merged


def _train_source(row: Optional[Dict], separator: str = "; ") -> str:
    """Where a row's train numbers were measured when that is another run than its inference numbers."""
    return f"{separator}train step: `{row['_train_file']}`" if row and row.get("_train_file") else ""


def _num(value: Optional[float], fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _which_run(ours: Optional[Dict], ref: Dict) -> str:
    """Where a reference row was measured, relative to the model's own row."""
    return "measured in the same run" if ours and ours["_file"] == ref["_file"] else f"measured in `{ref['_file']}`"


def reference_of(name: str, meas: Dict):
    """(label, row) of what this model is compared with: its timm twin, the official code (a benchmark row or the
    team's anchor) or, for NAT / DiNAT, timm's Swin of the same size class."""
    fam = FAMILIES[family(name)]
    twin = name[3:].replace("maxvit_tiny_224", "maxvit_tiny_tf_224").replace(
        "maxvit_small_224", "maxvit_small_tf_224").replace("maxvit_base_224", "maxvit_base_tf_224") \
        if name.startswith("vz_") else None
    ours = meas["by_model"].get(name)
    if twin and twin in meas["by_model"]:
        ref = meas["by_model"][twin]
        return f"timm `{twin}` ({_which_run(ours, ref)}{_train_source(ref)})", ref
    official = f"official:{name}"  # tools/benchmark.py's competitor row: the official code, transcribed
    if official in meas["by_model"]:
        ref = meas["by_model"][official]
        return f"{fam['reference']}: `{official}`, tools/competitors/ ({_which_run(ours, ref)})", ref
    if name in OFFICIAL_ANCHORS:
        return "official code, eager (team anchor: H100, bf16, batch 256 / 128, `shared/anchors2-h100.json`)", \
            OFFICIAL_ANCHORS[name]
    swin = SWIN_OF_SIZE.get(name.rsplit("_", 1)[-1]) if family(name) in ("nat", "dinat") else None
    if swin in meas["by_model"]:
        ref = meas["by_model"][swin]
        return f"timm `{swin}` (same size class, {_which_run(ours, ref)})", ref
    return fam["reference"] + " (not measured yet)", None


def _tiles(setting: Dict) -> str:
    """How the Triton tile configs were chosen; files written before the key existed were run with autotuning off."""
    text = "autotuned per shape" if setting.get("autotune") else "untuned defaults (autotuning off)"
    if setting.get("iters") is not None:
        text += f"; timing: {setting['iters']} iterations x {setting.get('windows')} windows"
    if setting.get("note"):
        text += f"; {setting['note']}"
    return text


def card(name: str, meas: Dict) -> str:
    fam = FAMILIES[family(name)]
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    row = meas["by_model"].get(name)
    env, setting = (row["_env"], row["_setting"]) if row else (meas["env"], meas["setting"])
    source = row["_file"] if row else "not measured yet"
    ref_label, ref = reference_of(name, meas)
    reported = REPORTED.get(name)
    lines = [
        f"# {name}",
        "",
        f"**{fam['title']}** — {fam['paper']}. Official code: {fam['code']}.",
        "",
        fam["text"],
        "",
        "| | |",
        "|---|---|",
        f"| parameters (exact) | {exact_params(name):,} |",
        f"| GFLOPs at {cfg['input_size'][-1]}² | {_num(row and row.get('gflops'), '.2f')} (torch.utils.flop_counter; "
        f"FLOPs inside vitzoo's Triton attention ops are not counted) |",
        f"| default input | {tuple(cfg['input_size'])}, crop_pct {cfg.get('crop_pct')}, "
        f"{cfg.get('interpolation')} interpolation, mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])} |",
        f"| license of the original weights | {cfg.get('license') or 'see the official repository'} |",
        f"| ImageNet-1K top-1 | " + (f"{reported} % (reported in the paper; not measured by vitzoo)" if reported
                                    else "no paper number for this timm-defined variant") + " |",
        "",
        f"## Speed on the GPU ({env.get('gpu', env['device'])}, {env['date']})",
        "",
        f"bf16 autocast, channels_last, inference batch {setting['infer_batch']}, train step (fwd + bwd + AdamW) "
        f"batch {setting['train_batch']}; torch {env['torch']}, triton {env['triton']}, timm {env['timm']}; "
        f"Triton tiles: {_tiles(setting)}. Source: `{source}`.",
        "",
        "| implementation | inference img/s | inference peak GB | train img/s | train peak GB |",
        "|---|---|---|---|---|",
    ]
    if row is None:
        lines.append(f"| vitzoo `{name}` | not measured yet | | | |")
    else:
        train = _num(row.get('train_img_s'), '.0f') if not row.get("train_error") else \
            "failed in this run: " + row["train_error"].split(":")[0]
        label = f"vitzoo `{name}`" + (f" ({_train_source(row, '')})" if row.get("_train_file") else "")
        lines.append(f"| {label} | {_num(row.get('infer_img_s'), '.0f')} | "
                     f"{_num(row.get('infer_peak_GB'), '.2f')} | {train} | {_num(row.get('train_peak_GB'), '.2f')} |")
    if ref is not None:
        lines.append(f"| {ref_label} | {_num(ref.get('infer_img_s'), '.0f')} | {_num(ref.get('infer_peak_GB'), '.2f')}"
                     f" | {_num(ref.get('train_img_s'), '.0f')} | {_num(ref.get('train_peak_GB'), '.2f')} |")
    else:
        lines.append(f"| {ref_label} | | | | |")
    lines += _mode_rows(name, ref, meas, "compiled", "torch.compile")
    lines += _mode_rows(name, ref, meas, "graph", "CUDA graph (whole step)")
    lines += [
        "",
        "## Loading weights (local files only; nothing is downloaded)",
        "",
        "```python",
        "import timm, vitzoo",
        f"model = timm.create_model(\"{name}\", pretrained=True,",
        "                          pretrained_cfg_overlay=dict(file=\"/path/to/checkpoint.pth\"))",
        "```",
        "",
        "The model's `checkpoint_filter_fn` maps the official release's key layout" +
        (" and timm's state dict (identical keys)" if name.startswith("vz_") else "") + " into vitzoo's.",
        "",
        "## Detection configs",
        "",
    ]
    det = detection_configs(name)
    lines += [f"- `{path}`" for path in det] if det else [
        f"None ship for `{name}`; any vitzoo model plugs into `vitzoo.det.VitzooBackbone` (see the README's Detection "
        "section)."]
    lines.append("")
    return "\n".join(lines)


def _mode_rows(name: str, ref: Optional[Dict], meas: Dict, bucket: str, how: str) -> List[str]:
    """Table rows of the model's and its reference's runs in another mode (``bucket``: "compiled" = torch.compile,
    default mode; "graph" = whole-step CUDA graphs), where measured (a run that failed leaves no number, and says
    so)."""
    rows = []
    for model, label in ((name, f"vitzoo `{name}`"), (ref and ref.get("model"), ref and f"`{ref.get('model')}`")):
        r = meas[bucket].get(model) if model else None
        if r is None:
            continue
        train = _num(r.get("train_img_s"), ".0f") if not r.get("train_error") else \
            "failed in this run: " + r["train_error"].split(":")[0]
        rows.append(f"| {label} + {how} (`{r['_file']}`{_train_source(r)}) | {_num(r.get('infer_img_s'), '.0f')} | "
                    f"{_num(r.get('infer_peak_GB'), '.2f')} | {train} | {_num(r.get('train_peak_GB'), '.2f')} |")
    return rows


def detection_configs(name: str) -> List[str]:
    """Detection configs (mmdet under configs/det/mmdet/, the torchvision trainer's YAML under configs/det/) whose
    backbone is ``name``: the model name quoted in an mmdet config, or ``backbone: name`` / ``model_name: name`` in
    YAML."""
    quoted = re.compile(rf"""model_name\s*=\s*['"]{re.escape(name)}['"]""")
    yaml_key = re.compile(rf"""^\s*(backbone|model_name|name):\s*['"]?{re.escape(name)}['"]?\s*(#.*)?$""", re.M)
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "det", "**", "*"), recursive=True)):
        if os.path.basename(os.path.dirname(path)) == "_base_" or not os.path.isfile(path):
            continue
        text = open(path).read()
        is_yaml = path.endswith((".yaml", ".yml"))
        if (path.endswith(".py") and quoted.search(text)) or (is_yaml and yaml_key.search(text)):
            found.append(os.path.relpath(path, ROOT))
    return found


def _gpu_short(row: Dict) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100'."""
    gpu = row["_env"].get("gpu", row["_env"]["device"])
    return next((w for w in gpu.split() if w[:1] in "HABL" and any(c.isdigit() for c in w)), gpu)


def zoo_table(names: List[str], meas: Dict) -> str:
    rows = ["| model | params (M) | top-1 (paper) | GPU | infer img/s | train img/s | reference infer / train img/s | "
            "CUDA graph: infer / train img/s | reference, CUDA graph |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        row = meas["by_model"].get(name) or {}
        _, ref = reference_of(name, meas)
        ref = ref or {}
        other_run = bool(row and ref and ref.get("_file") != row["_file"])
        graph = meas["graph"].get(name) or {}
        ref_graph = meas["graph"].get(ref.get("model")) or {} if ref.get("model") else {}
        rows.append(f"| [{name}](model_cards/{name}.md) | {exact_params(name) / 1e6:.2f} | "
                    f"{_num(REPORTED.get(name), '.1f')} | {_gpu_short(row) if row else '–'} | "
                    f"{_num(row.get('infer_img_s'), '.0f')} | {_num(row.get('train_img_s'), '.0f')} | "
                    f"{_num(ref.get('infer_img_s'), '.0f')} / {_num(ref.get('train_img_s'), '.0f')}"
                    f"{' †' if other_run else ''} | {_pair(graph)} | {_pair(ref_graph)} |")
    dates = sorted({r["_env"]["date"] for r in meas["by_model"].values()})
    return (f"Measured with `tools/benchmark.py` ({', '.join(dates)}; bf16, channels_last, batch 256 / 128) on the GPU "
            f"named in each row; \"–\" = not measured yet; † = reference measured in another run (its card names "
            f"the file). The CUDA-graph columns are whole-step CUDA graphs (`--mode graph`, `vitzoo.cuda_graph`) of "
            f"the model and of its reference. Cards: `model_cards/`.\n\n" + "\n".join(rows))


def _pair(row: Dict) -> str:
    """"infer / train" img/s of a row, "–" when there is none."""
    if not row:
        return "–"
    return f"{_num(row.get('infer_img_s'), '.0f')} / {_num(row.get('train_img_s'), '.0f')}"


def render(measurements: List[str]):
    meas = load_measurements(measurements)
    names = vitzoo_models()
    cards = {name: card(name, meas) for name in names}
    readme = open(README).read()
    start, end = readme.index(TABLE_START) + len(TABLE_START), readme.index(TABLE_END)
    new_readme = readme[:start] + "\n" + zoo_table(names, meas) + "\n" + readme[end:]
    return cards, new_readme


def _run_tag(path: str) -> Tuple[str, str]:
    """Chronological sort key of a measurement file: its run tag (``2026-11-23``, ``...23e``, ``...23f2``) whatever
    the GPU prefix, so a later H100 run overrides an earlier H200 one."""
    match = re.search(r"\d{4}-\d{2}-\d{2}[a-z0-9]*", os.path.basename(path))
    return (match.group(0) if match else "", os.path.basename(path))


def measurement_files() -> List[str]:
    """Every ``model_cards/measurements/*.json``, oldest run first (later rows replace earlier ones)."""
    files = sorted(glob.glob(os.path.join(CARDS_DIR, "measurements", "*.json")), key=_run_tag)
    if not files:
        raise SystemExit("no measurements in model_cards/measurements/")
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measurements", nargs="*", default=None, help="default: every model_cards/measurements/*.json")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    cards, new_readme = render(args.measurements or measurement_files())
    if args.check:
        stale = [n for n, text in cards.items()
                 if not os.path.exists(os.path.join(CARDS_DIR, f"{n}.md"))
                 or open(os.path.join(CARDS_DIR, f"{n}.md")).read() != text]
        if open(README).read() != new_readme:
            stale.append("README.md zoo table")
        if stale:
            print("stale or missing (run tools/make_cards.py):", ", ".join(stale))
            return 1
        return 0
    for name, text in cards.items():
        with open(os.path.join(CARDS_DIR, f"{name}.md"), "w") as f:
            f.write(text)
    with open(README, "w") as f:
        f.write(new_readme)
    print(f"wrote {len(cards)} cards and the README zoo table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
