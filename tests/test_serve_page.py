"""The page at `/` in a real browser: headless Chromium (Debian's package) driven by Playwright
draws a digit and uploads one, and the page shows the served model's prediction for the pixels it
sent. Screenshots go to test-output/ (listed at the end of the test run).

Needs /usr/bin/chromium (`.ci/run` installs it); elsewhere the test is skipped, unless
LAB_REQUIRE_BROWSER=1 (set by `.ci/run`) makes a missing browser a failure.
"""

import io
import os
import shutil

import numpy as np
import pytest

import lab.data
from lab import artifact
from tests.helpers import serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "test-output")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium as root in a container, on a machine with no outside network (the flags keep it from
# trying to reach Google's services at start).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if not missing and not os.path.exists(CHROMIUM):
        missing = "no chromium (apt-get install chromium)"
    if missing:
        if os.environ.get("LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def _result_after(page, action) -> str:
    """The text of #result once `action()` has changed it."""
    before = page.inner_text("#result")
    action()
    page.wait_for_function("before => document.getElementById('result').textContent !== before", arg=before,
                           timeout=20_000)
    return page.inner_text("#result")


def _png(image: np.ndarray) -> bytes:
    """An 8x8 ink-high digit as a 224x224 dark-on-light PNG, as a scan or a drawing would be."""
    from PIL import Image

    gray = np.round(255 * (1 - image[..., 0])).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").resize((224, 224), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def test_the_page_draws_and_uploads_a_digit_and_shows_the_prediction(browser, mlp_export):
    model = artifact.Artifact(mlp_export[1])
    os.makedirs(OUTPUT, exist_ok=True)

    def served_label(pixels) -> str:
        return str(int(model(inputs=np.asarray([pixels], np.float32))["label"].argmax()))

    with serving(mlp_export[1], "--max_wait_ms=0") as (base, _):
        page = browser.new_page(viewport={"width": 720, "height": 520})
        page.goto(base + "/")
        assert "mlp_classifier (step 20)" in page.title()

        # Draw a "7" with the mouse: a bar across the top, then a stroke down to the left.
        box = page.locator("#pad").bounding_box()
        page.mouse.move(box["x"] + 50, box["y"] + 45)
        page.mouse.down()
        for x, y in ((175, 45), (150, 100), (100, 190)):
            page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
        page.mouse.up()
        drawn = _result_after(page, lambda: page.click("#go"))
        sent = page.evaluate("pixels()")  # the 8x8 the page posted
        assert np.asarray(sent).shape == (8, 8, 1) and 0 < np.max(sent) <= 1 and np.min(sent) == 0
        assert drawn.startswith(f"label: {served_label(sent)} ("), drawn
        page.screenshot(path=os.path.join(OUTPUT, "serve_page_drawn.png"))

        # Upload a test digit as a dark-on-light picture: the page recovers the image and its label.
        test = lab.data.load("digits", "test")
        image = test["inputs"][0]
        upload = os.path.join(OUTPUT, "digit_upload.png")
        with open(upload, "wb") as f:
            f.write(_png(image))
        uploaded = _result_after(page, lambda: page.set_input_files("#upload", upload))
        sent = np.asarray(page.evaluate("pixels()"), np.float32)
        np.testing.assert_allclose(sent, image, atol=2 / 255)
        assert uploaded.startswith(f"label: {served_label(image)} ("), uploaded
        page.screenshot(path=os.path.join(OUTPUT, "serve_page_uploaded.png"))
        page.close()
