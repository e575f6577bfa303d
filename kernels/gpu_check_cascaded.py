"""GPU correctness of the cascaded group attention kernel (``cascaded_attention_fwd.py``, EfficientViT inference) in
bf16 / fp16 / fp32 against float64: EfficientViT-M5's and M0's stage shapes at 224 (7x7 windows, global 7x7 and
4x4 maps; value dims 16-112, per-head kernels 7 / 5 / 3), a map that is not a multiple of the window, and whole
models (vz_efficientvit_m0 / m5 against timm's efficientvit_m0 / m5 in float64, same weights). Rule: error <= 2 x
the torch reference's own error in the same dtype (``vitzoo.ops.cascaded_group_attention_torch``; timm's model for
the model rows) + a small floor."""
from __future__ import annotations

from typing import Dict, List

import torch

from ._bench_utils import rel_err, row

PATTERN = "cascaded"
DEVICE = "cuda"
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-6}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# (case, batch, map H, W, heads, key_dim, d_v, kernel sizes, window (None: the whole map), table resolution, relu)
CASES = (("m5_s1_14x14_w7", 64, 14, 14, 3, 16, 64, (7, 5, 3), 7, 7, True),
         ("m5_s2_7x7_global", 64, 7, 7, 3, 16, 96, (7, 5, 3), None, 7, False),
         ("m5_s3_4x4_global", 64, 4, 4, 4, 16, 96, (7, 5, 3, 3), None, 4, True),
         ("m0_s1_14x14_w7", 64, 14, 14, 4, 16, 16, (5, 5, 5, 5), 7, 7, False),
         ("m2_s3_dv112_4x4", 64, 4, 4, 2, 16, 112, (7, 5), None, 4, False),
         ("padded_10x13_w7", 16, 10, 13, 2, 16, 48, (3, 5), 7, 7, True))
MODELS = ("efficientvit_m0", "efficientvit_m5")


def _weights(heads: int, key_dim: int, v_dim: int, kernels, res: int):
    """Random float64 weights at the scale of folded EfficientViT layers."""
    kw = dict(device=DEVICE, dtype=torch.float64)
    out = 2 * key_dim + v_dim
    return ([torch.randn(out, v_dim, **kw) / v_dim ** 0.5 for _ in range(heads)],
            [torch.randn(out, **kw) * 0.1 for _ in range(heads)],
            [torch.randn(key_dim, 1, k, k, **kw) / k for k in kernels],
            [torch.randn(key_dim, **kw) * 0.1 for _ in range(heads)],
            torch.randn(heads, res * res, **kw))


def _op_rows() -> List[Dict]:
    from vitzoo.ops import cascaded_group_attention, cascaded_group_attention_torch

    rows: List[Dict] = []
    for case, batch, height, width, heads, key_dim, v_dim, kernels, window, res, relu in CASES:
        qkv_w, qkv_b, dw_w, dw_b, table = _weights(heads, key_dim, v_dim, kernels, res)
        x64 = torch.randn(batch, heads * v_dim, height, width, device=DEVICE, dtype=torch.float64)
        exact = cascaded_group_attention_torch(x64, qkv_w, qkv_b, dw_w, dw_b, table, key_dim, window, relu=relu)
        for dtype in DTYPES:
            x = x64.to(dtype).contiguous(memory_format=torch.channels_last)
            low = ([w.to(dtype) for w in qkv_w], [b.to(dtype) for b in qkv_b], [w.to(dtype) for w in dw_w],
                   [b.to(dtype) for b in dw_b], table.to(dtype))
            with torch.no_grad():
                ours = cascaded_group_attention(x, *low, key_dim, window, relu=relu, backend="triton")
                ref = cascaded_group_attention_torch(x, *low, key_dim, window, relu=relu)
            err, ref_err = rel_err(ours, exact), rel_err(ref, exact)
            rows.append(row(PATTERN, case, "out", dtype=str(dtype)[6:], err=err, ref_err=ref_err,
                            ok=bool(err <= 2 * ref_err + FLOOR[dtype] and ours.dtype == dtype)))
    return rows


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and attention biases (timm initialises the biases to zero)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.normal_()
            elif name.endswith("bn.weight"):
                p.uniform_(0.5, 1.5)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _model_rows() -> List[Dict]:
    import timm

    import vitzoo  # noqa: F401 - registers the vz_ models

    rows: List[Dict] = []
    for name in MODELS:
        ref = randomize(timm.create_model(name).to(DEVICE).eval())
        ours = timm.create_model("vz_" + name).to(DEVICE).eval()
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(32, 3, 224, 224, device=DEVICE).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # train() drops timm's eval-mode attention-bias cache, built in the other dtype
            exact = ref.double().train().eval()(x.double())
        ref.float().train().eval()
        with torch.inference_mode():
            for dtype in (torch.bfloat16, torch.float32):
                with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    got, timm_out = ours(x), ref(x)
                err, ref_err = rel_err(got, exact), rel_err(timm_out, exact)
                rows.append(row(PATTERN, f"vz_{name}_224", "model_eval", dtype=str(dtype)[6:], err=err,
                                ref_err=ref_err, ok=bool(err <= 2 * ref_err + FLOOR[dtype])))
    return rows


def run() -> List[Dict]:
    torch.manual_seed(0)
    return _op_rows() + _model_rows()
