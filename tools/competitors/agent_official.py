"""The official Agent-Swin and Agent-PVT code, transcribed: the test reference and the benchmark competitor.

Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention" (ECCV 2024), official code
https://github.com/LeapLabTHU/Agent-Attention. This module is a literal transcription of that repository's
classification models (same computation, same module names, dropout / drop path / init left out), not a vitzoo
model: ``tests/test_models_agent.py`` checks vitzoo's ``agent_swin_*`` / ``agent_pvt_*`` against it (float64, shared
weights) and ``tools/benchmark.py`` measures it side by side with them as ``official:<name>``
(:func:`create_official_agent_model`). Its ``state_dict()`` IS the official checkpoint key layout:

* ``AgentSwinTransformer`` and its parts = ``agent_transformer/models/agent_swin.py``. Keys::

      patch_embed.{proj,norm}.*                      conv 4x4/s4, LayerNorm
      layers.{i}.blocks.{j}.{norm1,norm2}.*           LayerNorm
      layers.{i}.blocks.{j}.attn.{qkv,proj,dwc}.*     agent blocks, + an_bias na_bias ah_bias aw_bias ha_bias wa_bias
      layers.{i}.blocks.{j}.attn.{qkv,proj}.*         window blocks, + relative_position_bias_table ((2w-1)^2, heads)
      layers.{i}.blocks.{j}.attn.relative_position_index, layers.{i}.blocks.{j}.attn_mask   (persistent buffers)
      layers.{i}.blocks.{j}.mlp.{fc1,fc2}.*
      layers.{0,1,2}.downsample.{norm,reduction}.*    PatchMerging closing stages 1-3
      norm.*  head.*

* ``AgentPvt`` and the ``Pvt*`` parts = ``agent_transformer/models/agent_pvt.py``. Keys::

      patch_embed{1..4}.{proj,norm}.*   pos_embed{1..4} (1, N_i, C_i)
      block{i}.{j}.{norm1,norm2,mlp.fc1,mlp.fc2}.*
      block{i}.{j}.attn.{q,kv,proj,dwc}.* + the six agent biases (+ attn.{sr,norm} when sr_ratio > 1)
      head.*                            (no final norm, no cls token)

* ``DownstreamAgentAttention`` = ``downstream/detection/mmdet/models/backbones/agent_swin.py`` AgentAttention
  (biases bilinearly resized to the runtime map and the agent grid resized to ``downstream_agent_shape``);
  ``downstream_window_flow`` = that backbone's padded / rolled window path; ``load_pretrained_resize`` = the
  resizes of ``agent_transformer/utils.py`` ``load_pretrained``.

Everything is dtype- and device-agnostic (tests run it in float64; the benchmark on CUDA under bf16 autocast with
channels_last inputs): every constant tensor is a registered buffer or created on the input's device.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# literal transcription of the official Agent-Swin classification code (agent_transformer/models/agent_swin.py)
# ----------------------------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    """Official ``Mlp`` (dropout 0: omitted)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x, window_size):
    """Official ``window_partition``."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows, window_size, H, W):
    """Official ``window_reverse``."""
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


class WindowAttention(nn.Module):
    """Official ``WindowAttention``: W-MSA with a relative-position bias table."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        coords = torch.stack(torch.meshgrid([torch.arange(window_size[0]), torch.arange(window_size[1])],
                                            indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += window_size[0] - 1
        relative_coords[:, :, 1] += window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * window_size[1] - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        n = self.window_size[0] * self.window_size[1]
        rpb = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + rpb.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B_, N, C))


