"""Plain functions behind every UI action, over `Services` and a per-browser `Session` (testable without Gradio)."""

from __future__ import annotations

import html
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import display
from app.demo import stored_slices
from app.editor_canvas import from_canvas, place, touched
from app.services import Services, prototype_tokens
from iris_engine.errors import IrisInputError
from iris_engine.inference import Support, VolumeSegmentation
from iris_engine.io.readers import read_mask
from iris_engine.io.volume import Volume
from iris_engine.io.writers import write_dicom_seg, write_mask, write_overlay_png
from iris_engine.memory_bank import MemoryBank
from iris_engine.preprocess import to_canonical
from storage.errors import StorageError
from storage.records import CaseRecord

Progress = Callable[[float, str], None]
STRATEGIES = {"One-shot": "one_shot", "Context ensemble": "context_ensemble", "Memory bank": "memory_bank",
              "In-context tuning": "in_context_tuning"}
DISPLAY_MODES = ("overlay", "confidence", "uncertainty")
CANCEL_WAIT_S = 120.0


class HandlerError(ValueError):
    """A user mistake or impossible request, shown as a readable message."""


class Cancelled(HandlerError):
    """The user cancelled a long-running action."""


class StaleEditor(HandlerError):
    """The picture an editor sent back is not the slice its paint would be stored on: the editor's own Undo steps
    back past a slice or case change (and brings back that earlier picture), its Clear removes the picture."""


@dataclass(frozen=True)
class SupportRef:
    """A support mask in the store: an annotation or an accepted correction."""

    kind: str
    record_id: int
    case_id: int
    class_name: str
    label: str


@dataclass
class Result:
    """The last segmentation of the open case, its stored prediction ids and the (edited) masks."""

    case_id: int
    segmentation: VolumeSegmentation
    prediction_ids: dict[str, int]
    masks: np.ndarray
    seconds: float


@dataclass(frozen=True)
class LoadedSlice:
    """A class's mask on one axial slice as it was given to the correction editor (its canvas pixels), and the
    picture under it."""

    case_id: int
    class_name: str
    index: int
    canvas: np.ndarray
    background: np.ndarray


@dataclass
class Session:
    """What one browser tab is doing; everything worth keeping is also in the database."""

    case_id: int | None = None
    supports: list[SupportRef] = field(default_factory=list)
    result: Result | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    fixed_slices: dict[int, set[int]] = field(default_factory=dict)  # case -> axial slices fixed after propagating
    corrector: LoadedSlice | None = None  # what "Load mask of this slice" put in the correction editor
    running: threading.Event = field(default_factory=threading.Event)  # set while a segmentation runs
    editor_shows: tuple[int | None, int, str] | None = None  # (case, axial slice, window) in the support editor
    editor_redraw: bool = False  # paint was refused (StaleEditor): draw the support editor's slice again

    def __deepcopy__(self, memo: dict[int, Any]) -> Session:
        """Gradio deep-copies state values; a session (with its cancel event) is kept by reference."""
        return self


# ---------------------------------------------------------------- cases and viewing

def load_case(services: Services, session: Session, files: Sequence[str | Path] | str | Path | None) -> str:
    """Store an upload as new cases (DICOM: one per series found) and open the first."""
    if not files:
        raise HandlerError("choose a file to upload first")
    paths = [Path(f) for f in ([files] if isinstance(files, str | Path) else files)]
    cases, found = services.add_upload(paths)
    open_case(services, session, cases[0].id)
    loaded = ", ".join(f"**{c.name}** ({'x'.join(map(str, c.shape))}, {c.modality or 'unknown'})" for c in cases)
    opened = f"; **{cases[0].name}** is open" if len(cases) > 1 else ""
    return f"{found + ' ' if found else ''}Loaded {loaded}{opened}."


def open_case(services: Services, session: Session, case_id: int | None) -> CaseRecord:
    """Make a stored case the current one; its result starts empty, the supports (which belong to the task, not
    to a case) stay."""
    if case_id is None:
        raise HandlerError("pick a case")
    case = services.storage.cases.get(int(case_id))
    services.case_volume(case.id)
    session.case_id, session.result, session.corrector = case.id, None, None
    return case


