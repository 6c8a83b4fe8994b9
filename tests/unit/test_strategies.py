"""The four inference strategies and support validation."""

from __future__ import annotations

import pytest
import torch

from iris_engine import onnx_runtime
from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from iris_engine.strategies import (
    context_ensemble,
    encode_supports,
    in_context_tuning,
    memory_retrieval,
    one_shot,
    validate_supports,
)
from iris_engine.training.losses import dice_bce_loss

TINY = ModelConfig(
    encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
    task_encoder_layers=1, decoder_layers=1, num_query_tokens=4,
)


@pytest.fixture(autouse=True)
def float32(monkeypatch):
    """The strategies' algebra is checked to 1e-6 in float32 (bfloat16 has its own tests in test_onnx_runtime)."""
    monkeypatch.setattr(onnx_runtime, "native_bf16", lambda: False)


@pytest.fixture(scope="module")
def model() -> IrisModel:
    torch.manual_seed(0)
    return IrisModel(TINY).eval()


def support(seed: int = 0, n: int = 1, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 32, 32, generator=g)
    masks = torch.zeros(n, k, 32, 32)
    for i in range(n):
        for j in range(k):
            y, x = torch.randint(0, 20, (2,), generator=g).tolist()
            masks[i, j, y : y + 10, x : x + 8] = 1
            images[i, 0, y : y + 10, x : x + 8] += 1.5 * (j + 1)
    return images, masks


QUERIES = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(99))


def check_result(result, names: list[str], threshold: float, keys: set[str]) -> None:
    probs = result.probabilities
    assert probs.shape == (3, len(names), 32, 32)
    assert probs.min() >= 0 and probs.max() <= 1
    assert result.masks.dtype == torch.bool
    assert torch.equal(result.masks, probs >= threshold)
    assert result.class_names == names
    assert result.embedding.class_names == names
    assert keys <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values())


def test_one_shot_result(model):
    images, masks = support()
    config = InferenceConfig(threshold=0.3)
    result = one_shot(model, images, masks, QUERIES, ["liver", "spleen"], config)
    check_result(result, ["liver", "spleen"], 0.3, {"encode_task", "segment"})
    assert result.embedding.tokens.shape == (2, TINY.num_task_tokens, TINY.embed_dim)
    assert one_shot(model, images, masks, QUERIES).class_names == ["class_1", "class_2"]


def test_one_shot_rejects_several_supports_and_wrong_names(model):
    images, masks = support(n=2)
    with pytest.raises(IrisInputError, match="exactly one"):
        one_shot(model, images, masks, QUERIES)
    with pytest.raises(IrisInputError, match="class names"):
        one_shot(model, images[:1], masks[:1], QUERIES, ["only_one"])


def test_context_ensemble_with_identical_supports_equals_one_shot(model):
    images, masks = support(seed=1)
    single = one_shot(model, images, masks, QUERIES)
    for average in ("embedding", "prediction"):
        ensemble = context_ensemble(
            model, images.repeat(3, 1, 1, 1), masks.repeat(3, 1, 1, 1), QUERIES, average=average
        )
        check_result(ensemble, ["class_1", "class_2"], 0.5, {"encode_task", "segment"})
        torch.testing.assert_close(ensemble.probabilities, single.probabilities, atol=1e-5, rtol=1e-4)


def test_context_ensemble_embedding_is_mean_of_supports(model):
    images, masks = support(seed=2, n=3)
    ensemble = context_ensemble(model, images, masks, QUERIES)
    singles = [encode_supports(model, images[i : i + 1], masks[i : i + 1]).tokens for i in range(3)]
    torch.testing.assert_close(ensemble.embedding.tokens, torch.stack(singles).mean(0), atol=1e-6, rtol=1e-5)


def test_context_ensemble_prediction_averaging(model):
    images, masks = support(seed=3, n=2)
    result = context_ensemble(model, images, masks, QUERIES, average="prediction")
    check_result(result, ["class_1", "class_2"], 0.5, {"encode_task", "segment"})
    per_support = [one_shot(model, images[i : i + 1], masks[i : i + 1], QUERIES).probabilities for i in range(2)]
    torch.testing.assert_close(result.probabilities, (per_support[0] + per_support[1]) / 2, atol=1e-6, rtol=1e-5)
    by_embedding = context_ensemble(model, images, masks, QUERIES, average="embedding")
    assert not torch.allclose(result.probabilities, by_embedding.probabilities, atol=1e-5)
    with pytest.raises(IrisInputError, match="average"):
        context_ensemble(model, images, masks, QUERIES, average="median")


def test_context_ensemble_prediction_ignores_supports_without_the_class(model):
    images, masks = support(seed=4, n=2)
    masks[1, 1] = 0  # class 2 only painted on support 0
    result = context_ensemble(model, images, masks, QUERIES, average="prediction")
    first = one_shot(model, images[:1], masks[:1], QUERIES).probabilities
    torch.testing.assert_close(result.probabilities[:, 1], first[:, 1], atol=1e-6, rtol=1e-5)


