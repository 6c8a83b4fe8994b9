"""v2 support context: token layout and content, per-class independence, the decoder really reads the support."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iris_engine import strategies
from iris_engine.config import ContextLayout, ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.context import _intensity_bins, context_maps, flatten_prior
from iris_engine.model.iris import IrisModel

TINY_V2 = dict(
    encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2, task_encoder_layers=1,
    decoder_layers=1, num_query_tokens=4, similarity_path=True, prior_size=8, histogram_bins=8, region_grid=2,
)


def tiny_v2(spatial_dims: int = 2, seed: int = 0, fine_class_path: bool = False) -> IrisModel:
    torch.manual_seed(seed)
    return IrisModel(ModelConfig(spatial_dims=spatial_dims, fine_class_path=fine_class_path, **TINY_V2)).eval()


def square(size: tuple[int, ...], start: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, *size)
    mask[(0, 0, *[slice(start, start + width)] * len(size))] = 1.0
    return mask


def test_layout_counts_every_part():
    config = ModelConfig(**TINY_V2)
    layout = ContextLayout.of(config)
    assert layout.start == config.num_iris_tokens
    assert layout.num_tokens == 2 * 3 + 4 + 1 + 1 + 2  # prototypes, regions, weights, histogram, 8x8 prior / 32
    assert config.num_task_tokens == config.num_iris_tokens + layout.num_tokens
    assert ModelConfig(**{**TINY_V2, "similarity_path": False}).num_task_tokens == config.num_iris_tokens


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_context_tokens_hold_the_mask_prior_and_histograms(spatial_dims: int):
    model = tiny_v2(spatial_dims)
    size = (32,) * spatial_dims
    image = torch.randn(1, 1, *size)
    mask = square(size, 8, 12)
    with torch.no_grad():
        tokens = model.encode_task(image, mask)
    layout = ContextLayout.of(model.config)
    assert tokens.shape == (1, 1, model.config.num_task_tokens, model.config.embed_dim)
    prior = tokens[0, 0, layout.prior].flatten()[: 8**spatial_dims].reshape((8,) * spatial_dims)
    pool = F.adaptive_avg_pool2d if spatial_dims == 2 else F.adaptive_avg_pool3d
    torch.testing.assert_close(prior, pool(mask, (8,) * spatial_dims)[0, 0])
    histogram = tokens[0, 0, layout.histogram, :16]
    torch.testing.assert_close(histogram[:8].sum(), torch.tensor(1.0))
    torch.testing.assert_close(histogram[8:].sum(), torch.tensor(1.0))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_context_maps_equal_their_definitions(spatial_dims: int):
    """The fast paths (one norm per level, intensity lookup by gather) equal cosine similarity and one-hot sums."""
    model = tiny_v2(spatial_dims)
    size = (32,) * spatial_dims if spatial_dims == 2 else (16,) * 3
    torch.manual_seed(1)
    support, query = torch.randn(1, 1, *size) * 2, torch.randn(2, 1, *size) * 2
    with torch.no_grad():
        tokens = model.encode_task(support, square(size, 4, 8)).expand(2, -1, -1, -1)
        features = model.encoder(query)
        maps = context_maps(model.decoder.layout, tokens, query, features)
    layout = model.decoder.layout
    bins = layout.histogram_bins
    histogram = tokens[:, :, layout.histogram, : 2 * bins].clamp_min(0)
    posterior = (histogram[..., :bins] + 1e-3) / (histogram[..., :bins] + histogram[..., bins:] + 2e-3)
    one_hot = _intensity_bins(query, bins)
    expected_intensity = torch.einsum("bkn,bn...->bk...", posterior, one_hot)
    assert torch.allclose(maps[0][:, :, 3], expected_intensity, atol=1e-6)
    for index, level in enumerate(features):
        prototypes = tokens[:, :, layout.prototypes][:, :, 2 * index : 2 * index + 2, : level.shape[1]]
        expected = torch.einsum("bc...,bkgc->bkg...", F.normalize(level, dim=1), F.normalize(prototypes, dim=-1))
        assert torch.allclose(maps[index][:, :, :2], expected, atol=1e-5)


@pytest.mark.parametrize("fine_class_path", [False, True])
def test_k_classes_in_one_call_equal_separate_calls(fine_class_path: bool):
    model = tiny_v2(fine_class_path=fine_class_path)
    image = torch.randn(1, 1, 32, 32)
    masks = torch.cat([square((32, 32), 2, 10), square((32, 32), 18, 12)], dim=1)
    queries = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        tokens = model.encode_task(image, masks)[0]
        together = model.segment(queries, tokens)
        for k in range(2):
            torch.testing.assert_close(together[:, k : k + 1], model.segment(queries, tokens[k : k + 1]),
                                       atol=1e-5, rtol=1e-4)


def test_decoder_output_depends_on_the_support_mask():
    """Same image, same query, two different support masks: an untrained v2 decoder already gives two maps."""
    model = tiny_v2()
    image = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        left = model.segment(image, model.encode_task(image, square((32, 32), 2, 10))[0])
        right = model.segment(image, model.encode_task(image, square((32, 32), 18, 12))[0])
    assert (left - right).abs().max() > 1e-2


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fine_class_path_starts_from_the_output_of_its_warm_start(spatial_dims: int):
    """Warm-started from a model without it, the full-size class path adds exactly nothing until trained."""
    source = tiny_v2(spatial_dims, seed=1)
    target = tiny_v2(spatial_dims, seed=2, fine_class_path=True)
    loaded = target.load_state_dict(source.state_dict(), strict=False)
    assert loaded.unexpected_keys == []
    assert loaded.missing_keys and all(key.startswith("decoder.fine_") for key in loaded.missing_keys)
    size = (32,) * spatial_dims if spatial_dims == 2 else (16,) * 3
    image = torch.randn(1, 1, *size)
    with torch.no_grad():
        tokens = source.encode_task(image, square(size, 2, 6))[0]
        torch.testing.assert_close(target.segment(image, tokens), source.segment(image, tokens))


def test_fine_class_path_trains_and_then_changes_the_output():
    model = tiny_v2(fine_class_path=True).train()
    image, mask = torch.randn(2, 1, 32, 32), square((32, 32), 8, 6).expand(2, -1, -1, -1)
    with torch.no_grad():
        before = model.segment(image[:1], model.encode_task(image[:1], mask[:1])[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        logits = model(image[:1, None], mask[:1, None], image[1:, None])[:, 0]
        F.binary_cross_entropy_with_logits(logits, mask[1:]).backward()
        assert model.decoder.fine_projection.weight.grad.abs().sum() > 0
        optimizer.step()
    assert model.decoder.fine_up[0].block.conv1.weight.grad.abs().sum() > 0
    with torch.no_grad():
        after = model.segment(image[:1], model.encode_task(image[:1], mask[:1])[0])
    assert (after - before).abs().max() > 1e-3


def test_flatten_prior_keeps_the_mask_area_and_loses_its_place_in_the_chosen_episodes_only():
    model = tiny_v2()
    layout = ContextLayout.of(model.config)
    images = torch.randn(2, 1, 32, 32)
    masks = torch.cat([square((32, 32), 2, 10), square((32, 32), 16, 8)])
    with torch.no_grad():
        tokens = model.encode_task(images, masks)
    flattened = flatten_prior(layout, tokens, torch.tensor([True, False]))
    torch.testing.assert_close(flattened[1], tokens[1])
    outside = [t for t in range(tokens.shape[2]) if not layout.prior.start <= t < layout.prior.stop]
    torch.testing.assert_close(flattened[0, :, outside], tokens[0, :, outside])
    values = layout.prior_size**2
    prior = flattened[0, :, layout.prior].flatten(1)
    torch.testing.assert_close(prior[:, :values], torch.full((1, values), 100 / 1024))
    torch.testing.assert_close(prior[:, values:], tokens[0, :, layout.prior].flatten(1)[:, values:])


def test_tokens_of_another_model_version_are_refused():
    model = tiny_v2()
    with pytest.raises(IrisInputError, match="tokens per class"):
        model.segment(torch.randn(1, 1, 32, 32), torch.randn(1, model.config.num_iris_tokens, 32))


def test_memory_bank_and_tuning_work_with_context_tokens():
    model = tiny_v2()
    image, mask = torch.randn(1, 1, 32, 32), square((32, 32), 6, 14)
    embedding = strategies.encode_supports(model, image, mask, ["organ"])
    bank = MemoryBank(0.5)
    bank.update("organ", embedding.tokens[0])
    bank.update("organ", embedding.tokens[0] * 0 + embedding.tokens[0])
    stored = bank.get("organ")
    result = strategies.segment_with_embedding(model, image, stored)
    assert result.probabilities.shape == (1, 1, 32, 32)
    tuned = strategies.in_context_tuning(model, image, mask, image, ["organ"], steps=3, lr=1e-2)
    assert tuned.embedding.tokens.shape == embedding.tokens.shape
    assert len(tuned.loss_curve) == 3


def test_encode_task_works_under_inference_mode():
    """The adjoint pooling weights need autograd; a caller's torch.inference_mode() must not break them."""
    model = tiny_v2()
    torch.manual_seed(2)
    image, mask = torch.randn(1, 1, 32, 32), square((32, 32), 6, 10)
    with torch.no_grad():
        expected = model.encode_task(image, mask)
    with torch.inference_mode():
        tokens = model.encode_task(image, mask)
        logits = model.segment(torch.randn(2, 1, 32, 32), tokens[0])
    torch.testing.assert_close(tokens, expected)
    assert logits.shape == (2, 1, 32, 32)
