"""The demo's Worst box: the session's search (SAM, plugins off) on a scene's target and on a drawn
box, its bounds, the HTTP route and its refusals, and the button in a real headless browser,
whose canvas and numbers are checked against the session's own answer."""
import threading
import time

import numpy as np
import pytest
from serve_helpers import live_server, png_array, png_file_bytes, request, start_chromium
from test_serve_browser import (away_from_box, body_data, canvas_pixels, drag_box, error_text,
                                load_scene, open_page, wait_for)

from stable_sam.data.prompts import gt_box
from stable_sam.data.scenes import TEST_SEED, make_scene
from stable_sam.evaluation.box_constraint import feasible
from stable_sam.evaluation.metrics import mask_iou
from stable_sam.evaluation.worst_box import WorstBoxConfig
from stable_sam.serve import session as session_module
from stable_sam.serve.prompts import PromptError
from stable_sam.serve.session import WORST_BOX_CONFIG, scene_with_target

MODELS = ("sam", "stable_sam")


def mask_of(answer, model):
    return png_array(answer["models"][model]["mask_png"]) > 0


def test_on_a_scene_target_the_worst_box_lowers_sams_iou_within_the_constraint(session):
    image, _, target = scene_with_target(3, 50)
    image_id = session.add_image(image, target)["image_id"]
    answer = session.worst_box(image_id)
    assert answer["reference"] == "target" and answer["tau"] == 0.5
    gt = gt_box(target)
    assert answer["box"] == [float(v) for v in gt]
    worst = np.array(answer["worst_box"])
    assert feasible(worst[None], gt, 0.5, target.shape)[0] and answer["box_iou"] >= 0.5
    sam = answer["models"]["sam"]
    assert sam["iou"] <= sam["iou_base"]  # the GT box is one of the boxes searched
    for model in MODELS:  # the masks are the page's prompt masks for that box, scored on the GT
        shown = mask_of(answer, model)
        predicted = mask_of(session.predict(image_id, list(worst)), model)
        assert (shown != predicted).mean() < 1e-3
        assert answer["models"][model]["iou"] == pytest.approx(mask_iou(shown, target))
        base = mask_of(session.predict(image_id, [float(v) for v in gt]), model)
        assert answer["models"][model]["iou_base"] == pytest.approx(mask_iou(base, target),
                                                                    abs=1e-3)
    assert answer["mask_size"] == [256, 256] and not answer["truncated"]


def test_on_a_drawn_box_each_model_is_scored_against_its_own_mask(session):
    image = make_scene(TEST_SEED, 5, 200).image
    image_id = session.add_image(image)["image_id"]
    box = [40.0, 50.0, 150.0, 170.0]
    answer = session.worst_box(image_id, box, tau=0.7)
    assert answer["reference"] == "box" and answer["box"] == box and answer["tau"] == 0.7
    assert feasible(np.array([answer["worst_box"]]), np.array(box), 0.7, (200, 200))[0]
    for model in MODELS:
        assert answer["models"][model]["iou_base"] == 1.0  # its own mask for the drawn box
        own = mask_of(session.predict(image_id, box), model)
        assert answer["models"][model]["iou"] == pytest.approx(mask_iou(mask_of(answer, model),
                                                                        own), abs=1e-3)
    assert answer["models"]["sam"]["iou"] < 1.0
    with pytest.raises(PromptError, match="the worst box needs a box: drag one"):
        session.worst_box(image_id)  # an upload has no target
    with pytest.raises(PromptError, match="reaches outside the 200x200 image"):
        session.worst_box(image_id, [10, 10, 300, 90])


def test_a_large_upload_is_searched_at_the_shakes_size_and_within_the_budget(session):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    image[300:900, 400:1200] = (220, 180, 40)
    image_id = session.add_image(image)["image_id"]
    started = time.perf_counter()
    answer = session.worst_box(image_id, [0, 0, 1600, 1200])
    elapsed = time.perf_counter() - started
    assert answer["mask_size"] == [1024, 768]
    assert mask_of(answer, "sam").shape == (768, 1024)
    # stepping stops at the budget; the masks at mask_size after it are a bounded remainder
    assert elapsed < WORST_BOX_CONFIG.time_budget_s + 10


@pytest.fixture(scope="module")
def served(demo_model):
    # no time budget here: the page's search and the direct call then find the same boxes
    # however busy the machine is
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session_module, "WORST_BOX_CONFIG", WorstBoxConfig(time_budget_s=None))
        with live_server(demo_model, cache_size=4, max_in_flight=2) as served:
            yield served


def test_the_route_answers_as_the_session_and_refuses_bad_requests(served):
    session, url = served
    status, loaded = request(url + "api/scenes/3", b"")
    assert status == 200
    status, answer = request(url + "api/worst_box", {"image_id": loaded["image_id"]})
    assert status == 200
    direct = session.worst_box(loaded["image_id"])
    assert answer["worst_box"] == direct["worst_box"] and answer["models"] == direct["models"]
    for body, code, message in (
            ({"image_id": loaded["image_id"], "tau": 1.0}, 400, "tau must be a number in (0, 1)"),
            ({"image_id": loaded["image_id"], "tau": True}, 400, "tau must be a number"),
            ({"image_id": loaded["image_id"], "box": [5, 5, 2, 9]}, 400, "is empty"),
            ({"image_id": "nope", "box": [1, 1, 9, 9]}, 404, "is not loaded on the server")):
        status, out = request(url + "api/worst_box", body)
        assert status == code and message in out["error"], out


