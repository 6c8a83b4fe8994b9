"""Gradio controls of click / stroke refinement (placed in the Correct & accept tab); logic in app.refinement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import display
from app import handlers as h
from app import refinement as r
from app.handlers import Session
from app.services import Services

STROKE_COLORS = ["#30c030"]


@dataclass
class ClickPanel:
    """The refinement controls, built inside the Correct & accept tab and wired once the status line exists."""

    clicks: gr.State
    mode: gr.Radio
    show_btn: gr.Button
    undo_btn: gr.Button
    target: gr.Image
    stroke: gr.ImageEditor
    stroke_btn: gr.Button


def build_click_panel(height: int) -> ClickPanel:
    """Click mode (positive / negative), a clickable slice, a stroke editor, undo per click."""
    clicks = gr.State(lambda: r.ClickState())
    gr.Markdown("**Refine with clicks**: click inside a missed region (positive) or on a false positive "
                "(negative); each click updates the mask around it, following the image.")
    with gr.Row():
        mode = gr.Radio(list(r.CLICK_MODES), value="positive", label="Click mode", elem_id="click-mode")
        show_btn = gr.Button("Show slice for clicks", elem_id="show-clicks")
        undo_btn = gr.Button("Undo click", elem_id="undo-click")
    target = gr.Image(label="Click on the slice (the painted slice of the Support step)", interactive=False,
                      elem_id="click-view", height=height)
    with gr.Accordion("…or draw a short stroke", open=False):
        stroke = gr.ImageEditor(label="Stroke on this slice", type="numpy", sources=(), transforms=(), layers=False,
                                brush=gr.Brush(default_size=4, colors=STROKE_COLORS, color_mode="fixed"),
                                height=height, elem_id="stroke-editor")
        stroke_btn = gr.Button("Apply stroke", elem_id="apply-stroke")
    return ClickPanel(clicks, mode, show_btn, undo_btn, target, stroke, stroke_btn)


def wire_click_panel(panel: ClickPanel, services: Services, guard: Callable[..., Any], session: gr.State,
                     result_class: gr.Dropdown, paint_index: gr.State, window: gr.Dropdown, opacity: gr.Slider,
                     status: gr.Markdown, results: gr.Dataframe, viewer: gr.Image, view: gr.Radio,
                     index: gr.Slider) -> None:
    """Events: show the slice, click on it, apply a stroke, undo the last click; the viewer follows."""
    clicks, mode, target, stroke = panel.clicks, panel.mode, panel.target, panel.stroke

    def refreshed(s: Session, state: r.ClickState, message: str, i: int, w: str, o: float, v: str, vi: int
                  ) -> tuple[Any, ...]:
        return (message, h.result_rows(services, s), r.click_view(services, s, state, i, w, o),
                display.enlarge(h.render_slice(services, s, v, vi, w, o)))

    @guard
    def on_show(s: Session, state: r.ClickState, i: int, w: str, o: float) -> tuple[Any, ...]:
        return r.click_view(services, s, state, i, w, o), h.editor_value(services, s, i, w)

    @guard
    def on_click(s: Session, state: r.ClickState, c: str | None, i: int, w: str, o: float, m: str, v: str, vi: int,
                 event: gr.SelectData) -> tuple[Any, ...]:
        x, y = event.index
        return refreshed(s, state, r.add_click(services, s, state, c, i, x, y, m), i, w, o, v, vi)

    @guard
    def on_stroke(s: Session, state: r.ClickState, c: str | None, i: int, value: dict[str, Any], w: str, o: float,
                  m: str, v: str, vi: int) -> tuple[Any, ...]:
        return refreshed(s, state, r.add_stroke(services, s, state, c, i, value, m), i, w, o, v, vi)

    @guard
    def on_undo(s: Session, state: r.ClickState, c: str | None, i: int, w: str, o: float, v: str, vi: int
                ) -> tuple[Any, ...]:
        return refreshed(s, state, r.undo_click(services, s, state, c), i, w, o, v, vi)

    outputs = [status, results, target, viewer]
    panel.show_btn.click(on_show, [session, clicks, paint_index, window, opacity], [target, stroke])
    target.select(on_click, [session, clicks, result_class, paint_index, window, opacity, mode, view, index], outputs)
    panel.stroke_btn.click(on_stroke, [session, clicks, result_class, paint_index, stroke, window, opacity, mode, view,
                                 index], outputs)
    panel.undo_btn.click(on_undo, [session, clicks, result_class, paint_index, window, opacity, view, index], outputs)
