"""Issue 14 in headless Chromium against run_app.py: the editors put paint and erasures on the voxels under the
pointer (a 150 x 200 slice, after switching cases), several NIfTI files upload as several cases, supports stay
across cases and come from label files, the slice follows keys, wheel and typed numbers, a typed class name is kept.

One studio (a tiny untrained model whose memory bank holds "chaos_mr/liver") and one page serve the tests in order.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from app import display
from app.demo import demo_volume
from app.editor_canvas import LETTERBOX, place
from app.ui import BRUSH_RADIUS, CORRECTOR_RADIUS
from iris_engine.checkpoint import save_checkpoint
from iris_engine.config import ModelConfig
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from storage import Storage
from tests.e2e.test_app_browser import CHROMIUM, CHROMIUM_ARGS, wait_status
from tests.processes import ROOT, free_port, start_studio, stop, wait_http

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
BANK_CLASS = "chaos_mr/liver"
SHAPE = (150, 200, 12)  # axial slices shown 200 rows x 150 columns: not square, not 512 px
MIDDLE = (SHAPE[2] - 1) // 2  # the slice a case opens on
# Generous bounded waits (s) for a loaded 2-core machine; passing runs never wait for them to expire.
START_S, UI_S, SEGMENT_S = 600, 240, 600
BROWSER_ERRORS: list[str] = []  # the page's uncaught errors and console errors, for a failed wait's message
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing: apt-get install -y chromium")]


@dataclass
class Studio:
    url: str
    data: Path
    files: Path
    log: Path
    pid: int


STUDIOS: list[Studio] = []  # the running studio, for a failed wait's message


def volume(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """Black background (the slice's bounding box on screen), two bright blocks; RAS, so canonical = stored."""
    image = np.zeros(shape, dtype=np.float32)
    rng = np.random.default_rng(seed)
    block = image[30:90, 50:150]
    block[...] = 200 + rng.normal(0, 5, block.shape)  # every slice differs: the viewer's image changes with it
    image[100:130, 20:60] = 400
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.0, 4.0, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    folder = tmp_path_factory.mktemp("studio")
    files = folder / "files"
    files.mkdir()
    volume(files / "rect.nii.gz", SHAPE, 0)
    volume(files / "other.nii.gz", (120, 90, 8), 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = IrisModel(TINY)
    bank = MemoryBank()
    bank.update(BANK_CLASS, torch.zeros(4, 8))  # listed as a memory-bank class; never segmented with here
    weights = save_checkpoint(folder / "tiny.pt", model, bank)
    log = folder / "server.log"
    port = free_port()
    process = start_studio(["--port", str(port), "--data-dir", str(folder / "data"), "--weights", str(weights)], log)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, process, log, START_S)
        STUDIOS.append(Studio(url, folder / "data", files, log, process.pid))
        yield STUDIOS[-1]
    finally:
        stop(process)


@pytest.fixture(scope="module")
def page(studio: Studio) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1400})
        tab.on("pageerror", lambda error: BROWSER_ERRORS.append(f"page error: {error}"))
        tab.on("console", lambda message: message.type == "error" and BROWSER_ERRORS.append(message.text))
        tab.set_default_timeout(UI_S * 1000)
        sync_api.expect.set_options(timeout=UI_S * 1000)
        tab.goto(studio.url)
        sync_api.expect(tab.locator("#case-info")).to_contain_text("MNI152")
        yield tab
        browser.close()


def stored(studio: Studio) -> Storage:
    return Storage.open(None, studio.data)


def slice_rect(canvas: Any, shown: tuple[int, int], timeout_s: float = UI_S) -> tuple[float, float, float, float]:
    """(x, y, width, height) on the page of the slice drawn in an editor canvas: the bounding box of its black
    background (the letterbox and the page around are lighter). Waits until a slice of the `shown` (rows, cols)
    aspect is drawn (not the previous case's)."""
    deadline = time.monotonic() + timeout_s
    while True:
        box = canvas.bounding_box()
        shot = np.asarray(Image.open(BytesIO(canvas.screenshot())).convert("L"))
        rows, cols = np.nonzero((shot < 12).any(axis=1))[0], np.nonzero((shot < 12).any(axis=0))[0]
        sx, sy = box["width"] / shot.shape[1], box["height"] / shot.shape[0]
        tall, wide = (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) if rows.size and cols.size else (0, 0)
        if tall > 20 and wide > 20 and abs(tall * sy / (wide * sx) - shown[0] / shown[1]) < 0.05:
            return (box["x"] + cols[0] * sx, box["y"] + rows[0] * sy, (cols[-1] - cols[0] + 1) * sx,
                    (rows[-1] - rows[0] + 1) * sy)
        if time.monotonic() > deadline:
            raise AssertionError(f"the slice is never drawn in the editor: its black box is {tall} x {wide} px, "
                                 f"want the aspect of {shown}; {page_state(canvas, 'slice_rect')}")
        canvas.page.wait_for_timeout(500)