def current_volume(services: Services, session: Session) -> Volume:
    if session.case_id is None:
        raise HandlerError("open or upload a case first")
    return services.case_volume(session.case_id)


def canonical(services: Services, session: Session) -> Volume:
    return to_canonical(current_volume(services, session))[0]


def slider_max(services: Services, session: Session, view: str) -> int:
    """Largest slice index of the open case in a view."""
    return display.depth(canonical(services, session).shape, view) - 1


def case_summary(services: Services, session: Session) -> str:
    """Markdown line about the open case: name, shape, spacing, modality."""
    if session.case_id is None:
        return "No case open."
    case = services.storage.cases.get(session.case_id)
    spacing = " x ".join(f"{s:.2f}" for s in current_volume(services, session).spacing)
    return (f"**{case.name}** (case {case.id}): shape {'x'.join(map(str, case.shape))}, spacing {spacing} mm, "
            f"modality {case.modality or 'unknown'}")


def render_slice(services: Services, session: Session, view: str, index: int, window: str, opacity: float,
                 mode: str = "overlay", class_name: str | None = None) -> np.ndarray:
    """RGB image of a slice with the result's class overlays (or a confidence/uncertainty map); coronal and
    sagittal slices are stretched to the voxel spacing's aspect."""
    image = _render(services, session, view, index, window, opacity, mode, class_name)
    if view == "axial":
        return image
    return display.with_aspect(image, *display.pixel_mm(canonical(services, session).spacing, view))


def _render(services: Services, session: Session, view: str, index: int, window: str, opacity: float,
            mode: str, class_name: str | None) -> np.ndarray:
    volume = canonical(services, session)
    grey = display.window_to_uint8(display.view_slice(volume.array, view, index), window)
    result = session.result if session.result and session.result.case_id == session.case_id else None
    if result is None:
        return np.repeat(grey[..., None], 3, axis=2)
    to_canonical_grid = to_canonical(current_volume(services, session))[1].apply
    if mode == "overlay":
        masks = to_canonical_grid(result.masks)
        colors = [services.storage.classes.get_or_create(n).color for n in result.segmentation.class_names]
        return display.overlay(grey, np.stack([display.view_slice(m, view, index) for m in masks]), colors, opacity)
    k = class_index(result, class_name)
    probability = display.view_slice(to_canonical_grid(result.segmentation.probabilities[k]), view, index)
    values = probability if mode == "confidence" else 1 - np.abs(2 * probability - 1)
    return display.heatmap(grey, values, opacity)


def class_index(result: Result, class_name: str | None) -> int:
    names = result.segmentation.class_names
    if class_name is None:
        return 0
    if class_name not in names:
        raise HandlerError(f"'{class_name}' is not in the result ({', '.join(names)})")
    return names.index(class_name)


def editor_value(services: Services, session: Session, index: int, window: str, class_name: str | None = None
                 ) -> dict[str, Any]:
    """ImageEditor value for the axial slice on the editors' fixed canvas: background, plus the result's mask of a
    class as an editable, semi-transparent layer."""
    volume = canonical(services, session)
    grey = display.window_to_uint8(display.view_slice(volume.array, "axial", index), window)
    value: dict[str, Any] = {"background": display.editor_background(grey), "layers": [], "composite": None}
    if class_name and session.result and session.result.case_id == session.case_id:
        mask = _result_plane(services, session, class_name, index)
        color = services.storage.classes.get_or_create(class_name).color
        value["layers"] = [display.mask_layer(mask, color, place(grey.shape), display.STROKE_ALPHA)]
    return value


def support_editor(services: Services, session: Session, index: int, window: str) -> dict[str, Any]:
    """The support editor's value for axial slice `index` of the open case, recorded as what it shows (the picture
    `add_support` checks the returned paint against)."""
    session.editor_shows = (session.case_id, int(index), window)
    return editor_value(services, session, int(index), window)


