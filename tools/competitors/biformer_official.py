"""The official BiFormer classification code, transcribed: the test reference and the benchmark competitor.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention" (CVPR 2023), official code
https://github.com/rayleizhu/BiFormer (MIT license, as its README states). This module is a literal transcription of
that repository's classification model (same computation, same module names; dropout, drop path, activation
checkpointing (fairscale), the unused ``pe`` hook, ``representation_size`` and the pretrained download left out;
``einops.rearrange`` spelled out as reshape / permute), not a vitzoo model: ``tests/test_models_biformer_official.py``
checks vitzoo's ``biformer_{t,s,b}`` against it (float64, shared weights) and ``tools/benchmark.py`` measures it side
by side with them as ``official:<name>`` (:func:`create_official_biformer_model`). Its ``state_dict()`` IS the
official checkpoint key layout (the ``'model'`` entry of the released ``.pth``):

* ``BiFormer`` and ``Block`` = ``models/biformer.py``; ``biformer_{tiny,small,base}`` its constructors. Keys::

      downsample_layers.0.{0,1,3,4}.*            stem: conv3x3/s2, BN, (GELU), conv3x3/s2, BN
      downsample_layers.{1,2,3}.{0,1}.*          conv3x3/s2, BN
      stages.{i}.{j}.pos_embed.*                 3x3 depthwise conv (before_attn_dwconv)
      stages.{i}.{j}.{norm1,norm2}.*             LayerNorm(eps=1e-6)
      stages.{0,1,2}.{j}.attn.qkv.qkv.*          BRA's QKVLinear (biased; q | k | v = qk_dim | qk_dim | dim)
      stages.{0,1,2}.{j}.attn.{lepe,wo}.*        5x5 depthwise conv of v (side_dwconv, LCE), output linear
      stages.3.{j}.attn.qkv.weight               AttentionLePE (topk=-2): bias-free qkv, 8 heads
      stages.3.{j}.attn.{lepe,proj}.*            5x5 depthwise conv of the attention INPUT, output linear
      stages.{i}.{j}.mlp.{0,3}.*                 Linear, (Identity: mlp_dwconv=False), (GELU), Linear
      norm.*  head.*                             BatchNorm2d, Linear

* ``TopkRouting``, ``KVGather``, ``QKVLinear``, ``BiLevelRoutingAttention`` = ``ops/bra_legacy.py`` (the
  ``torch.gather``-based BRA the released checkpoints use; no parameters in ``router`` / ``kv_gather`` unless
  ``param_routing``).
* ``DWConv``, ``Attention``, ``AttentionLePE`` = ``models/_common.py``.

The released classification models run with ``auto_pad=False``: every routed map (``H/4``, ``H/8``, ``H/16``) must
be divisible by ``n_win`` = 7 (224, 448, ... inputs); the model is otherwise size-agnostic and takes no ``img_size``.
Everything is dtype- and device-agnostic (tests run it in float64; the benchmark on CUDA under bf16 autocast with
channels_last inputs).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor


# ----------------------------------------------------------------------------------------------------------------
# literal transcription of models/_common.py (the parts models/biformer.py uses)
# ----------------------------------------------------------------------------------------------------------------
class DWConv(nn.Module):
    """Official ``DWConv``: 3x3 depthwise conv on an NHWC tensor (the MLP's ``mlp_dwconv``; off in every release)."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)  # NCHW
        x = self.dwconv(x)
        return x.permute(0, 2, 3, 1)  # NHWC


class Attention(nn.Module):
    """Official ``Attention``: vanilla global attention on NHWC (``topk=-1``); bias-free qkv, 8 heads."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        _, H, W, _ = x.size()
        x = x.reshape(x.shape[0], H * W, -1)  # 'n h w c -> n (h w) c'
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return x.reshape(B, H, W, C)  # 'n (h w) c -> n h w c'


class AttentionLePE(nn.Module):
    """Official ``AttentionLePE``: global attention + a depthwise conv of the INPUT x (``topk=-2``, stage 4)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 side_dwconv: int = 5) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, kernel_size=side_dwconv, stride=1, padding=side_dwconv // 2, groups=dim) \
            if side_dwconv > 0 else lambda x: torch.zeros_like(x)

    def forward(self, x: Tensor) -> Tensor:
        _, H, W, _ = x.size()
        x = x.reshape(x.shape[0], H * W, -1)  # 'n h w c -> n (h w) c'
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        lepe = self.lepe(x.transpose(1, 2).reshape(B, C, H, W))  # 'n (h w) c -> n c h w'
        lepe = lepe.reshape(B, C, N).transpose(1, 2)  # 'n c h w -> n (h w) c'
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = x + lepe
        x = self.proj(x)
        return x.reshape(B, H, W, C)  # 'n (h w) c -> n h w c'


