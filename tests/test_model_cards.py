"""model_cards/: one generated card per registered vitzoo model, numbers straight from the measurements file."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import make_cards  # noqa: E402


def test_every_model_has_a_card_and_every_card_a_model():
    names = set(make_cards.vitzoo_models())
    cards = {f[:-3] for f in os.listdir(os.path.join(ROOT, "model_cards")) if f.endswith(".md")}
    assert names, "no vitzoo models registered"
    assert names == cards, f"missing cards: {names - cards}; cards of unknown models: {cards - names}"


def test_cards_and_readme_table_are_exactly_what_the_measurements_give():
    """Regenerates every card and the README zoo table from the measurements file: no hand-edited figure survives."""
    assert make_cards.main(["--check"]) == 0


def test_card_numbers_match_the_measurements_file():
    rows = {}
    for path in make_cards.measurement_files():  # later files win, as in make_cards
        for r in json.load(open(path))["rows"]:
            if r.get("compiled") or r.get("mode", "eager") != "eager":
                continue
            old = rows.get(r["model"])  # a run that left the train step out keeps the earlier train numbers
            keep = (old is not None and r.get(make_cards.TRAIN_KEPT) and make_cards.train_left_out(r)
                    and not make_cards.train_left_out(old))
            rows[r["model"]] = dict(r, **{k: old[k] for k in make_cards.TRAIN_KEYS if k in old}) if keep else r
    measured = [n for n in make_cards.vitzoo_models() if n in rows and rows[n].get("infer_img_s")]
    assert measured, "the measurements file has no vitzoo model"
    for name in measured:
        text = open(os.path.join(ROOT, "model_cards", f"{name}.md")).read()
        line = next(l for l in text.splitlines() if l.startswith(f"| vitzoo `{name}`"))
        assert f"| {rows[name]['infer_img_s']:.0f} |" in line
        if rows[name].get("train_error"):  # a failed train step is said, never shown as a number
            assert "| failed in this run:" in line
        elif rows[name].get("train_img_s") is None:  # left out of the run (its note says why): a dash
            assert line.split("|")[4].strip() == "–", line
        else:
            assert f"| {rows[name]['train_img_s']:.0f} |" in line


def test_references_and_run_order():
    """NAT / DiNAT are compared with timm's Swin of their size class, vz_* models with their timm twin; a later run
    (by tag, whatever the GPU prefix) overrides an earlier one."""
    row = {"_file": "a.json"}
    names = ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
             "davit_tiny")
    meas = {"by_model": {m: dict(row, model=m) for m in names}}
    for name, expected in [("nat_mini", "swin_tiny"), ("dinat_small", "swin_small"), ("nat_base", "swin_base"),
                           ("vz_davit_tiny", "davit_tiny")]:
        label, ref = make_cards.reference_of(name, meas)
        assert ref["model"].startswith(expected), (name, label)
    files = ["x/h200_2026-11-23e.json", "x/h100_2026-11-23f1.json", "x/h100_2026-11-23.json",
             "x/h100_2026-11-23b.json"]
    assert [os.path.basename(f) for f in sorted(files, key=make_cards._run_tag)] == [
        "h100_2026-11-23.json", "h100_2026-11-23b.json", "h200_2026-11-23e.json", "h100_2026-11-23f1.json"]


def test_compiled_and_graph_rows_of_the_model_and_its_reference():
    """torch.compile and CUDA-graph rows (ours and the reference's) go into the card from the measurements, a failed
    compiled train step as the failure, never as a number; a reference without such a row (or a team anchor) adds
    none; a graph-mode row of a benchmark file lands in the graph bucket, not over the eager row."""
    row = {"_file": "model_cards/measurements/x.json", "infer_peak_GB": 1.0, "train_peak_GB": 2.0}
    meas = {"compiled": {"vz_davit_tiny": dict(row, model="vz_davit_tiny", infer_img_s=12960.4, train_img_s=2545.0),
                         "davit_tiny": dict(row, model="davit_tiny", infer_img_s=12725.2, train_img_s=None,
                                            train_error="stride mismatch: details")}}
    lines = make_cards._mode_rows("vz_davit_tiny", {"model": "davit_tiny"}, meas, "compiled", "torch.compile")
    assert len(lines) == 2
    assert lines[0].startswith("| vitzoo `vz_davit_tiny` + torch.compile") and "| 12960 |" in lines[0]
    assert "| 2545 |" in lines[0]
    assert lines[1].startswith("| `davit_tiny` + torch.compile") and "| 12725 |" in lines[1]
    assert "| failed in this run: stride mismatch |" in lines[1]
    assert make_cards._mode_rows("biformer_s", {"infer_img_s": 1.0}, meas, "compiled", "torch.compile") == []


def test_graph_mode_rows_are_kept_apart_from_eager_rows(tmp_path):
    rows = [{"model": "vz_davit_tiny", "compiled": False, "mode": "eager", "infer_img_s": 100.0},
            {"model": "vz_davit_tiny", "compiled": False, "mode": "graph", "infer_img_s": 300.0, "train_img_s": 50.0},
            {"model": "davit_tiny", "compiled": False, "infer_img_s": 90.0}]  # a file from before the "mode" key
    path = tmp_path / "h100_x.json"
    path.write_text(json.dumps({"env": {}, "setting": {}, "rows": rows}))
    meas = make_cards.load_measurements([str(path)])
    assert meas["by_model"]["vz_davit_tiny"]["infer_img_s"] == 100.0 and meas["by_model"]["davit_tiny"]
    assert set(meas["graph"]) == {"vz_davit_tiny"}
    lines = make_cards._mode_rows("vz_davit_tiny", {"model": "davit_tiny"}, meas, "graph", "CUDA graph (whole step)")
    assert len(lines) == 1 and lines[0].startswith("| vitzoo `vz_davit_tiny` + CUDA graph (whole step)")
    assert "| 300 |" in lines[0] and "| 50 |" in lines[0]


def test_a_run_without_train_step_keeps_the_earlier_train_numbers():
    """Rows flagged train_step_unchanged (--skip-train runs of unchanged training code) replace the inference numbers
    only; the earlier train numbers stay, named by their file. Unflagged rows without a train step show none, and a
    failed or measured train step in the later run replaces the earlier numbers."""
    old = {"model": "m", "infer_img_s": 1.0, "train_img_s": 2.0, "train_peak_GB": 3.0, "_file": "a.json"}
    kept = {"model": "m", "infer_img_s": 5.0, make_cards.TRAIN_KEPT: True, "_file": "b.json"}
    new = make_cards.merge_row(old, kept)
    assert (new["infer_img_s"], new["train_img_s"], new["train_peak_GB"], new["_train_file"]) == (5.0, 2.0, 3.0,
                                                                                                 "a.json")
    assert make_cards.merge_row(new, dict(kept, _file="c.json"))["_train_file"] == "a.json"
    assert make_cards.merge_row(old, {"model": "m", "infer_img_s": 5.0, "_file": "b.json"}).get("train_img_s") is None
    failed = make_cards.merge_row(old, dict(kept, train_error="OOM"))
    assert "train_img_s" not in failed and "_train_file" not in failed
    assert make_cards.merge_row(old, dict(old, train_img_s=9.0, _file="b.json"))["train_img_s"] == 9.0