@dataclass(frozen=True)
class SliceRedraw:
    """What a slice change shows: the viewer's image and, for an axial slice the support editor does not show yet,
    the editor's new value (None: the editor keeps its paint)."""

    image: np.ndarray
    editor: dict[str, Any] | None


def view_image(services: Services, session: Session, view: str, index: int, window: str, opacity: float,
               mode: str, class_name: str | None) -> np.ndarray | None:
    """`render_slice`, or None for a stale request: an index the open case does not have, or another case opened
    while it was drawn (a redraw event of the previous case can be answered after the next case opened)."""
    case = session.case_id
    if case is None or not 0 <= index <= slider_max(services, session, view):
        return None
    image = render_slice(services, session, view, index, window, opacity, mode, class_name)
    return image if session.case_id == case else None


def redraw_slice(services: Services, session: Session, view: str, index: int, window: str, opacity: float,
                 mode: str, class_name: str | None) -> SliceRedraw | None:
    """The viewer and support editor for a slice change, or None for a stale one (see `view_image`; drawing the
    slider's change of the previous case after the next one opened would put that case's slice, or a clamped
    index of the new one as the paint index, in the editor)."""
    case = session.case_id
    image = view_image(services, session, view, index, window, opacity, mode, class_name)
    if image is None:
        return None
    shows = (case, index, window)
    editor = editor_value(services, session, index, window) if view == "axial" and session.editor_shows != shows \
        else None
    if session.case_id != case:
        return None
    if editor is not None:
        session.editor_shows = shows
    return SliceRedraw(image, editor)


def load_correction(services: Services, session: Session, class_name: str | None, index: int, window: str
                    ) -> dict[str, Any]:
    """The correction editor's value for a class on axial slice `index`; remembers it so that Apply changes only
    what was drawn, on that slice and class."""
    if not class_name:
        raise HandlerError("pick the result class to correct")
    result = session.result
    if result is None or result.case_id != session.case_id:
        raise HandlerError("run a segmentation on this case first")
    class_index(result, class_name)
    value = editor_value(services, session, index, window, class_name)
    session.corrector = LoadedSlice(result.case_id, class_name, int(index), display.painted_canvas(value),
                                    value["background"])
    return value


def _result_plane(services: Services, session: Session, class_name: str, index: int) -> np.ndarray:
    """The result's mask of a class on axial slice `index`, display-oriented."""
    k = class_index(session.result, class_name)
    canon_mask = to_canonical(current_volume(services, session))[1].apply(session.result.masks[k])
    return display.view_slice(canon_mask, "axial", index)


def _painted_volume(services: Services, session: Session, painted: dict[str, Any] | None, index: int) -> np.ndarray:
    """The editor's painted pixels on axial slice `index` as a mask on the case's own grid."""
    volume = current_volume(services, session)
    canon, transform = to_canonical(volume)
    shape2d = display.view_slice(canon.array, "axial", index).shape
    mask2d = display.unview_slice(display.painted_mask(painted, shape2d), canon.ndim)
    full = np.zeros(canon.shape, dtype=bool)
    if canon.ndim == 3:
        full[:, :, int(index)] = mask2d
    else:
        full[:] = mask2d
    return transform.invert(full)


def _fills_slice(services: Services, session: Session, mask: np.ndarray, index: int) -> bool:
    """True if the painted mask covers every pixel of the axial slice it was painted on."""
    canon = to_canonical(current_volume(services, session))[1].apply(mask)
    return bool(canon[:, :, int(index)].all() if canon.ndim == 3 else canon.all())


# ---------------------------------------------------------------- supports

