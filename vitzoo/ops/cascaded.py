"""Cascaded group attention (EfficientViT, Liu et al., CVPR 2023) over non-overlapping windows, all heads in one op.

Head ``i`` reads its channel chunk of the input plus head ``i - 1``'s output, projects it to q, k, v with a 1x1
convolution, convolves q depth-wise (zero padding at the window's borders), attends within each window with a LeViT
``|dy|, |dx|`` attention-bias table and passes its output on. The op returns every head's output, concatenated
along channels (what the block's output projection reads).

Triton on CUDA in inference (``vitzoo.kernels.cascaded_attention_fwd``: one program carries a window through every
head); the pure-torch reference elsewhere, and wherever autograd records (training keeps EfficientViT's per-head
path through :func:`vitzoo.ops.neighborhood_attention_2d`, whose kernels have backwards).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ._backend import needs_grad, resolve_backend

__all__ = ["cascaded_group_attention", "cascaded_group_attention_torch", "CascadedArgs", "window_bias_index"]

Window = Optional[Union[int, Sequence[int]]]


class CascadedArgs:
    """Validated shapes of one call: heads, key / value dims, each head's depth-wise kernel, the window tiling."""

    def __init__(self, x: torch.Tensor, qkv_weights: Sequence[torch.Tensor], qkv_biases: Sequence[torch.Tensor],
                 dw_weights: Sequence[torch.Tensor], dw_biases: Sequence[torch.Tensor], bias_table: torch.Tensor,
                 key_dim: int, window: Window) -> None:
        name = "cascaded_group_attention"
        if x.dim() != 4:
            raise ValueError(f"{name}: x must be (B, C, H, W), got shape {tuple(x.shape)}")
        self.heads = len(qkv_weights)
        if self.heads < 1 or not (len(qkv_biases) == len(dw_weights) == len(dw_biases) == self.heads):
            raise ValueError(f"{name}: qkv_weights, qkv_biases, dw_weights and dw_biases need one entry per head, got "
                             f"{len(qkv_weights)}, {len(qkv_biases)}, {len(dw_weights)}, {len(dw_biases)}")
        batch, channels, self.height, self.width = x.shape
        if channels % self.heads:
            raise ValueError(f"{name}: x's {channels} channels do not split into {self.heads} heads")
        self.in_dim = channels // self.heads
        if not isinstance(key_dim, int) or key_dim < 1:
            raise ValueError(f"{name}: key_dim must be a positive int, got {key_dim!r}")
        self.key_dim = key_dim
        out_dim = qkv_weights[0].shape[0]
        self.v_dim = out_dim - 2 * key_dim
        for i, (w, b) in enumerate(zip(qkv_weights, qkv_biases)):
            if tuple(w.shape[:2]) != (out_dim, self.in_dim) or w[0].numel() != self.in_dim or tuple(b.shape) != (
                    out_dim,) or self.v_dim < 1:
                raise ValueError(
                    f"{name}: qkv_weights[{i}] must be (2 * key_dim + d_v, C / heads[, 1, 1]) = ({out_dim}, "
                    f"{self.in_dim}) with d_v >= 1 and qkv_biases[{i}] ({out_dim},), got {tuple(w.shape)} and "
                    f"{tuple(b.shape)}")
        if self.heads > 1 and self.v_dim != self.in_dim:
            raise ValueError(f"{name}: the cascade adds each head's output (d_v = {self.v_dim}) to the next head's "
                             f"input chunk (C / heads = {self.in_dim}); they must be equal")
        self.kernel_sizes: Tuple[int, ...] = tuple(int(w.shape[-1]) for w in dw_weights)
        for i, (w, b) in enumerate(zip(dw_weights, dw_biases)):
            ks = w.shape[-1]
            if w.dim() != 4 or tuple(w.shape) != (key_dim, 1, ks, ks) or ks % 2 == 0 or tuple(b.shape) != (key_dim,):
                raise ValueError(f"{name}: dw_weights[{i}] must be (key_dim, 1, k, k) with k odd and dw_biases[{i}] "
                                 f"(key_dim,) for key_dim = {key_dim}, got {tuple(w.shape)} and {tuple(b.shape)}")
        if window is None:
            self.window = (self.height, self.width)
        else:
            pair = (window, window) if isinstance(window, int) else tuple(int(v) for v in window)
            if len(pair) != 2 or min(pair) < 1:
                raise ValueError(f"{name}: window must be None (the whole map), a positive int or a pair of them, "
                                 f"got {window!r}")
            self.window = pair
        res = int(round(bias_table.shape[-1] ** 0.5)) if bias_table.dim() == 2 else 0
        if bias_table.dim() != 2 or bias_table.shape[0] != self.heads or res * res != bias_table.shape[1]:
            raise ValueError(f"{name}: bias_table must be (heads, r * r) = ({self.heads}, r * r), got "
                             f"{tuple(bias_table.shape)}")
        if max(self.window) > res:
            raise ValueError(f"{name}: a {self.window[0]}x{self.window[1]} window needs a bias table of resolution "
                             f">= {max(self.window)}, got {res}x{res}")
        self.table_res = res
        self.batch = batch


def window_bias_index(window: Tuple[int, int], res: int, device: torch.device) -> torch.Tensor:
    """(N, N) index ``|dy| * res + |dx|`` into a head's LeViT bias table of resolution ``res`` for every (query, key)
    pair of the N tokens of a window (row-major)."""
    wh, ww = window
    ys = torch.arange(wh, device=device).repeat_interleave(ww)
    xs = torch.arange(ww, device=device).repeat(wh)
    return (ys[:, None] - ys[None, :]).abs() * res + (xs[:, None] - xs[None, :]).abs()


