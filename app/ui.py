"""Gradio layout of the studio; every callback is a thin wrapper over app.handlers / app.training."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from gradio import processing_utils

from app import display, handlers, propagation, training
from app.demo import DEMO_NAME
from app.editor_canvas import editor_options
from app.handlers import Session
from app.refinement_ui import build_click_panel, wire_click_panel
from app.services import Services
from iris_engine.errors import IrisInputError
from storage.errors import StorageError

log = logging.getLogger(__name__)
EXPECTED = (handlers.HandlerError, IrisInputError, StorageError)
VIEW_HEIGHT = display.MIN_DISPLAY + 32  # px of the viewer and both editors (room for the toolbars)
BRUSH_RADIUS = 12  # px of the editor's canvas (CANVAS px square): Gradio's brush size is a radius
CORRECTOR_RADIUS = 8
NEUTRAL_STROKE = "#ff3030"  # support strokes before a class is chosen


def _atomic_save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:  # noqa: A002
    """Gradio's image cache with an atomic write: files are named by content, and Gradio rewrites one in place
    while another request may be streaming it (concurrent identical outputs then fail with a short body)."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    if not target.is_file() or target.stat().st_size != len(data):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)


processing_utils.save_pil_to_cache = _atomic_save_pil_to_cache


WHEEL_JS = """() => {
  document.addEventListener("wheel", (event) => {
    const viewer = document.querySelector("#viewer");
    const range = document.querySelector("#slice input[type=range]");
    if (!viewer || !range || !viewer.contains(event.target) || range.disabled) return;
    event.preventDefault();
    const step = Math.sign(event.deltaY);
    const value = Math.min(Number(range.max), Math.max(Number(range.min), Number(range.value) + step));
    if (value === Number(range.value)) return;
    range.value = value;
    range.dispatchEvent(new Event("input", {bubbles: true}));
    range.dispatchEvent(new Event("change", {bubbles: true}));
  }, {passive: false});
}"""  # the mouse wheel over the viewer steps the slice slider


def stroke_brush(radius: int, color: str | None) -> gr.Brush:
    """A semi-transparent brush in a class's colour (a neutral one before the class is known)."""
    return gr.Brush(default_size=radius, colors=[(color or NEUTRAL_STROKE, display.STROKE_ALPHA / 255)],
                    color_mode="fixed")


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any failure into a readable gr.Error; the server keeps running."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EXPECTED as error:
            log.info("%s refused: %s", fn.__name__, error)
            raise gr.Error(str(error), print_exception=False) from error
        except gr.Error:
            raise
        except Exception as error:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(error).__name__}): {error}", print_exception=False) from error

    return wrapper