def add_support(services: Services, session: Session, painted: dict[str, Any] | None, class_name: str,
                index: int) -> str:
    """Store the mask painted on the current axial slice as an annotation of a class and use it as a support."""
    name = (class_name or "").strip()
    if not name:
        raise HandlerError("name the class you painted (or pick an existing one)")
    shown = session.editor_shows
    if shown is not None and not (shown[:2] == (session.case_id, int(index)) and display.shows_background(
            painted, editor_value(services, session, int(index), shown[2])["background"])):
        raise StaleEditor(f"the support editor no longer shows slice {int(index)} of this case (its Undo brings back "
                          "the picture of an earlier slice or case, its Clear removes it): nothing was added; the "
                          "slice is drawn again, paint on it")
    mask = _painted_volume(services, session, painted, index)
    if not mask.any():
        raise HandlerError("nothing painted: draw on the slice with the brush first")
    if _fills_slice(services, session, mask, index):
        raise HandlerError("the painted mask covers the whole slice: paint only the structure, not the background")
    record = services.storage.annotations.add(session.case_id, name, mask, stored_slices(mask),
                                              author=services.config.author)
    case = services.storage.cases.get(record.case_id)
    session.supports.append(SupportRef("annotation", record.id, record.case_id, name,
                                       f"{name} on {case.name} slice {index}"))
    return f"Support added: **{name}** on slice {index} ({int(mask.sum())} voxels)."


def stored_supports(services: Services) -> list[tuple[str, str]]:
    """(label, key) of every stored annotation and accepted correction, for the support picker."""
    choices = []
    for case in services.storage.cases.list():
        for a in services.storage.annotations.list_for_case(case.id):
            choices.append((f"{a.class_name} · {case.name} · annotation {a.id}", f"annotation:{a.id}"))
        for c in services.storage.corrections.list_for_case(case.id, status="accepted"):
            choices.append((f"{c.class_name} · {case.name} · accepted mask {c.id}", f"correction:{c.id}"))
    return choices


def add_stored_support(services: Services, session: Session, key: str | None) -> str:
    """Use a stored annotation or accepted correction (of any case) as a support."""
    if not key:
        raise HandlerError("pick a stored annotation or accepted mask")
    kind, _, raw_id = key.partition(":")
    repo = {"annotation": services.storage.annotations, "correction": services.storage.corrections}.get(kind)
    if repo is None:
        raise HandlerError(f"unknown support {key!r}")
    record = repo.get(int(raw_id))
    case = services.storage.cases.get(record.case_id)
    session.supports.append(SupportRef(kind, record.id, record.case_id, record.class_name,
                                       f"{record.class_name} from {case.name} ({kind} {record.id})"))
    return f"Support added: **{record.class_name}** from {case.name}."


def support_rows(session: Session) -> list[list[str]]:
    return [[s.class_name, s.label] for s in session.supports]


def clear_supports(session: Session) -> str:
    session.supports = []
    return "Supports cleared."


def remove_support(session: Session, row: int | None) -> str:
    """Drop one support (its row in the supports list); the stored annotation stays."""
    if row is None or not 0 <= int(row) < len(session.supports):
        raise HandlerError("click a support in the list first, then remove it")
    ref = session.supports.pop(int(row))
    return f"Support removed: {ref.label}."


def add_label_file_support(services: Services, session: Session, path: str | Path | None, label: float | None,
                           class_name: str) -> str:
    """Store one label value of a label-map file (NIfTI/PNG/NumPy, the open case's shape) as an annotation of a
    class and use it as a support."""
    name = (class_name or "").strip()
    if not name:
        raise HandlerError("name the class of the label file (type it in the class name box)")
    if not path:
        raise HandlerError("choose a label file (NIfTI, PNG or NumPy label map) first")
    if label is None or label != int(label) or label < 1:
        raise HandlerError(f"the label value must be a whole number of at least 1, got {label}")
    volume = current_volume(services, session)
    source = Path(path)
    try:
        labels = read_mask(source, reference=volume, max_bytes=services.config.upload_limit_bytes)
    except IrisInputError as error:
        raise HandlerError(str(error).replace(str(source.parent) + "/", "")) from error
    mask = labels == int(label)
    if not mask.any():
        present = ", ".join(str(v) for v in np.unique(labels) if v) or "none"
        raise HandlerError(f"{source.name} has no voxel with label {int(label)} (labels present: {present})")
    record = services.storage.annotations.add(session.case_id, name, mask, stored_slices(mask),
                                              author=services.config.author)
    case = services.storage.cases.get(record.case_id)
    session.supports.append(SupportRef("annotation", record.id, record.case_id, name,
                                       f"{name} on {case.name} from {source.name} (label {int(label)})"))
    return f"Support added: **{name}** from {source.name}, label {int(label)} ({int(mask.sum())} voxels)."