def cascaded_group_attention_torch(x, qkv_weights, qkv_biases, dw_weights, dw_biases, bias_table, key_dim,
                                   window: Window = None, scale: Optional[float] = None,
                                   relu: bool = False) -> torch.Tensor:
    """Pure-torch reference of :func:`cascaded_group_attention` (any dtype, float64 included; differentiable): the
    map zero-padded to whole windows, partitioned, each head as convolutions and a dense softmax, then merged back."""
    args = CascadedArgs(x, qkv_weights, qkv_biases, dw_weights, dw_biases, bias_table, key_dim, window)
    scale = key_dim ** -0.5 if scale is None else scale
    (wh, ww), (height, width) = args.window, (args.height, args.width)
    pad_b, pad_r = (-height) % wh, (-width) % ww
    x = F.pad(x, (0, pad_r, 0, pad_b))
    rows, cols = (height + pad_b) // wh, (width + pad_r) // ww
    tiles = x.reshape(args.batch, -1, rows, wh, cols, ww).permute(0, 2, 4, 1, 3, 5).reshape(-1, x.shape[1], wh, ww)
    index = window_bias_index(args.window, args.table_res, x.device)
    dtype = x.dtype
    outputs: List[torch.Tensor] = []
    feat = None
    for i, chunk in enumerate(tiles.chunk(args.heads, dim=1)):
        feat = chunk if feat is None else feat + chunk
        w = qkv_weights[i].reshape(-1, args.in_dim, 1, 1).to(dtype)
        q, k, v = F.conv2d(feat, w, qkv_biases[i].to(dtype)).split([key_dim, key_dim, args.v_dim], dim=1)
        ks = args.kernel_sizes[i]
        q = F.conv2d(q, dw_weights[i].to(dtype), dw_biases[i].to(dtype), padding=ks // 2, groups=key_dim)
        logits = (q.flatten(2).transpose(1, 2) @ k.flatten(2)) * scale + bias_table[i][index].to(dtype)
        feat = (v.flatten(2) @ logits.softmax(dim=-1).transpose(1, 2)).view(-1, args.v_dim, wh, ww)
        outputs.append(feat)
    out = torch.cat(outputs, dim=1)
    out = out.reshape(args.batch, rows, cols, -1, wh, ww).permute(0, 3, 1, 4, 2, 5)
    out = out.reshape(args.batch, -1, rows * wh, cols * ww)[:, :, :height, :width]
    return torch.relu(out) if relu else out


def cascaded_group_attention(
    x: torch.Tensor,
    qkv_weights: Sequence[torch.Tensor],
    qkv_biases: Sequence[torch.Tensor],
    dw_weights: Sequence[torch.Tensor],
    dw_biases: Sequence[torch.Tensor],
    bias_table: torch.Tensor,
    key_dim: int,
    window: Window = None,
    scale: Optional[float] = None,
    relu: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """EfficientViT's cascaded group attention, every head, over non-overlapping windows.

    Args:
        x: (B, C, H, W), C = heads * d_v (channels_last memory is the fast case; any strides are read in place).
        qkv_weights, qkv_biases: per head, the 1x1 projection (2 * key_dim + d_v, C / heads[, 1, 1]) and its bias;
            output channels are q, k, v in that order.
        dw_weights, dw_biases: per head, q's depth-wise conv (key_dim, 1, k, k), k odd (heads may differ), 'same'
            zero padding inside each window, and its bias (key_dim,).
        bias_table: (heads, r * r) attention biases indexed ``|dy| * r + |dx|`` (timm's ``attention_biases``),
            r >= the window's sides.
        key_dim: q / k head dim. window: tile side(s); None attends over the whole map. A map that is not a multiple
            of the window is zero-padded at the bottom / right, and padded tokens are attended to (the reference
            model's semantics), but not returned.
        scale: logit scale, default ``key_dim ** -0.5``. relu: apply ReLU to the returned tensor (the cascade uses
            the values before it).
        backend: ``"auto" | "torch" | "triton"`` (:mod:`vitzoo.ops._backend`). The Triton kernel is inference-only:
            ``"auto"`` runs the reference wherever autograd records, ``"triton"`` raises there.

    Returns (B, heads * d_v, H, W): channels_last memory on the Triton path, in the autocast dtype under autocast.
    """
    args = CascadedArgs(x, qkv_weights, qkv_biases, dw_weights, dw_biases, bias_table, key_dim, window)
    scale = key_dim ** -0.5 if scale is None else float(scale)
    tensors = [x, bias_table, *qkv_weights, *qkv_biases, *dw_weights, *dw_biases]

    def unsupported() -> Optional[str]:
        from ._cascaded_triton import unsupported_reason

        if needs_grad(*tensors):
            return "the Triton kernel is inference-only and autograd records through an input"
        return unsupported_reason(x, args, tensors)

    if resolve_backend(backend, *tensors, op="cascaded_group_attention", unsupported_reason=unsupported) == "triton":
        from ._cascaded_triton import cascaded_group_attention_triton

        return cascaded_group_attention_triton(x, qkv_weights, qkv_biases, dw_weights, dw_biases, bias_table, args,
                                               scale, relu)
    return cascaded_group_attention_torch(x, qkv_weights, qkv_biases, dw_weights, dw_biases, bias_table, key_dim,
                                          args.window, scale, relu)
