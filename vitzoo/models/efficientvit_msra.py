"""EfficientViT (MSRA) on vitzoo's attention ops.

Paper: `EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention` (Liu et al., CVPR 2023)
    - https://arxiv.org/abs/2305.07027

Weight-compatible with timm's ``efficientvit_m0`` ... ``efficientvit_m5`` (identical state_dict keys) and, through
:func:`checkpoint_filter_fn`, with the official microsoft/Cream ``EfficientViT/classification`` checkpoints.

What differs from timm is the token mixer, the cascaded group attention (head ``i + 1`` reads ``input_chunk[i + 1] +
output[i]``):

- Inference (eval, no autograd): every head of a layer in one :func:`vitzoo.ops.cascaded_group_attention` call. The
  cascade is sequential across heads but local to each window (the 1x1 projection, the query's depth-wise conv
  zero-padded at window borders, the window attention), so one Triton program carries a window through all heads;
  no partition copies, no padded copy, no per-head launches, and the ReLU before the output projection rides along.
- Training: every head's local-window attention is one :func:`vitzoo.ops.neighborhood_attention_2d` call on the
  whole (padded) feature map with ``stride == kernel == window`` and the LeViT ``|dy|, |dx|`` attention biases
  expanded to the op's dense ``(heads, k*k, k*k)`` bias, instead of window partition/reverse copies plus an explicit
  (N, N) softmax per head; the per-head projection and query conv stay sequential.

In eval, every ``ConvNorm`` (timm's conv + BatchNorm, also inside timm's blocks used here) runs as one convolution
with the BatchNorm folded in (``_conv_bn.py``); training runs the two modules as timm does.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SelectAdaptivePool2d, resize_rel_pos_bias_table_levit
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.efficientvit_msra import ConvMlp, ConvNorm, NormLinear, PatchEmbedding, PatchMerging, ResidualDrop

from vitzoo.ops import BACKENDS, cascaded_group_attention, neighborhood_attention_2d
from vitzoo.ops.cascaded import window_bias_index
from vitzoo.ops._weight_cache import cached_from_weights

from ._linear import convert_linears
from ._conv_bn import autocast_dtype, fold_conv_norms, folded_conv_bn

__all__ = ["EfficientVitMsraVz", "CascadedGroupAttentionVz", "LocalWindowAttentionVz", "checkpoint_filter_fn"]

IntPair = Union[int, Tuple[int, int]]


def _check_backend(attn_backend: str) -> str:
    if attn_backend not in BACKENDS:
        raise ValueError(f"attn_backend must be one of {BACKENDS}, got {attn_backend!r}")
    return attn_backend


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, 1, C) view: one head in the op's layout (contiguous under channels_last)."""
    return x.permute(0, 2, 3, 1).unsqueeze(3)


def _windowed_conv(conv: nn.Module, x: torch.Tensor, window: Optional[int]) -> torch.Tensor:
    """Apply ``conv`` (stride 1, 'same' padding) to every ``window x window`` tile independently, zero padded at
    tile borders, as the reference does after its window partition; ``window=None`` convolves the whole map."""
    if window is None:
        return conv(x)
    B, C, H, W = x.shape
    nh, nw = H // window, W // window
    tiles = x.reshape(B, C, nh, window, nw, window).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, window, window)
    tiles = conv(tiles)
    return tiles.reshape(B, nh, nw, C, window, window).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