def class_color(services: Services, name: str | None) -> str | None:
    """A stored class's colour (None for a name not stored yet)."""
    if not name or not name.strip():
        return None
    try:
        return services.storage.classes.get(name.strip()).color
    except StorageError:
        return None


def legend(services: Services, session: Session) -> str:
    """HTML colour legend of the result's classes as the viewer draws them."""
    result = session.result if session.result and session.result.case_id == session.case_id else None
    if result is None:
        return ""
    items = []
    for name in result.segmentation.class_names:
        color = services.storage.classes.get_or_create(name).color
        items.append(f'<span class="legend-item"><span style="display:inline-block;width:0.9em;height:0.9em;'
                     f'background:{color};border-radius:2px;margin-right:4px"></span>{html.escape(name)}</span>')
    return "<div id='legend-items'>" + " &nbsp; ".join(items) + "</div>"


def _support_mask(services: Services, ref: SupportRef) -> np.ndarray:
    repo = services.storage.annotations if ref.kind == "annotation" else services.storage.corrections
    return repo.load_mask(ref.record_id).astype(bool)


def build_supports(services: Services, refs: Sequence[SupportRef]) -> tuple[list[Support], list[str]]:
    """One Support per case (label map over all classes, 1..K in class order) and the class names."""
    names = list(dict.fromkeys(r.class_name for r in refs))
    supports = []
    for case_id in dict.fromkeys(r.case_id for r in refs):
        volume = services.case_volume(case_id)
        labels = np.zeros(volume.shape, dtype=np.uint8)
        for ref in (r for r in refs if r.case_id == case_id):
            mask = _support_mask(services, ref)
            if mask.shape != volume.shape:
                raise HandlerError(f"stored mask {ref.label} does not match its case's shape")
            labels[mask] = names.index(ref.class_name) + 1
        supports.append(Support(volume, labels))
    return supports, names


# ---------------------------------------------------------------- segmentation

def run_segmentation(services: Services, session: Session, strategy: str, bank_classes: Sequence[str] = (),
                     tuning_steps: int = 20, tuning_lr: float = 1e-2, progress: Progress | None = None) -> str:
    """Segment the open case with a strategy; store one prediction per class; report time and volumes."""
    key = STRATEGIES.get(strategy, strategy)
    query = current_volume(services, session)
    report = progress or (lambda fraction, message: None)
    session.cancel.clear()

    def checked(fraction: float, message: str) -> None:
        if session.cancel.is_set():
            raise Cancelled("segmentation cancelled")
        report(fraction, message)

    if key == "memory_bank":
        supports, names = [], list(bank_classes)
        if not names:
            raise HandlerError("memory bank: pick one or more stored classes")
    else:
        if not session.supports:
            raise HandlerError("add a support first: paint a mask on a slice and name its class")
        supports, names = build_supports(services, session.supports)
        if key == "one_shot" and len(supports) > 1:
            raise HandlerError(f"one-shot uses supports from one image; yours come from {len(supports)} images: "
                               "use context ensemble or in-context tuning")
    start = time.perf_counter()
    session.running.set()
    try:
        with services.model_lock:  # not services.lock: viewing and storing never wait for a segmentation
            segmentation = services.segmenter.segment(query, key, supports, names, tuning_steps=int(tuning_steps),
                                                      tuning_lr=float(tuning_lr), progress=checked)
    finally:
        session.running.clear()
    if session.cancel.is_set():
        raise Cancelled("segmentation cancelled")
    seconds = time.perf_counter() - start
    ids = {}
    for name, mask in zip(names, segmentation.masks, strict=True):
        ids[name] = services.storage.predictions.add(session.case_id, name, mask, key, segmentation.model_version,
                                                     {"seconds": round(seconds, 3), "supports": len(supports),
                                                      "input_scale": segmentation.input_scale}).id
    session.result = Result(session.case_id, segmentation, ids, segmentation.masks.copy(), seconds)
    return f"{strategy} finished in {seconds:.2f} s{_thin_note(segmentation)}: " + ", ".join(
        f"{row[0]} {row[1]} ({row[3]} voxels)" for row in result_rows(services, session))


