"""GPU correctness of the training BatchNorm + residual + activation op (``batch_norm_*.py`` kernels) in bf16 /
fp16 / fp32 against float64, at HaloNet-26t's and MaxViT-T's map shapes (channels_last) plus odd NCHW maps: the
output, the input / weight / bias / residual gradients and the updated running statistics. Rule: error <= 2 x torch's
own error in the same dtype (``F.batch_norm`` + add + activation on the same inputs) + a small floor.

The fused stem end ``batch_norm_act_max_pool`` is checked against the same op followed by torch's ``max_pool2d``
in the same dtype (the pooled map and its argmax bit for bit, the gradients within a rounding: bf16 window maxima
are often near-ties, and float64 would pick other taps in torch's computation as in ours), and in fp32 against
float64 by the rule above."""
from __future__ import annotations

from typing import Dict, List

import torch

from ._bench_utils import rel_err, row

PATTERN = "batch_norm"
DEVICE = "cuda"
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-6}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# (case, N, C, H, W, act, residual, channels_last)
CASES = (("halonet26t_stem_24_128", 16, 24, 128, 128, "relu", False, True),
         ("halonet26t_tail_256_64", 32, 256, 64, 64, "relu", True, True),
         ("maxvit_t_s1_256_56", 32, 256, 56, 56, "gelu_tanh", False, True),
         ("maxvit_t_s4_2048_7", 64, 2048, 7, 7, "gelu_tanh", False, True),
         ("pre_norm_none_residual_64_28", 16, 64, 28, 28, "none", True, True),
         ("odd_nchw_gelu_100_15x13", 8, 100, 15, 13, "gelu", True, False),
         ("odd_nchw_silu_33_9x1", 5, 33, 9, 1, "silu", False, False))
MOMENTUM, EPS = 0.1, 1e-5


