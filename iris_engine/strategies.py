"""The four IRIS inference strategies over model-space tensors (already preprocessed).

Shapes: support images (N, 1, *S), support masks (N, K, *S) in {0, 1}, queries (B, 1, *S).
Every strategy returns a `SegmentationResult` with probabilities, binary masks and timings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from iris_engine import onnx_runtime
from iris_engine.calibration import CalibrationConfig, apply_offsets, support_offsets
from iris_engine.config import InferenceConfig
from iris_engine.correspondence import CorrespondenceConfig, SupportPixels, blend, sample_support_pixels
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from iris_engine.training.losses import dice_bce_loss

STRATEGIES = ("one_shot", "context_ensemble", "memory_bank", "in_context_tuning")


@dataclass
class SegmentationResult:
    """Output of a strategy: probabilities (B, K, *S), masks at the threshold, timings in seconds."""

    probabilities: torch.Tensor
    masks: torch.Tensor
    class_names: list[str]
    embedding: TaskEmbedding
    timings: dict[str, float] = field(default_factory=dict)
    loss_curve: list[float] = field(default_factory=list)


@contextmanager
def _timer(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _default_names(k: int, class_names: list[str] | None) -> list[str]:
    names = class_names or [f"class_{i + 1}" for i in range(k)]
    if len(names) != k:
        raise IrisInputError(f"{len(names)} class names given for masks with {k} classes")
    return list(names)


def validate_supports(images: torch.Tensor, masks: torch.Tensor, spatial_dims: int) -> None:
    """Clear errors for support pairs the model cannot use."""
    if images.ndim != spatial_dims + 2:
        raise IrisInputError(
            f"support images must be (N, 1, *S) with {spatial_dims} spatial dims, got {tuple(images.shape)}"
        )
    if masks.ndim != images.ndim or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[2:]:
        raise IrisInputError(
            f"support masks {tuple(masks.shape)} do not match support images {tuple(images.shape)}: "
            "expected (N, K, *S) with the same N and spatial size"
        )
    if not torch.isfinite(images).all():
        raise IrisInputError("support image contains NaN or Inf values")
    if not torch.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1:
        raise IrisInputError("support masks must contain only 0 and 1")
    per_support = masks.flatten(2).sum(-1)
    if (per_support.sum(1) == 0).any():
        empty = (per_support.sum(1) == 0).nonzero().flatten().tolist()
        raise IrisInputError(f"support mask(s) {empty} are empty: paint the structure on every support")
    if (per_support == 0).all(0).any():
        classes = (per_support == 0).all(0).nonzero().flatten().tolist()
        raise IrisInputError(f"class index(es) {classes} are empty in every support")
    full = masks[0, 0].numel()
    if (per_support >= full).any():
        raise IrisInputError("a support mask covers the whole image (all ones): it shows no boundary to learn from")


def reads_fine(model: IrisModel, images: torch.Tensor) -> bool:
    """Whether 2D images are at twice the model's input size (a thin structure's input scale)."""
    return model.config.spatial_dims == 2 and images.shape[-1] == FINE_SCALE * model.config.image_size


def encode_supports(
    model: IrisModel,
    images: torch.Tensor,
    masks: torch.Tensor,
    class_names: list[str] | None = None,
    model_version: str = "",
    correspondence: CorrespondenceConfig | None = CorrespondenceConfig(),
    calibration: CalibrationConfig | None = CalibrationConfig(),
) -> TaskEmbedding:
    """Task embedding averaged over the supports in which each class is present (context ensemble); supports at
    twice the input size (a thin structure) also keep sampled pixel features for the `correspondence` vote and
    logit offsets from the `calibration` of the supports' own segmentation."""
    validate_supports(images, masks, model.config.spatial_dims)
    names = _default_names(masks.shape[1], class_names)
    with torch.no_grad():
        tokens = model.encode_task(images, masks.float())
    present = (masks.flatten(2).sum(-1) > 0).to(tokens.dtype)
    averaged = (tokens * present[..., None, None]).sum(0) / present.sum(0)[:, None, None]
    embedding = TaskEmbedding(averaged, names, model_version)
    voting = correspondence is not None and correspondence.weight > 0
    calibrating = calibration is not None and calibration.enabled
    if not reads_fine(model, images) or not (voting or calibrating):
        return embedding
    with torch.no_grad():
        features = model.encode_query(images)
        pixels = model.decoder.pixel_features(features[1:])
    if voting:
        embedding = replace(embedding, support_pixels=sample_support_pixels(pixels, masks, correspondence))
    return calibrated(model, embedding, features, masks, calibration, pixels)