def _thin_note(segmentation: VolumeSegmentation) -> str:
    """What the engine did differently for a thin structure, for the status line (empty otherwise)."""
    if segmentation.input_scale <= 1:
        return ""
    thresholds = segmentation.embedding.thresholds() if segmentation.embedding is not None else None
    calibrated = "" if thresholds is None else \
        "; threshold taken from the support: " + ", ".join(f"{t:.2f}" for t in thresholds)
    strided = "" if segmentation.slice_stride <= 1 else \
        f"; one slice in {segmentation.slice_stride} segmented, those between interpolated in z"
    return f" (thin structure: read at twice the model's input size{calibrated}{strided})"


def cancel_segmentation(session: Session, wait_s: float = CANCEL_WAIT_S) -> str:
    """Ask the running segmentation to stop and wait until it has."""
    if not session.running.is_set():
        return "Nothing to cancel: no segmentation is running."
    session.cancel.set()
    deadline = time.monotonic() + wait_s
    while session.running.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    if session.running.is_set():
        return "Cancelling… the current step is still finishing; the result will not be kept."
    return "Segmentation cancelled."


def result_rows(services: Services, session: Session) -> list[list[str]]:
    """Per class: size (mL for volumes; mm² for images whose file states a pixel spacing, else pixels), mean
    confidence inside the mask, voxel count."""
    result = session.result
    if result is None:
        return []
    volume = services.case_volume(result.case_id)
    voxel = float(np.prod(volume.spacing))
    stated = volume.ndim == 3 or (volume.modality != "photo" and not np.allclose(volume.spacing, 1.0))
    rows = []
    for k, name in enumerate(result.segmentation.class_names):
        mask = result.masks[k]
        if volume.ndim == 3:
            size = f"{mask.sum() * voxel / 1000:.2f} mL"
        else:
            size = f"{mask.sum() * voxel:.1f} mm²" if stated else f"{int(mask.sum())} px"
        inside = result.segmentation.probabilities[k][mask]
        rows.append([name, size, f"{inside.mean():.2f}" if inside.size else "–", str(int(mask.sum()))])
    return rows


def apply_correction(services: Services, session: Session, class_name: str, index: int,
                     painted: dict[str, Any] | None) -> str:
    """Put what the correction editor shows into a class's mask on one axial slice. When that slice and class were
    loaded with `load_correction`, only the pixels drawn or erased change; otherwise the drawing replaces the slice."""
    result = session.result
    if result is None or result.case_id != session.case_id:
        raise HandlerError("run a segmentation on this case first")
    k = class_index(result, class_name)
    canon, transform = to_canonical(current_volume(services, session))
    index = int(index)
    before = _result_plane(services, session, class_name, index)
    loaded = session.corrector
    if loaded is not None and (loaded.case_id, loaded.class_name, loaded.index) == (result.case_id, class_name, index):
        if not display.shows_background(painted, loaded.background):
            raise StaleEditor(f"the correction editor no longer shows slice {index} (its Undo brings back the "
                              "picture of an earlier slice, its Clear removes it): nothing was changed; the slice's "
                              "mask is loaded again, edit it there")
        placement = place(before.shape)
        drawn = display.painted_canvas(painted)
        drawn = np.zeros_like(loaded.canvas) if drawn is None else drawn
        changed = touched(drawn, loaded.canvas, placement)
        after = before.copy()
        after[changed] = from_canvas(drawn, placement)[changed]
    else:
        after = display.painted_mask(painted, before.shape)
    masks = transform.apply(result.masks[k])
    if canon.ndim == 3:
        masks[:, :, index] = display.unview_slice(after, 3)
    else:
        masks = after
    result.masks[k] = transform.invert(masks)
    added, removed = int((after & ~before).sum()), int((before & ~after).sum())
    return (f"Slice {index} of **{class_name}** updated: {added} voxels added, {removed} removed "
            f"({int(after.sum())} voxels on it).")


