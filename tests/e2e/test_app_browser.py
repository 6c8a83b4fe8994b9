"""End-to-end: run_app.py in headless Chromium: demo case, paint a support, one-shot, accept, prototype stored.

Which weights the studio runs decides how strict the test is (explicit below, never a skip or xfail):
- trained weights ($IRIS_E2E_WEIGHTS, else the shipped assets/weights/iris2d.pt when present): one-shot must give
  a real partial mask, and after Accept the class's prototype must be in the database and in the UI;
- otherwise a tiny untrained model: its mask may fill every slice (no boundary to encode, so no prototype), and
  only the accepted correction is required.
Set $IRIS_E2E_SCREENSHOT to a PNG path to save a full-page screenshot while the one-shot overlay is shown.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from app import display
from app.config import SHIPPED_WEIGHTS
from app.demo import demo_volume
from app.editor_canvas import place
from app.ui import BRUSH_RADIUS
from iris_engine.checkpoint import save_checkpoint
from iris_engine.config import ModelConfig
from iris_engine.model.iris import IrisModel
from storage import Storage
from tests.processes import free_port, start_studio, stop, wait_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
CLASS = "painted_white_matter"  # a new class: no stored or memory-bank class name contains it
# Bounded but generous waits (s): a loaded 2-core CI machine with no GPU; the trained model's one-shot over the
# 95 demo slices takes ~35 s there under contention. Passing runs never wait for these to expire.
START_S, UI_S, SEGMENT_S = 300, 120, 480
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing: apt-get install -y chromium")]


@dataclass(frozen=True)
class Weights:
    path: Path
    trained: bool  # True: the strict branch (real partial mask, prototype in the DB and the UI)


def choose_weights(tmp_path: Path) -> Weights:
    """$IRIS_E2E_WEIGHTS, else the shipped weights, else a tiny untrained model (fixed seed)."""
    explicit = os.environ.get("IRIS_E2E_WEIGHTS")
    if explicit:
        return Weights(Path(explicit).resolve(), trained=True)
    if SHIPPED_WEIGHTS.is_file():
        return Weights(SHIPPED_WEIGHTS, trained=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = IrisModel(TINY)
    return Weights(save_checkpoint(tmp_path / "tiny.pt", model), trained=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, Weights]]:
    weights = choose_weights(tmp_path)
    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / "server.log"
    process = start_studio(["--port", str(port), "--data-dir", str(data), "--weights", str(weights.path)], log)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, process, log, START_S)
        yield url, data, weights
    finally:
        stop(process)


def wait_status(page: Any, text: str, timeout_s: float, warnings: bool = False) -> str:
    """Until #status contains `text`; fails at once with the message of an error toast, or of a warning toast unless
    `warnings` (no waiting it out)."""
    deadline = time.monotonic() + timeout_s
    status = page.locator("#status")
    bad = page.locator(".toast-body.error" + ("" if warnings else ", .toast-body.warning"))
    while True:
        shown = status.inner_text()
        if text in shown:
            return shown
        assert bad.count() == 0, f"the studio reported: {bad.first.inner_text()}"
        assert time.monotonic() < deadline, f"status never contained {text!r} in {timeout_s} s; it shows {shown!r}"
        page.wait_for_timeout(250)


def target_mask() -> tuple[np.ndarray, int, int]:
    """White matter on the demo's middle axial slice as displayed (rows top-down), that slice's index and the
    demo volume's voxel count."""
    image, _, labels = demo_volume()  # the demo case is stored in RAS: its canonical grid is its own
    index = image.shape[2] // 2
    return display.view_slice(labels, "axial", index) == 2, index, image.size


def image_rect(canvas: Any) -> tuple[float, float, float, float]:
    """(x, y, width, height) on the page of the slice drawn in the editor canvas: the bounding box of the MR's
    black background, which surrounds the head on every side (the canvas around the image is light)."""
    from io import BytesIO

    from PIL import Image

    box = canvas.bounding_box()
    shot = np.asarray(Image.open(BytesIO(canvas.screenshot())).convert("L"))
    rows, cols = np.nonzero((shot < 12).any(axis=1))[0], np.nonzero((shot < 12).any(axis=0))[0]
    assert rows.size and cols.size, "the slice is not drawn in the support editor"
    sx, sy = box["width"] / shot.shape[1], box["height"] / shot.shape[0]
    return (box["x"] + cols[0] * sx, box["y"] + rows[0] * sy, (cols[-1] - cols[0] + 1) * sx,
            (rows[-1] - rows[0] + 1) * sy)


