"""tools/bench_det.py on the CPU (tiny sizes): the torch-reference row is measured and finite, triton is a skipped row
without CUDA, a failing or timed-out backend is an error row (not a crash), bad arguments are one line + exit code 2."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "bench_det.py")
# the smallest NAT at 128x160, one fp32 step (bf16 autocast is several times slower on CPUs without bf16 units)
TINY = ["--device", "cpu", "--model", "nat_mini", "--min-size", "128", "--max-size", "160", "--batch-size", "1",
        "--warmup", "0", "--steps", "1", "--amp", "none"]


@pytest.fixture(scope="module")
def bench_det():
    spec = importlib.util.spec_from_file_location("bench_det", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour (triton skipped)")
def test_cpu_run_measures_the_torch_backend_and_skips_triton(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("VITZOO_ATTN_BACKEND", None)
    proc = subprocess.run([sys.executable, SCRIPT, *TINY, "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["backend"]: r for r in json.loads((out / "bench_det.json").read_text())["rows"]}
    assert list(rows) == ["triton", "torch"]
    assert rows["triton"]["error"].startswith("skipped: the Triton backend needs a CUDA GPU")
    torch_row = rows["torch"]
    assert "error" not in torch_row, torch_row
    assert torch_row["img_s"] > 0 and math.isfinite(torch_row["img_s"])
    assert len(torch_row["losses"]) == 1 and all(math.isfinite(v) and v > 0 for v in torch_row["losses"])
    assert torch_row["padded"] == "128x160" and torch_row["params_M"] > 1
    with open(out / "bench_det.csv") as f:
        assert [r["backend"] for r in csv.DictReader(f)] == ["triton", "torch"]
    table = (out / "bench_det.md").read_text()
    assert "| torch |" in table and "| triton |" in table and table.splitlines()[0] in proc.stdout
    assert "VITZOO_ATTN_BACKEND=torch" in proc.stderr
    pytest.importorskip("matplotlib")
    assert (out / "bench_det.png").stat().st_size > 0


def test_a_backend_past_the_timeout_is_an_error_row(bench_det, tmp_path):
    with pytest.raises(SystemExit) as exc:  # nothing was measured: exit code 1, outputs written all the same
        bench_det.main([*TINY, "--backends", "torch", "--timeout", "0.5", "--out", str(tmp_path)])
    assert exc.value.code == 1
    (row,) = json.loads((tmp_path / "bench_det.json").read_text())["rows"]
    assert row["backend"] == "torch" and row["error"] == "timed out after 0.5 s (--timeout)"


def test_a_failure_inside_the_worker_is_an_error_row(bench_det, tmp_path, monkeypatch):
    def out_of_memory(args, backend):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.\nmore details")

    monkeypatch.setattr(bench_det, "measure", out_of_memory)
    monkeypatch.setenv("VITZOO_ATTN_BACKEND", "torch")
    result = tmp_path / "row.json"
    bench_det.main([*TINY, "--worker", "torch", "--result", str(result)])
    assert json.loads(result.read_text()) == {
        "backend": "torch", "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. more details"}


@pytest.mark.parametrize("argv, message", [
    (["--model", "nat_tinyy"], "--model 'nat_tinyy' is not a registered timm/vitzoo model; did you mean nat_tiny"),
    (["--min-size", "800", "--max-size", "600"], "--max-size (600) must be >= --min-size (800)"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--num-classes", "1"], "--num-classes must be >= 2, got 1"),
])
def test_bad_arguments_are_one_line_and_exit_code_2(bench_det, tmp_path, capsys, argv, message):
    from vitzoo.tools_common import run_cli

    assert run_cli(bench_det.main, [*argv, "--out", str(tmp_path)], prog="bench_det.py") == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_det.py: error: ") and message in err and err.count("\n") == 1
    assert not os.listdir(tmp_path)  # nothing ran