def accept(services: Services, session: Session, progress: Progress | None = None) -> str:
    """Store the (edited) masks as accepted corrections and fold them into the classes' prototypes (EMA)."""
    result = session.result
    if result is None or result.case_id != session.case_id:
        raise HandlerError("nothing to accept: run a segmentation on this case first")
    report = progress or (lambda fraction, message: None)
    volume = services.case_volume(result.case_id)
    version = services.model_version
    lines = []
    names = result.segmentation.class_names
    for k, name in enumerate(names):
        report(k / len(names), f"storing {name}")
        mask = result.masks[k]
        correction = services.storage.corrections.accept(result.case_id, name, mask, services.config.author,
                                                         prediction_id=result.prediction_ids[name])
        if not mask.any():
            lines.append(f"{name}: empty mask stored (correction {correction.id}); prototype unchanged")
            continue
        with services.lock:
            try:
                tokens, fine = prototype_tokens(services, volume, mask, name)
            except IrisInputError as error:
                lines.append(f"{name}: accepted (correction {correction.id}); prototype unchanged: {error}")
                continue
            bank = services.segmenter.memory_bank
            bank.update(name, tokens, momentum=services.config.ema_momentum, fine_tokens=fine)
            record = services.storage.prototypes.upsert(name, version, bank.entry_bytes(name, version),
                                                        update_count=bank.count(name), reason="accept")
        lines.append(f"{name}: accepted (correction {correction.id}), prototype updated "
                     f"({record.update_count} update{'s' if record.update_count != 1 else ''})")
    return "Accepted. " + "; ".join(lines)


def _previous_prototype(services: Services, class_name: str, version: str) -> tuple[bytes, int] | None:
    """The prototype value before the newest not-yet-undone accept (None: that accept created it)."""
    skip = 0
    for entry in reversed(services.storage.prototypes.history(class_name, version)):
        if entry.reason == "undo":
            skip += 1
        elif entry.reason == "accept":
            if skip == 0:
                return entry.embedding, entry.update_count
            skip -= 1
    return None


def undo_accept(services: Services, session: Session) -> str:
    """Undo the newest accepted mask of the open case and restore its class's previous prototype."""
    if session.case_id is None:
        raise HandlerError("open a case first")
    correction = services.storage.corrections.undo_last(session.case_id)
    if correction is None:
        raise HandlerError("nothing to undo on this case")
    name, version = correction.class_name, services.model_version
    if correction.model_version != version or services.storage.prototypes.get(name, version) is None:
        return f"Undid the accepted **{name}** mask (correction {correction.id})."
    previous = _previous_prototype(services, name, version)
    with services.lock:
        bank = MemoryBank.from_state_dict(services.segmenter.memory_bank.state_dict())
        if previous is None:
            bank.remove(name)
            note = "its prototype is no longer used by the memory bank (the store keeps the row; see report)"
        else:
            bank.set_entry(name, previous[0], previous[1])
            services.storage.prototypes.upsert(name, version, previous[0], update_count=previous[1], reason="undo")
            note = "its prototype was restored"
        services.segmenter.memory_bank = bank
    return f"Undid the accepted **{name}** mask (correction {correction.id}); {note}."