class AgentAttention(nn.Module):
    """Official ``AgentAttention``: agent tokens pooled from the queries, over the whole window."""

    def __init__(self, dim, window_size, num_heads, agent_num):
        super().__init__()
        self.window_size, self.num_heads, self.agent_num = window_size, num_heads, agent_num
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim, dim, kernel_size=(3, 3), padding=1, groups=dim)
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, window_size[0], 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, window_size[1]))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, window_size[0], 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, window_size[1], agent_num))
        self.pool = nn.AdaptiveAvgPool2d(output_size=(int(agent_num ** 0.5),) * 2)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        h = w = int(n ** 0.5)
        num_heads, head_dim = self.num_heads, c // self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        agent_tokens = self.pool(q.reshape(b, h, w, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        q = q.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        k = k.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        v = v.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        agent_tokens = agent_tokens.reshape(b, self.agent_num, num_heads, head_dim).permute(0, 2, 1, 3)
        position_bias1 = F.interpolate(self.an_bias, size=self.window_size, mode="bilinear")
        position_bias1 = position_bias1.reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        position_bias2 = (self.ah_bias + self.aw_bias).reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        agent_attn = ((agent_tokens * self.scale) @ k.transpose(-2, -1) + position_bias1 + position_bias2).softmax(-1)
        agent_v = agent_attn @ v
        agent_bias1 = F.interpolate(self.na_bias, size=self.window_size, mode="bilinear")
        agent_bias1 = agent_bias1.reshape(1, num_heads, self.agent_num, -1).permute(0, 1, 3, 2).repeat(b, 1, 1, 1)
        agent_bias2 = (self.ha_bias + self.wa_bias).reshape(1, num_heads, -1, self.agent_num).repeat(b, 1, 1, 1)
        q_attn = ((q * self.scale) @ agent_tokens.transpose(-2, -1) + agent_bias1 + agent_bias2).softmax(-1)
        x = (q_attn @ agent_v).transpose(1, 2).reshape(b, n, c)
        v = v.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        x = x + self.dwc(v).permute(0, 2, 3, 1).reshape(b, n, c)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    """Official ``SwinTransformerBlock``: agent (A) or window (B) attention + MLP."""

    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, agent_num, attn_type):
        super().__init__()
        self.input_resolution, self.window_size, self.shift_size = input_resolution, window_size, shift_size
        if min(self.input_resolution) <= self.window_size:
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        self.norm1 = nn.LayerNorm(dim)
        ws = (self.window_size, self.window_size)
        self.attn = (AgentAttention(dim, ws, num_heads, agent_num) if attn_type == "A"
                     else WindowAttention(dim, ws, num_heads))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        attn_mask = None
        if self.shift_size > 0:
            H, W = self.input_resolution
            img_mask = torch.zeros((1, H, W, 1))
            slices = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size),
                      slice(-self.shift_size, None))
            cnt = 0
            for h in slices:
                for w in slices:
                    img_mask[:, h, w, :] = cnt
                    cnt += 1
            mask_windows = window_partition(img_mask, self.window_size).view(-1, self.window_size ** 2)
            attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        self.register_buffer("attn_mask", attn_mask)

    def forward(self, x):
        H, W = self.input_resolution
        B, L, C = x.shape
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        shifted_x = torch.roll(x, (-self.shift_size,) * 2, (1, 2)) if self.shift_size > 0 else x
        x_windows = window_partition(shifted_x, self.window_size).view(-1, self.window_size ** 2, C)
        attn_windows = self.attn(x_windows, mask=self.attn_mask).view(-1, self.window_size, self.window_size, C)
        shifted_x = window_reverse(attn_windows, self.window_size, H, W)
        x = torch.roll(shifted_x, (self.shift_size,) * 2, (1, 2)) if self.shift_size > 0 else shifted_x
        x = shortcut + x.view(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Official ``PatchMerging``: 2x2 neighbours concatenated, LayerNorm, linear 4C -> 2C."""

    def __init__(self, input_resolution, dim):
        super().__init__()
        self.input_resolution = input_resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        H, W = self.input_resolution
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """Official ``BasicLayer``: one stage (``M<k>``: k agent blocks, then window blocks)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, downsample, agent_num, attn_type):
        super().__init__()
        attn_types = [(attn_type if attn_type[0] != "M" else ("A" if i < int(attn_type[1:]) else "B"))
                      for i in range(depth)]
        window_sizes = [(window_size if attn_types[i] == "A" else max(7, (window_size // 8))) for i in range(depth)]
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_sizes[i],
                          0 if (i % 2 == 0) else window_sizes[i] // 2, agent_num, attn_types[i])
            for i in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """Official ``PatchEmbed`` (4x4 conv + LayerNorm; applied inline by the model)."""

    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)


class AgentSwinTransformer(nn.Module):
    """Official ``AgentSwinTransformer`` (no ape, patch norm, drop path 0)."""

    def __init__(self, img_size=224, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56,
                 agent_num=(9, 16, 49, 49), attn_type="AAAB", num_classes=1000):
        super().__init__()
        self.num_classes = num_classes
        num_layers = len(depths)
        self.patch_embed = PatchEmbed(4, 3, embed_dim)
        res = img_size // 4
        self.layers = nn.ModuleList([
            BasicLayer(int(embed_dim * 2 ** i), (res // 2 ** i, res // 2 ** i), depths[i], num_heads[i],
                       window_size, i < num_layers - 1, int(agent_num[i]),
                       attn_type[i] + (attn_type[num_layers:] if attn_type[i] == "M" else ""))
            for i in range(num_layers)])
        self.num_features = int(embed_dim * 2 ** (num_layers - 1))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x):
        x = self.patch_embed.norm(self.patch_embed.proj(x).flatten(2).transpose(1, 2))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


# ----------------------------------------------------------------------------------------------------------------
# literal transcription of the official Agent-PVT classification code (agent_transformer/models/agent_pvt.py)
# ----------------------------------------------------------------------------------------------------------------
class PvtAttention(nn.Module):
    """Official agent_pvt.py ``Attention``: PVT spatial-reduction attention (``B`` blocks)."""

    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.scale = (dim // num_heads) ** -0.5
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim * 2), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = self.norm(self.sr(x.permute(0, 2, 1).reshape(B, C, H, W)).reshape(B, C, -1).permute(0, 2, 1))
            kv = self.kv(x_).reshape(B, -1, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        else:
            kv = self.kv(x).reshape(B, -1, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ kv[0].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(B, N, C))


class PvtAgentAttention(nn.Module):
    """Official agent_pvt.py ``AgentAttention`` (optional spatial reduction of K/V)."""

    def __init__(self, dim, num_patches, num_heads, sr_ratio, agent_num):
        super().__init__()
        self.window_size = (int(num_patches ** 0.5), int(num_patches ** 0.5))
        self.num_heads, self.sr_ratio, self.agent_num = num_heads, sr_ratio, agent_num
        self.scale = (dim // num_heads) ** -0.5
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim * 2), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.dwc = nn.Conv2d(dim, dim, kernel_size=(3, 3), padding=1, groups=dim)
        ws = self.window_size
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, ws[0] // sr_ratio, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, ws[1] // sr_ratio))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, ws[0], 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, ws[1], agent_num))
        self.pool = nn.AdaptiveAvgPool2d(output_size=(int(agent_num ** 0.5),) * 2)

    def forward(self, x, H, W):
        b, n, c = x.shape
        num_heads, head_dim, sr = self.num_heads, c // self.num_heads, self.sr_ratio
        q = self.q(x)
        if sr > 1:
            x_ = self.norm(self.sr(x.permute(0, 2, 1).reshape(b, c, H, W)).reshape(b, c, -1).permute(0, 2, 1))
            kv = self.kv(x_).reshape(b, -1, 2, c).permute(2, 0, 1, 3)
        else:
            kv = self.kv(x).reshape(b, -1, 2, c).permute(2, 0, 1, 3)
        k, v = kv[0], kv[1]
        agent_tokens = self.pool(q.reshape(b, H, W, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        q = q.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        k = k.reshape(b, n // sr ** 2, num_heads, head_dim).permute(0, 2, 1, 3)
        v = v.reshape(b, n // sr ** 2, num_heads, head_dim).permute(0, 2, 1, 3)
        agent_tokens = agent_tokens.reshape(b, self.agent_num, num_heads, head_dim).permute(0, 2, 1, 3)
        kv_size = (self.window_size[0] // sr, self.window_size[1] // sr)
        position_bias1 = F.interpolate(self.an_bias, size=kv_size, mode="bilinear")
        position_bias1 = position_bias1.reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        position_bias2 = (self.ah_bias + self.aw_bias).reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        agent_attn = ((agent_tokens * self.scale) @ k.transpose(-2, -1) + position_bias1 + position_bias2).softmax(-1)
        agent_v = agent_attn @ v
        agent_bias1 = F.interpolate(self.na_bias, size=self.window_size, mode="bilinear")
        agent_bias1 = agent_bias1.reshape(1, num_heads, self.agent_num, -1).permute(0, 1, 3, 2).repeat(b, 1, 1, 1)
        agent_bias2 = (self.ha_bias + self.wa_bias).reshape(1, num_heads, -1, self.agent_num).repeat(b, 1, 1, 1)
        q_attn = ((q * self.scale) @ agent_tokens.transpose(-2, -1) + agent_bias1 + agent_bias2).softmax(-1)
        x = (q_attn @ agent_v).transpose(1, 2).reshape(b, n, c)
        v = v.transpose(1, 2).reshape(b, H // sr, W // sr, c).permute(0, 3, 1, 2)
        if sr > 1:
            v = F.interpolate(v, size=(H, W), mode="bilinear")
        x = x + self.dwc(v).permute(0, 2, 3, 1).reshape(b, n, c)
        return self.proj(x)


class PvtBlock(nn.Module):
    """Official agent_pvt.py ``Block`` (LayerNorm eps 1e-6)."""

    def __init__(self, dim, num_patches, num_heads, mlp_ratio, sr_ratio, agent_num, attn_type):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = (PvtAgentAttention(dim, num_patches, num_heads, sr_ratio, agent_num) if attn_type == "A"
                     else PvtAttention(dim, num_heads, sr_ratio))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, H, W):
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x))


class PvtPatchEmbed(nn.Module):
    """Official agent_pvt.py ``PatchEmbed``."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.H = self.W = img_size // patch_size
        self.num_patches = self.H * self.W
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        B, C, H, W = x.shape
        return self.norm(self.proj(x).flatten(2).transpose(1, 2)), (H // self.patch_size, W // self.patch_size)


class AgentPvt(nn.Module):
    """Official agent_pvt.py ``PyramidVisionTransformer`` (no final norm, no cls token)."""

    def __init__(self, img_size=224, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                 depths=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), agent_sr_ratios="1111", agent_num=(9, 16, 49, 49),
                 attn_type="AAAA", num_classes=1000, patch_size=4):
        super().__init__()
        self.num_classes = num_classes
        for i in range(4):
            patch_embed = PvtPatchEmbed(img_size if i == 0 else img_size // (2 ** (i - 1) * patch_size),
                                        patch_size if i == 0 else 2, 3 if i == 0 else embed_dims[i - 1],
                                        embed_dims[i])
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, patch_embed.num_patches, embed_dims[i])))
            setattr(self, f"block{i + 1}", nn.ModuleList([PvtBlock(
                embed_dims[i], patch_embed.num_patches, num_heads[i], mlp_ratios[i],
                sr_ratios[i] if attn_type[i] == "B" else int(agent_sr_ratios[i]), int(agent_num[i]), attn_type[i])
                for _ in range(depths[i])]))
        self.head = nn.Linear(embed_dims[3], num_classes)

    def _get_pos_embed(self, pos_embed, patch_embed, H, W):
        if H * W == self.patch_embed1.num_patches:
            return pos_embed
        return F.interpolate(pos_embed.reshape(1, patch_embed.H, patch_embed.W, -1).permute(0, 3, 1, 2),
                             size=(H, W), mode="bilinear").reshape(1, -1, H * W).permute(0, 2, 1)

    def forward(self, x):
        B = x.shape[0]
        for i in range(4):
            patch_embed = getattr(self, f"patch_embed{i + 1}")
            x, (H, W) = patch_embed(x)
            x = x + self._get_pos_embed(getattr(self, f"pos_embed{i + 1}"), patch_embed, H, W)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, H, W)
            if i != 3:
                x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
        return self.head(x.mean(dim=1))


# ----------------------------------------------------------------------------------------------------------------
# the mmdet Agent-Swin backbone's AgentAttention (other sizes, downstream agent grids) and window path
# ----------------------------------------------------------------------------------------------------------------
class DownstreamAgentAttention(AgentAttention):
    """``downstream/detection/mmdet/models/backbones/agent_swin.py`` AgentAttention (biases sized for
    ``input_resolution``, resized to the runtime ``hw_shape`` and to ``downstream_agent_shape``)."""

    def __init__(self, dim, input_resolution, num_heads, agent_num, downstream_agent_shape):
        super().__init__(dim, input_resolution, num_heads, agent_num)
        self.pool_size = int(agent_num ** 0.5)
        self.downstream_agent_shape = downstream_agent_shape
        self.pool = nn.AdaptiveAvgPool2d(output_size=downstream_agent_shape)

    def forward(self, x, mask=None, hw_shape=None):
        b, n, c = x.shape
        h, w = hw_shape
        num_heads, head_dim, p = self.num_heads, c // self.num_heads, self.pool_size
        qkv = self.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        dan = self.downstream_agent_shape[0] * self.downstream_agent_shape[1]
        agent_tokens = self.pool(q.reshape(b, h, w, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        q = q.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        k = k.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        v = v.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        agent_tokens = agent_tokens.reshape(b, dan, num_heads, head_dim).permute(0, 2, 1, 3)

        def agent_side(t):  # (heads, p*p, h, w) -> (1, heads, dan, h*w)
            t = t.reshape(num_heads, p, p, h * w).permute(0, 3, 1, 2)
            t = F.interpolate(t, size=self.downstream_agent_shape, mode="bilinear")
            return t.reshape(num_heads, h * w, dan).permute(0, 2, 1).reshape(1, num_heads, dan, h * w)

        def query_side(t):  # (heads, p*p, h, w) -> (1, heads, h*w, dan)
            t = t.reshape(num_heads, p, p, h * w).permute(0, 3, 1, 2)
            t = F.interpolate(t, size=self.downstream_agent_shape, mode="bilinear")
            return t.reshape(1, num_heads, h * w, dan)

        position_bias = (agent_side(F.interpolate(self.an_bias, size=hw_shape, mode="bilinear"))
                         + agent_side(F.interpolate((self.ah_bias + self.aw_bias).squeeze(0), size=hw_shape,
                                                    mode="bilinear"))).repeat(b, 1, 1, 1)
        agent_v = ((agent_tokens * self.scale) @ k.transpose(-2, -1) + position_bias).softmax(-1) @ v
        agent_bias2 = F.interpolate((self.ha_bias + self.wa_bias).squeeze(0).permute(0, 3, 1, 2), size=hw_shape,
                                    mode="bilinear")
        agent_bias = (query_side(F.interpolate(self.na_bias, size=hw_shape, mode="bilinear"))
                      + query_side(agent_bias2)).repeat(b, 1, 1, 1)
        x = (((q * self.scale) @ agent_tokens.transpose(-2, -1) + agent_bias).softmax(-1) @ agent_v)
        x = x.transpose(1, 2).reshape(b, n, c)
        v = v.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return self.proj(x + self.dwc(v).permute(0, 2, 3, 1).reshape(b, n, c))


def downstream_window_flow(attn: WindowAttention, x, window_size, shift_size):
    """The mmdet Agent-Swin block's window path on a normalized (B, H, W, C) map (pad, roll, SW-MSA mask, windows,
    reverse, crop), plus what vitzoo adds: padded keys masked (-1e9: exp underflows to exactly 0 in float64, and a
    padded query whose window region is all padding gets no NaN)."""
    B, H, W, C = x.shape
    pad_r = (window_size - W % window_size) % window_size
    pad_b = (window_size - H % window_size) % window_size
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    H_pad, W_pad = x.shape[1], x.shape[2]
    valid = torch.zeros((1, H_pad, W_pad, 1), dtype=x.dtype, device=x.device)
    valid[:, :H, :W] = 1
    mask = torch.zeros(1, dtype=x.dtype, device=x.device)
    if shift_size > 0:
        x = torch.roll(x, (-shift_size, -shift_size), (1, 2))
        valid = torch.roll(valid, (-shift_size, -shift_size), (1, 2))
        img_mask = torch.zeros((1, H_pad, W_pad, 1), dtype=x.dtype, device=x.device)
        slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
        cnt = 0
        for h in slices:
            for w in slices:
                img_mask[:, h, w, :] = cnt
                cnt += 1
        mask_windows = window_partition(img_mask, window_size).view(-1, window_size * window_size)
        mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, float(-100.0)).masked_fill(mask == 0, float(0.0))
    valid_windows = window_partition(valid, window_size).view(-1, 1, window_size * window_size)
    mask = mask + torch.zeros_like(valid_windows).masked_fill(valid_windows == 0, -1e9)
    x_windows = window_partition(x, window_size).view(-1, window_size * window_size, C)
    out = attn(x_windows, mask.expand(-1, window_size ** 2, -1)).view(-1, window_size, window_size, C)
    out = window_reverse(out, window_size, H_pad, W_pad)
    if shift_size > 0:
        out = torch.roll(out, (shift_size, shift_size), (1, 2))
    return out[:, :H, :W]


def load_pretrained_resize(state_dict, model_sd):
    """The official ``utils.load_pretrained`` resizes (agent biases linear, rel tables and pos_embed bicubic) applied
    key by key in the OFFICIAL layout, ``model_sd`` being the official-layout state dict of the target model."""
    out = dict(state_dict)
    for k in [k for k in out if any(n in k for n in ("ah_bias", "aw_bias", "ha_bias", "wa_bias"))]:
        squeeze_dim, permute = {"ah_bias": (-1, False), "aw_bias": (-2, False), "ha_bias": (-2, True),
                                "wa_bias": (-3, True)}[k.rsplit(".", 1)[-1]]
        pre = out[k].squeeze(dim=0).squeeze(dim=squeeze_dim)
        cur = model_sd[k].squeeze(dim=0).squeeze(dim=squeeze_dim)
        if permute:
            pre, cur = pre.permute(0, 2, 1), cur.permute(0, 2, 1)
        if pre.shape[-1] != cur.shape[-1]:
            new = F.interpolate(pre, size=cur.shape[-1], mode="linear")
            if permute:
                new = new.permute(0, 2, 1)
            out[k] = new.unsqueeze(dim=0).unsqueeze(dim=squeeze_dim)
    for k in [k for k in out if "relative_position_bias_table" in k]:
        (l1, nh), (l2, _) = out[k].shape, model_sd[k].shape
        if l1 != l2:
            s1, s2 = int(l1 ** 0.5), int(l2 ** 0.5)
            out[k] = F.interpolate(out[k].permute(1, 0).reshape(1, nh, s1, s1), size=(s2, s2),
                                   mode="bicubic").view(nh, l2).permute(1, 0)
    for k in [k for k in out if "pos_embed" in k]:
        (_, l1, c), (_, l2, _) = out[k].shape, model_sd[k].shape
        if l1 != l2:
            s1, s2 = int(l1 ** 0.5), int(l2 ** 0.5)
            pos = F.interpolate(out[k].reshape(-1, s1, s1, c).permute(0, 3, 1, 2), size=(s2, s2), mode="bicubic")
            out[k] = pos.permute(0, 2, 3, 1).flatten(1, 2)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the released variants
# ----------------------------------------------------------------------------------------------------------------
_SWIN = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), agent_num=(9, 16, 49, 49))
_PVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
            agent_sr_ratios="1111", agent_num=(9, 16, 49, 49), attn_type="AAAA")
# vitzoo name -> (class, constructor arguments): cfgs/agent_swin_{t,s,b}.yaml (WINDOW_SIZE: see
# create_official_agent_model) and agent_pvt.py's agent_pvt_{tiny,small,medium,large} with cfgs/agent_pvt_*.yaml
CONFIGS: Dict[str, Tuple[Type[nn.Module], Dict[str, Any]]] = {
    "agent_swin_t": (AgentSwinTransformer, dict(_SWIN, attn_type="AAAB")),
    "agent_swin_s": (AgentSwinTransformer, dict(_SWIN, depths=(2, 2, 18, 2), attn_type="AABB")),
    "agent_swin_b": (AgentSwinTransformer, dict(_SWIN, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                                attn_type="AAMB2")),
    "agent_pvt_t": (AgentPvt, dict(_PVT, depths=(2, 2, 2, 2))),
    "agent_pvt_s": (AgentPvt, dict(_PVT, depths=(3, 4, 6, 3))),
    "agent_pvt_m": (AgentPvt, dict(_PVT, depths=(3, 4, 18, 3))),
    "agent_pvt_l": (AgentPvt, dict(_PVT, depths=(3, 8, 27, 3))),
}


def create_official_agent_model(name: str, **kwargs: Any) -> nn.Module:
    """The official structure of vitzoo's ``name`` (``agent_swin_{t,s,b}``, ``agent_pvt_{t,s,m,l}``); ``kwargs``
    override the constructor arguments (``img_size``, ``num_classes``, ...). Agent-Swin's ``window_size`` defaults to
    ``img_size // 4``, the official ``WINDOW_SIZE`` of every release (56 at 224, 72 at 288, 96 at 384)."""
    if name not in CONFIGS:
        raise ValueError(f"no official Agent-Attention model {name!r}; known: {', '.join(CONFIGS)}")
    cls, args = CONFIGS[name]
    args = dict(args, **kwargs)
    if cls is AgentSwinTransformer:
        args.setdefault("window_size", args.get("img_size", 224) // 4)
    return cls(**args)
