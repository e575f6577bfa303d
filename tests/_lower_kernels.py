"""Lower the neighborhood- and routed-attention, LayerNorm, training-BatchNorm (and max-pool) and MaxViT
training-conv kernels to Triton IR for an sm_90 GPU, on the CPU (run by ``tests/test_kernel_sources.py`` in a
subprocess without ``TRITON_INTERPRET``).

The CPU interpreter runs kernels with Python semantics, so code that the GPU compiler's front end rejects passes
there: a plain global, a conditional expression on a constexpr (a constexpr object is always truthy), a ``tl.dot``
operand under 16 rows. The front end (AST -> Triton IR) needs no GPU, so this script calls the real launchers on CPU
tensors with ``launch`` replaced by a function that builds the IR of the kernel for every autotune config with the
constexprs the launcher and the heuristics give. Prints one line per lowering; exits non-zero on the first failure.
"""
from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without the interpreter"

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton._C.libtriton import ir  # noqa: E402

from vitzoo.kernels import (_launch, batch_norm_act_bwd, cascaded_attention_fwd, batch_norm_act_bwd_reduce, batch_norm_act_fwd,  # noqa: E402
                            batch_norm_act_max_pool_fwd, batch_norm_stats, batch_norm_stats_merge, channel_dot,
                            channel_scale, depthwise_conv_bwd_input, depthwise_conv_bwd_weight, layer_norm_bwd,
                            layer_norm_fwd, max_pool_bwd, neighborhood_bwd_dkdv, neighborhood_bwd_dq,
                            neighborhood_bwd_dq_dense_bias, neighborhood_fwd, routed_bwd, routed_bwd_dq, routed_fwd,
                            routed_inverse_index)
from vitzoo.kernels.neighborhood_bwd_dq_dense_bias import DQ_BLOCK_M  # noqa: E402
from vitzoo.ops._neighborhood_triton import _dq_tables  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
POINTER = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
           torch.int64: "*i64", torch.uint8: "*u8"}


def _signature(names, args, constexprs):
    sig = {}
    for name, arg in zip(names, args):
        if isinstance(arg, torch.Tensor):
            sig[name] = POINTER[arg.dtype]
        elif isinstance(arg, float):
            sig[name] = "fp32"
        else:
            sig[name] = "i32" if -2 ** 31 <= arg < 2 ** 31 else "i64"
    sig.update({name: "constexpr" for name in constexprs})
    return sig


def lower(kernel, grid, *args, **meta):
    """Stand-in for ``_launch.launch``: build the IR for each config (raises the compiler's error)."""
    jit = _launch._jit_function(kernel)
    backend = CUDABackend(TARGET)
    options = backend.parse_options({})
    configs = getattr(kernel, "configs", [None])
    prune = getattr(kernel, "early_config_prune", None)
    if prune is not None:  # the routed kernels derive constexprs (GROUPS, SLOTS) in their pruner
        configs = prune(configs, dict(zip(jit.arg_names, args)), **meta)
    for config in configs:
        constexprs = dict(meta, **(config.kwargs if config is not None else {}))
        constexprs.update(_launch._heuristic_values(kernel, dict(zip(jit.arg_names, args), **constexprs)))
        constexprs = {k: v for k, v in constexprs.items() if k in jit.arg_names}
        source = ASTSource(jit, _signature(jit.arg_names, args, constexprs),
                           {(jit.arg_names.index(k),): v for k, v in constexprs.items()})
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        source.make_ir(TARGET, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                       context)
        print("lowered", jit.__name__, config, flush=True)


def lower_routed() -> None:
    """Tiny packed regions, one big region per program, a padded map with every region routed; bf16 / fp16 /
    fp32, int64 index (the router's) and int32."""
    # (B, H, W, heads, d, d_v, n_win, topk, dtype, index dtype)
    cases = [(1, 14, 14, 2, 32, 32, 7, 4, torch.bfloat16, torch.int64),
             (1, 16, 16, 1, 64, 64, 2, 2, torch.float16, torch.int32),
             (1, 9, 11, 1, 16, 16, 3, 9, torch.float32, torch.int64)]
    for batch, height, width, heads, dim, v_dim, n_win, topk, dtype, index_dtype in cases:
        q, k = (torch.zeros(batch, height, width, heads, dim, dtype=dtype) for _ in range(2))
        v = torch.zeros(batch, height, width, heads, v_dim, dtype=dtype)
        index = torch.zeros(batch, n_win * n_win, topk, dtype=index_dtype)
        out, lse = routed_fwd.routed_fwd(q, k, v, index, n_win, 0.1)
        routed_bwd.routed_bwd(out, q, k, v, out, lse, index, n_win, 0.1)