def export_mask(services: Services, session: Session, fmt: str, index: int = 0) -> Path:
    """Write the (edited) result: NIfTI with the input's affine, PNG (2D mask or overlay of the slice), DICOM-SEG."""
    result = session.result
    if result is None:
        raise HandlerError("nothing to download: run a segmentation first")
    volume = services.case_volume(result.case_id)
    out = Path(tempfile.mkdtemp(prefix="iris_export_"))
    stem = f"case{result.case_id}_mask"
    labels = VolumeSegmentation(result.segmentation.probabilities, result.masks, result.segmentation.class_names,
                                result.segmentation.strategy, result.segmentation.model_version).label_map()
    if fmt == "NIfTI":
        return write_mask(labels, volume, out / f"{stem}.nii.gz")
    if fmt == "PNG":
        if volume.ndim == 2:
            return write_mask(labels, volume, out / f"{stem}.png")
        canon, transform = to_canonical(volume)
        masks = transform.apply(result.masks)
        return write_overlay_png(display.view_slice(canon.array, "axial", index),
                                 np.stack([display.view_slice(m, "axial", index) for m in masks]),
                                 out / f"{stem}_slice{index}.png")
    if fmt == "DICOM-SEG":
        if not volume.metadata.get("dicom_datasets"):
            raise HandlerError("DICOM-SEG needs a DICOM input; download NIfTI for this case")
        return write_dicom_seg(result.masks, volume, result.segmentation.class_names, out / f"{stem}.dcm")
    raise HandlerError(f"unknown format {fmt!r}")


# ---------------------------------------------------------------- cases & classes tab

def list_cases(services: Services) -> list[list[Any]]:
    """Rows: id, name, shape, modality, annotations, accepted masks, created."""
    rows = []
    for case in services.storage.cases.list():
        rows.append([case.id, case.name, "x".join(map(str, case.shape)), case.modality or "",
                     len(services.storage.annotations.list_for_case(case.id)),
                     len(services.storage.corrections.list_for_case(case.id, status="accepted")),
                     case.created_at.strftime("%Y-%m-%d %H:%M")])
    return rows


def delete_case(services: Services, session: Session, case_id: int | None, confirmed: bool) -> str:
    """Delete a case and everything drawn on it, only once the user confirmed."""
    if case_id is None:
        raise HandlerError("pick a case to delete")
    if not confirmed:
        raise HandlerError("tick 'I understand this deletes the case and its masks' to confirm")
    case = services.storage.cases.get(int(case_id))
    services.storage.cases.delete(case.id)
    services.forget_case(case.id)
    if session.case_id == case.id:
        session.case_id, session.supports, session.result = None, [], None
    session.supports = [s for s in session.supports if s.case_id != case.id]
    return f"Deleted case {case.id} ({case.name})."


def class_names(services: Services) -> list[str]:
    """Classes in the store and in the memory bank."""
    stored = [c.name for c in services.storage.classes.list()]
    return sorted(set(stored) | set(services.segmenter.memory_bank.class_names))


def prototype_rows(services: Services, class_name: str | None) -> list[list[Any]]:
    """A class's prototype per model version and its earlier values, newest first."""
    if not class_name:
        return []
    rows = []
    for proto in services.storage.prototypes.list():
        if proto.class_name != class_name:
            continue
        rows.append([proto.model_version, "current", proto.update_count,
                     proto.updated_at.strftime("%Y-%m-%d %H:%M:%S")])
        for h in reversed(services.storage.prototypes.history(class_name, proto.model_version)):
            rows.append([proto.model_version, f"before {h.reason}", h.update_count,
                         h.created_at.strftime("%Y-%m-%d %H:%M:%S")])
    return rows


def bank_summary(services: Services) -> str:
    """The memory bank's classes grouped by dataset (the part before '/'), each group folded."""
    bank = services.segmenter.memory_bank
    groups: dict[str, list[str]] = {}
    for name in bank.class_names:
        group, _, short = name.rpartition("/")
        fine = ", 256 px" if bank.has_fine(name) else ""
        groups.setdefault(group or "studio", []).append(f"{short} ({bank.count(name)}{fine})")
    title = f"Memory bank of model `{services.model_version}`: {len(bank.class_names)} classes"
    if not groups:
        return f"{title} (empty)"
    folded = "\n".join(f"<details><summary>{group} ({len(items)})</summary>{', '.join(items)}</details>"
                       for group, items in sorted(groups.items()))
    return (f"{title}; pick them by typing in the memory-bank class box (update counts; '256 px': a thin class, "
            f"retrieved at twice the input size).\n\n{folded}")
