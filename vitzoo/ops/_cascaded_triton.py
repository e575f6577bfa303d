"""Triton backend of :func:`vitzoo.ops.cascaded_group_attention` (inference only).

The kernel (``kernels/cascaded_attention_fwd.py``) takes every head's weights in one buffer each: the 1x1 projections
as (heads, d_v, 2 * key_dim + d_v) in the compute dtype, the depth-wise taps as (heads, KS * KS, key_dim) fp32 with
smaller kernels zero-padded around the centre. Fixed weights (a model in eval) are converted once and cached until
any of them changes (``vitzoo.ops._weight_cache``).

``vitzoo::cascaded_group_attention_fwd`` is a ``torch.library`` custom op with a fake implementation, so that
``torch.compile`` traces a model through it as one opaque kernel; eager calls skip the dispatcher (its host time is
most of a call at these sizes, see ``vitzoo.ops._triton_op``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .biased import common_dtype
from .cascaded import CascadedArgs
from ._weight_cache import cached_or_built

__all__ = ["unsupported_reason", "cascaded_group_attention_triton"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unsupported_reason(x: torch.Tensor, args: CascadedArgs, tensors: Sequence[torch.Tensor]) -> Optional[str]:
    """None when the kernel handles this call, else why not."""
    from vitzoo.kernels.cascaded_attention_fwd import KEY_DIMS, MAX_HEADS, MAX_RADIUS, MAX_V_DIM, MAX_WINDOW_TOKENS

    if args.key_dim not in KEY_DIMS:
        return f"key_dim must be one of {KEY_DIMS}, got {args.key_dim}"
    if args.in_dim != args.v_dim:
        return f"the kernel needs C / heads == d_v (a one-head call may differ), got {args.in_dim} and {args.v_dim}"
    if args.v_dim > MAX_V_DIM:
        return f"the value head dim must be <= {MAX_V_DIM}, got {args.v_dim}"
    if args.window[0] * args.window[1] > MAX_WINDOW_TOKENS:
        return f"windows must hold <= {MAX_WINDOW_TOKENS} tokens, got {args.window[0]}x{args.window[1]}"
    if args.heads > MAX_HEADS:
        return f"at most {MAX_HEADS} heads, got {args.heads}"
    if max(args.kernel_sizes) // 2 > MAX_RADIUS:
        return f"depth-wise kernels must be at most {2 * MAX_RADIUS + 1} wide, got {max(args.kernel_sizes)}"
    dtype = common_dtype(x)
    if dtype not in _DTYPES:
        return f"x's compute dtype must be one of float16, bfloat16, float32, got {dtype}"
    if any(not t.is_floating_point() for t in tensors):
        return "every weight must be a floating-point tensor"
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return f"x and every weight must live on one device, got {sorted(str(d) for d in devices)}"
    return None


def _kernel_layout(qkv_weights: Sequence[torch.Tensor], qkv_biases: Sequence[torch.Tensor],
                   dw_weights: Sequence[torch.Tensor], dw_biases: Sequence[torch.Tensor], args: CascadedArgs,
                   dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_qkv, b_qkv, w_dw, b_dw) in the kernel's layout (module docstring)."""
    out_dim = 2 * args.key_dim + args.v_dim
    ks = max(args.kernel_sizes)
    with torch.no_grad():
        w_qkv = torch.stack([w.reshape(out_dim, args.in_dim) for w in qkv_weights]).transpose(1, 2)
        taps = [F.pad(w[:, 0].float(), [(ks - w.shape[-1]) // 2] * 4).permute(1, 2, 0) for w in dw_weights]
        return (w_qkv.to(dtype).contiguous(), torch.stack(list(qkv_biases)).float(),
                torch.stack(taps).reshape(args.heads, ks * ks, args.key_dim).contiguous(),
                torch.stack(list(dw_biases)).float())


def _launch(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, w_dw: torch.Tensor, b_dw: torch.Tensor,
            table: torch.Tensor, radii: List[int], window: List[int], scale: float, relu: bool) -> torch.Tensor:
    from vitzoo.kernels.cascaded_attention_fwd import cascaded_attention_fwd

    return cascaded_attention_fwd(x, w_qkv, b_qkv, w_dw, b_dw, radii, table, window, scale, relu)


_FORWARD_OP = torch.library.custom_op("vitzoo::cascaded_group_attention_fwd", _launch, mutates_args=())


@_FORWARD_OP.register_fake
def _launch_fake(x, w_qkv, b_qkv, w_dw, b_dw, table, radii, window, scale, relu):
    return x.new_empty(x.shape)


def cascaded_group_attention_triton(x, qkv_weights, qkv_biases, dw_weights, dw_biases, bias_table,
                                    args: CascadedArgs, scale: float, relu: bool) -> torch.Tensor:
    """Run the kernel on validated arguments; returns (B, heads * d_v, H, W) as the NCHW view of an NHWC tensor."""
    dtype = common_dtype(x)
    weights = (*qkv_weights, *qkv_biases, *dw_weights, *dw_biases)
    layout = cached_or_built(weights, ("cascaded_attention_layout", dtype, args.key_dim),
                             lambda: _kernel_layout(qkv_weights, qkv_biases, dw_weights, dw_biases, args, dtype))
    inputs = (x.to(dtype).permute(0, 2, 3, 1), *layout, bias_table.float(),
              [k // 2 for k in args.kernel_sizes], list(args.window), scale, relu)
    out = _FORWARD_OP(*inputs) if torch.compiler.is_compiling() else _launch(*inputs)
    return out.permute(0, 3, 1, 2)