def test_worst_box_requests_share_the_one_in_flight_limit(served):
    session, url = served
    _, loaded = request(url + "api/scenes/1", b"")
    payload, results = {"image_id": loaded["image_id"]}, []

    def held():  # a request answered 429 (a probe held a slot just then) tries again
        while (status := request(url + "api/worst_box", payload)[0]) == 429:
            time.sleep(0.01)
        results.append(status)

    session.lock.acquire()  # the model is busy: accepted requests wait for it
    try:
        threads = [threading.Thread(target=held) for _ in range(2)]
        for thread in threads:
            thread.start()
        # a probe with a bad tau is refused before the model (400) while a slot is free, and
        # answered busy (429) once both are taken
        deadline = time.monotonic() + 30
        while request(url + "api/worst_box", {"tau": 2})[0] != 429:
            assert time.monotonic() < deadline, "the held requests never took every slot"
            time.sleep(0.02)
    finally:
        session.lock.release()
    for thread in threads:
        thread.join(60)
    assert results == [200, 200]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("downloads"))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shown_masks_match(browser, image, answer, boxes):
    keep = np.ones(image.shape[:2], bool)
    for box in boxes:
        keep &= away_from_box(image.shape[:2], box)
    blended = np.round(0.5 * image + 0.5 * np.array([30, 144, 255])).astype(int)
    for model in MODELS:
        mask, canvas = mask_of(answer, model), canvas_pixels(browser, model).astype(int)
        assert np.abs(canvas - blended)[mask & keep].max() <= 3, f"{model}'s mask is not shown"
        assert np.abs(canvas - image)[~mask & keep].max() <= 1, f"{model} shows more than its mask"
        magenta = np.abs(canvas - np.array([255, 0, 255])).max(-1) <= 2
        worst = answer["worst_box"]
        outline = ~away_from_box(image.shape[:2], worst, margin=2)
        perimeter = 2 * (worst[2] - worst[0] + worst[3] - worst[1])
        # the outline is antialiased (fractional corners) and crossed by the other box: a part
        # of it is pure magenta
        assert magenta[outline].sum() >= 0.25 * perimeter, "the worst box is not drawn"
        assert not magenta[~outline].any(), "magenta away from the worst box"


def page_worst(browser):
    """The page's last worst-box answer without its overlays (canvases do not serialise)."""
    return browser.execute_script(
        "if (!state.worst) return null; const {overlays, ...rest} = state.worst; return rest;")


def click_worst_box(browser):
    before = body_data(browser, "worst")
    browser.find_element("id", "worst-box").click()
    wait_for(browser, lambda d: body_data(d, "worst") not in (None, before) or error_text(d),
             "show the worst box")
    assert not error_text(browser)
    return page_worst(browser)


def test_the_worst_box_button_on_the_scene_target_and_on_a_drawn_box(browser, served):
    session, url = served
    open_page(browser, url)
    image_id = load_scene(browser, 3)
    image = session.image(image_id)
    page = click_worst_box(browser)  # no box drawn: the scene's target
    expected = session.worst_box(image_id)
    assert page["worst_box"] == expected["worst_box"] and page["reference"] == "target"
    shown_masks_match(browser, image, expected, [expected["worst_box"], expected["box"]])
    for model in MODELS:
        numbers = expected["models"][model]
        assert browser.find_element("id", f"worst-{model}").text == (
            f"worst box: IoU {100 * numbers['iou']:.1f} with the target "
            f"({100 * numbers['iou_base']:.1f} on the target's box)")
    assert "Worst box for SAM (magenta) among boxes with IoU ≥ 0.5 to the scene target's box" \
        in browser.find_element("id", "status").text

    box = drag_box(browser, [60, 50, 200, 190])  # a new prompt clears the worst box
    assert page_worst(browser) is None
    assert browser.find_element("id", "worst-sam").text == ""
    page = click_worst_box(browser)
    expected = session.worst_box(image_id, box)
    assert page["worst_box"] == expected["worst_box"] and page["reference"] == "box"
    shown_masks_match(browser, image, expected, [expected["worst_box"], box])
    assert browser.find_element("id", "worst-stable_sam").text.startswith(
        f"worst box: IoU {100 * expected['models']['stable_sam']['iou']:.1f} with its mask for "
        "your box (100.0 on your box)")


def test_the_button_on_an_upload_without_a_box_says_what_it_needs(browser, served, tmp_path):
    _, url = served
    open_page(browser, url)
    upload = tmp_path / "mine.png"
    upload.write_bytes(png_file_bytes(make_scene(TEST_SEED, 6, 160).image))
    browser.find_element("id", "upload").send_keys(str(upload))
    wait_for(browser, lambda d: body_data(d, "image") or error_text(d), "load the upload")
    browser.find_element("id", "worst-box").click()
    wait_for(browser, error_text, "show an error")
    assert "the worst box needs a box: drag one on the image" in error_text(browser)