# ----------------------------------------------------------------------------------------------------------------
# literal transcription of ops/bra_legacy.py
# ----------------------------------------------------------------------------------------------------------------
class TopkRouting(nn.Module):
    """Official ``TopkRouting``: region-level routing, top-k of the (scaled) region-mean q k^T logits."""

    def __init__(self, qk_dim: int, topk: int = 4, qk_scale: Optional[float] = None, param_routing: bool = False,
                 diff_routing: bool = False) -> None:
        super().__init__()
        self.topk = topk
        self.qk_dim = qk_dim
        self.scale = qk_scale or qk_dim ** -0.5
        self.diff_routing = diff_routing
        self.emb = nn.Linear(qk_dim, qk_dim) if param_routing else nn.Identity()
        self.routing_act = nn.Softmax(dim=-1)

    def forward(self, query: Tensor, key: Tensor) -> Tuple[Tensor, Tensor]:
        """query, key: (n, p^2, c) -> r_weight, topk_index: (n, p^2, topk)."""
        if not self.diff_routing:
            query, key = query.detach(), key.detach()
        query_hat, key_hat = self.emb(query), self.emb(key)
        attn_logit = (query_hat * self.scale) @ key_hat.transpose(-2, -1)  # (n, p^2, p^2)
        topk_attn_logit, topk_index = torch.topk(attn_logit, k=self.topk, dim=-1)  # (n, p^2, k), (n, p^2, k)
        r_weight = self.routing_act(topk_attn_logit)  # (n, p^2, k)
        return r_weight, topk_index


class KVGather(nn.Module):
    """Official ``KVGather``: the routed regions' k/v tokens, gathered (``topk`` times redundant)."""

    def __init__(self, mul_weight: str = "none") -> None:
        super().__init__()
        assert mul_weight in ["none", "soft", "hard"]
        self.mul_weight = mul_weight

    def forward(self, r_idx: Tensor, r_weight: Tensor, kv: Tensor) -> Tensor:
        """r_idx, r_weight: (n, p^2, topk); kv: (n, p^2, w^2, c_qk + c_v) -> (n, p^2, topk, w^2, c_qk + c_v)."""
        n, p2, w2, c_kv = kv.size()
        topk = r_idx.size(-1)
        topk_kv = torch.gather(kv.view(n, 1, p2, w2, c_kv).expand(-1, p2, -1, -1, -1),  # no memory copy
                               dim=2,
                               index=r_idx.view(n, p2, topk, 1, 1).expand(-1, -1, -1, w2, c_kv))
        if self.mul_weight == "soft":
            topk_kv = r_weight.view(n, p2, topk, 1, 1) * topk_kv
        elif self.mul_weight == "hard":
            raise NotImplementedError("differentiable hard routing TBA")
        return topk_kv


