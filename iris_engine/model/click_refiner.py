"""Click refiner: a small U-Net that corrects an IRIS prediction from positive and negative clicks.

It works on the model grid (S x S) of one query slice. Its inputs: the image, the prediction to correct,
for each click sign a near (Gaussian) and a far (exponential) distance map, the largest cosine similarity of
the IRIS pixel features (`MaskDecoder.pixel_features`) to the clicked pixels' features, and the intensity
closeness to the clicked pixels; plus (unless `pixel_features` is off) the pixel features themselves. A
`sequential` refiner corrects its own previous output click by click (as RITM) and also reads the one-shot start,
the prediction before any click, as two more channels. Its output is a correction added to the prediction's
logit, zero at initialisation, so an untrained refiner returns the prediction unchanged.
Trained with simulated clicks on a frozen IRIS model (`iris_engine.training.click_training`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from iris_engine.model.blocks import ResidualBlock
from iris_engine.model.decoder import UpBlock

POSITIVE, NEGATIVE = 1, 2
CLICK_MAPS = 11
MAX_SAMPLED_CLICK_PIXELS = 256


@dataclass(frozen=True)
class ClickRefinerConfig:
    """Architecture and input encoding; stored with the weights."""

    channels: tuple[int, ...] = (16, 32, 48, 64)
    feature_channels: int = 16  # ModelConfig.decoder_channels of the IRIS model it reads
    pixel_features: bool = True  # feed the raw pixel features too, not only their similarity to the clicks
    near_sigma: float = 2.0  # pixels of the model grid
    far_scale: float = 0.1  # fraction of the grid side
    intensity_scale: float = 0.5
    logit_clip: float = 8.0
    # trained to refine its own previous output, one click step at a time, reading the one-shot start beside it
    sequential: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClickRefinerConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


def _distance_maps(clicks: np.ndarray, config: ClickRefinerConfig) -> np.ndarray:
    """(N, S, S) click labels -> (N, 4, S, S): near positive, near negative, far positive, far negative."""
    n, size = clicks.shape[0], clicks.shape[-1]
    out = np.zeros((n, 4, *clicks.shape[1:]), dtype=np.float32)
    for i in range(n):
        for j, value in enumerate((POSITIVE, NEGATIVE)):
            marked = clicks[i] == value
            if not marked.any():
                continue
            distance = ndimage.distance_transform_edt(~marked).astype(np.float32)
            out[i, j] = np.exp(-(distance**2) / (2 * config.near_sigma**2))
            out[i, 2 + j] = np.exp(-distance / (config.far_scale * size))
    return out


def _similarity_maps(image: torch.Tensor, features: torch.Tensor, clicks: np.ndarray,
                     config: ClickRefinerConfig) -> torch.Tensor:
    """(N, 4, S, S): max feature cosine to positive / negative clicks, max intensity closeness to them."""
    n = image.shape[0]
    unit = torch.nn.functional.normalize(features.flatten(2), dim=1)  # (N, D, S*S)
    flat = image.flatten(2)[:, 0]  # (N, S*S)
    out = torch.zeros(n, 4, flat.shape[1], dtype=features.dtype, device=features.device)
    rng = np.random.default_rng(0)
    for i in range(n):
        for j, value in enumerate((POSITIVE, NEGATIVE)):
            index = np.flatnonzero(clicks[i].ravel() == value)
            if index.size == 0:
                continue
            if index.size > MAX_SAMPLED_CLICK_PIXELS:
                index = rng.choice(index, MAX_SAMPLED_CLICK_PIXELS, replace=False)
            at = torch.as_tensor(index, device=features.device)
            out[i, j] = (unit[i, :, at].T @ unit[i]).amax(dim=0)
            gap = (flat[i][None, :] - flat[i, at][:, None]).abs()
            out[i, 2 + j] = torch.exp(-gap / config.intensity_scale).amax(dim=0)
    return out.reshape(n, 4, *image.shape[2:])


def _scaled_logit(probability: torch.Tensor, config: ClickRefinerConfig) -> torch.Tensor:
    return torch.logit(probability.clamp(1e-4, 1 - 1e-4)) / config.logit_clip


def input_channels(config: ClickRefinerConfig) -> int:
    """Channels of `click_inputs` for a refiner of this config."""
    return CLICK_MAPS + (config.feature_channels if config.pixel_features else 0) + (2 if config.sequential else 0)


def click_inputs(image: torch.Tensor, probability: torch.Tensor, features: torch.Tensor, clicks: np.ndarray,
                 config: ClickRefinerConfig, start: torch.Tensor | None = None) -> torch.Tensor:
    """The refiner's input (N, `input_channels`, S, S) from image and probability (N, 1, S, S), IRIS pixel
    features (N, D, S, S) and click labels (N, S, S) (1 positive, 2 negative, 0 none) on the same grid; a
    sequential refiner also reads the one-shot `start` (N, 1, S, S) (`probability` is then its previous output)."""
    distances = torch.from_numpy(_distance_maps(clicks, config)).to(features)
    similarities = _similarity_maps(image, features, clicks, config)
    maps = [image, probability, _scaled_logit(probability, config), distances, similarities]
    if config.pixel_features:
        maps.append(features)
    if config.sequential:
        if start is None:
            raise ValueError("a sequential click refiner needs the one-shot start beside its previous output")
        maps += [start.to(features), _scaled_logit(start, config).to(features)]
    return torch.cat(maps, dim=1)


class ClickRefiner(nn.Module):
    """U-Net over `click_inputs`; returns refined logits (N, 1, S, S)."""

    def __init__(self, config: ClickRefinerConfig | None = None):
        super().__init__()
        self.config = config or ClickRefinerConfig()
        channels = list(self.config.channels)
        self.stem = ResidualBlock(2, input_channels(self.config), channels[0])
        pairs = list(zip(channels, channels[1:], strict=False))
        self.down = nn.ModuleList(ResidualBlock(2, a, b, stride=2) for a, b in pairs)
        self.up = nn.ModuleList(UpBlock(2, b, a, a) for a, b in reversed(pairs))
        self.head = nn.Conv2d(channels[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.stem(inputs)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        start = inputs[:, 2:3] * self.config.logit_clip
        return start + self.head(x)


def _copy_conv(old: nn.Conv2d, new: nn.Conv2d, inputs: torch.Tensor) -> None:
    """Old output channels keep their weights on the old inputs (at `inputs` in the new layer) and ignore new ones."""
    count = old.weight.shape[0]
    new.weight[:count] = 0.0
    new.weight[:count, inputs] = old.weight
    if old.bias is not None:
        new.bias[:count] = old.bias


def _copy_norm(old: nn.Module, new: nn.Module) -> None:
    count = old.weight.shape[0]
    new.weight[:count] = old.weight
    new.bias[:count] = old.bias


def _copy_block(old: ResidualBlock, new: ResidualBlock, inputs: torch.Tensor) -> None:
    kept = torch.arange(old.conv1.weight.shape[0])
    _copy_conv(old.conv1, new.conv1, inputs)
    _copy_norm(old.norm1, new.norm1)
    _copy_conv(old.conv2, new.conv2, kept)
    _copy_norm(old.norm2, new.norm2)
    if isinstance(old.shortcut, nn.Sequential) and isinstance(new.shortcut, nn.Sequential):
        _copy_conv(old.shortcut[0], new.shortcut[0], inputs)
        _copy_norm(old.shortcut[1], new.shortcut[1])
    elif isinstance(old.shortcut, nn.Sequential) or isinstance(new.shortcut, nn.Sequential):
        raise ValueError("widening changed which blocks project their shortcut")


def widen(refiner: ClickRefiner, channels: tuple[int, ...], seed: int = 0) -> ClickRefiner:
    """A refiner with more channels per level that computes exactly the same output (Net2Net-style: each new
    channel reads every input through fresh random weights and feeds nothing yet), to be fine-tuned further."""
    old_channels = refiner.config.channels
    if len(channels) != len(old_channels) or any(n < o for n, o in zip(channels, old_channels, strict=True)):
        raise ValueError(f"cannot widen channels {old_channels} to {channels}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wide = ClickRefiner(replace(refiner.config, channels=tuple(channels)))
    with torch.no_grad():
        _copy_block(refiner.stem, wide.stem, torch.arange(refiner.stem.conv1.weight.shape[1]))
        for old, new, width in zip(refiner.down, wide.down, old_channels[:-1], strict=True):
            _copy_block(old, new, torch.arange(width))
        pairs = list(zip(old_channels, old_channels[1:], strict=False))
        new_pairs = list(zip(channels, channels[1:], strict=False))
        for old, new, (a, b), (_, new_b) in zip(refiner.up, wide.up, reversed(pairs), reversed(new_pairs),
                                                strict=True):
            inputs = torch.cat([torch.arange(b), new_b + torch.arange(a)])  # upsampled channels, then the skip
            _copy_block(old.block, new.block, inputs)
        _copy_conv(refiner.head, wide.head, torch.arange(old_channels[0]))  # new inputs zeroed there
    return wide


def as_sequential(refiner: ClickRefiner) -> ClickRefiner:
    """A sequential refiner that computes exactly what `refiner` does (the start channels enter with zero weights),
    to be trained the sequential way; a sequential one is returned as it is."""
    if refiner.config.sequential:
        return refiner
    sequential = ClickRefiner(replace(refiner.config, sequential=True))
    sequential.load_state_dict({k: v for k, v in refiner.state_dict().items() if not k.startswith("stem.")},
                               strict=False)
    with torch.no_grad():
        _copy_block(refiner.stem, sequential.stem, torch.arange(input_channels(refiner.config)))
    return sequential