def page_state(canvas: Any, name: str) -> str:
    """What a failed wait saw besides its own check: the canvas as a thumbnail in characters (dark ' ' to light '@',
    for a CI log that keeps no files), the toasts on the page, and where the page's screenshot was saved."""
    grey = Image.open(BytesIO(canvas.screenshot())).convert("L").resize((48, 24))
    rows = ["".join(" .:-=+*#%@"[v * 10 // 256] for v in row) for row in np.asarray(grey, dtype=int)]
    shot = Path(tempfile.gettempdir()) / "iris_e2e_failures" / f"{name}_{time.time():.0f}.png"
    shot.parent.mkdir(exist_ok=True)
    canvas.page.screenshot(path=str(shot), full_page=True)
    toasts = canvas.page.locator(".toast-body").all_inner_texts()
    editor = canvas.locator("xpath=ancestor::*[@id='support-editor' or @id='corrector']")
    buttons = [b.get_attribute("aria-label") or b.inner_text() for b in editor.locator("button:visible").all()]
    canvases = editor.locator("canvas").evaluate_all(
        "cs => cs.map(c => [c.parentElement.className, getComputedStyle(c).visibility, getComputedStyle(c).opacity,"
        " getComputedStyle(c.parentElement).display, c.width, c.height])")
    status = " ".join(editor.inner_text().split())[-200:]
    return (f"browser errors (last 10 of {len(BROWSER_ERRORS)}) {BROWSER_ERRORS[-10:]}; toasts {toasts}; "
            f"the editor's buttons {buttons}; its canvases (parent class, visibility, opacity, "
            f"parent display, width, height) {canvases}; the editor's text (a pending event shows 'queue: ...') "
            f"{status!r}; page saved to {shot}; the first canvas:\n" + "\n".join(f"|{row}|" for row in rows)
            + server_state())


def server_state() -> str:
    """The studio's event queue and the stacks of its threads that run project code (run_app.py prints them on
    SIGUSR1): where a request that never finishes is waiting."""
    if not STUDIOS:
        return ""
    studio = STUDIOS[-1]
    try:
        with urllib.request.urlopen(studio.url + "gradio_api/queue/status", timeout=10) as answer:
            queue = answer.read().decode()[:500]
    except OSError as error:
        queue = f"unreadable: {error}"
    before = studio.log.stat().st_size
    os.kill(studio.pid, signal.SIGUSR1)
    time.sleep(2)
    with studio.log.open("rb") as log:
        log.seek(before)
        dump = log.read().decode(errors="replace").split("\n\n")
    threads = [t.strip() for t in dump if "(most recent call first)" in t]
    project = [t for t in threads if any(f'"{ROOT}/{part}' in t for part in ("app/", "storage/", "iris_engine/"))]
    tops = [" / ".join(line.strip() for line in t.splitlines()[1:3]) for t in threads if t not in project]
    return (f"\nthe server's queue: {queue}\nits {len(threads)} threads; the {len(project)} in project code:\n"
            + "\n\n".join(project)[-6000:] + "\nthe others' two innermost frames:\n" + "\n".join(tops)[-3000:])


def strokes(page: Any, rect: tuple[float, float, float, float], shown: tuple[int, int], box: tuple[int, int, int, int],
            radius_canvas: int) -> int:
    """Horizontal strokes whose round tip stays inside rows r0..r1, cols c0..c1 (inclusive) of the shown slice;
    returns the brush radius in slice pixels."""
    x0, y0, width, height = rect
    fx, fy = width / shown[1], height / shown[0]
    radius = int(np.ceil(radius_canvas / place(shown).scale))
    r0, r1, c0, c1 = box
    for r in range(r0 + radius, r1 - radius + 1, max(1, radius // 2)):
        y = y0 + (r + 0.5) * fy
        page.mouse.move(x0 + (c0 + radius + 0.5) * fx, y)
        page.mouse.down()
        page.mouse.move(x0 + (c1 - radius + 0.5) * fx, y, steps=4)
        page.mouse.up()
    return radius


def check_region(changed: np.ndarray, box: tuple[int, int, int, int], radius: int,
                 where: np.ndarray | None = None) -> None:
    """Changed pixels lie inside the box (1 px slack) and cover its core (the box less the brush radius; only
    where `where` is True)."""
    r0, r1, c0, c1 = box
    inside = np.zeros_like(changed)
    inside[max(0, r0 - 1): r1 + 2, max(0, c0 - 1): c1 + 2] = True
    rows, cols = np.nonzero(changed)
    assert rows.size, "nothing changed"
    assert not (changed & ~inside).any(), f"changed pixels outside rows {r0}..{r1}, cols {c0}..{c1}: rows " \
                                          f"{rows.min()}..{rows.max()}, cols {cols.min()}..{cols.max()}"
    core = np.zeros_like(changed)
    core[r0 + radius + 1: r1 - radius, c0 + radius + 1: c1 - radius] = True
    core = ndimage.binary_erosion(core) & (True if where is None else where)
    assert core.sum() > 20, "the stroked core is (almost) empty"
    assert changed[core].mean() > 0.95, f"only {changed[core].mean():.0%} of the stroked core changed"


def open_case(page: Any, name: str) -> None:
    page.locator("#case-pick input").click()
    page.get_by_role("option", name=name).click()
    page.get_by_role("button", name="Open case").click()
    sync_api.expect(page.locator("#case-info")).to_contain_text(name.split(": ", 1)[-1])


def paint_support(page: Any, studio: Studio, name: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paint a box on the open rect case's middle slice, add it as a support, return the stored mask as shown."""
    index = MIDDLE
    sync_api.expect(page.locator("#slice input[type=number]")).to_have_value(str(index))
    shown = (SHAPE[1], SHAPE[0])
    canvas = page.locator("#support-editor canvas").first
    page.wait_for_timeout(1000)
    radius = strokes(page, slice_rect(canvas, shown), shown, box, BRUSH_RADIUS)
    field = page.locator("#class-name input, #class-name textarea").first
    field.fill(name)
    page.locator("#add-support").click()
    wait_status(page, "Support added", UI_S)
    storage = stored(studio)
    try:
        annotation = [a for c in storage.cases.list() for a in storage.annotations.list_for_case(c.id)][-1]
        mask = storage.annotations.load_mask(annotation.id).astype(bool)
    finally:
        storage.close()
    assert annotation.class_name == name and set(np.nonzero(mask)[2]) == {index}
    check_region(display.view_slice(mask, "axial", index), box, radius)
    return mask


def test_1_paint_and_erase_land_on_the_voxels_under_the_pointer(page: Any, studio: Studio) -> None:
    page.locator("#component-0 input[type=file], input[type=file]").first.set_input_files(
        str(studio.files / "rect.nii.gz"))
    sync_api.expect(page.locator("#case-info")).to_contain_text("rect")
    paint_support(page, studio, "block", (40, 90, 60, 120))  # the demo's 109 x 91 slice was shown before

    page.get_by_role("tab", name="2 · Segment").click()
    page.locator("#run-segmentation").click()
    wait_status(page, "finished", SEGMENT_S)
    page.get_by_role("tab", name="3 · Correct & accept").click()
    page.get_by_role("button", name="Load mask of this slice").click()
    wait_status(page, "loaded", UI_S)
    canvas = page.locator("#corrector canvas").first
    page.wait_for_timeout(2000)
    rect = slice_rect_under_mask(canvas)
    page.locator("#corrector").get_by_role("button", name="Erase").first.click()
    erase_box = (120, 160, 30, 110)
    radius = strokes(page, rect, (SHAPE[1], SHAPE[0]), erase_box, CORRECTOR_RADIUS)
    page.get_by_role("button", name="Apply edit to slice").click()
    wait_status(page, "updated: 0 voxels added", UI_S)
    page.locator("#accept").click()
    wait_status(page, "Accepted", SEGMENT_S)
    storage = stored(studio)
    try:
        correction = storage.corrections.feed()[-1]
        after = storage.corrections.load_mask(correction.id).astype(bool)
        before = storage.predictions.load_mask(correction.prediction_id).astype(bool)
    finally:
        storage.close()
    index = MIDDLE
    assert not (after & ~before).any() and set(np.nonzero(before & ~after)[2]) == {index}
    shown_before = display.view_slice(before, "axial", index)
    erased = display.view_slice(before & ~after, "axial", index)
    check_region(erased, erase_box, radius, where=shown_before)

    open_case(page, f"{case_id(studio, 'Demo: MNI152 T1 brain')}: Demo: MNI152 T1 brain")  # and back again
    page.get_by_role("tab", name="1 · Support").click()
    open_case(page, f"{case_id(studio, 'rect')}: rect")
    paint_after_undo_is_refused(page, studio)
    paint_support(page, studio, "block", (130, 170, 20, 70))


def annotation_count(studio: Studio) -> int:
    storage = stored(studio)
    try:
        return sum(len(storage.annotations.list_for_case(c.id)) for c in storage.cases.list())
    finally:
        storage.close()


def paint_after_undo_is_refused(page: Any, studio: Studio) -> None:
    """The support editor's Undo steps back past the case change and shows the demo's brain again; paint on it is
    refused (it would be stored on the rect case's slice), nothing is stored, and the rect slice is drawn again."""
    count = annotation_count(studio)
    canvas = page.locator("#support-editor canvas").first
    slice_rect(canvas, (SHAPE[1], SHAPE[0]))
    page.locator("#support-editor").get_by_role("button", name="Undo").click()
    shown = display.view_slice(demo_volume()[0], "axial", 0).shape
    strokes(page, slice_rect(canvas, shown), shown, (40, 60, 30, 60), BRUSH_RADIUS)  # on the demo's picture
    page.locator("#class-name input, #class-name textarea").first.fill("block")
    page.locator("#add-support").click()
    wait_status(page, "no longer shows slice 5", UI_S, warnings=True)
    sync_api.expect(page.locator(".toast-body.warning").first).to_contain_text("nothing was added")
    assert annotation_count(studio) == count
    wait_toasts_gone(page)


def slice_rect_under_mask(canvas: Any, timeout_s: float = UI_S) -> tuple[float, float, float, float]:
    """The slice's rectangle in an editor whose mask may cover it: the letterbox (on both sides of this slice)
    spans the whole square canvas, and the slice's place on the canvas follows from its shape."""
    deadline = time.monotonic() + timeout_s
    while True:
        box = canvas.bounding_box()
        shot = np.asarray(Image.open(BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
        near = (np.abs(shot - np.asarray(LETTERBOX)).max(axis=2) <= 3)
        rows, cols = np.nonzero(near.any(axis=1))[0], np.nonzero(near.any(axis=0))[0]
        if rows.size > 50 and cols.size > 50:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the slice is never drawn in the editor: letterbox seen on {rows.size} rows, "
                                 f"{cols.size} columns; {page_state(canvas, 'slice_rect_under_mask')}")
        canvas.page.wait_for_timeout(500)
    sx, sy = box["width"] / shot.shape[1], box["height"] / shot.shape[0]
    x, y = box["x"] + cols[0] * sx, box["y"] + rows[0] * sy
    placement = place((SHAPE[1], SHAPE[0]))
    f = (cols[-1] - cols[0] + 1) * sx / placement.size
    return x + placement.left * f, y + placement.top * f, placement.width * f, placement.height * f


def viewer_src(page: Any) -> str:
    return page.locator("#viewer img").first.get_attribute("src") or ""


def wait_new_image(page: Any, old: str, what: str) -> str:
    deadline = time.monotonic() + UI_S
    while (src := viewer_src(page)) in ("", old):
        assert time.monotonic() < deadline, f"the viewer did not redraw after {what}"
        page.wait_for_timeout(250)
    return src


def test_3_several_nifti_files_are_several_cases_and_a_bad_file_keeps_the_view(page: Any, studio: Studio) -> None:
    first = studio.files / "first.nii.gz"
    first.write_bytes((studio.files / "rect.nii.gz").read_bytes())
    upload = page.locator("input[type=file]").first
    upload.set_input_files([str(first), str(studio.files / "other.nii.gz")])
    shown = wait_status(page, "Loaded", UI_S)
    assert "first" in shown and "other" in shown, shown
    storage = stored(studio)
    try:
        assert {"first", "other"} <= {c.name for c in storage.cases.list()}
    finally:
        storage.close()
    sync_api.expect(page.locator("#case-info")).to_contain_text("first")
    before = viewer_src(page)
    assert before
    broken = studio.files / "broken.nii.gz"
    broken.write_bytes(b"not a nifti at all" * 10)
    upload.set_input_files([str(broken)])
    sync_api.expect(page.locator(".toast-body.warning").first).to_contain_text("broken.nii.gz")
    page.wait_for_timeout(1000)
    assert viewer_src(page) == before and page.locator("#viewer").get_by_text("Error").count() == 0
    sync_api.expect(page.locator("#case-info")).to_contain_text("first")
    wait_toasts_gone(page)


def supports_text(page: Any) -> str:
    return page.locator("#supports").inner_text()


def wait_toasts_gone(page: Any) -> None:
    sync_api.expect(page.locator(".toast-body")).to_have_count(0)


def test_4_supports_stay_across_cases_can_be_removed_and_come_from_label_files(page: Any, studio: Studio) -> None:
    painted = "block on rect"
    count = supports_text(page).count(painted)
    assert count >= 2, supports_text(page)  # both painted on rect; "first" is open now
    page.locator("#supports").get_by_text(painted).filter(visible=True).first.click()
    page.locator("#remove-support").click()
    wait_status(page, "Support removed", UI_S)
    deadline = time.monotonic() + UI_S
    while supports_text(page).count(painted) != count - 1:
        assert time.monotonic() < deadline, supports_text(page)
        page.wait_for_timeout(250)
    open_case(page, f"{case_id(studio, 'other')}: other")
    assert supports_text(page).count(painted) == count - 1
    labels = np.zeros((120, 90, 8), dtype=np.uint8)
    labels[40:70, 20:50, 2:5] = 2
    labels[10:20, 10:20, 1] = 1
    path = studio.files / "other_labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([1.5, 1.0, 4.0, 1.0])), str(path))
    page.locator("#label-file input[type=file]").set_input_files(str(path))
    page.locator("#label-value input").fill("2")
    page.locator("#class-name input, #class-name textarea").first.fill("kidney")
    page.locator("#add-label-file").click()
    wait_status(page, f"label 2 ({int((labels == 2).sum())} voxels)", UI_S)
    sync_api.expect(page.locator("#supports")).to_contain_text("kidney")
    storage = stored(studio)
    try:
        case = next(c for c in storage.cases.list() if c.name == "other")
        annotation = storage.annotations.list_for_case(case.id)[-1]
        assert annotation.class_name == "kidney"
        assert np.array_equal(storage.annotations.load_mask(annotation.id).astype(bool), labels == 2)
    finally:
        storage.close()
    wrong = studio.files / "wrong_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((120, 90, 9), dtype=np.uint8), np.eye(4)), str(wrong))
    page.locator("#label-file input[type=file]").set_input_files(str(wrong))
    page.locator("#add-label-file").click()
    sync_api.expect(page.locator(".toast-body").first).to_contain_text("does not match image shape")
    assert supports_text(page).count("kidney on other") == 1 and "Error" not in supports_text(page)
    wait_toasts_gone(page)


def case_id(studio: Studio, name: str) -> int:
    storage = stored(studio)
    try:
        return next(c.id for c in storage.cases.list() if c.name == name)
    finally:
        storage.close()


def test_5_the_slice_follows_arrow_keys_the_wheel_and_typed_numbers(page: Any, studio: Studio) -> None:
    number = page.locator("#slice input[type=number]")
    sync_api.expect(number).to_have_value("3")  # "other" has 8 slices
    src = viewer_src(page)
    page.locator("#slice input[type=range]").focus()
    page.keyboard.press("ArrowRight")
    sync_api.expect(number).to_have_value("4")
    src = wait_new_image(page, src, "an arrow key")
    page.locator("#viewer").hover()
    page.mouse.wheel(0, 120)
    sync_api.expect(number).to_have_value("5")
    src = wait_new_image(page, src, "the mouse wheel")
    number.fill("2")
    number.press("Enter")
    wait_new_image(page, src, "typing a number")
    sync_api.expect(number).to_have_value("2")


def test_6_a_typed_class_name_is_the_name_and_case_choices_reset(page: Any, studio: Studio) -> None:
    name = page.locator("#class-name input, #class-name textarea").first
    name.fill("liver")
    name.press("Enter")
    page.wait_for_timeout(1000)
    sync_api.expect(name).to_have_value("liver")
    page.get_by_role("tab", name="2 · Segment").click()
    page.locator("#bank-classes input").click()
    page.get_by_role("option", name=BANK_CLASS).click()
    page.keyboard.press("Escape")
    sync_api.expect(page.locator("#bank-classes")).to_contain_text(BANK_CLASS)
    open_case(page, f"{case_id(studio, 'rect')}: rect")
    sync_api.expect(page.locator("#bank-classes")).not_to_contain_text(BANK_CLASS)
    page.get_by_role("tab", name="1 · Support").click()
    sync_api.expect(name).to_have_value("liver")