class QKVLinear(nn.Module):
    """Official ``QKVLinear``: one linear, split into q (qk_dim) and kv (qk_dim + dim)."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, qk_dim + qk_dim + dim, bias=bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        q, kv = self.qkv(x).split([self.qk_dim, self.qk_dim + self.dim], dim=-1)
        return q, kv


class BiLevelRoutingAttention(nn.Module):
    """Official legacy ``BiLevelRoutingAttention`` on an NHWC map: ``n_win x n_win`` regions, each query region
    attends token-wise to its ``topk`` routed regions (heads share the routing); scale ``qk_dim ** -0.5`` (the FULL
    qk width); LCE (``lepe``) = depthwise conv of v, added before ``wo``."""

    def __init__(self, dim: int, num_heads: int = 8, n_win: int = 7, qk_dim: Optional[int] = None,
                 qk_scale: Optional[float] = None, kv_per_win: int = 4, kv_downsample_ratio: int = 4,
                 kv_downsample_kernel: Optional[int] = None, kv_downsample_mode: str = "identity", topk: int = 4,
                 param_attention: str = "qkvo", param_routing: bool = False, diff_routing: bool = False,
                 soft_routing: bool = False, side_dwconv: int = 3, auto_pad: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.n_win = n_win
        self.num_heads = num_heads
        self.qk_dim = qk_dim or dim
        assert self.qk_dim % num_heads == 0 and self.dim % num_heads == 0, \
            "qk_dim and dim must be divisible by num_heads!"
        self.scale = qk_scale or self.qk_dim ** -0.5
        # side_dwconv (i.e. LCE in ShuntedTransformer)
        self.lepe = nn.Conv2d(dim, dim, kernel_size=side_dwconv, stride=1, padding=side_dwconv // 2, groups=dim) \
            if side_dwconv > 0 else lambda x: torch.zeros_like(x)
        # global routing setting
        self.topk = topk
        self.param_routing = param_routing
        self.diff_routing = diff_routing
        self.soft_routing = soft_routing
        assert not (self.param_routing and not self.diff_routing)
        self.router = TopkRouting(qk_dim=self.qk_dim, qk_scale=self.scale, topk=self.topk,
                                  diff_routing=self.diff_routing, param_routing=self.param_routing)
        if self.soft_routing:
            mul_weight = "soft"
        elif self.diff_routing:
            mul_weight = "hard"
        else:
            mul_weight = "none"
        self.kv_gather = KVGather(mul_weight=mul_weight)
        # qkv mapping (shared by both global routing and local attention)
        self.param_attention = param_attention
        if self.param_attention == "qkvo":
            self.qkv = QKVLinear(self.dim, self.qk_dim)
            self.wo = nn.Linear(dim, dim)
        elif self.param_attention == "qkv":
            self.qkv = QKVLinear(self.dim, self.qk_dim)
            self.wo = nn.Identity()
        else:
            raise ValueError(f"param_attention mode {self.param_attention} is not surpported!")
        self.kv_downsample_mode = kv_downsample_mode
        self.kv_per_win = kv_per_win
        self.kv_downsample_ratio = kv_downsample_ratio
        self.kv_downsample_kenel = kv_downsample_kernel
        if self.kv_downsample_mode == "ada_avgpool":
            assert self.kv_per_win is not None
            self.kv_down: nn.Module = nn.AdaptiveAvgPool2d(self.kv_per_win)
        elif self.kv_downsample_mode == "ada_maxpool":
            assert self.kv_per_win is not None
            self.kv_down = nn.AdaptiveMaxPool2d(self.kv_per_win)
        elif self.kv_downsample_mode == "maxpool":
            assert self.kv_downsample_ratio is not None
            self.kv_down = nn.MaxPool2d(self.kv_downsample_ratio) if self.kv_downsample_ratio > 1 else nn.Identity()
        elif self.kv_downsample_mode == "avgpool":
            assert self.kv_downsample_ratio is not None
            self.kv_down = nn.AvgPool2d(self.kv_downsample_ratio) if self.kv_downsample_ratio > 1 else nn.Identity()
        elif self.kv_downsample_mode == "identity":  # no kv downsampling (every release)
            self.kv_down = nn.Identity()
        elif self.kv_downsample_mode in ("fracpool", "conv"):
            raise NotImplementedError(f"{self.kv_downsample_mode} policy is not implemented yet!")
        else:
            raise ValueError(f"kv_down_sample_mode {self.kv_downsample_mode} is not surpported!")
        # softmax for local attention
        self.attn_act = nn.Softmax(dim=-1)
        self.auto_pad = auto_pad

    def forward(self, x: Tensor, ret_attn_mask: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """x: NHWC tensor -> NHWC tensor."""
        if self.auto_pad:  # the release uses it for semantic segmentation only
            N, H_in, W_in, C = x.size()
            pad_l = pad_t = 0
            pad_r = (self.n_win - W_in % self.n_win) % self.n_win
            pad_b = (self.n_win - H_in % self.n_win) % self.n_win
            x = F.pad(x, (0, 0, pad_l, pad_r, pad_t, pad_b))
            _, H, W, _ = x.size()  # padded size
        else:
            N, H, W, C = x.size()
            assert H % self.n_win == 0 and W % self.n_win == 0
        j = i = self.n_win
        h, w = H // j, W // i

        # patchify: "n (j h) (i w) c -> n (j i) h w c"
        x = x.reshape(N, j, h, i, w, C).permute(0, 1, 3, 2, 4, 5).reshape(N, j * i, h, w, C)
        # q: (n, p^2, w, w, c_qk); kv: (n, p^2, w, w, c_qk + c_v)
        q, kv = self.qkv(x)
        # pixel-wise qkv: q_pix (n, p^2, w^2, c_qk), kv_pix (n, p^2, h_kv * w_kv, c_qk + c_v)
        q_pix = q.reshape(N, j * i, h * w, q.shape[-1])  # 'n p2 h w c -> n p2 (h w) c'
        c_kv = kv.shape[-1]
        kv_pix = self.kv_down(kv.reshape(N * j * i, h, w, c_kv).permute(0, 3, 1, 2))  # '-> (n p2) c h w'
        h_kv, w_kv = kv_pix.shape[-2:]
        # '(n j i) c h w -> n (j i) (h w) c'
        kv_pix = kv_pix.reshape(N, j * i, c_kv, h_kv * w_kv).permute(0, 1, 3, 2)
        q_win, k_win = q.mean([2, 3]), kv[..., 0:self.qk_dim].mean([2, 3])  # window-wise qk, (n, p^2, c_qk)

        # side_dwconv (lepe): 'n (j i) h w c -> n c (j h) (i w)', then back to 'n (j h) (i w) c'
        v_sp = kv[..., self.qk_dim:]
        v_sp = v_sp.reshape(N, j, i, h, w, v_sp.shape[-1]).permute(0, 5, 1, 3, 2, 4).reshape(N, -1, j * h, i * w)
        lepe = self.lepe(v_sp.contiguous())
        lepe = lepe.permute(0, 2, 3, 1)

        # gather q-dependent k/v
        r_weight, r_idx = self.router(q_win, k_win)  # both (n, p^2, topk)
        kv_pix_sel = self.kv_gather(r_idx=r_idx, r_weight=r_weight, kv=kv_pix)  # (n, p^2, topk, h_kv*w_kv, c_kv)
        k_pix_sel, v_pix_sel = kv_pix_sel.split([self.qk_dim, self.dim], dim=-1)

        # attention as normal
        n, p2, k, w2, _ = k_pix_sel.shape
        m = self.num_heads
        # 'n p2 k w2 (m c) -> (n p2) m c (k w2)'
        k_pix_sel = k_pix_sel.reshape(n, p2, k, w2, m, -1).permute(0, 1, 4, 5, 2, 3).reshape(n * p2, m, -1, k * w2)
        # 'n p2 k w2 (m c) -> (n p2) m (k w2) c'
        v_pix_sel = v_pix_sel.reshape(n, p2, k, w2, m, -1).permute(0, 1, 4, 2, 3, 5).reshape(n * p2, m, k * w2, -1)
        # 'n p2 w2 (m c) -> (n p2) m w2 c'
        q_pix = q_pix.reshape(n, p2, q_pix.shape[2], m, -1).permute(0, 1, 3, 2, 4).reshape(n * p2, m,
                                                                                            q_pix.shape[2], -1)
        # param-free multihead attention
        attn_weight = (q_pix * self.scale) @ k_pix_sel  # (n p^2, m, w^2, topk * h_kv * w_kv)
        attn_weight = self.attn_act(attn_weight)
        out = attn_weight @ v_pix_sel  # (n p^2, m, w^2, c)
        # '(n j i) m (h w) c -> n (j h) (i w) (m c)'
        out = out.reshape(N, j, i, m, h, w, -1).permute(0, 1, 4, 2, 5, 3, 6).reshape(N, j * h, i * w, -1)

        out = out + lepe
        out = self.wo(out)  # output linear

        if self.auto_pad and (pad_r > 0 or pad_b > 0):  # crop padded region
            out = out[:, :H_in, :W_in, :].contiguous()
        if ret_attn_mask:
            return out, r_weight, r_idx, attn_weight
        return out


# ----------------------------------------------------------------------------------------------------------------
# literal transcription of models/biformer.py
# ----------------------------------------------------------------------------------------------------------------
class _Rearrange(nn.Module):
    """``einops.layers.torch.Rearrange`` for the two patterns of the ``topk=0`` ablation block (NHWC <-> NCHW)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