def calibrated(model: IrisModel, embedding: TaskEmbedding, features: list[torch.Tensor], masks: torch.Tensor,
               calibration: CalibrationConfig | None, pixels: torch.Tensor | None = None) -> TaskEmbedding:
    """The embedding with logit offsets from segmenting its own labelled images, given as their `encode_query`
    features (and decoder pixel features where already computed; `calibration.py`); unchanged when calibration
    is off."""
    if calibration is None or not calibration.enabled:
        return embedding
    with torch.no_grad():
        pixels = model.decoder.pixel_features(features[1:]) if pixels is None else pixels
        logits = model.decode(features, embedding.tokens.to(pixels.device), pixels)
    probabilities = _with_vote(torch.sigmoid(logits.float()), pixels, embedding.support_pixels)
    return replace(embedding, logit_offsets=support_offsets(probabilities.cpu(), masks.cpu(), calibration))


def _with_vote(probability: torch.Tensor, pixels: torch.Tensor, support: SupportPixels | None) -> torch.Tensor:
    """The model's probability with the support-correspondence vote blended in, where the embedding has one."""
    return probability if support is None else blend(probability, pixels.float(), support)


def predict_probabilities(
    model: IrisModel, queries: torch.Tensor, embedding: TaskEmbedding, batch_size: int = 8, backend: str = "eager"
) -> torch.Tensor:
    """Sigmoid probabilities (B, K, *S); queries are processed in batches, the embedding is reused.

    backend "onnx" runs the query path on ONNX Runtime (`onnx_runtime.py`), "eager" on PyTorch, "bf16" on PyTorch
    under CPU bfloat16 autocast. An embedding with support pixels (`correspondence.py`) runs on PyTorch, its vote
    blended in; its calibrated logit offsets, where it has them, are applied last."""
    device = next(model.parameters()).device
    tokens = embedding.tokens.to(device)
    support = embedding.support_pixels
    session = onnx_runtime.query_path(model, queries.shape[-1]) if backend == "onnx" and support is None else None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=backend == "bf16")

    def run(chunk: torch.Tensor) -> torch.Tensor:
        if session is not None:
            return torch.sigmoid(session.logits(chunk, tokens))
        with autocast:
            features = model.encode_query(chunk.to(device))
            pixels = model.decoder.pixel_features(features[1:])
            probability = torch.sigmoid(model.decode(features, tokens, pixels).float())
        return _with_vote(probability, pixels, support)

    outputs = []
    with torch.no_grad():
        for start in range(0, queries.shape[0], batch_size):
            outputs.append(run(queries[start : start + batch_size]).cpu())
    probabilities = torch.cat(outputs)
    return probabilities if embedding.logit_offsets is None else apply_offsets(probabilities, embedding.logit_offsets)


def query_batch_size(model: IrisModel, queries: torch.Tensor, config: InferenceConfig, backend: str) -> int:
    """Queries per forward pass: `fine_batch_size` for queries read at twice the input size by PyTorch on the CPU,
    else `batch_size` (ONNX Runtime ran such a volume 8 % slower one slice at a time, benchmarks/fine_scale.md)."""
    fine_on_cpu = reads_fine(model, queries) and config.device == "cpu" and backend != "onnx"
    return config.fine_batch_size if fine_on_cpu else config.batch_size


def segment_with_embedding(
    model: IrisModel, queries: torch.Tensor, embedding: TaskEmbedding, config: InferenceConfig | None = None
) -> SegmentationResult:
    """Segment queries with a ready embedding (cached, from the memory bank, or tuned)."""
    config = config or InferenceConfig()
    timings: dict[str, float] = {}
    with _timer(timings, "segment"):
        backend = onnx_runtime.choose_backend(config, model, queries)
        probabilities = predict_probabilities(model, queries, embedding,
                                              query_batch_size(model, queries, config, backend), backend)
    return SegmentationResult(
        probabilities, probabilities >= config.threshold, list(embedding.class_names), embedding, timings
    )


def one_shot(
    model: IrisModel,
    support_image: torch.Tensor,
    support_mask: torch.Tensor,
    queries: torch.Tensor,
    class_names: list[str] | None = None,
    config: InferenceConfig | None = None,
) -> SegmentationResult:
    """One support pair (1, 1, *S) + (1, K, *S)."""
    if support_image.shape[0] != 1:
        raise IrisInputError(f"one-shot takes exactly one support, got {support_image.shape[0]}")
    return context_ensemble(model, support_image, support_mask, queries, class_names, config)


