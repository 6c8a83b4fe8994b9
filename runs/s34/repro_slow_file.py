"""Is the support editor left on the previous case's slice when that case's image arrives late? The demo case opens
while the Support tab is hidden, its files are held back DELAY s (as a loaded server would), the Support tab is shown
and the rect case opens at once. Usage: PYTHONPATH=. python runs/s34/repro_slow_file.py [DELAY] [ROUNDS]"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from io import BytesIO

import numpy as np
from PIL import Image
from playwright.async_api import async_playwright, expect

from runs.s34.repro_tab_switch import start_tiny_studio
from tests.e2e import test_annotation_loop_browser as t
from tests.processes import stop

RECT_ASPECT = t.SHAPE[1] / t.SHAPE[0]
JITTER = os.environ.get("JITTER", "") == "1"
JITTER_JS = """
const original = window.createImageBitmap.bind(window);
window.createImageBitmap = (...args) => new Promise(done => setTimeout(
    () => done(original(...args)), Math.random() * 4000));
"""


async def editor_aspect(canvas) -> float | None:
    shot = np.asarray(Image.open(BytesIO(await canvas.screenshot())).convert("L"))
    rows, cols = np.nonzero((shot < 12).any(axis=1))[0], np.nonzero((shot < 12).any(axis=0))[0]
    return None if not rows.size or not cols.size else (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)


async def open_case(page, name: str) -> None:
    await page.locator("#case-pick input").click()
    await page.get_by_role("option", name=name).click()
    await page.get_by_role("button", name="Open case").click()
    await expect(page.locator("#case-info")).to_contain_text(name.split(": ", 1)[-1])


async def run(url: str, studio: t.Studio, delay: float, rounds: int) -> int:
    hold = {"on": False}

    async def slow_files(route) -> None:
        if hold["on"]:
            await asyncio.sleep(delay)
        await route.continue_()

    failures = 0
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(t.CHROMIUM), args=t.CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1500, "height": 1400})
        if JITTER:
            await page.add_init_script(JITTER_JS)
        page.set_default_timeout(240_000)
        expect.set_options(timeout=240_000)
        await page.goto(url)
        await expect(page.locator("#case-info")).to_contain_text("MNI152")
        await page.locator("input[type=file]").first.set_input_files(str(studio.files / "rect.nii.gz"))
        await expect(page.locator("#case-info")).to_contain_text("rect")
        await page.context.route("**/gradio_api/file=**", slow_files)
        demo = f"{t.case_id(studio, 'Demo: MNI152 T1 brain')}: Demo: MNI152 T1 brain"
        rect = f"{t.case_id(studio, 'rect')}: rect"
        for r in range(rounds):
            await page.get_by_role("tab", name="3 · Correct & accept").click()
            hold["on"] = True
            await open_case(page, demo)
            hold["on"] = False
            await page.get_by_role("tab", name="1 · Support").click()
            for wait in (0, 1, 3):
                await page.wait_for_timeout(wait * 1000)
                print(f"  demo open, support tab shown {wait} s later: aspect "
                      f"{await editor_aspect(page.locator('#support-editor canvas').first)}", flush=True)
            await open_case(page, rect)
            canvas = page.locator("#support-editor canvas").first
            await page.wait_for_timeout(1000 * delay + 3000)  # every held file answered by now
            deadline = time.monotonic() + delay + 30
            aspect = None
            while time.monotonic() < deadline:
                aspect = await editor_aspect(canvas)
                if aspect is not None and abs(aspect - RECT_ASPECT) < 0.05:
                    break
                await page.wait_for_timeout(500)
            ok = aspect is not None and abs(aspect - RECT_ASPECT) < 0.05
            failures += not ok
            print(f"round {r}: editor aspect {aspect} -> {'rect shown' if ok else 'WRONG'}", flush=True)
            if not ok:
                await canvas.screenshot(path=f"/tmp/repro_round_{r}.png")
        await browser.close()
    return failures


def main() -> None:
    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 5
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    process, studio = start_tiny_studio()
    try:
        failures = asyncio.run(run(studio.url, studio, delay, rounds))
    finally:
        stop(process)
    print(f"delay {delay} s: {failures} of {rounds} rounds left the wrong slice in the support editor")


if __name__ == "__main__":
    main()