class Block(nn.Module):
    """Official ``Block`` (NCHW in / out): ``x + pos_embed(x)``, then NHWC pre-norm attention and MLP."""

    def __init__(self, dim: int, layer_scale_init_value: float = -1, num_heads: int = 8, n_win: int = 7,
                 qk_dim: Optional[int] = None, qk_scale: Optional[float] = None, kv_per_win: int = 4,
                 kv_downsample_ratio: int = 4, kv_downsample_kernel: Optional[int] = None,
                 kv_downsample_mode: str = "ada_avgpool", topk: int = 4, param_attention: str = "qkvo",
                 param_routing: bool = False, diff_routing: bool = False, soft_routing: bool = False,
                 mlp_ratio: float = 4, mlp_dwconv: bool = False, side_dwconv: int = 5, before_attn_dwconv: int = 3,
                 pre_norm: bool = True, auto_pad: bool = False) -> None:
        super().__init__()
        qk_dim = qk_dim or dim
        # modules
        if before_attn_dwconv > 0:
            self.pos_embed: Callable[[Tensor], Any] = nn.Conv2d(dim, dim, kernel_size=before_attn_dwconv, padding=1,
                                                                groups=dim)
        else:
            self.pos_embed = lambda x: 0
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # important to avoid attention collapsing
        if topk > 0:
            self.attn: nn.Module = BiLevelRoutingAttention(
                dim=dim, num_heads=num_heads, n_win=n_win, qk_dim=qk_dim, qk_scale=qk_scale, kv_per_win=kv_per_win,
                kv_downsample_ratio=kv_downsample_ratio, kv_downsample_kernel=kv_downsample_kernel,
                kv_downsample_mode=kv_downsample_mode, topk=topk, param_attention=param_attention,
                param_routing=param_routing, diff_routing=diff_routing, soft_routing=soft_routing,
                side_dwconv=side_dwconv, auto_pad=auto_pad)
        elif topk == -1:
            self.attn = Attention(dim=dim)
        elif topk == -2:
            self.attn = AttentionLePE(dim=dim, side_dwconv=side_dwconv)
        elif topk == 0:
            self.attn = nn.Sequential(_Rearrange((0, 3, 1, 2)),  # compatiability
                                      nn.Conv2d(dim, dim, 1),  # pseudo qkv linear
                                      nn.Conv2d(dim, dim, 5, padding=2, groups=dim),  # pseudo attention
                                      nn.Conv2d(dim, dim, 1),  # pseudo out linear
                                      _Rearrange((0, 2, 3, 1)))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(mlp_ratio * dim)),
                                 DWConv(int(mlp_ratio * dim)) if mlp_dwconv else nn.Identity(),
                                 nn.GELU(),
                                 nn.Linear(int(mlp_ratio * dim), dim))
        # tricks: layer scale & pre_norm/post_norm
        if layer_scale_init_value > 0:
            self.use_layer_scale = True
            self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones((dim)), requires_grad=True)
            self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones((dim)), requires_grad=True)
        else:
            self.use_layer_scale = False
        self.pre_norm = pre_norm

    def forward(self, x: Tensor) -> Tensor:
        """x: NCHW tensor."""
        x = x + self.pos_embed(x)  # conv pos embedding
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        if self.pre_norm:
            if self.use_layer_scale:
                x = x + self.gamma1 * self.attn(self.norm1(x))
                x = x + self.gamma2 * self.mlp(self.norm2(x))
            else:
                x = x + self.attn(self.norm1(x))
                x = x + self.mlp(self.norm2(x))
        else:
            if self.use_layer_scale:
                x = self.norm1(x + self.gamma1 * self.attn(x))
                x = self.norm2(x + self.gamma2 * self.mlp(x))
            else:
                x = self.norm1(x + self.attn(x))
                x = self.norm2(x + self.mlp(x))
        return x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


