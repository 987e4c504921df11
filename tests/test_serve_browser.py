"""The web page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): upload, submit, see.

The server runs the tiny real checkpoints. Without Chromium the test is skipped, except
on CI (``CI=true``), whose ``.ci/run`` installs it: there a missing browser fails.
"""

import os
import shutil

import pytest

from agent import Agent, Configuration
from agent.serve import create_app
from agent.serve import BackgroundServer
from tests.helpers import EXPRESSION, png

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic would be refused by this closed network, many times over.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PALETTE_FIRST = (230, 159, 0)  # tools/drawing.py's first colour, the best box's


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def test_upload_submit_and_see_the_boxes_drawn(browser, tmp_path, tiny_mm_grounding_dino, tiny_qwen2_vl):
    image_file = tmp_path / "street.png"
    image_file.write_bytes(png())
    agent = Agent(config=Configuration(strategy="sfa", llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                       mllm=str(tiny_qwen2_vl), device="cpu"))
    with BackgroundServer(create_app(agent)) as server:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url)
        page.wait_for_selector("#strategy option[value='sfa+crs']", state="attached")
        assert page.input_value("#strategy") == "sfa" and page.is_checked("#focus")
        page.set_input_files("#image", str(image_file))
        page.fill("#expression", EXPRESSION)
        page.select_option("#strategy", "crs")
        page.click("#submit")
        page.wait_for_selector("#status[data-state='done']", timeout=60_000)

        assert page.get_attribute("#view", "data-boxes") == "1"
        assert page.text_content("#summary-path") == "crs" and page.text_content("#summary-strategy") == "crs"
        assert page.text_content("#summary-found") == "1 box"
        assert page.locator("#boxes tbody tr").count() == 1
        steps = page.locator("#timings tbody td:first-child").all_text_contents()
        assert {"queue", "load_image", "extract_target", "crs", "finish", "total"} <= set(steps)
        assert "CRS choice" in page.text_content("#summary")
        # The best box's outline is drawn on the canvas in the palette's first colour.
        drawn = page.evaluate(
            """() => {
                const canvas = document.getElementById("view");
                const result = JSON.parse(document.getElementById("raw").textContent);
                const [x1, y1, x2, y2] = result.boxes[0].map(Math.round);
                const ctx = canvas.getContext("2d");
                const x = Math.min(x1, canvas.width - 1), y = Math.round((y1 + y2) / 2);
                return [canvas.width, canvas.height, Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3))];
            }"""
        )
        assert drawn[:2] == [160, 120] and tuple(drawn[2]) == PALETTE_FIRST
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

        # A bad upload shows the server's reason instead of a result.
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not an image")
        page.set_input_files("#image", str(broken))
        page.click("#submit")
        page.wait_for_selector("#status[data-state='error']")
        assert "400: image data: not an image file PIL can read" in page.text_content("#status")
        assert errors == []


def test_the_page_sends_the_api_key_when_the_server_needs_one(browser, tmp_path):
    from agent.serve import ServerOptions
    from tests.helpers import plugin_agent

    image_file = tmp_path / "street.png"
    image_file.write_bytes(png())
    with BackgroundServer(create_app(plugin_agent(), ServerOptions(api_key="s3cret"))) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("#api-key-row:not(.hidden)")
        page.set_input_files("#image", str(image_file))
        page.fill("#expression", EXPRESSION)
        page.click("#submit")
        page.wait_for_selector("#status[data-state='error']")
        assert page.text_content("#status").startswith("401: missing or wrong API key")
        page.fill("#api-key", "s3cret")
        page.click("#submit")
        page.wait_for_selector("#status[data-state='done']")
        assert page.get_attribute("#view", "data-boxes") == "1" and page.text_content("#summary-path") == "crs"