def lower_layer_norm() -> None:
    """Small, non-power-of-two and the largest C; with and without weight / bias (and their gradients); bf16 / fp16
    / fp32 inputs, outputs and gradients in other dtypes (autocast), strided rows."""
    # (rows, C, x dtype, out dtype, dy dtype, weight dtype or None, bias dtype or None)
    cases = [(64, 96, torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float32, torch.float32),
             (64, 100, torch.float32, torch.bfloat16, torch.float32, torch.float32, None),
             (64, 768, torch.float16, torch.float16, torch.float16, None, torch.float16),
             (4, 16384, torch.bfloat16, torch.float32, torch.bfloat16, None, None)]
    for rows, channels, dtype, out_dtype, dy_dtype, w_dtype, b_dtype in cases:
        x = torch.zeros(rows, channels + 8, dtype=dtype)[:, :channels]
        weight = torch.zeros(channels, dtype=w_dtype) if w_dtype is not None else None
        bias = torch.zeros(channels, dtype=b_dtype) if b_dtype is not None else None
        _, stats = layer_norm_fwd.layer_norm_fwd(x, weight, bias, 1e-5, out_dtype)
        layer_norm_bwd.layer_norm_bwd(torch.zeros(rows, channels, dtype=dy_dtype), x, weight, stats,
                                      w_dtype is not None, b_dtype is not None)