def keep(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Like guard, for events that redraw the viewer or editors: a failure leaves every output as it was (no
    'Error' badge, no blank image) and shows its message as a warning."""
    guarded = guard(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return guarded(*args, **kwargs)
        except gr.Error as error:
            gr.Warning(error.message, duration=20)
            return gr.skip()

    return wrapper


def build_ui(services: Services) -> gr.Blocks:
    """The studio: Segment, Cases & classes, Training tabs."""
    h, t = handlers, training

    def gradio_progress(progress: gr.Progress) -> Callable[[float, str], None]:
        return lambda fraction, message: progress(fraction, desc=message)

    def view_outputs(session: Session, view: str, index: int, window: str, opacity: float, mode: str,
                     result_class: str | None) -> Any:
        image = h.view_image(services, session, view, int(index), window, opacity, mode, result_class)
        return gr.skip() if image is None else display.enlarge(image)  # None: a stale redraw of another case

    def case_choices() -> list[tuple[str, int]]:
        return [(f"{c.id}: {c.name}", c.id) for c in services.storage.cases.list()]

    def opened(session: Session, message: str) -> tuple[Any, ...]:
        volume = h.canonical(services, session)
        window = display.default_window(h.current_volume(services, session).modality)
        top = display.depth(volume.shape, "axial") - 1
        middle = top // 2
        return (session, gr.update(choices=case_choices(), value=session.case_id), h.case_summary(services, session),
                gr.update(maximum=max(top, 1), value=middle, interactive=top > 0), "axial", window,
                display.enlarge(h.render_slice(services, session, "axial", middle, window, 0.5)),
                h.support_editor(services, session, middle, window), middle, h.support_rows(session), message,
                h.result_rows(services, session), gr.update(value=[]), gr.update(choices=[], value=None), None,
                h.legend(services, session))

    with gr.Blocks(title="IRIS Studio") as demo:
        session = gr.State(lambda: Session())
        paint_index = gr.State(0)
        gr.Markdown("# IRIS Studio — in-context segmentation")
        banner = gr.Markdown(f"⚠️ **{services.warning}**" if services.warning else "", visible=bool(services.warning),
                             elem_id="weights-warning")
        with gr.Tab("Segment"):
            with gr.Row():
                upload = gr.File(label="Upload NIfTI, DICOM (any file names, many series, .zip), PNG/JPEG/TIFF, NumPy",
                                 file_count="multiple", scale=2)
                with gr.Column(scale=1):
                    case_pick = gr.Dropdown(label="Stored case", choices=case_choices(), elem_id="case-pick")
                    open_btn = gr.Button("Open case")
            case_info = gr.Markdown("No case open.", elem_id="case-info")
            with gr.Row():
                with gr.Column(scale=1):
                    viewer = gr.Image(label="Viewer", interactive=False, elem_id="viewer",
                                      height=VIEW_HEIGHT)
                    with gr.Row():
                        view = gr.Radio(list(display.VIEWS), value="axial", label="View")
                        window = gr.Dropdown(list(display.WINDOWS), value="MR / auto", label="Window / level",
                                             allow_custom_value=True, elem_id="window")
                    with gr.Row():
                        level = gr.Number(label="Level (manual window; Enter applies)", elem_id="level")
                        width = gr.Number(label="Width", elem_id="width")
                    index = gr.Slider(0, 1, value=0, step=1, label="Slice (wheel over the viewer, arrow keys, or "
                                      "type a number)", elem_id="slice")
                    legend_box = gr.HTML("", elem_id="legend")
                    with gr.Row():
                        opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
                        mode = gr.Radio(list(handlers.DISPLAY_MODES), value="overlay", label="Show")
                with gr.Column(scale=1):
                    with gr.Tab("1 · Support"):
                        editor = gr.ImageEditor(label="Paint the structure on this axial slice",
                                                elem_id="support-editor", brush=stroke_brush(BRUSH_RADIUS, None),
                                                eraser=gr.Eraser(default_size=BRUSH_RADIUS), height=VIEW_HEIGHT,
                                                **editor_options())
                        with gr.Row():
                            class_name = gr.Textbox(label="Class name (what you type is the name)", max_lines=1,
                                                    placeholder="e.g. liver", elem_id="class-name")
                            class_suggest = gr.Dropdown(label="…or pick a known class", choices=h.class_names(services),
                                                        value=None, elem_id="class-suggest")
                            add_btn = gr.Button("Add support", variant="primary", elem_id="add-support")
                        with gr.Row():
                            stored = gr.Dropdown(label="…or a stored mask from any case",
                                                 choices=h.stored_supports(services))
                            add_stored_btn = gr.Button("Add stored support")
                        with gr.Row():
                            label_file = gr.File(label="…or a label file of the open case (NIfTI/PNG/NumPy label map)",
                                                 elem_id="label-file", scale=2)
                            label_value = gr.Number(value=1, precision=0, label="Label value", minimum=1,
                                                    elem_id="label-value", scale=1)
                            add_file_btn = gr.Button("Add label file as support", elem_id="add-label-file", scale=1)
                        supports = gr.Dataframe(headers=["class", "support"], elem_id="supports", interactive=False,
                                                label="Supports (kept when you open another case; click one to "
                                                      "select it)")
                        with gr.Row():
                            remove_btn = gr.Button("Remove selected support", size="sm", elem_id="remove-support")
                            clear_btn = gr.Button("Clear supports", size="sm")
                    with gr.Tab("2 · Segment"):
                        strategy = gr.Radio(list(handlers.STRATEGIES), value="One-shot", label="Strategy",
                                            elem_id="strategy")
                        bank_classes = gr.Dropdown(label="Memory-bank classes (type to search; cleared when "
                                                         "another case opens)", multiselect=True,
                                                   choices=services.segmenter.memory_bank.class_names,
                                                   elem_id="bank-classes")
                        with gr.Row():
                            steps = gr.Slider(1, 100, value=20, step=1, label="Tuning steps")
                            lr = gr.Number(value=1e-2, label="Tuning learning rate")
                        with gr.Row():
                            run_btn = gr.Button("Segment", variant="primary", elem_id="run-segmentation")
                            cancel_btn = gr.Button("Cancel")
                        results = gr.Dataframe(headers=["class", "size", "mean confidence", "voxels"],
                                               label="Result", interactive=False, elem_id="results")
                        result_class = gr.Dropdown(label="Class (confidence view, correction)", choices=[])
                    with gr.Tab("2b · Propagate", elem_id="propagate-tab") as propagate_tab:
                        gr.Markdown("Paint the structure on a few axial slices of this case (1 · Support: paint, "
                                    "name, Add support, on each slice; paint every class that shows on a painted "
                                    "slice), then fill the other slices. Fix any slice in 3 · Correct & accept and "
                                    "propagate again: only the slices it affects are recomputed.")
                        painted_table = gr.Dataframe(headers=["slice", "classes", "kind"], label="Painted slices",
                                                     interactive=False, elem_id="painted-slices")
                        with gr.Row():
                            propagate_btn = gr.Button("Propagate", variant="primary", elem_id="propagate")
                            accept_all_btn = gr.Button("Accept all", elem_id="accept-all")
                        slice_table = gr.Dataframe(headers=["slice", "kind", "voxels per class"], interactive=False,
                                                   label="Result by slice (scroll with the Slice slider)",
                                                   elem_id="propagated-slices")
                    with gr.Tab("3 · Correct & accept"):
                        corrector = gr.ImageEditor(label="Edit the predicted mask on this slice",
                                                   elem_id="corrector", height=VIEW_HEIGHT,
                                                   brush=stroke_brush(CORRECTOR_RADIUS, None),
                                                   eraser=gr.Eraser(default_size=CORRECTOR_RADIUS),
                                                   **editor_options())
                        with gr.Row():
                            load_fix_btn = gr.Button("Load mask of this slice")
                            apply_fix_btn = gr.Button("Apply edit to slice")
                        click_panel = build_click_panel(VIEW_HEIGHT)
                        with gr.Row():
                            accept_btn = gr.Button("Accept", variant="primary", elem_id="accept")
                            undo_btn = gr.Button("Undo last accept")
                        with gr.Row():
                            fmt = gr.Radio(["NIfTI", "PNG", "DICOM-SEG"], value="NIfTI", label="Download as")
                            export_btn = gr.Button("Prepare download")
                        download = gr.File(label="Download", interactive=False)
            status = gr.Markdown("", elem_id="status")
        with gr.Tab("Cases & classes"):
            cases_table = gr.Dataframe(headers=["id", "name", "shape", "modality", "annotations", "accepted",
                                                "created"], value=h.list_cases(services), interactive=False)
            with gr.Row():
                refresh_btn = gr.Button("Refresh")
                manage_pick = gr.Dropdown(label="Case", choices=case_choices())
                reopen_btn = gr.Button("Reopen in Segment tab")
                confirm = gr.Checkbox(label="I understand this deletes the case and its masks")
                delete_btn = gr.Button("Delete case", variant="stop")
            bank_info = gr.Markdown(h.bank_summary(services), elem_id="bank-info")
            proto_class = gr.Dropdown(label="Class", choices=h.class_names(services), elem_id="proto-class")
            proto_table = gr.Dataframe(headers=["model version", "value", "updates", "time"], interactive=False,
                                       label="Prototype history", elem_id="proto-table")
        with gr.Tab("Training"):
            curated = gr.CheckboxGroup(label="Curated cases (accepted masks and annotations)",
                                       choices=t.curated_cases(services))
            with gr.Row():
                iterations = gr.Slider(10, 2000, value=services.config.train_iterations, step=10, label="Iterations")
                train_btn = gr.Button("Start fine-tuning", variant="primary")
                stop_btn = gr.Button("Cancel run")
                activate_btn = gr.Button("Use the new weights")
            run_id = gr.State(t.latest_run_id(services))
            train_status = gr.Markdown("No training run yet.")
            loss_plot = gr.LinePlot(pd.DataFrame({"iteration": [], "loss": []}), x="iteration", y="loss",
                                    title="Training loss")
            timer = gr.Timer(2.0)

        view_inputs = [session, view, index, window, opacity, mode, result_class]
        open_outputs = [session, case_pick, case_info, index, view, window, viewer, editor, paint_index, supports,
                        status, results, bank_classes, result_class, corrector, legend_box]

        @keep
        def load_upload(s: Session, files: list[str] | None) -> tuple[Any, ...]:
            return opened(s, h.load_case(services, s, files))

        def on_upload(s: Session, files: list[str] | None) -> tuple[Any, ...]:
            """Load, and empty the upload box in the same event (read or refused) so that the next upload is read
            alone; a separate clearing event could race with a quick next upload."""
            loaded = load_upload(s, files)
            return (*(loaded if isinstance(loaded, tuple) else [gr.skip()] * len(open_outputs)), None)

        @keep
        def on_open(s: Session, case_id: int | None) -> tuple[Any, ...]:
            case = h.open_case(services, s, case_id)
            return opened(s, f"Opened **{case.name}**.")

        def on_start(s: Session) -> tuple[Any, ...]:
            cases = services.storage.cases.list()
            demo_cases = [c for c in cases if c.name == DEMO_NAME]
            if not cases:
                return (s, gr.update(), "No case yet: upload one.", *[gr.update()] * 13)
            case = (demo_cases or cases)[-1]
            h.open_case(services, s, case.id)
            return opened(s, f"Demo case **{case.name}** is open: paint a structure, name it, add it as a support.")

        upload.upload(on_upload, [session, upload], [*open_outputs, upload])
        open_btn.click(on_open, [session, case_pick], open_outputs)
        demo.load(on_start, [session], open_outputs)

        @keep
        def on_view(s: Session, v: str, i: int, w: str, o: float, m: str, c: str | None) -> tuple[Any, ...]:
            top = h.slider_max(services, s, v)
            i = top // 2  # the indices of another view mean another place: start in its middle
            return gr.update(maximum=max(top, 1), value=i), view_outputs(s, v, i, w, o, m, c)

        @keep
        def on_slice(s: Session, v: str, i: int, w: str, o: float, m: str, c: str | None) -> tuple[Any, ...]:
            redraw = h.redraw_slice(services, s, v, int(i), w, o, m, c)
            if redraw is None:
                return gr.skip(), gr.skip(), gr.skip()
            image = display.enlarge(redraw.image)
            if redraw.editor is None:  # never wipe paint with the same slice
                return image, gr.skip(), gr.skip()
            return image, redraw.editor, int(i)

        light = {"concurrency_id": "view", "concurrency_limit": 4}  # redraws never wait behind a segmentation
        view.input(on_view, view_inputs, [index, viewer], **light)
        index.change(on_slice, view_inputs, [viewer, editor, paint_index], trigger_mode="always_last",
                     show_progress="hidden", **light)
        demo.load(None, None, None, js=WHEEL_JS)
        for control in (window, opacity, mode, result_class):
            control.change(keep(view_outputs), view_inputs, [viewer], **light)
        gr.on([level.submit, width.submit], keep(display.manual_window), [level, width], [window])

        def class_brush(name: str | None) -> Any:
            return gr.update(brush=stroke_brush(BRUSH_RADIUS, h.class_color(services, name)))

        class_suggest.input(lambda name: name, [class_suggest], [class_name]).then(class_brush, [class_name], [editor],
                                                                                  show_progress="hidden")
        gr.on([class_name.submit, class_name.blur], class_brush, [class_name], [editor], show_progress="hidden")

        @guard
        def on_add(s: Session, value: dict[str, Any], name: str, i: int) -> tuple[Any, ...]:
            try:
                message = h.add_support(services, s, value, name, i)
            except h.StaleEditor as error:
                s.editor_redraw = True
                gr.Warning(str(error), duration=20)
                return gr.skip(), f"⚠️ {error}", gr.skip(), gr.skip()
            return h.support_rows(s), message, gr.update(choices=h.class_names(services)), \
                gr.update(choices=h.stored_supports(services))

        @keep
        def on_redraw(s: Session, i: int) -> Any:
            """The refused paint's slice drawn again, in a step of its own after Add support: the click's blur
            event updates the editor's brush at the same time."""
            if not s.editor_redraw:
                return gr.skip()
            s.editor_redraw = False
            return h.support_editor(services, s, i, s.editor_shows[2])

        add_btn.click(on_add, [session, editor, class_name, paint_index], [supports, status, class_suggest, stored]) \
            .then(on_redraw, [session, paint_index], [editor], show_progress="hidden")

        @keep
        def on_add_file(s: Session, path: str | None, value: float | None, name: str) -> tuple[Any, ...]:
            message = h.add_label_file_support(services, s, path, value, name)
            return h.support_rows(s), message, gr.update(choices=h.class_names(services)), \
                gr.update(choices=h.stored_supports(services)), None  # emptied, ready for the next label file

        add_file_btn.click(on_add_file, [session, label_file, label_value, class_name],
                           [supports, status, class_suggest, stored, label_file])
        selected_support = gr.State(None)

        def on_pick_support(evt: gr.SelectData) -> int | None:
            return evt.index[0] if evt.index else None

        supports.select(on_pick_support, None, selected_support)
        @guard
        def on_remove_support(s: Session, row: int | None) -> tuple[Any, ...]:
            message = h.remove_support(s, row)  # before listing: the list shown must be the one after removal
            return h.support_rows(s), message, None

        remove_btn.click(on_remove_support, [session, selected_support], [supports, status, selected_support])

        @guard
        def on_add_stored(s: Session, key: str | None) -> tuple[Any, ...]:
            return h.support_rows(s), h.add_stored_support(services, s, key)

        add_stored_btn.click(on_add_stored, [session, stored], [supports, status])
        clear_btn.click(lambda s: ([], h.clear_supports(s)), [session], [supports, status])

        @keep
        def on_run(s: Session, strat: str, classes: list[str], n: int, rate: float, v: str, i: int, w: str,
                   o: float, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
            message = h.run_segmentation(services, s, strat, classes or [], n, rate, gradio_progress(progress))
            names = s.result.segmentation.class_names if s.result else []
            return (message, h.result_rows(services, s), gr.update(choices=names, value=names[0] if names else None),
                    display.enlarge(h.render_slice(services, s, v, i, w, o)), h.legend(services, s))

        run_btn.click(on_run, [session, strategy, bank_classes, steps, lr, view, index, window, opacity],
                      [status, results, result_class, viewer, legend_box])
        cancel_btn.click(h.cancel_segmentation, [session], [status], concurrency_id="cancel", concurrency_limit=None)

        @keep
        def on_load_fix(s: Session, c: str | None, i: int, w: str) -> tuple[Any, ...]:
            value = h.load_correction(services, s, c, i, w)
            color = services.storage.classes.get_or_create(c).color
            return (gr.update(value=value, brush=stroke_brush(CORRECTOR_RADIUS, color)),
                    f"Mask of **{c}** on slice {int(i)} loaded: paint to add, erase to remove, then Apply.")

        load_fix_btn.click(on_load_fix, [session, result_class, paint_index, window], [corrector, status], **light)

        @keep
        def on_apply_fix(s: Session, c: str | None, i: int, value: dict[str, Any], v: str, vi: int, w: str,
                         o: float) -> tuple[Any, ...]:
            loaded = s.corrector
            if loaded is None or loaded.case_id != s.case_id:
                raise handlers.HandlerError("load the mask of a slice first (Load mask of this slice)")
            c, i = loaded.class_name, loaded.index
            try:
                message = h.apply_correction(services, s, c, i, value)
            except h.StaleEditor as error:  # load the slice the edit would land on again
                gr.Warning(str(error), duration=20)
                return f"⚠️ {error}", gr.skip(), gr.skip(), h.load_correction(services, s, c, i, w)
            propagation.note_fixed_slice(s, i)
            return message, h.result_rows(services, s), display.enlarge(h.render_slice(services, s, v, vi, w, o)), \
                gr.skip()

        apply_fix_btn.click(on_apply_fix, [session, result_class, paint_index, corrector, view, index, window,
                                           opacity], [status, results, viewer, corrector])
        wire_click_panel(click_panel, services, guard, session, result_class, paint_index, window, opacity, status,
                         results, viewer, view, index)

        def refreshed_lists(message: str) -> tuple[Any, ...]:
            return (message, h.bank_summary(services), gr.update(choices=h.stored_supports(services)),
                    gr.update(choices=services.segmenter.memory_bank.class_names),
                    gr.update(choices=h.class_names(services)), gr.update(choices=t.curated_cases(services)),
                    h.list_cases(services))

        list_outputs = [status, bank_info, stored, bank_classes, proto_class, curated, cases_table]

        @guard
        def on_accept(s: Session, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
            return refreshed_lists(h.accept(services, s, gradio_progress(progress)))

        accept_btn.click(on_accept, [session], list_outputs)
        accept_all_btn.click(on_accept, [session], list_outputs)

        @guard
        def on_propagate(s: Session, v: str, i: int, w: str, o: float,
                         progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
            message = propagation.run_propagation(services, s, gradio_progress(progress))
            names = s.result.segmentation.class_names
            return (message, h.result_rows(services, s), gr.update(choices=names, value=names[0]),
                    display.enlarge(h.render_slice(services, s, v, i, w, o)), propagation.painted_rows(services, s),
                    propagation.slice_rows(services, s))

        propagate_btn.click(on_propagate, [session, view, index, window, opacity],
                            [status, results, result_class, viewer, painted_table, slice_table])
        propagate_tab.select(guard(lambda s: propagation.painted_rows(services, s)), [session], [painted_table])
        undo_btn.click(guard(lambda s: refreshed_lists(h.undo_accept(services, s))), [session], list_outputs)
        export_btn.click(guard(lambda s, f, i: str(h.export_mask(services, s, f, int(i)))),
                         [session, fmt, paint_index], [download])

        refresh_btn.click(lambda: (h.list_cases(services), gr.update(choices=case_choices()),
                                   h.bank_summary(services)), None, [cases_table, manage_pick, bank_info])
        reopen_btn.click(on_open, [session, manage_pick], open_outputs)

        @guard
        def on_delete(s: Session, case_id: int | None, ok: bool) -> tuple[Any, ...]:
            message = h.delete_case(services, s, case_id, ok)
            return (h.list_cases(services), gr.update(choices=case_choices(), value=None),
                    gr.update(choices=case_choices()), message, False)

        delete_btn.click(on_delete, [session, manage_pick, confirm], [cases_table, manage_pick, case_pick, status,
                                                                     confirm])
        proto_class.change(guard(lambda c: h.prototype_rows(services, c)), [proto_class], [proto_table])

        def plot(rows: list[list[Any]]) -> pd.DataFrame:
            return pd.DataFrame(rows, columns=["iteration", "loss"])

        @guard
        def on_train(ids: list[int], n: int) -> tuple[Any, ...]:
            run = t.start_training(services, ids, int(n))
            message, rows = t.poll_training(services, run.id)
            return run.id, message, plot(rows)

        train_btn.click(on_train, [curated, iterations], [run_id, train_status, loss_plot])

        def on_tick(rid: int | None) -> tuple[Any, ...]:
            if rid is None or not services.jobs.is_running(int(rid)) and \
                    services.storage.runs.get(int(rid)).status != "running":
                return gr.update(), gr.update()
            message, rows = t.poll_training(services, rid)
            return message, plot(rows)

        timer.tick(on_tick, [run_id], [train_status, loss_plot], show_progress="hidden")
        stop_btn.click(guard(lambda rid: t.cancel_training(services, rid)), [run_id], [train_status])

        @guard
        def on_activate(rid: int | None) -> tuple[Any, ...]:
            message = t.activate_model(services, rid)
            return (message, gr.update(value="", visible=False), h.bank_summary(services),
                    gr.update(choices=services.segmenter.memory_bank.class_names))

        activate_btn.click(on_activate, [run_id], [train_status, banner, bank_info, bank_classes])
        demo.load(lambda rid: t.poll_training(services, rid)[0] if rid is not None else "No training run yet.",
                  [run_id], [train_status])
    return demo