def _run(fn, x, w, b, res, grad, mean, var, act) -> List[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    r = res.detach().clone().requires_grad_(True) if res is not None else None
    mean, var = mean.clone(), var.clone()
    y = fn(leaves[0], leaves[1], leaves[2], mean, var, MOMENTUM, EPS, act, r)
    y.backward(grad)
    return [y.detach(), *(t.grad for t in leaves), mean, var] + ([r.grad] if r is not None else [])


def _off_the_kink(x64, w, b, res64):
    """A residual that keeps ``bn(x) + residual`` at least 0.1 away from ReLU's kink. An element within a rounding
    error of 0 may take either side of the kink in any precision, torch's included; one such element changes the
    gradients by a whole ``dy`` and made the comparison with float64 a coin toss at 33M elements."""
    norm = torch.nn.functional.batch_norm(x64, None, None, w.double(), b.double(), True, 0.0, EPS)
    target = torch.sign(res64) * (0.1 + res64.abs())
    return target - norm


def run() -> List[Dict]:
    from vitzoo.ops import batch_norm_act, batch_norm_act_torch

    names = ["out", "dx", "dweight", "dbias", "running_mean", "running_var", "dresidual"]
    rows: List[Dict] = []
    for case, batch, channels, height, width, act, has_res, channels_last in CASES:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        shape = (batch, channels, height, width)
        x64 = (torch.randn(shape, device=DEVICE, dtype=torch.float64) * 2 + 1).contiguous(memory_format=fmt)
        grad64 = torch.randn(shape, device=DEVICE, dtype=torch.float64).contiguous(memory_format=fmt)
        w = 1 + 0.2 * torch.randn(channels, device=DEVICE)
        b = 0.2 * torch.randn(channels, device=DEVICE)
        if act == "relu" and not has_res:  # off the kink as below: x symmetric around 0, at least 0.1 from it
            x64 = torch.sign(x64 - 1) * (0.1 + (x64 - 1).abs())
            b = torch.zeros_like(b)
        res64 = None
        if has_res:
            res64 = torch.randn(shape, device=DEVICE, dtype=torch.float64)
            if act == "relu":
                res64 = _off_the_kink(x64, w, b, res64)
            res64 = res64.contiguous(memory_format=fmt)
        mean, var = torch.randn(channels, device=DEVICE), torch.rand(channels, device=DEVICE) + 0.5
        exact = _run(batch_norm_act_torch, x64, w.double(), b.double(), res64, grad64, mean.double(), var.double(),
                     act)
        for dtype in DTYPES:
            x, grad = x64.to(dtype), grad64.to(dtype)
            res = res64.to(dtype) if has_res else None

            def ours(*a):
                return batch_norm_act(*a, backend="triton")

            got = _run(ours, x, w, b, res, grad, mean, var, act)
            ref = _run(batch_norm_act_torch, x, w, b, res, grad, mean, var, act)
            for name, g, r, e in zip(names if has_res else names[:-1], got, ref, exact):
                err, ref_err = rel_err(g, e), rel_err(r, e)
                ok = bool(err <= 2 * ref_err + FLOOR[dtype] and g.dtype == r.dtype)
                rows.append(row(PATTERN, case, name, dtype=str(dtype)[6:], err=err, ref_err=ref_err, ok=ok))
    return rows + run_pool() + run_residual_norm()


# (case, N, C, H, W, act, (kernel_size, stride, padding), channels_last): HaloNet-26t's stem end, an odd NCHW map
POOL_CASES = (("halonet26t_stem_pool_64_128", 16, 64, 128, 128, "relu", (3, 2, 1), True),
              ("odd_nchw_pool_silu_20_15x13", 4, 20, 15, 13, "silu", (3, 2, 1), False),
              ("odd_cl_pool_none_2x2_24_9x10", 6, 24, 9, 10, "none", (2, 2, 0), True))
SAME_DTYPE_TOL = 1e-5  # the fused op against op + max_pool2d in the same dtype: the same z, taps and sums


def run_pool() -> List[Dict]:
    import torch.nn.functional as F

    from vitzoo.ops import batch_norm_act, batch_norm_act_max_pool, batch_norm_act_max_pool_torch

    names = ["out", "dx", "dweight", "dbias", "running_mean", "running_var"]
    rows: List[Dict] = []
    for case, batch, channels, height, width, act, pool, channels_last in POOL_CASES:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x64 = (torch.randn(batch, channels, height, width, device=DEVICE, dtype=torch.float64) * 2 + 1)
        x64 = x64.contiguous(memory_format=fmt)
        w = 1 + 0.2 * torch.randn(channels, device=DEVICE)
        b = 0.2 * torch.randn(channels, device=DEVICE)
        mean, var = torch.randn(channels, device=DEVICE), torch.rand(channels, device=DEVICE) + 0.5
        pooled = batch_norm_act_max_pool_torch(x64, None, None, None, None, MOMENTUM, EPS, act, *pool)
        grad64 = torch.randn_like(pooled)

        def fused(x, w, b, mean, var, momentum, eps, act, _res):
            return batch_norm_act_max_pool(x, w, b, mean, var, momentum, eps, act, *pool, backend="triton")

        def composed(x, w, b, mean, var, momentum, eps, act, _res):
            y = batch_norm_act(x, w, b, mean, var, momentum, eps, act, backend="triton")
            return F.max_pool2d(y, *pool)

        def torch_ref(x, w, b, mean, var, momentum, eps, act, _res):
            return batch_norm_act_max_pool_torch(x, w, b, mean, var, momentum, eps, act, *pool)

        exact = _run(torch_ref, x64, w.double(), b.double(), None, grad64, mean.double(), var.double(), act)
        for dtype in DTYPES:
            x, grad = x64.to(dtype), grad64.to(dtype)
            got = _run(fused, x, w, b, None, grad, mean, var, act)
            same = _run(composed, x, w, b, None, grad, mean, var, act)
            for name, g, c in zip(names, got, same):
                err = rel_err(g, c.double())
                ok = bool(err <= SAME_DTYPE_TOL and g.dtype == c.dtype and (name != "out" or torch.equal(g, c)))
                rows.append(row(PATTERN, case + "_vs_op_then_max_pool2d", name, dtype=str(dtype)[6:], err=err,
                                ref_err=0.0, ok=ok))
            if dtype == torch.float32:
                ref = _run(torch_ref, x, w, b, None, grad, mean, var, act)
                for name, g, r, e in zip(names, got, ref, exact):
                    err, ref_err = rel_err(g, e), rel_err(r, e)
                    ok = bool(err <= 2 * ref_err + FLOOR[dtype])
                    rows.append(row(PATTERN, case, name, dtype="float32", err=err, ref_err=ref_err, ok=ok))
    return rows


# (case, N, C, H, W): HaloNet-26t's stage-1 downsampling tail relu(bn3(conv3) + bn_s(conv_s(x))), and C % 8 != 0
RES_NORM_CASES = (("halonet26t_downsample_tail_256_64", 32, 256, 64, 64), ("odd_downsample_tail_36_9x7", 4, 36, 9, 7))


def run_residual_norm() -> List[Dict]:
    """``relu(bn(x) + bn_r(residual))`` (the shortcut's norm inside the op) against float64 by the rule above. The
    residual's norm parameters are its batch mean and std, so ``bn_r`` maps it to itself and ``z`` can be placed at
    least 0.1 from ReLU's kink (``_off_the_kink``)."""
    from vitzoo.ops import ResidualNorm, batch_norm_act, batch_norm_act_torch

    names = ["out", "dx", "dweight", "dbias", "running_mean", "running_var", "dresidual", "dres_weight", "dres_bias",
             "res_running_mean", "res_running_var"]
    rows: List[Dict] = []
    for case, batch, channels, height, width in RES_NORM_CASES:
        shape = (batch, channels, height, width)
        x64 = (torch.randn(shape, device=DEVICE, dtype=torch.float64) * 2 + 1).contiguous(
            memory_format=torch.channels_last)
        w = 1 + 0.2 * torch.randn(channels, device=DEVICE)
        b = 0.2 * torch.randn(channels, device=DEVICE)
        res64 = _off_the_kink(x64, w, b, torch.randn(shape, device=DEVICE, dtype=torch.float64))
        res_w = (res64.var(dim=(0, 2, 3), unbiased=False) + EPS).sqrt().float()
        res_b = res64.mean(dim=(0, 2, 3)).float()
        res64 = res64.contiguous(memory_format=torch.channels_last)
        grad64 = torch.randn(shape, device=DEVICE, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        stats = [torch.randn(channels, device=DEVICE), torch.rand(channels, device=DEVICE) + 0.5]

        def run(fn, dtype, **kw):
            param_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 parameters, as models
            leaves = [t.detach().to(dtype if t.dim() == 4 else param_dtype).clone().requires_grad_(True)
                      for t in (x64, w, b, res64, res_w, res_b)]
            running = [t.to(param_dtype).clone() for t in stats + stats]
            norm = ResidualNorm(leaves[4], leaves[5], running[2], running[3], MOMENTUM, EPS)
            y = fn(leaves[0], leaves[1], leaves[2], running[0], running[1], MOMENTUM, EPS, "relu", leaves[3],
                   residual_norm=norm, **kw)
            y.backward(grad64.to(y.dtype))
            return ([y.detach(), leaves[0].grad, leaves[1].grad, leaves[2].grad, running[0], running[1],
                     leaves[3].grad, leaves[4].grad, leaves[5].grad, running[2], running[3]])

        exact = run(batch_norm_act_torch, torch.float64)
        for dtype in DTYPES:
            got = run(batch_norm_act, dtype, backend="triton")
            ref = run(batch_norm_act_torch, dtype)
            for name, g, r, e in zip(names, got, ref, exact):
                err, ref_err = rel_err(g, e), rel_err(r, e)
                ok = bool(err <= 2 * ref_err + FLOOR[dtype] and g.dtype == r.dtype)
                rows.append(row(PATTERN, case, name, dtype=str(dtype)[6:], err=err, ref_err=ref_err, ok=ok))
    return rows