def context_ensemble(
    model: IrisModel,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    queries: torch.Tensor,
    class_names: list[str] | None = None,
    config: InferenceConfig | None = None,
    average: str = "embedding",
) -> SegmentationResult:
    """Several supports: average their embeddings (default) or their per-support predictions."""
    if average not in ("embedding", "prediction"):
        raise IrisInputError(f"average must be 'embedding' or 'prediction', got '{average}'")
    config = config or InferenceConfig()
    timings: dict[str, float] = {}
    with _timer(timings, "encode_task"):
        embedding = encode_supports(model, support_images, support_masks, class_names, _version(model),
                                   config.correspondence, config.calibration)
    if average == "embedding":
        result = segment_with_embedding(model, queries, embedding, config)
        result.timings.update(timings)
        return result
    with _timer(timings, "segment"):
        per_support = []
        for i in range(support_images.shape[0]):
            present = support_masks[i].flatten(1).sum(-1) > 0
            index = present.nonzero().flatten().tolist()  # a support need not show every class
            single = encode_supports(
                model, support_images[i : i + 1], support_masks[i : i + 1, index],
                [embedding.class_names[j] for j in index], correspondence=config.correspondence,
                calibration=config.calibration,
            )
            probabilities = torch.zeros(queries.shape[0], len(present), *queries.shape[2:])
            backend = onnx_runtime.choose_backend(config, model, queries)
            probabilities[:, index] = predict_probabilities(model, queries, single, config.batch_size, backend)
            per_support.append((probabilities, present))
        total = sum(p * present.view(1, -1, *[1] * (p.ndim - 2)) for p, present in per_support)
        count = sum(present.float() for _, present in per_support).view(1, -1, *[1] * (queries.ndim - 2))
        probabilities = total / count
    masks = probabilities >= config.threshold
    return SegmentationResult(probabilities, masks, embedding.class_names, embedding, timings)


def memory_retrieval(
    model: IrisModel,
    bank: MemoryBank,
    class_names: list[str] | str,
    queries: torch.Tensor,
    config: InferenceConfig | None = None,
) -> SegmentationResult:
    """No support needed: the stored class embeddings are used directly."""
    timings: dict[str, float] = {}
    with _timer(timings, "retrieve"):
        embedding = bank.get(class_names, _version(model))
    result = segment_with_embedding(model, queries, embedding, config)
    result.timings.update(timings)
    return result


@contextmanager
def _frozen(model: IrisModel) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def in_context_tuning(
    model: IrisModel,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    queries: torch.Tensor,
    class_names: list[str] | None = None,
    config: InferenceConfig | None = None,
    extra_images: torch.Tensor | None = None,
    extra_masks: torch.Tensor | None = None,
    initial: TaskEmbedding | None = None,
    steps: int | None = None,
    lr: float | None = None,
) -> SegmentationResult:
    """Optimise only the task embedding with Adam on Dice + BCE over the labelled images; model frozen.

    The labelled images are the supports plus optional extras (e.g. accepted corrections). Their
    encoder features are computed once, since the encoder is frozen.
    """
    config = config or InferenceConfig()
    steps = config.tuning_steps if steps is None else steps
    lr = config.tuning_lr if lr is None else lr
    if steps < 0:
        raise IrisInputError(f"tuning steps must be >= 0, got {steps}")
    timings: dict[str, float] = {}
    with _timer(timings, "encode_task"):
        embedding = initial or encode_supports(model, support_images, support_masks, class_names, _version(model),
                                              config.correspondence, config.calibration)
    images, masks = support_images, support_masks.float()
    if extra_images is not None and extra_masks is not None:
        validate_supports(extra_images, extra_masks, model.config.spatial_dims)
        images, masks = torch.cat([images, extra_images]), torch.cat([masks, extra_masks.float()])
    device = next(model.parameters()).device
    images, masks = images.to(device), masks.to(device)
    tokens = embedding.tokens.detach().clone().to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([tokens], lr=lr)
    loss_curve: list[float] = []
    with _timer(timings, "tuning"), _frozen(model):
        with torch.no_grad():
            features = model.encode_query(images)
        for _ in range(steps):
            optimizer.zero_grad()
            logits = model.decode(features, tokens)
            loss = dice_bce_loss(logits, masks, spatial_dims=model.config.spatial_dims)
            loss.backward()
            optimizer.step()
            loss_curve.append(float(loss.detach()))
    tuned = TaskEmbedding(tokens.detach().cpu(), embedding.class_names, embedding.model_version,
                          embedding.support_pixels)
    if reads_fine(model, images):
        tuned = calibrated(model, tuned, features, masks, config.calibration)
    result = segment_with_embedding(model, queries, tuned, config)
    result.timings.update(timings)
    result.loss_curve = loss_curve
    return result


def _version(model: IrisModel) -> str:
    return str(getattr(model, "version", ""))
