"""Building blocks shared by the encoder, task encoder and decoder (2D or 3D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def norm_layer(spatial_dims: int, channels: int) -> nn.Module:
    norm = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
    return norm(channels, affine=True)


def interpolation_mode(spatial_dims: int) -> str:
    return "bilinear" if spatial_dims == 2 else "trilinear"


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and a (projected) identity shortcut."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        conv = conv_layer(spatial_dims)
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(spatial_dims, out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = norm_layer(spatial_dims, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(spatial_dims, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + self.shortcut(x), 0.01)


class AttentionBlock(nn.Module):
    """Pre-norm multi-head attention with a residual connection."""

    def __init__(self, dim: int, num_heads: int, cross: bool = False):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if cross else None
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, queries: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention when the block was built without `cross`, else attention to `context`."""
        q = self.norm_q(queries)
        kv = q if self.norm_kv is None else self.norm_kv(context)
        out, _ = self.attention(q, kv, kv, need_weights=False)
        return queries + out


class FeedForward(nn.Module):
    """Pre-norm two-layer MLP with a residual connection."""

    def __init__(self, dim: int, expansion: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim * expansion), nn.GELU(), nn.Linear(dim * expansion, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)
