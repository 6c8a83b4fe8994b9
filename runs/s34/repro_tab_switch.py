"""Reproduce the annotation-loop browser failure of stop 48's CI: after a case opens while the Support tab is hidden,
the Support tab is shown and another case opens; does the support editor show the new case's slice? Chromium's CPU
is throttled (CDP) to stand in for a loaded CI machine. Usage: python runs/s34/repro_tab_switch.py [RATE] [ROUNDS]"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from playwright import sync_api

from iris_engine.checkpoint import save_checkpoint
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from tests.e2e import test_annotation_loop_browser as t
from tests.processes import free_port, start_studio, stop, wait_http


def editor_aspect(canvas) -> float | None:
    from io import BytesIO

    from PIL import Image
    shot = np.asarray(Image.open(BytesIO(canvas.screenshot())).convert("L"))
    rows, cols = np.nonzero((shot < 12).any(axis=1))[0], np.nonzero((shot < 12).any(axis=0))[0]
    if not rows.size or not cols.size:
        return None
    return (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)


def start_tiny_studio() -> tuple[subprocess.Popen[bytes], t.Studio]:
    """A studio on a tiny untrained model, answering, with rect.nii.gz ready to upload (stop the process after)."""
    folder = Path(tempfile.mkdtemp())
    files = folder / "files"
    files.mkdir()
    t.volume(files / "rect.nii.gz", t.SHAPE, 0)
    torch.manual_seed(0)
    weights = save_checkpoint(folder / "tiny.pt", IrisModel(t.TINY), MemoryBank())
    port = free_port()
    log = folder / "server.log"
    process = start_studio(["--port", str(port), "--data-dir", str(folder / "data"), "--weights", str(weights)], log)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, process, log, 600)
    except AssertionError:
        stop(process)
        raise
    return process, t.Studio(url, folder / "data", files, log)


def main() -> None:
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 8
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    process, studio = start_tiny_studio()
    url, files = studio.url, studio.files
    failures = 0
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(t.CHROMIUM), args=t.CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1400})
            page.set_default_timeout(240_000)
            sync_api.expect.set_options(timeout=240_000)
            page.goto(url)
            sync_api.expect(page.locator("#case-info")).to_contain_text("MNI152")
            page.locator("input[type=file]").first.set_input_files(str(files / "rect.nii.gz"))
            sync_api.expect(page.locator("#case-info")).to_contain_text("rect")
            page.context.new_cdp_session(page).send("Emulation.setCPUThrottlingRate", {"rate": rate})
            demo = f"{t.case_id(studio, 'Demo: MNI152 T1 brain')}: Demo: MNI152 T1 brain"
            rect = f"{t.case_id(studio, 'rect')}: rect"
            for r in range(rounds):
                page.get_by_role("tab", name="3 · Correct & accept").click()
                t.open_case(page, demo)
                page.get_by_role("tab", name="1 · Support").click()
                t.open_case(page, rect)
                canvas = page.locator("#support-editor canvas").first
                deadline = time.monotonic() + 60
                aspect = None
                while time.monotonic() < deadline:
                    aspect = editor_aspect(canvas)
                    if aspect is not None and abs(aspect - 200 / 150) < 0.05:
                        break
                    page.wait_for_timeout(500)
                ok = aspect is not None and abs(aspect - 200 / 150) < 0.05
                failures += not ok
                print(f"round {r}: editor aspect {aspect} -> {'rect shown' if ok else 'WRONG'}", flush=True)
            browser.close()
    finally:
        stop(process)
    print(f"rate {rate}: {failures} of {rounds} rounds left the wrong slice in the support editor")


if __name__ == "__main__":
    main()
