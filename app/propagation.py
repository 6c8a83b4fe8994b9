"""The Segment tab's Propagate action: the slices painted on the open case fill its other slices.

Painted slices are the open case's own annotation supports (paint a slice, name the class, Add support;
repeat on other slices). Each painted slice counts as complete (a class not painted on it is absent there).
After a propagation, a slice fixed in "Correct & accept" becomes a painted slice of the next propagation,
which recomputes only the slices whose supports changed. Plain functions over `Services` and a `Session`.
"""

from __future__ import annotations

import time

import numpy as np

from app import handlers as h
from app.handlers import HandlerError, Progress, Result, Session
from app.services import Services
from iris_engine.inference import VolumeSegmentation
from iris_engine.preprocess import to_canonical

STRATEGY = "propagation"
AXIS = 2  # the editors paint axial slices of the canonical volume


def _own_supports(session: Session) -> list[h.SupportRef]:
    return [ref for ref in session.supports if ref.case_id == session.case_id]


def _fixed(session: Session) -> set[int]:
    """Slices fixed after a propagation of the open case (only while its result is a propagation)."""
    result = session.result
    if session.case_id is None or result is None or result.case_id != session.case_id \
            or result.segmentation.strategy != STRATEGY:
        return set()
    return session.fixed_slices.get(session.case_id, set())


def painted_label_map(services: Services, session: Session) -> tuple[np.ndarray, list[str], list[int]]:
    """The open case's painted label map (its grid), class names and the fixed slices (canonical axial indices)."""
    refs = _own_supports(session)
    if not refs:
        raise HandlerError("paint the structure on one or more axial slices of this case (name it, Add support) "
                           "before propagating")
    volume = h.current_volume(services, session)
    if volume.ndim != 3:
        raise HandlerError("propagation fills the other slices of a 3D volume; this case is a 2D image")
    supports, names = h.build_supports(services, refs)
    labels = np.asarray(supports[0].mask)
    fixed = sorted(_fixed(session))
    if fixed:
        result = session.result
        transform = to_canonical(volume)[1]
        canonical = transform.apply(labels)
        masks = transform.apply(result.masks)
        for z in fixed:
            canonical[:, :, z] = 0
            for k, name in enumerate(result.segmentation.class_names):
                if name in names:
                    canonical[:, :, z][masks[k][:, :, z]] = names.index(name) + 1
        labels = transform.invert(canonical)
    return labels, names, fixed


def painted_rows(services: Services, session: Session) -> list[list[object]]:
    """One row per painted slice of the open case: axial index, classes on it, painted or fixed."""
    if session.case_id is None or not _own_supports(session):
        return []
    labels, names, fixed = painted_label_map(services, session)
    canonical = to_canonical(h.current_volume(services, session))[1].apply(labels)
    rows = []
    for z in sorted(set(np.flatnonzero(canonical.any(axis=(0, 1))).tolist()) | set(fixed)):
        shown = [names[v - 1] for v in np.unique(canonical[:, :, z]) if v > 0]
        rows.append([z, ", ".join(shown) or "(empty)", "fixed" if z in fixed else "painted"])
    return rows


def run_propagation(services: Services, session: Session, progress: Progress | None = None) -> str:
    """Propagate the painted slices through the open case; the result replaces the session's result."""
    labels, names, fixed = painted_label_map(services, session)
    volume = h.current_volume(services, session)
    report = progress or (lambda fraction, message: None)
    session.cancel.clear()

    def checked(fraction: float, message: str) -> None:
        if session.cancel.is_set():
            raise h.Cancelled("propagation cancelled")
        report(fraction, message)

    start = time.perf_counter()
    with services.model_lock:  # like segmentations: viewing and storing never wait for it
        result = services.segmenter.propagate(volume, labels, names, painted_slices=fixed, progress=checked)
    seconds = time.perf_counter() - start
    ids = {}
    for name, mask in zip(names, result.masks, strict=True):
        ids[name] = services.storage.predictions.add(
            session.case_id, name, mask, STRATEGY, result.model_version,
            {"seconds": round(seconds, 3), "painted_slices": result.painted_slices,
             "recomputed_slices": result.recomputed_slices, "input_scale": result.input_scale}).id
    segmentation = VolumeSegmentation(result.probabilities, result.masks, names, STRATEGY, result.model_version,
                                      result.timings, input_scale=result.input_scale)
    session.result = Result(session.case_id, segmentation, ids, result.masks.copy(), seconds)
    session.fixed_slices[session.case_id] = set(fixed)
    voxels = ", ".join(f"{n} {int(m.sum())} voxels" for n, m in zip(names, result.masks, strict=True))
    scale = " (thin structure: read at twice the model's input size)" if result.input_scale > 1 else ""
    return (f"Propagated from painted slices {result.painted_slices} in {seconds:.2f} s{scale} "
            f"({result.recomputed_slices} slices segmented, the rest reused): {voxels}. Scroll the slices to check; "
            "fix a slice in 3 · Correct & accept and propagate again, or accept all.")


def note_fixed_slice(session: Session, index: int) -> None:
    """A slice edited after a propagation becomes a painted slice of the next propagation."""
    result = session.result
    if session.case_id is not None and result is not None and result.case_id == session.case_id \
            and result.segmentation.strategy == STRATEGY:
        session.fixed_slices.setdefault(session.case_id, set()).add(int(index))


def slice_rows(services: Services, session: Session) -> list[list[object]]:
    """Per axial slice of a propagation result that shows something: index, kind, voxels per class."""
    result = session.result
    if result is None or result.case_id != session.case_id or result.segmentation.strategy != STRATEGY:
        return []
    transform = to_canonical(h.current_volume(services, session))[1]
    masks = transform.apply(result.masks)
    painted = {row[0]: row[2] for row in painted_rows(services, session)}
    counts = masks.sum(axis=(1, 2))
    rows = []
    for z in range(masks.shape[-1]):
        if counts[:, z].any() or z in painted:
            rows.append([z, painted.get(z, "propagated"),
                         ", ".join(f"{n} {int(c)}" for n, c in zip(result.segmentation.class_names, counts[:, z],
                                                                   strict=True))])
    return rows