class BiFormer(nn.Module):
    """Official ``BiFormer``: conv stem + 3 conv downsamplers, 4 stages of :class:`Block`, BatchNorm, mean, head.

    The official defaults are kept (they are NOT the released models': see :data:`CONFIGS`).
    """

    def __init__(self, depth: Sequence[int] = (3, 4, 8, 3), in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: Sequence[int] = (64, 128, 320, 512), head_dim: int = 64, qk_scale: Optional[float] = None,
                 n_win: int = 7, kv_downsample_mode: str = "ada_avgpool", kv_per_wins: Sequence[int] = (2, 2, -1, -1),
                 topks: Sequence[int] = (8, 8, -1, -1), side_dwconv: int = 5, layer_scale_init_value: float = -1,
                 qk_dims: Sequence[Optional[int]] = (None, None, None, None), param_routing: bool = False,
                 diff_routing: bool = False, soft_routing: bool = False, pre_norm: bool = True,
                 before_attn_dwconv: int = 3, auto_pad: bool = False,
                 kv_downsample_kernels: Sequence[int] = (4, 2, 1, 1),
                 kv_downsample_ratios: Sequence[int] = (4, 2, 1, 1),
                 mlp_ratios: Sequence[float] = (4, 4, 4, 4), param_attention: str = "qkvo",
                 mlp_dwconv: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim  # num_features for consistency with other models

        # downsample layers (patch embeddings)
        self.downsample_layers = nn.ModuleList()
        stem = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim[0] // 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            nn.BatchNorm2d(embed_dim[0] // 2),
            nn.GELU(),
            nn.Conv2d(embed_dim[0] // 2, embed_dim[0], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            nn.BatchNorm2d(embed_dim[0]),
        )
        self.downsample_layers.append(stem)
        for i in range(3):
            downsample_layer = nn.Sequential(
                nn.Conv2d(embed_dim[i], embed_dim[i + 1], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
                nn.BatchNorm2d(embed_dim[i + 1]))
            self.downsample_layers.append(downsample_layer)

        # 4 feature resolution stages, each consisting of multiple residual blocks
        self.stages = nn.ModuleList()
        nheads = [dim // head_dim for dim in qk_dims]
        for i in range(4):
            stage = nn.Sequential(
                *[Block(dim=embed_dim[i],
                        layer_scale_init_value=layer_scale_init_value,
                        topk=topks[i],
                        num_heads=nheads[i],
                        n_win=n_win,
                        qk_dim=qk_dims[i],
                        qk_scale=qk_scale,
                        kv_per_win=kv_per_wins[i],
                        kv_downsample_ratio=kv_downsample_ratios[i],
                        kv_downsample_kernel=kv_downsample_kernels[i],
                        kv_downsample_mode=kv_downsample_mode,
                        param_attention=param_attention,
                        param_routing=param_routing,
                        diff_routing=diff_routing,
                        soft_routing=soft_routing,
                        mlp_ratio=mlp_ratios[i],
                        mlp_dwconv=mlp_dwconv,
                        side_dwconv=side_dwconv,
                        before_attn_dwconv=before_attn_dwconv,
                        pre_norm=pre_norm,
                        auto_pad=auto_pad) for _ in range(depth[i])])
            self.stages.append(stage)

        self.norm = nn.BatchNorm2d(embed_dim[-1])
        self.pre_logits = nn.Identity()  # representation_size=None in every release
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward_features(self, x: Tensor) -> Tensor:
        for i in range(4):
            x = self.downsample_layers[i](x)  # res = (56, 28, 14, 7), wins = (64, 16, 4, 1)
            x = self.stages[i](x)
        x = self.norm(x)
        return self.pre_logits(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = x.flatten(2).mean(-1)
        return self.head(x)


# ----------------------------------------------------------------------------------------------------------------
# the released variants (models/biformer.py biformer_tiny / biformer_small / biformer_base)
# ----------------------------------------------------------------------------------------------------------------
_RELEASE: Dict[str, Any] = dict(
    mlp_ratios=[3, 3, 3, 3], n_win=7, kv_downsample_mode="identity", kv_per_wins=[-1, -1, -1, -1],
    topks=[1, 4, 16, -2], side_dwconv=5, before_attn_dwconv=3, layer_scale_init_value=-1, head_dim=32,
    param_routing=False, diff_routing=False, soft_routing=False, pre_norm=True)
# vitzoo name -> official constructor arguments (release name in the comment)
CONFIGS: Dict[str, Dict[str, Any]] = {
    "biformer_t": dict(_RELEASE, depth=[2, 2, 8, 2], embed_dim=[64, 128, 256, 512],  # biformer_tiny
                       qk_dims=[64, 128, 256, 512]),
    "biformer_s": dict(_RELEASE, depth=[4, 4, 18, 4], embed_dim=[64, 128, 256, 512],  # biformer_small
                       qk_dims=[64, 128, 256, 512]),
    "biformer_b": dict(_RELEASE, depth=[4, 4, 18, 4], embed_dim=[96, 192, 384, 768],  # biformer_base
                       qk_dims=[96, 192, 384, 768]),
}
RELEASE_NAMES: Dict[str, str] = {"biformer_t": "biformer_tiny", "biformer_s": "biformer_small",
                                 "biformer_b": "biformer_base"}


def _routed_maps(img_size: Union[int, Sequence[int]]) -> List[Tuple[int, int]]:
    """The (H, W) maps of stages 1-3 for an input size (each conv3x3/s2/p1 maps n to ceil(n / 2))."""
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"img_size must be a positive int or (H, W), got {img_size!r}")
    return [(-(-hw[0] // 2 ** s), -(-hw[1] // 2 ** s)) for s in (2, 3, 4)]


def create_official_biformer_model(name: str, img_size: Optional[Union[int, Sequence[int]]] = None,
                                   **kwargs: Any) -> BiFormer:
    """The official structure of vitzoo's ``name`` (``biformer_{t,s,b}``), on the CPU, randomly initialized (no
    weights); ``kwargs`` override the constructor arguments (``num_classes``, ``depth``, ...).

    The official model takes no ``img_size`` (it is size-agnostic); ``img_size`` is only checked: as released
    (``auto_pad=False``) every routed map must be divisible by ``n_win``, else ``ValueError`` (``auto_pad=True``, the
    release's segmentation setting, takes any size)."""
    if name not in CONFIGS:
        raise ValueError(f"no official BiFormer model {name!r}; known: {', '.join(CONFIGS)}")
    args = dict(CONFIGS[name], **kwargs)
    if img_size is not None and not args.get("auto_pad", False):
        n_win = args["n_win"]
        bad = [hw for hw, topk in zip(_routed_maps(img_size), args["topks"]) if topk > 0
               and (hw[0] % n_win or hw[1] % n_win)]
        if bad:
            raise ValueError(f"official {RELEASE_NAMES[name]} (auto_pad=False, as released) needs the routed maps "
                             f"(input / 4, / 8, / 16) divisible by n_win={n_win}; img_size={img_size!r} gives "
                             f"{', '.join(f'{h}x{w}' for h, w in bad)} (use a multiple of {16 * n_win})")
    return BiFormer(**args)
