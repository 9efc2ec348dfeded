"""End-to-end: the demo page in a real headless browser (Debian's chromium through its
chromedriver, driven by Selenium) against a live server on 127.0.0.1.

What the page shows is checked against the model: the canvas pixels against the image blended
with the mask the session computes for the same box, the mSF against the session's shake with the
page's seed, the downloaded files against the mask.
"""
import json
import time

import numpy as np
import pytest
from serve_helpers import (hold_every_slot, live_server, png_array, png_file_bytes,
                           start_chromium)

TIMEOUT = 30  # seconds for any one thing the page does
LIMITS = {"max_upload_bytes": 400_000, "max_upload_pixels": 300 * 300, "max_in_flight": 2}


@pytest.fixture(scope="module")
def served(demo_model):
    with live_server(demo_model, cache_size=4, **LIMITS) as served:
        yield served


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    driver = start_chromium(downloads)
    driver.set_script_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(
        lambda d: condition(d), message=f"the page did not {what} in {TIMEOUT} s")


def body_data(driver, key):
    return driver.execute_script(f"return document.body.dataset.{key} || null;")


def open_page(driver, url):
    driver.get(url)
    wait_for(driver, lambda d: body_data(d, "ready"), "load")


def load_scene(driver, index):
    from selenium.webdriver.support.ui import Select

    before = body_data(driver, "image")
    Select(driver.find_element("id", "scene")).select_by_value(str(index))
    driver.find_element("id", "load-scene").click()
    wait_for(driver, lambda d: body_data(d, "image") not in (None, before), "load the scene")
    return body_data(driver, "image")


def drag_box(driver, box):
    """Drags `box` (image pixels) on Stable-SAM's canvas with the mouse; returns the box the page
    took (mouse positions are whole CSS pixels)."""
    from selenium.webdriver import ActionChains

    canvas = driver.find_element("id", "canvas-stable_sam")
    width, height, css_w, css_h = driver.execute_script(
        "const c = arguments[0], r = c.getBoundingClientRect();"
        "return [c.width, c.height, r.width, r.height];", canvas)

    def offset(x, y):  # from the element's centre, in CSS pixels
        return round(x * css_w / width - css_w / 2), round(y * css_h / height - css_h / 2)

    before = body_data(driver, "masks")
    driver.execute_script("showError('');")  # so that only this prompt's error counts
    (ActionChains(driver).move_to_element_with_offset(canvas, *offset(box[0], box[1]))
     .click_and_hold().move_to_element_with_offset(canvas, *offset(*(np.add(box[:2], box[2:]) / 2)))
     .move_to_element_with_offset(canvas, *offset(box[2], box[3])).release().perform())
    wait_for(driver, lambda d: body_data(d, "masks") != before or error_text(d), "show masks")
    return driver.execute_script("return state.box;")


def error_text(driver):
    element = driver.find_element("id", "error")
    return element.text if element.is_displayed() else ""


def canvas_pixels(driver, model):
    data = driver.execute_script(
        "const c = document.getElementById('canvas-' + arguments[0]);"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);", model)
    height = driver.execute_script(f"return document.getElementById('canvas-{model}').height;")
    return np.array(data, dtype=np.uint8).reshape(height, -1, 4)[..., :3]


