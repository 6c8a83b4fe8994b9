"""Residual U-Net-style encoder returning features at every scale."""

from __future__ import annotations

import torch
from torch import nn

from iris_engine.config import ModelConfig
from iris_engine.model.blocks import ResidualBlock


class Encoder(nn.Module):
    """Full-resolution stem followed by stride-2 residual stages (1, 1/2, 1/4, ...)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dims = config.spatial_dims
        channels = config.encoder_channels
        self.stem = ResidualBlock(dims, config.in_channels, channels[0])
        self.stages = nn.ModuleList(
            nn.Sequential(ResidualBlock(dims, c_in, c_out, stride=2), ResidualBlock(dims, c_out, c_out))
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.stages)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(image)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features
