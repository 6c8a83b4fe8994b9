"""IrisModel: encoder + task encoder + mask decoder, one code path for 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn

from iris_engine.config import ContextLayout, ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.model.context import encode_context, flatten_prior
from iris_engine.model.decoder import MaskDecoder
from iris_engine.model.encoder import Encoder
from iris_engine.model.task_encoding import TaskEncoder


class IrisModel(nn.Module):
    """In-context segmentation model (Gao et al., CVPR 2025).

    `encode_task` turns support pairs into task tokens once; `segment` reuses them for any
    number of queries. `forward` runs a whole training episode. With `config.similarity_path` (v2) each
    class embedding also carries the support context (`model/context.py`) after its IRIS tokens.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides: object):
        super().__init__()
        if config is None:
            config = ModelConfig(**overrides)  # type: ignore[arg-type]
        if config.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {config.spatial_dims}")
        self.config = config
        self.version = ""
        self.encoder = Encoder(config)
        self.task_encoder = TaskEncoder(config)
        self.decoder = MaskDecoder(config)

    def _check_images(self, images: torch.Tensor, name: str) -> None:
        expected = self.config.spatial_dims + 2
        if images.ndim != expected or images.shape[1] != self.config.in_channels:
            raise IrisInputError(
                f"{name} must have shape (N, {self.config.in_channels}, {'H, W' if expected == 4 else 'X, Y, Z'})"
                f", got {tuple(images.shape)}"
            )
        factor = self.encoder.downsampling
        if any(s % factor for s in images.shape[2:]):
            raise IrisInputError(f"{name} spatial size {tuple(images.shape[2:])} must be divisible by {factor}")
        if not torch.isfinite(images).all():
            raise IrisInputError(f"{name} contains NaN or Inf values")

    def encode_task(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """support_images (N, 1, *S), support_masks (N, K, *S) -> task tokens (N, K, m + 1, C)."""
        self._check_images(support_images, "support_images")
        if support_masks.ndim != support_images.ndim or support_masks.shape[0] != support_images.shape[0]:
            raise IrisInputError(
                f"support_masks must have shape (N, K, *S) matching support_images {tuple(support_images.shape)}"
                f", got {tuple(support_masks.shape)}"
            )
        if support_masks.shape[2:] != support_images.shape[2:]:
            raise IrisInputError(
                f"support mask size {tuple(support_masks.shape[2:])} differs from image size "
                f"{tuple(support_images.shape[2:])}"
            )
        features = self.encoder(support_images)
        masks = support_masks.to(features[-1].dtype)
        tokens = self.task_encoder(features[-1], masks)
        if not self.config.similarity_path:
            return tokens
        context = encode_context(ContextLayout.of(self.config), support_images, features, masks)
        return torch.cat([tokens, context], dim=2)

    def encode_query(self, query_images: torch.Tensor) -> list[torch.Tensor]:
        """The query image followed by its multi-scale features, reusable across tasks."""
        self._check_images(query_images, "query_images")
        return [query_images, *self.encoder(query_images)]

    def decode(self, query_features: list[torch.Tensor], task_tokens: torch.Tensor,
               pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K, *S) from `encode_query` output and tokens (K, T, C) or (B, K, T, C); `pixels`: the
        decoder's `pixel_features` of the query, when kept from an earlier call."""
        batch = query_features[0].shape[0]
        if task_tokens.ndim == 3:
            task_tokens = task_tokens.unsqueeze(0).expand(batch, -1, -1, -1)
        if task_tokens.ndim != 4 or task_tokens.shape[0] != batch:
            raise IrisInputError(f"task tokens must be (K, T, C) or ({batch}, K, T, C), got {tuple(task_tokens.shape)}")
        if task_tokens.shape[2] != self.config.num_task_tokens:
            raise IrisInputError(
                f"task tokens have {task_tokens.shape[2]} tokens per class, this model uses "
                f"{self.config.num_task_tokens} (an embedding from another model version?)"
            )
        return self.decoder(query_features[0], query_features[1:], task_tokens, pixels)

    def segment(self, query_images: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """query_images (B, 1, *S) and tokens (K, T, C) or (B, K, T, C) -> logits (B, K, *S)."""
        return self.decode(self.encode_query(query_images), task_tokens)

    def episode_tokens(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """Supports (B, N, 1, *S) with masks (B, N, K, *S) -> each episode's task tokens, the mean over its N
        supports (context ensemble), (B, K, T, C)."""
        b, n = support_images.shape[:2]
        tokens = self.encode_task(support_images.flatten(0, 1), support_masks.flatten(0, 1))
        return tokens.reshape(b, n, *tokens.shape[1:]).mean(dim=1)

    def forward(
        self, support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor,
        flat_prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Episode: supports (B, N, 1, *S) with masks (B, N, K, *S), queries (B, Q, 1, *S) -> (B, Q, K, *S).

        `flat_prior` (B,) bool: episodes whose support-mask prior is flattened (`context.flatten_prior`).
        """
        tokens = self.episode_tokens(support_images, support_masks)
        return self.segment_episodes(query_images, tokens, flat_prior)

    def segment_episodes(self, query_images: torch.Tensor, tokens: torch.Tensor,
                         flat_prior: torch.Tensor | None = None) -> torch.Tensor:
        """Queries (B, Q, 1, *S) segmented with their episode's tokens (B, K, T, C) -> logits (B, Q, K, *S)."""
        if flat_prior is not None:
            tokens = flatten_prior(ContextLayout.of(self.config), tokens, flat_prior)
        q = query_images.shape[1]
        logits = self.segment(query_images.flatten(0, 1), tokens.repeat_interleave(q, dim=0))
        return logits.reshape(query_images.shape[0], q, *logits.shape[1:])