def test_memory_retrieval(model):
    images, masks = support(seed=5)
    embedding = encode_supports(model, images, masks, ["a", "b"])
    bank = MemoryBank()
    bank.update_from_embedding(embedding)
    result = memory_retrieval(model, bank, ["b", "a"], QUERIES)
    check_result(result, ["b", "a"], 0.5, {"retrieve", "segment"})
    direct = one_shot(model, images, masks, QUERIES, ["a", "b"])
    torch.testing.assert_close(result.probabilities, direct.probabilities.flip(1), atol=1e-6, rtol=1e-5)
    single = memory_retrieval(model, bank, "a", QUERIES)
    assert single.probabilities.shape[1] == 1
    with pytest.raises(IrisInputError, match="stored classes: a, b"):
        memory_retrieval(model, bank, ["c"], QUERIES)


def _snapshot(model: IrisModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_in_context_tuning_freezes_model_and_tunes_embedding():
    torch.manual_seed(1)
    model = IrisModel(TINY)
    model.train()
    flags_before = [p.requires_grad for p in model.parameters()]
    list(model.parameters())[0].requires_grad_(False)  # a custom flag pattern must be restored too
    flags_before = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    before = _snapshot(model)
    images, masks = support(seed=6)
    initial = encode_supports(model, images, masks)
    result = in_context_tuning(model, images, masks, QUERIES, steps=30, lr=1e-2)
    check_result(result, ["class_1", "class_2"], 0.5, {"encode_task", "tuning", "segment"})
    # (a) no model parameter or buffer changed, flags and train mode restored
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    assert [p.requires_grad for p in model.parameters()] == flags_before
    assert model.training
    # (d) no gradient reached any model parameter
    assert all(p.grad is None for p in model.parameters())
    # (b) the embedding moved
    assert result.embedding.tokens.shape == initial.tokens.shape
    assert (result.embedding.tokens - initial.tokens).abs().max() > 1e-3
    # (c) the loss decreased
    curve = result.loss_curve
    assert len(curve) == 30
    assert curve[-1] < 0.9 * curve[0]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    # the tuned embedding fits its support better (in the tuning objective) than the initial one
    with torch.no_grad():
        tuned_loss = dice_bce_loss(model.segment(images, result.embedding.tokens), masks)
        initial_loss = dice_bce_loss(model.segment(images, initial.tokens), masks)
    assert float(tuned_loss) < float(initial_loss)
    assert float(tuned_loss) == pytest.approx(curve[-1], rel=0.1)


def test_in_context_tuning_zero_steps_equals_one_shot(model):
    images, masks = support(seed=7)
    tuned = in_context_tuning(model, images, masks, QUERIES, steps=0)
    assert tuned.loss_curve == []
    torch.testing.assert_close(tuned.probabilities, one_shot(model, images, masks, QUERIES).probabilities)
    with pytest.raises(IrisInputError, match="steps"):
        in_context_tuning(model, images, masks, QUERIES, steps=-1)


def test_in_context_tuning_uses_extra_images(model):
    images, masks = support(seed=8)
    extra_images, extra_masks = support(seed=9, n=2)
    config = InferenceConfig(tuning_steps=5, tuning_lr=1e-2)
    plain = in_context_tuning(model, images, masks, QUERIES, config=config)
    extra = in_context_tuning(
        model, images, masks, QUERIES, config=config, extra_images=extra_images, extra_masks=extra_masks
    )
    assert len(plain.loss_curve) == len(extra.loss_curve) == 5
    assert plain.loss_curve[0] != pytest.approx(extra.loss_curve[0], abs=1e-6)
    assert not torch.allclose(plain.embedding.tokens, extra.embedding.tokens, atol=1e-6)
    bad = extra_masks.clone()
    bad[0] = 0
    with pytest.raises(IrisInputError, match="empty"):
        in_context_tuning(model, images, masks, QUERIES, config=config, extra_images=extra_images, extra_masks=bad)


def test_validate_supports_accepts_good_and_soft_masks():
    images, masks = support(n=2)
    validate_supports(images, masks, 2)
    # soft masks in [0, 1] (area-averaged by preprocessing when shrinking) are allowed by design
    validate_supports(images, masks * 0.5, 2)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda im, m: (im, torch.zeros_like(m)), "empty"),
        (lambda im, m: (im, torch.ones_like(m)), "all ones"),
        (lambda im, m: (im.index_fill(2, torch.tensor([3]), float("nan")), m), "NaN"),
        (lambda im, m: (im, m[..., :16]), "do not match"),
        (lambda im, m: (im, m[:1]), "do not match"),
        (lambda im, m: (im[:, 0], m), "support images"),
        (lambda im, m: (im, m * 2), "only 0 and 1"),
        (lambda im, m: (im, m - 0.5), "only 0 and 1"),
        (lambda im, m: (im, m.masked_fill(m > 0, float("nan"))), "only 0 and 1"),
    ],
)
def test_validate_supports_errors(mutate, message):
    images, masks = mutate(*support(n=2))
    with pytest.raises(IrisInputError, match=message):
        validate_supports(images, masks, 2)


def test_class_empty_in_every_support_is_an_error(model):
    images, masks = support(n=2)
    masks[:, 1] = 0
    with pytest.raises(IrisInputError, match="empty in every support"):
        one_shot(model, images[:1], masks[:1], QUERIES)
