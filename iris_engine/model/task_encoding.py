"""Task encoding: support image features + mask -> (m + 1) task tokens per class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iris_engine.config import ModelConfig
from iris_engine.model.blocks import AttentionBlock, FeedForward, conv_layer, interpolation_mode


def full_resolution_pooling_weights(masks: torch.Tensor, low_size: tuple[int, ...]) -> torch.Tensor:
    """Weights w such that sum(w * F) == sum(mask * upsample(F)) for any low-resolution feature map F.

    Pooling features upsampled to full resolution under the full-resolution mask (the paper's
    high-resolution path) is linear in F, so it equals pooling F under the adjoint of the
    upsampling applied to the mask. This gives the exact same token without ever materialising
    C x H x W (x D) upsampled features.
    """
    n, k = masks.shape[:2]
    full_size = masks.shape[2:]
    mode = interpolation_mode(len(full_size))
    with torch.inference_mode(False), torch.enable_grad():  # also inside a caller's torch.inference_mode()
        probe = torch.zeros(n * k, 1, *low_size, dtype=masks.dtype, device=masks.device, requires_grad=True)
        upsampled = F.interpolate(probe, size=full_size, mode=mode, align_corners=False)
        grad_outputs = masks.reshape(n * k, 1, *full_size).clone()
        (weights,) = torch.autograd.grad(upsampled, probe, grad_outputs=grad_outputs)
    return weights.reshape(n, k, *low_size)


class TaskEncoder(nn.Module):
    """Turns support features and masks into task embeddings of shape (N, K, m + 1, C)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.embed_dim
        conv = conv_layer(config.spatial_dims)
        self.query_tokens = nn.Parameter(torch.randn(config.num_query_tokens, dim) * 0.02)
        self.mask_fusion = conv(dim + 1, dim, 1)
        self.foreground_projection = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.cross_attention = nn.ModuleList(
            AttentionBlock(dim, config.num_heads, cross=True) for _ in range(config.task_encoder_layers)
        )
        self.self_attention = nn.ModuleList(
            AttentionBlock(dim, config.num_heads) for _ in range(config.task_encoder_layers)
        )
        self.feed_forward = nn.ModuleList(FeedForward(dim) for _ in range(config.task_encoder_layers))

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """features (N, C, *s) at the bottleneck, masks (N, K, *S) at full resolution in [0, 1]."""
        n, k = masks.shape[:2]
        low_size = tuple(features.shape[2:])
        flat_features = features.flatten(2)
        weights = full_resolution_pooling_weights(masks, low_size).flatten(2)
        area = masks.flatten(2).sum(-1, keepdim=True).clamp_min(1e-6)
        foreground = torch.einsum("ncx,nkx->nkc", flat_features, weights) / area
        foreground = self.foreground_projection(foreground)

        low_masks = F.adaptive_avg_pool2d(masks, low_size) if masks.ndim == 4 else F.adaptive_avg_pool3d(
            masks, low_size
        )
        per_class = torch.cat(
            [features.unsqueeze(1).expand(-1, k, *features.shape[1:]), low_masks.unsqueeze(2)], dim=2
        )
        fused = self.mask_fusion(per_class.flatten(0, 1)).flatten(2).transpose(1, 2)
        tokens = self.query_tokens.unsqueeze(0).expand(n * k, -1, -1)
        for cross, self_attn, ff in zip(self.cross_attention, self.self_attention, self.feed_forward, strict=True):
            tokens = ff(self_attn(cross(tokens, fused)))
        tokens = tokens.reshape(n, k, *tokens.shape[1:])
        return torch.cat([foreground.unsqueeze(2), tokens], dim=2)
