"""The page at GET /, in a real browser: Debian's headless Chromium, driven by Selenium through Debian's
chromedriver, against a real rtcore serve on loopback with the shipped model. It picks a sample scene, edits it and
checks the edited image; then it sends bad values and checks the messages the page shows (400, 413, 429)."""

import base64
import io
import shutil
import threading

import numpy as np
import PIL.Image
import pytest
from http_helpers import FIELDS, Server, post

from rtcore import CycleDiffusion
from rtcore.serve import create_app

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def shapes_pipe():
    return CycleDiffusion.from_pretrained("rtcore-shapes")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # headless as root in a sandbox-less container, and nothing that would reach for the network by itself
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a given driver: no download
    yield driver
    driver.quit()


def open_page(browser, port):
    browser.get(f"http://127.0.0.1:{port}/")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#samples img")) >= 12)


def fill(browser, **fields):
    for name, value in fields.items():
        box = browser.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))


def image_bytes(browser, element_id):
    """The PNG bytes behind an <img> of the page (a blob: URL), read by the page's own fetch."""
    data = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch(document.getElementById('{element_id}').src).then((r) => r.arrayBuffer()).then((b) => {{"
        "  let s = ''; new Uint8Array(b).forEach((x) => { s += String.fromCharCode(x); }); done(btoa(s)); });")
    return base64.b64decode(data)


def submit_and_wait_for_error(browser):
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "error").text)
    return browser.find_element(By.ID, "error").text


def test_a_sample_scene_edited_in_the_browser(browser, shapes_pipe):
    srv = Server(create_app(shapes_pipe))
    try:
        open_page(browser, srv.port)
        browser.find_elements(By.CSS_SELECTOR, "#samples img")[0].click()
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "prompt").get_attribute("value"))
        source = browser.find_element(By.ID, "source_prompt").get_attribute("value")
        assert source.startswith("a ") and "background" in source
        fill(browser, num_inference_steps=30)
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "after").get_attribute("src"))
        before = np.asarray(PIL.Image.open(io.BytesIO(image_bytes(browser, "before"))).convert("RGB"), dtype=int)
        after = np.asarray(PIL.Image.open(io.BytesIO(image_bytes(browser, "after"))).convert("RGB"), dtype=int)
        assert after.shape == before.shape == (64, 64, 3)
        assert np.abs(after - before).mean() > 5  # an edit, not the input sent back
        assert "denoise" in browser.find_element(By.ID, "timings").text
        fill(browser, strength=2)
        assert submit_and_wait_for_error(browser).startswith("400: strength must be a number in (0, 1]")
    finally:
        srv.stop()


def test_too_large_and_busy_show_their_messages(browser, shapes_pipe):
    small = Server(create_app(shapes_pipe, max_pixels=32 * 32))
    try:
        open_page(browser, small.port)
        browser.find_elements(By.CSS_SELECTOR, "#samples img")[1].click()
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "prompt").get_attribute("value"))
        assert submit_and_wait_for_error(browser).startswith("413: image: ")
    finally:
        small.stop()
    busy = Server(create_app(shapes_pipe, max_concurrency=1, max_queue=0, max_batch=1, timeout_s=5))
    try:
        # one long edit holds the only place (until its 5 s deadline stops it); the page's request gets 429 at once
        blocker = threading.Thread(target=post, args=(busy.port, dict(FIELDS, num_inference_steps="600",
                                                                        strength="1.0")))
        blocker.start()
        open_page(browser, busy.port)
        browser.find_elements(By.CSS_SELECTOR, "#samples img")[2].click()
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "prompt").get_attribute("value"))
        assert submit_and_wait_for_error(browser).startswith("429: server busy")
        blocker.join()
    finally:
        busy.stop()