class CascadedGroupAttentionVz(nn.Module):
    """Cascaded group attention over non-overlapping windows (or the whole map): one op call for every head in
    inference (:meth:`forward_one_op`), one per head in training (:meth:`forward`).

    Parameter names and shapes match timm's ``CascadedGroupAttention``: ``qkvs.i`` (1x1 ConvNorm on the i-th
    channel chunk), ``dws.i`` (depth-wise ConvNorm on the query), ``proj`` (ReLU + ConvNorm) and
    ``attention_biases`` (heads, r*r) indexed by ``|dy| * r + |dx|`` with ``r`` the table ``resolution``.
    """

    def __init__(
            self,
            dim: int,
            key_dim: int,
            num_heads: int = 8,
            attn_ratio: float = 4,
            resolution: int = 14,
            kernels: Sequence[int] = (5, 5, 5, 5),
            attn_backend: str = "auto",
    ):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.attn_ratio = attn_ratio
        self.resolution = resolution
        self.attn_backend = _check_backend(attn_backend)
        self.qkvs = nn.ModuleList([
            ConvNorm(dim // num_heads, self.key_dim * 2 + self.val_dim) for _ in range(num_heads)])
        self.dws = nn.ModuleList([
            ConvNorm(self.key_dim, self.key_dim, kernels[i], 1, kernels[i] // 2, groups=self.key_dim)
            for i in range(num_heads)])
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(self.val_dim * num_heads, dim, bn_weight_init=0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self._index_cache: Dict[tuple, torch.Tensor] = {}

    def _bias_index(self, kernel: Tuple[int, int], device: torch.device) -> torch.Tensor:
        """(kh*kw, kh*kw) table index ``|dy| * r + |dx|`` of every (query slot, key slot) pair: a constant, built once
        per window shape and device (in training too, where the gathered bias itself cannot be cached)."""
        key = (kernel, str(device))
        cache = None if _compiling() else self._index_cache  # compiled graphs fold the constant themselves
        if cache is not None and key in cache:
            return cache[key]
        with torch.inference_mode(False):  # a normal tensor: training saves it for the gather's backward
            idx = window_bias_index(kernel, self.resolution, device)
        if cache is not None:
            cache[key] = idx
        return idx

    def dense_bias(self, kernel: Tuple[int, int]) -> torch.Tensor:
        """The op's dense (heads, kh*kw, kh*kw) bias for windows of ``kernel`` (row-major slots) built from the
        |dy|, |dx| table. With a fixed table (inference) it is built once and cached until the parameter changes
        (``vitzoo.ops._weight_cache``)."""
        kh, kw = kernel
        if kh > self.resolution or kw > self.resolution:
            raise ValueError(
                f"attention window {kh}x{kw} exceeds the {self.resolution}x{self.resolution} attention-bias table; "
                f"build the model with a larger img_size")
        table = self.attention_biases
        index = self._bias_index(kernel, table.device)

        # Built as a normal tensor even under inference mode (the weight cache does that): the op layer caches its
        # window-logit tables keyed on this bias's version counter, which inference tensors lack.
        cached = cached_from_weights((table,), ("efficientvit_dense_bias", kh, kw), lambda: table[:, index])
        return cached if cached is not None else table[:, index]

    def runs_as_one_op(self, x: torch.Tensor) -> bool:
        """Whether this call runs every head as one :func:`vitzoo.ops.cascaded_group_attention` call: inference
        (BatchNorms on running statistics, folded) with no autograd recording."""
        if self.training or any(m.bn.training or m.bn.running_var is None for m in (*self.qkvs, *self.dws)):
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))

    def forward_one_op(self, x: torch.Tensor, window: Optional[int] = None) -> torch.Tensor:
        """Inference: every head in one op call on the unpadded map (the op pads to whole windows itself), the
        BatchNorms folded into the convolutions (cached), then the output projection."""
        dtype = autocast_dtype(x.device.type) or self.attention_biases.dtype
        qkv = [folded_conv_bn(m.conv, m.bn, dtype) for m in self.qkvs]
        dws = [folded_conv_bn(m.conv, m.bn, self.attention_biases.dtype) for m in self.dws]
        out = cascaded_group_attention(
            x, [w for w, _ in qkv], [b for _, b in qkv], [w for w, _ in dws], [b for _, b in dws],
            self.attention_biases, self.key_dim, window, self.scale, relu=True, backend=self.attn_backend)
        return self.proj[1](out)  # proj = ReLU (applied by the op) + ConvNorm

    def forward(self, x: torch.Tensor, window: Optional[int] = None) -> torch.Tensor:
        """x: (B, C, H, W); ``window``: attend within non-overlapping ``window x window`` tiles (H and W must be
        multiples of it), ``None``: every token attends to the whole map. One op call per head."""
        B, C, H, W = x.shape
        kernel = (window, window) if window is not None else (H, W)
        bias = self.dense_bias(kernel)
        feats_in = x.chunk(self.num_heads, dim=1)
        feats_out = []
        feat = feats_in[0]
        # Sequential by construction: head i's qkv input depends on head i-1's attention output.
        for head_idx, (qkv, dws) in enumerate(zip(self.qkvs, self.dws)):
            if head_idx > 0:
                feat = feat + feats_in[head_idx]
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q = _windowed_conv(dws, q, window)
            out = neighborhood_attention_2d(
                _to_tokens(q), _to_tokens(k), _to_tokens(v), kernel, stride=kernel,
                bias=bias[head_idx:head_idx + 1], scale=self.scale, backend=self.attn_backend)
            feat = out.squeeze(3).permute(0, 3, 1, 2)
            feats_out.append(feat)
        return self.proj(torch.cat(feats_out, 1))


class LocalWindowAttentionVz(nn.Module):
    """Local window attention: maps no larger than the window use global attention, larger ones are zero-padded at
    the bottom/right to window multiples (padded tokens are attended to, not masked, exactly as in the reference)
    and split into non-overlapping windows."""

    def __init__(
            self,
            dim: int,
            key_dim: int,
            num_heads: int = 8,
            attn_ratio: float = 4,
            resolution: int = 14,
            window_resolution: int = 7,
            kernels: Sequence[int] = (5, 5, 5, 5),
            attn_backend: str = "auto",
    ):
        super().__init__()
        if window_resolution <= 0:
            raise ValueError(f"window_size must be > 0, got {window_resolution}")
        self.dim = dim
        self.num_heads = num_heads
        self.resolution = resolution
        self.window_resolution = window_resolution
        self.attn = CascadedGroupAttentionVz(
            dim, key_dim, num_heads, attn_ratio=attn_ratio, resolution=min(window_resolution, resolution),
            kernels=kernels, attn_backend=attn_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        win = self.window_resolution
        table = self.attn.resolution
        if H <= win and W <= win:
            if H > table or W > table:
                raise ValueError(
                    f"feature map {H}x{W} needs a {max(H, W)}x{max(H, W)} attention-bias table but this block was "
                    f"built for a {self.resolution}x{self.resolution} map ({table}x{table} table); build the model "
                    f"with a larger img_size")
            return self.attn.forward_one_op(x) if self.attn.runs_as_one_op(x) else self.attn(x, None)
        if table != win:
            raise ValueError(
                f"feature map {H}x{W} needs {win}x{win} windows but this block was built for a "
                f"{self.resolution}x{self.resolution} map ({table}x{table} attention-bias table); build the model "
                f"with a larger img_size")
        if self.attn.runs_as_one_op(x):
            return self.attn.forward_one_op(x, win)
        pad_b, pad_r = (-H) % win, (-W) % win
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.attn(x, win)
        if pad_b or pad_r:
            x = x[:, :, :H, :W]
        return x


class EfficientVitBlockVz(nn.Module):
    """EfficientViT block: (dw conv, FFN) sandwich around the local-window cascaded group attention."""

    def __init__(
            self,
            dim: int,
            key_dim: int,
            num_heads: int = 8,
            attn_ratio: float = 4,
            resolution: int = 14,
            window_resolution: int = 7,
            kernels: Sequence[int] = (5, 5, 5, 5),
            attn_backend: str = "auto",
    ):
        super().__init__()
        self.dw0 = ResidualDrop(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.))
        self.ffn0 = ResidualDrop(ConvMlp(dim, int(dim * 2)))
        self.mixer = ResidualDrop(LocalWindowAttentionVz(
            dim, key_dim, num_heads, attn_ratio=attn_ratio, resolution=resolution,
            window_resolution=window_resolution, kernels=kernels, attn_backend=attn_backend))
        self.dw1 = ResidualDrop(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.))
        self.ffn1 = ResidualDrop(ConvMlp(dim, int(dim * 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


def _residual_pair(dim: int) -> nn.Sequential:
    return nn.Sequential(
        ResidualDrop(ConvNorm(dim, dim, 3, 1, 1, groups=dim)), ResidualDrop(ConvMlp(dim, int(dim * 2))))


class EfficientVitStageVz(nn.Module):
    """Optional subsample block (residual pair, patch merging, residual pair) followed by ``depth`` blocks."""

    def __init__(
            self,
            in_dim: int,
            out_dim: int,
            key_dim: int,
            downsample: Tuple[str, int] = ("", 1),
            num_heads: int = 8,
            attn_ratio: float = 4,
            resolution: int = 14,
            window_resolution: int = 7,
            kernels: Sequence[int] = (5, 5, 5, 5),
            depth: int = 1,
            attn_backend: str = "auto",
    ):
        super().__init__()
        if downsample[0] == "subsample":
            self.resolution = (resolution - 1) // downsample[1] + 1
            self.downsample = nn.Sequential(OrderedDict([
                ("res1", _residual_pair(in_dim)),
                ("patchmerge", PatchMerging(in_dim, out_dim)),
                ("res2", _residual_pair(out_dim)),
            ]))
        else:
            if in_dim != out_dim:
                raise ValueError(f"a stage without downsample needs in_dim == out_dim, got {in_dim} and {out_dim}")
            self.downsample = nn.Identity()
            self.resolution = resolution
        self.blocks = nn.Sequential(*[
            EfficientVitBlockVz(out_dim, key_dim, num_heads, attn_ratio, self.resolution, window_resolution,
                                kernels, attn_backend=attn_backend)
            for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def _conv_out(size: int, times: int) -> int:
    for _ in range(times):
        size = (size - 1) // 2 + 1  # 3x3, stride 2, padding 1
    return size


class EfficientVitMsraVz(nn.Module):
    """EfficientViT-M (MSRA), timm-compatible weights, attention through :func:`vitzoo.ops.neighborhood_attention_2d`.

    ``img_size`` sizes the attention-bias tables of stages whose map is smaller than the window; a built model runs
    any input whose per-stage maps fit those tables (every size up to ``img_size``; larger ones raise a ValueError
    that names ``img_size``).
    """

    def __init__(
            self,
            img_size: IntPair = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: Sequence[int] = (64, 128, 192),
            key_dim: Sequence[int] = (16, 16, 16),
            depth: Sequence[int] = (1, 2, 3),
            num_heads: Sequence[int] = (4, 4, 4),
            window_size: Sequence[int] = (7, 7, 7),
            kernels: Sequence[int] = (5, 5, 5, 5),
            down_ops: Sequence[Tuple[str, int]] = (("", 1), ("subsample", 2), ("subsample", 2)),
            global_pool: str = "avg",
            drop_rate: float = 0.,
            attn_backend: str = "auto",
    ):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if global_pool == "" and num_classes:
            raise ValueError("global_pool='' needs num_classes=0")
        self.grad_checkpointing = False
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.attn_backend = _check_backend(attn_backend)
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        self.patch_embed = PatchEmbedding(in_chans, embed_dim[0])
        stride = self.patch_embed.patch_size
        resolution = max(_conv_out(s, 4) for s in img_hw)
        attn_ratio = [embed_dim[i] / (key_dim[i] * num_heads[i]) for i in range(len(embed_dim))]

        self.feature_info = []
        stages = []
        pre_ed = embed_dim[0]
        for i, (ed, kd, dpth, nh, ar, wd, do) in enumerate(
                zip(embed_dim, key_dim, depth, num_heads, attn_ratio, window_size, down_ops)):
            stage = EfficientVitStageVz(
                in_dim=pre_ed, out_dim=ed, key_dim=kd, downsample=do, num_heads=nh, attn_ratio=ar,
                resolution=resolution, window_resolution=wd, kernels=kernels, depth=dpth, attn_backend=attn_backend)
            pre_ed = ed
            if do[0] == "subsample" and i != 0:
                stride *= do[1]
            resolution = stage.resolution
            stages.append(stage)
            self.feature_info += [dict(num_chs=ed, reduction=stride, module=f"stages.{i}")]
        self.stages = nn.Sequential(*stages)

        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True) if global_pool else nn.Identity()
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.head = NormLinear(self.num_features, num_classes, drop=drop_rate) if num_classes > 0 else nn.Identity()
        fold_conv_norms(self)  # timm's ConvNorm modules, also those inside timm's blocks: one conv each in eval

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {k for k in self.state_dict().keys() if "attention_biases" in k}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+).downsample", (0,)),
                (r"^stages\.(\d+)\.\w+\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.linear if isinstance(self.head, NormLinear) else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            if global_pool == "" and num_classes:
                raise ValueError("global_pool='' needs num_classes=0")
            self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True) if global_pool else nn.Identity()
        ref = next(self.stages.parameters())
        self.head = NormLinear(self.num_features, num_classes, drop=self.drop_rate) if num_classes else nn.Identity()
        self.head.to(device=ref.device, dtype=ref.dtype).train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (NCHW). ``indices``: last n stages if int, all if None, else the listed stage indices."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.patch_embed(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last one needed for ``indices`` (and the head if ``prune_head``)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


model_cfgs = {
    "efficientvit_m0": dict(embed_dim=(64, 128, 192), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(5, 5, 5, 5)),
    "efficientvit_m1": dict(embed_dim=(128, 144, 192), depth=(1, 2, 3), num_heads=(2, 3, 3), kernels=(7, 5, 3, 3)),
    "efficientvit_m2": dict(embed_dim=(128, 192, 224), depth=(1, 2, 3), num_heads=(4, 3, 2), kernels=(7, 5, 3, 3)),
    "efficientvit_m3": dict(embed_dim=(128, 240, 320), depth=(1, 2, 3), num_heads=(4, 3, 4), kernels=(5, 5, 5, 5)),
    "efficientvit_m4": dict(embed_dim=(128, 256, 384), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(7, 5, 3, 3)),
    "efficientvit_m5": dict(embed_dim=(192, 288, 384), depth=(1, 3, 4), num_heads=(3, 3, 4), kernels=(7, 5, 3, 3)),
}


def _official_stage_key(parts: List[str]) -> List[str]:
    """``blocks{n}.{j}.*`` of the official model -> ``stages.{n-1}.(downsample.res1|patchmerge|res2|blocks.m).*``.

    The official ``blocks{n}`` (n >= 2) starts with the subsample triple (residual pair, PatchMerging, residual
    pair) of stage n-1, then that stage's blocks; ``blocks1`` has no subsample.
    """
    stage = int(parts[0][len("blocks"):]) - 1
    j = int(parts[1])
    if stage > 0 and j < 3:
        return ["stages", str(stage), "downsample", ("res1", "patchmerge", "res2")[j]] + parts[2:]
    return ["stages", str(stage), "blocks", str(j - 3 if stage > 0 else j)] + parts[2:]


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Accept timm's layout unchanged or the official microsoft/Cream layout (``patch_embed.{0,2,4,6}.c``,
    ``blocks{1,2,3}``, ``.c``/``.l`` names, ``head.l``); drops ``attention_bias_idxs`` buffers and the distillation
    head, and resizes ``attention_biases`` tables when the model was built for another ``img_size``."""
    if "model" in state_dict:
        state_dict = state_dict["model"]
    target = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if "attention_bias_idxs" in key or key.startswith("head_dist."):
            continue
        parts = key.split(".")
        if parts[0].startswith("blocks") and parts[0][len("blocks"):].isdigit():
            parts = _official_stage_key(parts)
        elif parts[0] == "patch_embed" and parts[1].isdigit():
            parts[1] = f"conv{int(parts[1]) // 2 + 1}"
        if len(parts) >= 2 and parts[-2] == "c":
            parts[-2] = "conv"
        elif len(parts) >= 2 and parts[-2] == "l":
            parts[-2] = "linear"
        key = ".".join(parts)
        if key.endswith("attention_biases") and key in target and value.shape != target[key].shape:
            value = resize_rel_pos_bias_table_levit(value.T, tuple(target[key].T.shape)).T
        out[key] = value
    return out


def _create_efficientvit_msra(variant: str, pretrained: bool = False, **kwargs) -> EfficientVitMsraVz:
    out_indices = kwargs.pop("out_indices", (0, 1, 2))
    base = variant[len("vz_"):]
    model_args = dict(model_cfgs[base], **kwargs)
    return convert_linears(build_model_with_cfg(
        EfficientVitMsraVz, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **model_args,
    ))


def _cfg(base: str, **kwargs) -> dict:
    return {
        "url": "",
        "hf_hub_id": f"timm/{base}.r224_in1k",  # timm's weights load as-is (identical keys)
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (4, 4), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv1.conv", "classifier": "head.linear", "fixed_input_size": True,
        "license": "mit", "paper_ids": "arXiv:2305.07027", **kwargs,
    }


default_cfgs = generate_default_cfgs({f"vz_{name}.r224_in1k": _cfg(name) for name in model_cfgs})


@register_model
def vz_efficientvit_m0(pretrained: bool = False, **kwargs) -> EfficientVitMsraVz:
    """EfficientViT-M0 (timm ``efficientvit_m0``) on vitzoo attention."""
    return _create_efficientvit_msra("vz_efficientvit_m0", pretrained=pretrained, **kwargs)


@register_model
def vz_efficientvit_m1(pretrained: bool = False, **kwargs) -> EfficientVitMsraVz:
    """EfficientViT-M1 (timm ``efficientvit_m1``) on vitzoo attention."""
    return _create_efficientvit_msra("vz_efficientvit_m1", pretrained=pretrained, **kwargs)


@register_model
def vz_efficientvit_m2(pretrained: bool = False, **kwargs) -> EfficientVitMsraVz:
    """EfficientViT-M2 (timm ``efficientvit_m2``) on vitzoo attention."""
    return _create_efficientvit_msra("vz_efficientvit_m2", pretrained=pretrained, **kwargs)


@register_model
def vz_efficientvit_m3(pretrained: bool = False, **kwargs) -> EfficientVitMsraVz:
    """EfficientViT-M3 (timm ``efficientvit_m3``) on vitzoo attention."""
    return _create_efficientvit_msra("vz_efficientvit_m3", pretrained=pretrained, **kwargs)


@register_model
def vz_efficientvit_m4(pretrained: bool = False, **kwargs) -> EfficientVitMsraVz:
    """EfficientViT-M4 (timm ``efficientvit_m4``) on vitzoo attention."""
    return _create_efficientvit_msra("vz_efficientvit_m4", pretrained=pretrained, **kwargs)


@register_model
def vz_efficientvit_m5(pretrained: bool = False, **kwargs) -> EfficientVitMsraVz:
    """EfficientViT-M5 (timm ``efficientvit_m5``) on vitzoo attention."""
    return _create_efficientvit_msra("vz_efficientvit_m5", pretrained=pretrained, **kwargs)