def lower_batch_norm() -> None:
    """Training BatchNorm + act: channels_last and NCHW maps, every activation, with and without residual, weight,
    bias and running statistics; bf16 / fp16 / fp32 maps with fp32 parameters."""
    # (N, C, H, W, dtype, channels_last, act, residual, affine, running)
    cases = [(2, 64, 8, 8, torch.bfloat16, True, "relu", True, True, True),
             (2, 24, 5, 7, torch.float16, False, "gelu_tanh", False, True, True),
             (1, 100, 3, 3, torch.float32, True, "silu", True, False, False),
             (3, 40, 4, 1, torch.bfloat16, True, "gelu", False, True, True),
             (2, 256, 2, 2, torch.bfloat16, True, "none", True, True, True)]
    for batch, channels, height, width, dtype, channels_last, act, has_res, affine, running in cases:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.zeros(batch, channels, height, width, dtype=dtype).contiguous(memory_format=fmt)
        res = torch.zeros_like(x) if has_res else None
        weight = bias = torch.ones(channels) if affine else None
        mean, var = (torch.zeros(channels), torch.ones(channels)) if running else (None, None)
        parts, per_program = batch_norm_stats.batch_norm_stats(x)
        stats = batch_norm_stats_merge.batch_norm_stats_merge(parts, batch * height * width, per_program, weight,
                                                              bias, mean, var, 0.1, 1e-5)
        y = batch_norm_act_fwd.batch_norm_act_fwd(x, torch.zeros(4, channels), act, res)[0]
        z_from = "none" if act == "none" else ("x_residual" if has_res else "x")
        src = res if z_from == "x_residual" else None
        batch_norm_act_bwd_reduce.batch_norm_act_bwd_reduce(y, x, stats, act, z_from, src)
        batch_norm_act_bwd.batch_norm_act_bwd(y, x, stats, torch.zeros(2, channels), weight, act, z_from, src,
                                              dtype if has_res else None)
    relu_res = torch.zeros(2, 64, 8, 8, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    batch_norm_act_bwd_reduce.batch_norm_act_bwd_reduce(relu_res, relu_res, torch.zeros(4, 64), "relu", "output",
                                                        relu_res)
    # a block tail: ReLU after the residual, the backward reads the forward's packed z > 0 bits
    _, mask = batch_norm_act_fwd.batch_norm_act_fwd(relu_res, torch.zeros(4, 64), "relu", relu_res, relu_mask=True)
    for module in (batch_norm_act_bwd_reduce, batch_norm_act_bwd):
        fn = getattr(module, module.__name__.rsplit(".", 1)[1])
        extra = (torch.zeros(2, 64), None, "relu", "relu_mask", mask) if module is batch_norm_act_bwd else (
            "relu", "relu_mask", mask)
        fn(relu_res, relu_res, torch.zeros(4, 64), *extra)
    # a downsampling tail: the shortcut's BatchNorm applied inside the add (forward, reduce and backward)
    stats = torch.zeros(4, 64)
    batch_norm_act_fwd.batch_norm_act_fwd(relu_res, stats, "relu", relu_res, relu_mask=True, residual_stats=stats)
    batch_norm_act_bwd_reduce.batch_norm_act_bwd_reduce(relu_res, relu_res, stats, "relu", "relu_mask", mask,
                                                        relu_res, stats)
    batch_norm_act_bwd.batch_norm_act_bwd(relu_res, relu_res, stats, torch.zeros(3, 64), None, "relu", "relu_mask",
                                          mask, torch.bfloat16, relu_res, stats, torch.ones(64))


def lower_max_pool() -> None:
    """BatchNorm + act fused into max pooling and the pooling backward: channels_last and NCHW maps, the stem's
    (3, 2, 1) and other (kernel, stride, padding); bf16 / fp16 / fp32 maps, gradients in another layout."""
    # (N, C, H, W, dtype, channels_last, act, kernel, stride, padding)
    cases = [(2, 64, 16, 16, torch.bfloat16, True, "relu", 3, 2, 1),
             (2, 24, 9, 7, torch.float16, False, "none", 2, 2, 0),
             (1, 100, 7, 7, torch.float32, True, "silu", 3, 1, 1)]
    for batch, channels, height, width, dtype, channels_last, act, kernel, stride, padding in cases:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.zeros(batch, channels, height, width, dtype=dtype).contiguous(memory_format=fmt)
        out, argmax = batch_norm_act_max_pool_fwd.batch_norm_act_max_pool_fwd(x, torch.zeros(4, channels), act,
                                                                              kernel, stride, padding)
        max_pool_bwd.max_pool_bwd(out.contiguous(), argmax, (height, width), kernel, stride, padding, x)


def lower_conv_train() -> None:
    """MaxViT's training conv kernels: the depthwise backwards (stride 1 / 2, K 3 / 5, TF padding) and the SE gate
    multiply (in place, out of place with a shift) and its gradient reduction; bf16 / fp16 / fp32."""
    for dtype, k, stride in ((torch.bfloat16, 3, 2), (torch.float16, 3, 1), (torch.float32, 5, 2)):
        x = torch.zeros(2, 9, 8, 64, dtype=dtype)
        dy = torch.zeros(2, 5, 4, 64, dtype=dtype)
        taps = torch.zeros(k * k, 64)
        depthwise_conv_bwd_input.depthwise_conv_bwd_input(dy, taps, stride, 0, 1, (9, 8), dtype)
        depthwise_conv_bwd_weight.depthwise_conv_bwd_weight(x, dy, k, stride, 0, 1)
        flat = x.view(2, 72, 64)
        gate = torch.zeros(2, 64, dtype=dtype)
        channel_scale.channel_scale_(flat, gate)
        channel_scale.channel_scale(flat, gate, shift=torch.zeros(2, 64))
        channel_dot.channel_dot(flat, flat)


def lower_cascaded() -> None:
    """EfficientViT's cascaded group attention: 7x7 windows with per-head kernels 7 / 5 / 3 (bf16), a padded value
    dim (96 -> 128, fp16), a small global map with one head and a 1x1 depth-wise kernel (fp32)."""
    # (B, H, W, heads, key_dim, d_v, kernel sizes, window, table resolution, dtype)
    cases = [(1, 14, 14, 3, 16, 64, (7, 5, 3), (7, 7), 7, torch.bfloat16),
             (1, 7, 7, 4, 16, 96, (7, 5, 3, 3), (7, 7), 7, torch.float16),
             (1, 4, 3, 1, 32, 16, (1,), (4, 3), 4, torch.float32)]
    for batch, height, width, heads, key_dim, v_dim, kernels, window, res, dtype in cases:
        ks = max(kernels)
        x = torch.zeros(batch, height, width, heads * v_dim, dtype=dtype)
        cascaded_attention_fwd.cascaded_attention_fwd(
            x, torch.zeros(heads, v_dim, 2 * key_dim + v_dim, dtype=dtype), torch.zeros(heads, 2 * key_dim + v_dim),
            torch.zeros(heads, ks * ks, key_dim), torch.zeros(heads, key_dim), [k // 2 for k in kernels],
            torch.zeros(heads, res * res), window, 0.25, dtype != torch.float32)


def main() -> None:
    for module in (cascaded_attention_fwd, channel_dot, channel_scale, depthwise_conv_bwd_input, depthwise_conv_bwd_weight,
                   batch_norm_stats, batch_norm_stats_merge, batch_norm_act_fwd, batch_norm_act_bwd_reduce,
                   batch_norm_act_bwd, batch_norm_act_max_pool_fwd, max_pool_bwd, neighborhood_fwd,
                   neighborhood_bwd_dq, neighborhood_bwd_dkdv, neighborhood_bwd_dq_dense_bias, routed_fwd,
                   routed_bwd_dq, routed_bwd, routed_inverse_index, layer_norm_fwd, layer_norm_bwd):
        module.launch = lower
    lower_cascaded()
    lower_layer_norm()
    lower_batch_norm()
    lower_max_pool()
    lower_conv_train()
    lower_routed()
    # (B, H, W, heads, d, d_v, kernel, dilation, stride, rpb, bias, dtype)
    cases = [(1, 20, 20, 2, 32, 32, (7, 7), (1, 1), (1, 1), True, False, torch.bfloat16),
             (1, 20, 20, 2, 32, 32, (7, 7), (1, 1), (1, 1), True, False, torch.float32),
             (1, 14, 14, 1, 16, 48, (7, 7), (1, 1), (7, 7), False, True, torch.bfloat16),
             (1, 14, 14, 2, 64, 64, (7, 7), (2, 2), (1, 1), False, False, torch.float16),
             (1, 8, 16, 1, 16, 16, (2, 8), (1, 1), (2, 8), True, False, torch.bfloat16),
             (1, 16, 4, 1, 16, 16, (16, 1), (1, 1), (16, 1), True, False, torch.bfloat16)]
    for batch, height, width, heads, dim, v_dim, kernel, dilation, stride, has_rpb, has_bias, dtype in cases:
        q, k = (torch.zeros(batch, height, width, heads, dim, dtype=dtype) for _ in range(2))
        v = torch.zeros(batch, height, width, heads, v_dim, dtype=dtype)
        rpb = torch.zeros(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1) if has_rpb else None
        bias = torch.zeros(heads, kernel[0] * kernel[1], kernel[0] * kernel[1]) if has_bias else None
        out, lse, table = neighborhood_fwd.neighborhood_fwd(q, k, v, rpb, bias, kernel, dilation, stride, 0.1)
        if bias is None:
            _, delta, _ = neighborhood_bwd_dq.neighborhood_bwd_dq(out, q, k, v, out, lse, rpb, kernel, dilation,
                                                                  stride, 0.1, table)
        else:
            tables = _dq_tables(batch, height, width, kernel, dilation, stride, DQ_BLOCK_M, q.device)
            _, delta, _ = neighborhood_bwd_dq_dense_bias.neighborhood_bwd_dq_dense_bias(
                out, q, k, v, out, lse, rpb, bias, kernel, dilation, 0.1, *tables[:5])
        neighborhood_bwd_dkdv.neighborhood_bwd_dkdv(out, q, k, v, lse, delta, rpb, bias, kernel, dilation, stride,
                                                    0.1, table)
        if has_rpb or has_bias:  # the inference path: the dense logit block
            block = neighborhood_fwd.logit_block(rpb, bias, kernel, dilation, stride, (height, width), q.device,
                                                 q.dtype)
            neighborhood_fwd.neighborhood_fwd(q, k, v, rpb, bias, kernel, dilation, stride, 0.1, block=block)


if __name__ == "__main__":
    sys.exit(main())
