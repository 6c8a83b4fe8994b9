"""Mask decoder: task tokens and query features attend to each other, then a U-Net upsampling path.

The upsampling is split for speed: a class-agnostic U-Net path turns the query's encoder features
into full-resolution pixel features once per query, while the class-conditioned bottleneck
(after two-way attention) is refined per class at the coarse scales and then added to
those pixel features. With `fine_class_path` the class path goes on to full size through the finer encoder
skips (and the support-context maps there), entering as a zero-initialised residual, so a warm start begins
with its source's output. A hypernetwork maps each class's tokens to a pixel classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iris_engine.config import ContextLayout, ModelConfig
from iris_engine.model.blocks import (
    AttentionBlock,
    FeedForward,
    ResidualBlock,
    conv_layer,
    interpolation_mode,
)
from iris_engine.model.context import CONTEXT_MAPS, context_maps


class TwoWayBlock(nn.Module):
    """Tokens self-attend, tokens attend to the image, image attends back to the tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.token_self = AttentionBlock(dim, num_heads)
        self.token_to_image = AttentionBlock(dim, num_heads, cross=True)
        self.token_mlp = FeedForward(dim)
        self.image_to_token = AttentionBlock(dim, num_heads, cross=True)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.token_mlp(self.token_to_image(self.token_self(tokens), image))
        return tokens, self.image_to_token(image, tokens)


class UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, residual block."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.mode = interpolation_mode(spatial_dims)
        self.block = ResidualBlock(spatial_dims, in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class MaskDecoder(nn.Module):
    """Decodes one logit map per class from query features and (B, K, T, C) task tokens.

    With the support-context path (v2), dense maps of what the support says (similarity to its prototypes,
    intensity posterior, mask prior; `context.context_maps`) join the class path at the bottleneck, at the
    class-specific upsampling and in a full-resolution refinement block before the pixel classifier.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        dims = config.spatial_dims
        dim = config.embed_dim
        width = config.decoder_channels
        encoder_channels = list(config.encoder_channels)
        conv = conv_layer(dims)
        self.mode = interpolation_mode(dims)
        self.num_iris_tokens = config.num_iris_tokens
        self.fine_class_path = config.fine_class_path
        self.layout = ContextLayout.of(config) if config.similarity_path else None
        extra = CONTEXT_MAPS if config.similarity_path else 0
        self.blocks = nn.ModuleList(TwoWayBlock(dim, config.num_heads) for _ in range(config.decoder_layers))
        self.class_up = UpBlock(dims, dim, encoder_channels[-2] + extra, encoder_channels[-2])
        if config.similarity_path:
            self.context_in = conv(CONTEXT_MAPS, dim, 1)
            self.refine = ResidualBlock(dims, width + CONTEXT_MAPS, width)
        self.class_projection = conv(encoder_channels[-2], width, 1)
        if config.fine_class_path:
            self.fine_up = nn.ModuleList(
                UpBlock(dims, c_in, c_skip + extra, c_skip)
                for c_in, c_skip in zip(encoder_channels[-2:0:-1], encoder_channels[-3::-1], strict=True)
            )
            self.fine_projection = conv(encoder_channels[0], width, 1)
            nn.init.zeros_(self.fine_projection.weight)
            nn.init.zeros_(self.fine_projection.bias)
        self.shared_up = nn.ModuleList()
        in_channels = dim
        for skip in encoder_channels[-2::-1]:
            out_channels = max(skip, width)
            self.shared_up.append(UpBlock(dims, in_channels, skip, out_channels))
            in_channels = out_channels
        self.pixel_projection = conv(in_channels, width, 1)
        self.pixel_mixer = nn.Sequential(nn.LeakyReLU(0.01), conv(width, width, 1))
        self.token_to_weights = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, width + 1)
        )

    def pixel_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Class-agnostic full-resolution features of the query (B, D, *S)."""
        x = features[-1]
        for up, skip in zip(self.shared_up, features[-2::-1], strict=True):
            x = up(x, skip)
        return self.pixel_projection(x)

    def _fine_class_path(self, coarse: torch.Tensor, features: list[torch.Tensor], k: int,
                         maps: list[torch.Tensor] | None) -> torch.Tensor:
        """The class path from the second-finest scale on to full size, each step with its encoder skip."""
        x = coarse
        for up, index in zip(self.fine_up, range(len(features) - 3, -1, -1), strict=True):
            skip = features[index].repeat_interleave(k, dim=0)
            if maps is not None:
                skip = torch.cat([skip, maps[index]], dim=1)
            x = up(x, skip)
        return x

    def forward(self, image: torch.Tensor, features: list[torch.Tensor], task_tokens: torch.Tensor,
                pixels: torch.Tensor | None = None) -> torch.Tensor:
        """image (B, 1, *S), its encoder features (B, C_i, *s_i), task_tokens (B, K, T, C) -> logits (B, K, *S);
        `pixels`: the query's `pixel_features` when already computed (they do not depend on the task)."""
        b, k = task_tokens.shape[:2]
        bottleneck = features[-1].repeat_interleave(k, dim=0)
        skip = features[-2].repeat_interleave(k, dim=0)
        maps = None
        if self.layout is not None:
            maps = [m.flatten(0, 1) for m in context_maps(self.layout, task_tokens, image, features)]
            bottleneck = bottleneck + self.context_in(maps[-1])
            skip = torch.cat([skip, maps[-2]], dim=1)
        spatial = bottleneck.shape[2:]
        tokens = task_tokens[:, :, : self.num_iris_tokens].flatten(0, 1)
        image_tokens = bottleneck.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens, image_tokens = block(tokens, image_tokens)
        x = image_tokens.transpose(1, 2).reshape(b * k, -1, *spatial)
        coarse = self.class_up(x, skip)
        if pixels is None:
            pixels = self.pixel_features(features)
        full_size = pixels.shape[2:]
        x = F.interpolate(self.class_projection(coarse), size=full_size, mode=self.mode, align_corners=False)
        if self.fine_class_path:
            x = x + self.fine_projection(self._fine_class_path(coarse, features, k, maps))
        x = self.pixel_mixer(x + pixels.repeat_interleave(k, dim=0))
        if maps is not None:
            x = self.refine(torch.cat([x, maps[0]], dim=1))
        weights = self.token_to_weights(tokens.mean(dim=1))
        kernel, bias = weights[:, :-1], weights[:, -1]
        logits = torch.einsum("nc,nc...->n...", kernel, x) / kernel.shape[1] ** 0.5
        logits = logits + bias.view(-1, *([1] * (logits.ndim - 1)))
        return logits.reshape(b, k, *full_size)