def away_from_box(shape, box, margin=4):
    """True where a pixel is farther than `margin` from the box's outline (drawn over the mask)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    near = np.zeros(shape, bool)
    for edge_x in (box[0], box[2]):
        near |= (np.abs(xx - edge_x) <= margin) & (yy >= box[1] - margin) & (yy <= box[3] + margin)
    for edge_y in (box[1], box[3]):
        near |= (np.abs(yy - edge_y) <= margin) & (xx >= box[0] - margin) & (xx <= box[2] + margin)
    return ~near


def wait_for_file(path):
    deadline = time.monotonic() + TIMEOUT
    while not (path.exists() and path.stat().st_size > 0):
        assert time.monotonic() < deadline, f"{path.name} was not downloaded"
        time.sleep(0.05)
    time.sleep(0.2)  # chromium renames the finished .crdownload onto the name
    return path


def test_scene_box_masks_shake_and_downloads(browser, served, downloads):
    from pycocotools import mask as mask_utils

    session, url = served
    open_page(browser, url)
    image_id = load_scene(browser, 3)
    image = session.image(image_id)
    box = drag_box(browser, [70, 60, 190, 200])
    assert not error_text(browser)
    assert np.allclose(box, [70, 60, 190, 200], atol=1.5)
    expected = session.predict(image_id, box)
    masks = {m: png_array(expected["models"][m]["mask_png"]) > 0 for m in ("sam", "stable_sam")}
    assert (masks["sam"] != masks["stable_sam"]).any()  # two different masks to tell apart
    keep = away_from_box(image.shape[:2], box)
    for model, mask in masks.items():
        shown = canvas_pixels(browser, model).astype(int)
        blended = np.round(0.5 * image + 0.5 * np.array([30, 144, 255])).astype(int)
        assert np.abs(shown - blended)[mask & keep].max() <= 3, f"{model}'s mask is not shown"
        assert np.abs(shown - image)[~mask & keep].max() <= 1, f"{model} shows more than its mask"
        score = browser.find_element("id", f"score-{model}").text
        assert score.startswith(f"predicted IoU {expected['models'][model]['score']:.3f}")

    browser.find_element("id", "show-sampling").click()
    routing = browser.find_element("id", "routing-stable_sam").text
    alpha = expected["models"]["stable_sam"]["alpha"]
    assert routing.startswith(f"routing α = ({alpha[0]:.3f} deformed, {alpha[1]:.3f} regular)")
    with_points = canvas_pixels(browser, "stable_sam")
    assert (np.abs(with_points.astype(int) - np.array([255, 215, 0])).max(-1) <= 2).sum() > 20
    browser.find_element("id", "show-sampling").click()

    browser.find_element("id", "shake").click()
    wait_for(browser, lambda d: body_data(d, "shaken") or error_text(d), "show the shake")
    assert not error_text(browser)
    seed = browser.execute_script("return state.shake.seed;")
    shaken = session.shake(image_id, box, seed)
    for model in ("sam", "stable_sam"):
        text = browser.find_element("id", f"stability-{model}").text
        assert text == f"mSF {100 * shaken['models'][model]['stability']:.1f}"
    assert browser.execute_script("return state.shake.boxes;") == shaken["boxes"]

    browser.find_element("id", "download-png-stable_sam").click()
    png = wait_for_file(downloads / "stable_sam_mask.png")
    assert np.array_equal(png_array(png.read_bytes()) > 0, masks["stable_sam"])
    browser.find_element("id", "download-rle-sam").click()
    record = json.loads(wait_for_file(downloads / "sam_mask_rle.json").read_text())
    rle = {"size": record["segmentation"]["size"],
           "counts": record["segmentation"]["counts"].encode()}
    assert np.array_equal(mask_utils.decode(rle).astype(bool), masks["sam"])
    assert record["model"] == "sam" and record["image_id"] == image_id


def test_upload_and_clicks(browser, served, tmp_path):
    from stable_sam.data.scenes import TEST_SEED, make_scene

    session, url = served
    open_page(browser, url)
    upload = tmp_path / "my scene.png"
    upload.write_bytes(png_file_bytes(make_scene(TEST_SEED, 5, 200).image))
    browser.find_element("id", "upload").send_keys(str(upload))
    wait_for(browser, lambda d: body_data(d, "image") or error_text(d), "load the upload")
    assert not error_text(browser)
    image_id = body_data(browser, "image")
    assert session.image(image_id).shape == (200, 200, 3)
    browser.find_element("id", "mode-pos").click()
    canvas = browser.find_element("id", "canvas-sam")
    from selenium.webdriver import ActionChains

    before = body_data(browser, "masks")
    ActionChains(browser).move_to_element(canvas).click().perform()
    wait_for(browser, lambda d: body_data(d, "masks") != before, "show masks for a click")
    points = browser.execute_script("return state.points;")
    assert len(points) == 1 and points[0][2] == 1
    expected = session.predict(image_id, None, points)
    assert browser.find_element("id", "score-sam").text.startswith(
        f"predicted IoU {expected['models']['sam']['score']:.3f}")


def upload_error(browser, path):
    browser.find_element("id", "upload").send_keys(str(path))
    wait_for(browser, error_text, "show an error")
    return error_text(browser)


def test_bad_inputs_show_a_message_and_the_server_keeps_serving(browser, served, tmp_path):
    session, url = served
    open_page(browser, url)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    assert "could not read the uploaded image (corrupt or not an image)" in upload_error(browser,
                                                                                       text)

    open_page(browser, url)
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_file_bytes(np.zeros((100, 1000, 3), np.uint8)))
    assert "1000x100 = 100000 pixels, over the server's limit of 90000" in upload_error(
        browser, wide)

    open_page(browser, url)
    heavy = tmp_path / "heavy.png"
    heavy.write_bytes(png_file_bytes(np.random.default_rng(0).integers(0, 255, (280, 560, 3),
                                                                          dtype=np.uint8)))
    assert heavy.stat().st_size > LIMITS["max_upload_bytes"]
    message = upload_error(browser, heavy)
    assert f"heavy.png is {round(heavy.stat().st_size / 1024)} KiB" in message
    assert "over the server's limit of 391 KiB" in message

    open_page(browser, url)
    load_scene(browser, 0)
    browser.execute_script("state.box = [10, 10, 400, 90]; promptChanged();")
    wait_for(browser, error_text, "show an error")
    assert "reaches outside the 256x256 image" in error_text(browser)

    # A burst from elsewhere holds every slot: the page's prompt is answered "busy" at once.
    image_id = body_data(browser, "image")
    session.lock.acquire()
    try:
        payload = {"image_id": image_id, "box": [1, 1, 9, 9]}
        others, _, _ = hold_every_slot(session, url, payload, LIMITS["max_in_flight"])
        drag_box(browser, [40, 40, 200, 200])
        assert "the server is busy" in error_text(browser)
    finally:
        session.lock.release()
    for thread in others:
        thread.join(TIMEOUT)
    box = drag_box(browser, [50, 50, 180, 180])
    assert not error_text(browser)
    assert browser.find_element("id", "score-stable_sam").text.startswith("predicted IoU")
    assert np.allclose(box, [50, 50, 180, 180], atol=1.5)


def test_a_page_of_another_origin_cannot_drive_the_server(browser, served):
    """The page as served at localhost is another origin than the server at 127.0.0.1: what its
    script sends there (a text/plain POST, which needs no preflight, and a JSON one, which does)
    loads nothing. Before, any site's page could upload and shake."""
    session, url = served
    port = url.rstrip("/").rsplit(":", 1)[1]
    open_page(browser, f"http://localhost:{port}/")
    before = session.cached_ids()
    outcomes = browser.execute_async_script("""
        const done = arguments[arguments.length - 1], target = arguments[0];
        const send = (type, mode) => fetch(target + "api/scenes/7", {method: "POST", mode,
            headers: {"Content-Type": type}, body: "{}"}).then((r) => r.type + " " + r.status,
            (err) => "refused");
        Promise.all([send("text/plain", "no-cors"), send("application/json", "cors")]).then(done);
    """, url)
    assert outcomes == ["opaque 0", "refused"]
    assert session.cached_ids() == before
    load_scene(browser, 7)  # the page itself, from its own origin, is served
    assert len(session.cached_ids()) > 0


def test_the_pages_url_can_fix_the_shake_seed(browser, served):
    session, url = served
    open_page(browser, url + "?seed=12345")
    image_id = load_scene(browser, 4)
    browser.find_element("id", "casual").click()
    wait_for(browser, lambda d: body_data(d, "masks"), "show masks")
    browser.find_element("id", "shake").click()
    wait_for(browser, lambda d: body_data(d, "shaken") or error_text(d), "show the shake")
    assert browser.execute_script("return state.shake.seed;") == 12345
    box = browser.execute_script("return state.box;")
    assert browser.execute_script("return state.shake.boxes;") == session.shake(
        image_id, box, 12345)["boxes"]
