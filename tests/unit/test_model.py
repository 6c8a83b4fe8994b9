"""IrisModel: shapes in 2D/3D, per-class independence, token reuse, exact full-resolution pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iris_engine.config import ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.model.iris import IrisModel
from iris_engine.model.task_encoding import full_resolution_pooling_weights

TINY = dict(
    encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
    task_encoder_layers=1, decoder_layers=1, num_query_tokens=4,
)


def tiny_model(spatial_dims: int = 2, seed: int = 0) -> IrisModel:
    torch.manual_seed(seed)
    return IrisModel(ModelConfig(spatial_dims=spatial_dims, **TINY)).eval()


def blob_masks(n: int, k: int, size: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, k, *size)
    for i in range(n):
        for j in range(k):
            lo = [int(torch.randint(0, s // 2, (1,), generator=g)) for s in size]
            index = (i, j, *[slice(a, a + s // 3) for a, s in zip(lo, size, strict=True)])
            masks[index] = 1.0
    return masks


def test_forward_shapes_2d():
    model = tiny_model(2)
    supports, queries = torch.randn(2, 3, 1, 32, 32), torch.randn(2, 4, 1, 32, 32)
    masks = blob_masks(6, 2, (32, 32)).reshape(2, 3, 2, 32, 32)
    logits = model(supports, masks, queries)
    assert logits.shape == (2, 4, 2, 32, 32)
    assert torch.isfinite(logits).all()
    tokens = model.encode_task(supports[0], masks[0])
    assert tokens.shape == (3, 2, model.config.num_task_tokens, model.config.embed_dim)


def test_forward_shapes_3d():
    model = tiny_model(3)
    supports, queries = torch.randn(1, 1, 1, 16, 16, 8), torch.randn(1, 2, 1, 16, 16, 8)
    masks = blob_masks(1, 3, (16, 16, 8)).reshape(1, 1, 3, 16, 16, 8)
    logits = model(supports, masks, queries)
    assert logits.shape == (1, 2, 3, 16, 16, 8)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_k_classes_in_one_call_equal_separate_calls(spatial_dims: int):
    model = tiny_model(spatial_dims)
    size = (32, 32) if spatial_dims == 2 else (16, 16, 8)
    image = torch.randn(1, 1, *size)
    masks = blob_masks(1, 3, size, seed=3)
    queries = torch.randn(2, 1, *size)
    with torch.no_grad():
        tokens = model.encode_task(image, masks)[0]  # (K, T, C)
        together = model.segment(queries, tokens)
        assert together.shape == (2, 3, *size)
        for k in range(3):
            alone = model.segment(queries, tokens[k : k + 1])
            torch.testing.assert_close(together[:, k : k + 1], alone, atol=1e-5, rtol=1e-4)
            single_token = model.encode_task(image, masks[:, k : k + 1])[0]
            torch.testing.assert_close(single_token, tokens[k : k + 1], atol=1e-5, rtol=1e-4)
    # the classes really are different maps
    assert not torch.allclose(together[:, 0], together[:, 1], atol=1e-3)


def test_encode_once_segment_many_matches_fresh_encode():
    model = tiny_model(2)
    image, masks = torch.randn(1, 1, 32, 32), blob_masks(1, 2, (32, 32))
    queries = [torch.randn(2, 1, 32, 32) for _ in range(3)]
    with torch.no_grad():
        cached = model.encode_task(image, masks)[0]
        reused = [model.segment(q, cached) for q in queries]
        fresh = [model.segment(q, model.encode_task(image, masks)[0]) for q in queries]
        # batched tokens (B, K, T, C) behave like shared (K, T, C)
        batched = model.segment(queries[0], cached.unsqueeze(0).expand(2, -1, -1, -1))
    for a, b in zip(reused, fresh, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batched, reused[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("full", "low"), [((32, 32), (8, 8)), ((20, 12), (5, 3)), ((16, 8, 12), (4, 2, 3))]
)
def test_full_resolution_pooling_weights_equal_explicit_upsampled_pooling(full, low):
    g = torch.Generator().manual_seed(7)
    n, k, c = 2, 3, 5
    masks = (torch.rand(n, k, *full, generator=g) > 0.6).double()
    features = torch.randn(n, c, *low, generator=g, dtype=torch.float64)
    mode = "bilinear" if len(full) == 2 else "trilinear"
    upsampled = F.interpolate(features, size=full, mode=mode, align_corners=False)  # (N, C, *S)
    explicit = torch.einsum("nc...,nk...->nkc", upsampled, masks)
    weights = full_resolution_pooling_weights(masks, low)
    assert weights.shape == (n, k, *low)
    fast = torch.einsum("nc...,nk...->nkc", features, weights)
    torch.testing.assert_close(fast, explicit, atol=1e-10, rtol=1e-10)
    # total weight equals mask area (upsampling preserves constants)
    torch.testing.assert_close(weights.flatten(2).sum(-1), masks.flatten(2).sum(-1))
    # and it is NOT the same as naive low-resolution pooling (average-pooled mask)
    naive = F.adaptive_avg_pool2d(masks, low) if len(full) == 2 else F.adaptive_avg_pool3d(masks, low)
    area_ratio = masks[0, 0].numel() / naive[0, 0].numel()
    naive_pool = torch.einsum("nc...,nk...->nkc", features, naive * area_ratio)
    assert not torch.allclose(naive_pool, explicit, atol=1e-6)


def test_tiny_structure_still_gives_distinct_nonzero_foreground_token():
    model = tiny_model(2)
    image = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    masks = torch.zeros(1, 2, 32, 32)
    masks[0, 0, 5:7, 5:7] = 1  # 4 pixels, smaller than one bottleneck cell (4x4)
    masks[0, 1, 25:27, 21:23] = 1
    with torch.no_grad():
        tokens = model.encode_task(image, masks)[0]
        features = model.encoder(image)[-1]
    # the pooled (pre-projection) foreground vector is non-zero for a 4-pixel structure
    weights = full_resolution_pooling_weights(masks, tuple(features.shape[2:]))
    pooled = torch.einsum("nc...,nk...->nkc", features, weights) / 4.0
    assert pooled.abs().sum(-1).min() > 1e-3
    foreground = tokens[:, 0]
    assert foreground.norm(dim=-1).min() > 1e-3
    assert (foreground[0] - foreground[1]).abs().max() > 1e-3
    assert not torch.allclose(pooled[0, 0], pooled[0, 1], atol=1e-4)


@pytest.mark.parametrize(
    ("images", "masks", "message"),
    [
        (torch.randn(1, 32, 32), torch.ones(1, 1, 32, 32), "shape"),  # missing channel dim
        (torch.randn(1, 2, 32, 32), torch.ones(1, 1, 32, 32), "shape"),  # two channels
        (torch.randn(1, 1, 30, 32), torch.ones(1, 1, 30, 32), "divisible"),
        (torch.full((1, 1, 32, 32), float("nan")), torch.ones(1, 1, 32, 32), "NaN"),
        (torch.randn(1, 1, 32, 32), torch.ones(1, 1, 16, 16), "differs"),
        (torch.randn(1, 1, 32, 32), torch.ones(2, 1, 32, 32), "support_masks"),
        (torch.randn(1, 1, 32, 32), torch.ones(1, 32, 32), "support_masks"),
    ],
)
def test_encode_task_input_errors(images, masks, message):
    model = tiny_model(2)
    with pytest.raises(IrisInputError, match=message):
        model.encode_task(images, masks)


def test_segment_input_errors():
    model = tiny_model(2)
    tokens = torch.randn(2, model.config.num_task_tokens, model.config.embed_dim)
    with pytest.raises(IrisInputError, match="shape"):
        model.segment(torch.randn(1, 1, 32, 32, 8), tokens)  # 3D query into a 2D model
    with pytest.raises(IrisInputError, match="NaN"):
        model.segment(torch.tensor(float("inf")).expand(1, 1, 32, 32).clone(), tokens)
    with pytest.raises(IrisInputError, match="divisible"):
        model.segment(torch.randn(1, 1, 32, 34), tokens)
    with pytest.raises(IrisInputError, match="task tokens"):
        model.segment(torch.randn(2, 1, 32, 32), tokens.unsqueeze(0).expand(3, -1, -1, -1))


def test_invalid_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        IrisModel(ModelConfig(spatial_dims=4, **TINY))
