"""End to end: the real server on a synthetic index, driven by headless Chromium.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package; skipped with the reason otherwise. Set ``TVT_SERVE_SCREENSHOT=path.png`` to save a
screenshot of the page with its results.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("TVT_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's `chromium` package or set TVT_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def server_url(index_dir) -> Iterator[str]:
    """Serve the shared index with uvicorn in a thread, on a free local port."""
    from tvt.search.retriever import Retriever
    from tvt.serve.app import create_app

    app = create_app(Retriever.from_index(index_dir, quiet=True))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_draw_a_stroke_and_see_results(server_url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server_url + "/")
            sync_api.expect(page.locator("#info")).to_contain_text("24 photos", timeout=15_000)
            box = page.locator("#canvas").bounding_box()
            x0, y0 = box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.3
            page.mouse.move(x0, y0)
            page.mouse.down()
            for i in range(1, 21):  # a zig-zag stroke
                page.mouse.move(x0 + i * box["width"] * 0.025, y0 + (40 if i % 2 else 0) + i * 4)
            page.mouse.up()
            results = page.locator("#grid figure.result")
            sync_api.expect(results).to_have_count(24, timeout=20_000)
            sync_api.expect(page.locator("#status")).to_contain_text("results in")
            first = results.first.locator("img")
            sync_api.expect(first).to_have_attribute("src", re.compile(r"^/thumb/\d+$"))
            page.wait_for_function("() => [...document.querySelectorAll('#grid img')].slice(0, 8)"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
            captions = results.locator("figcaption").all_inner_texts()
            scores = [float(c.split("·")[1].split()[0]) for c in captions]
            assert scores == sorted(scores, reverse=True)
            # undo removes the only stroke: the canvas is blank again and the grid empties
            page.click("#undo")
            sync_api.expect(results).to_have_count(0, timeout=10_000)
            if os.environ.get("TVT_SERVE_SCREENSHOT"):
                page.mouse.move(x0, y0)
                page.mouse.down()
                page.mouse.move(x0 + 120, y0 + 90, steps=12)
                page.mouse.move(x0 + 20, y0 + 160, steps=12)
                page.mouse.up()
                sync_api.expect(results).to_have_count(24, timeout=20_000)
                page.wait_for_function("() => [...document.querySelectorAll('#grid img')]"
                                       ".every(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
                page.screenshot(path=os.environ["TVT_SERVE_SCREENSHOT"])
            assert errors == []
        finally:
            browser.close()


LAYOUT_CHECK = """() => {
  const vw = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll('.toolbar button, .toolbar label, #width, #canvas')) {
    const r = el.getBoundingClientRect();
    if (r.left < -0.5 || r.right > vw + 0.5) out.push(`${el.id || el.textContent.trim()}: ${r.left}..${r.right} of ${vw}`);
  }
  if (document.scrollingElement.scrollWidth > vw + 0.5) out.push(`page scrolls sideways: ${document.scrollingElement.scrollWidth} > ${vw}`);
  return out;
}"""


@pytest.mark.parametrize("width,height", [(390, 844), (1280, 800)])  # a phone, a desktop window
def test_every_control_visible_at_phone_and_desktop_widths(server_url, width, height):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(server_url + "/")
            sync_api.expect(page.locator("#info")).to_contain_text("24 photos", timeout=15_000)
            assert page.evaluate(LAYOUT_CHECK) == []
            for sel in ("#pen", "#eraser", "#undo", "#clear", "#width", "label.upload"):
                sync_api.expect(page.locator(sel)).to_be_visible()
            # the width slider is usable: a click at its right end sets the maximum
            box = page.locator("#width").bounding_box()
            page.mouse.click(box["x"] + box["width"] - 1, box["y"] + box["height"] / 2)
            assert int(page.locator("#width").input_value()) >= 28
            # drawing on the (possibly scaled) canvas still searches
            c = page.locator("#canvas").bounding_box()
            page.mouse.move(c["x"] + c["width"] * 0.2, c["y"] + c["height"] * 0.2)
            page.mouse.down()
            page.mouse.move(c["x"] + c["width"] * 0.7, c["y"] + c["height"] * 0.6, steps=10)
            page.mouse.up()
            sync_api.expect(page.locator("#grid figure.result")).to_have_count(24, timeout=20_000)
            assert page.evaluate(LAYOUT_CHECK) == []
        finally:
            browser.close()