def paint(page: Any, canvas: Any, mask: np.ndarray) -> None:
    """Brush strokes whose round tip stays inside the mask: along rows of the mask eroded by the brush radius,
    rows a brush radius apart, so the strokes cover the mask's core (its thin fingers left out). Few pointer events,
    as each costs a software-rendered canvas redraw (~0.4 s on a loaded 2-core machine)."""
    radius = max(1, int(np.ceil(BRUSH_RADIUS / place(mask.shape).scale)))  # in slice pixels
    yy, xx = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    core = ndimage.binary_erosion(mask, structure=yy**2 + xx**2 <= radius**2)
    x0, y0, width, height = image_rect(canvas)
    fx, fy = width / mask.shape[1], height / mask.shape[0]
    for r in range(radius // 2, mask.shape[0], radius):
        row = np.diff(np.concatenate([[False], core[r], [False]]).astype(np.int8))
        for a, b in zip(np.nonzero(row == 1)[0], np.nonzero(row == -1)[0], strict=True):
            y = y0 + (r + 0.5) * fy
            page.mouse.move(x0 + (a + 0.5) * fx, y)
            page.mouse.down()
            page.mouse.move(x0 + (b - 0.5) * fx, y)
            page.mouse.up()


def voxel_count(status: str) -> int:
    """The class's voxel count in the 'finished' status line ('... white_matter 12.3 mL (456 voxels)')."""
    match = re.search(rf"{CLASS} [^(]*\((\d+) voxels\)", status)
    assert match, status
    return int(match.group(1))


def test_demo_paint_one_shot_accept(server: tuple[str, Path, Weights]) -> None:
    url, data, weights = server
    mask, index, volume_voxels = target_mask()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1200})
        page.set_default_timeout(UI_S * 1000)
        sync_api.expect.set_options(timeout=UI_S * 1000)
        page.goto(url)
        sync_api.expect(page.locator("#case-info")).to_contain_text("MNI152")
        canvas = page.locator("#support-editor canvas").first
        canvas.wait_for()
        sync_api.expect(page.locator("#slice input[type=number]")).to_have_value(str(index))
        page.wait_for_timeout(1500)  # the editor draws its background after the value arrives
        started = time.monotonic()
        paint(page, canvas, mask)
        print(f"painted in {time.monotonic() - started:.1f} s")
        name = page.locator("#class-name input")
        name.fill(CLASS)
        name.press("Enter")
        page.locator("#add-support").click()
        wait_status(page, "Support added", UI_S)
        page.get_by_role("tab", name="2 · Segment").click()
        page.locator("#run-segmentation").click()
        voxels = voxel_count(wait_status(page, "finished", SEGMENT_S))
        if os.environ.get("IRIS_E2E_SCREENSHOT"):  # the overlay in the viewer next to the painted support
            page.get_by_role("tab", name="1 · Support").click()
            page.wait_for_timeout(1000)
            page.screenshot(path=os.environ["IRIS_E2E_SCREENSHOT"], full_page=True)
        page.get_by_role("tab", name="3 · Correct & accept").click()
        page.locator("#accept").click()
        accepted = wait_status(page, f"Accepted. {CLASS}: accepted", SEGMENT_S)
        if weights.trained:
            assert 0 < voxels < volume_voxels // 2, f"one-shot gave no real partial mask ({voxels} voxels)"
            assert "prototype updated (1 update)" in accepted, accepted
            page.get_by_role("tab", name="Cases & classes").click()
            sync_api.expect(page.locator("#bank-info")).to_contain_text(f"{CLASS} (1")  # ", 256 px)" if thin
            page.locator("#proto-class input").click()
            page.get_by_role("option", name=CLASS, exact=True).click()
            table = page.locator("#proto-table")
            sync_api.expect(table).to_contain_text("current")  # the row of the prototype the accept created
        browser.close()
    storage = Storage.open(None, data)
    try:
        assert [c.class_name for c in storage.corrections.feed()] == [CLASS]
        prototypes = [(p.class_name, p.update_count) for p in storage.prototypes.list()]
        if weights.trained:
            assert prototypes == [(CLASS, 1)]
        else:  # the untrained tiny model's mask may fill every slice: then there is no boundary to encode
            assert prototypes in ([(CLASS, 1)], [])
    finally:
        storage.close()
