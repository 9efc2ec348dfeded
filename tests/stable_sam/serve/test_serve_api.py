"""The demo server's HTTP API through a live server on 127.0.0.1: the page and its files, scenes,
uploads (and their limits), predictions, errors as JSON messages, the in-flight limit."""
import numpy as np
import pytest
from serve_helpers import hold_every_slot, live_server, png_array, png_file_bytes, request

from stable_sam.data.scenes import FRESH_TEST_SEED, TEST_SEED, make_scene

LIMITS = {"max_upload_bytes": 300_000, "max_upload_pixels": 320 * 320, "max_in_flight": 2}


@pytest.fixture(scope="module")
def served(demo_model):
    with live_server(demo_model, cache_size=3, **LIMITS) as served:
        yield served


def upload(url, data):
    return request(url + "api/images", data, "application/octet-stream")


def test_page_static_files_and_info(served):
    _, url = served
    status, page = request(url)
    assert status == 200 and b'<template id="panel">' in page and b"/static/app.js" in page
    for name, marker in (("app.js", b"/api/predict"), ("style.css", b"canvas")):
        status, body = request(url + "static/" + name)
        assert status == 200 and marker in body
    status, info = request(url + "api/info")
    assert info == {"model": "demo", "scenes": 50, "shake_boxes": 20, "shake_noise_scale": 0.4,
                    **LIMITS}


def test_scene_upload_and_predict_round_trip(served):
    session, url = served
    status, loaded = request(url + "api/scenes/2", b"")
    assert status == 200 and (loaded["width"], loaded["height"]) == (256, 256)
    status, png = request(url + f"api/images/{loaded['image_id']}.png")
    # the published table's held-out split
    assert np.array_equal(png_array(png), make_scene(FRESH_TEST_SEED, 2, version=2).image)

    photo = make_scene(TEST_SEED, 9, 180).image
    status, mine = upload(url, png_file_bytes(photo))
    assert status == 200 and (mine["width"], mine["height"]) == (180, 180)
    assert np.array_equal(session.image(mine["image_id"]), photo)
    status, out = request(url + "api/predict", {"image_id": mine["image_id"],
                                                "box": [20, 30, 150, 160],
                                                "points": [[90, 90, 1]]})
    assert status == 200
    expected = session.predict(mine["image_id"], [20, 30, 150, 160], [[90, 90, 1]])
    for name in ("sam", "stable_sam"):
        assert out["models"][name]["mask_png"] == expected["models"][name]["mask_png"]
        assert out["models"][name]["rle"] == expected["models"][name]["rle"]
    status, shaken = request(url + "api/shake", {"image_id": mine["image_id"],
                                                 "box": [20, 30, 150, 160], "seed": 3})
    assert status == 200
    assert shaken["models"] == session.shake(mine["image_id"], [20, 30, 150, 160], 3)["models"]


def test_exif_orientation_is_applied_to_uploads(served):
    from io import BytesIO

    from PIL import Image

    session, url = served
    pixels = make_scene(TEST_SEED, 11, 120).image[:, :90]
    buffer = BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=95)
    status, loaded = upload(url, buffer.getvalue())
    assert status == 200 and (loaded["width"], loaded["height"]) == (120, 90)


def test_uploads_are_read_by_the_packages_image_reader(served, tmp_path):
    """An upload gives the pixels `stable-sam segment` reads from the same file: a 16-bit grey
    PNG is scaled to 8 bits (not clipped), as the one image reader does."""
    from PIL import Image

    from stable_sam.data.image_files import read_rgb

    session, url = served
    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    status, loaded = upload(url, path.read_bytes())
    assert status == 200
    assert np.array_equal(session.image(loaded["image_id"]), read_rgb(path))
    assert session.image(loaded["image_id"]).max() == round(int(ramp.max()) * 255 / 65535)


@pytest.mark.parametrize("make, status, message", [
    (lambda: b"", 400, "the upload is empty"),
    (lambda: b"GIF89a but not really", 400,
     "could not read the uploaded image (corrupt or not an image)"),
    (lambda: png_file_bytes(make_scene(TEST_SEED, 0, 64).image)[:3000], 400,
     "could not decode the uploaded image (truncated or corrupt)"),
    (lambda: png_file_bytes(np.zeros((321, 320, 3), np.uint8)), 400,
     "320x321 = 102720 pixels, over the server's limit of 102400 pixels"),
    (lambda: b"\x89PNG" + bytes(300_001), 413, "over the server's limit of 293 KiB"),
])
def test_bad_uploads_are_refused_with_a_message(served, make, status, message):
    session, url = served
    before = session.cached_ids()
    got, body = upload(url, make())
    assert got == status and message in body["error"]
    assert session.cached_ids() == before


def test_an_oversized_upload_without_a_length_is_cut_off(served):
    import http.client

    _, url = served
    host, port = url.split("//")[1].strip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/api/images")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/octet-stream")
    connection.endheaders()
    chunk = bytes(100_000)
    for _ in range(4):  # 400 kB in chunks, no Content-Length: the limit still holds
        connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 413
    connection.close()


@pytest.mark.parametrize("path, payload, status, message", [
    ("api/predict", {"image_id": "nope", "box": [1, 1, 5, 5]}, 404, "is not loaded"),
    ("api/predict", "SCENE", 400, "reaches outside the 256x256 image"),
    ("api/predict", b"{not json", 400, "not JSON"),
    ("api/predict", [1, 2], 400, "must be a JSON object"),
    ("api/shake", {"image_id": "SCENE", "box": [1, 1, 5, 5], "seed": -1}, 400, "seed must be"),
    ("api/shake", {"image_id": "SCENE", "points": [[3, 3, 1]]}, 400, "a box is"),
    ("api/scenes/50", b"", 400, "pick 0 to 49"),
    ("api/scenes/x", b"", 422, "path index: Input should be a valid integer"),
])
def test_bad_requests_get_a_message_and_the_server_keeps_serving(served, path, payload, status,
                                                                 message):
    _, url = served
    _, loaded = request(url + "api/scenes/0", b"")
    if payload == "SCENE":
        payload = {"image_id": loaded["image_id"], "box": [10, 10, 300, 20]}
    elif isinstance(payload, dict):
        payload = {k: loaded["image_id"] if v == "SCENE" else v for k, v in payload.items()}
    got, body = request(url + path, payload)
    assert got == status
    if message:
        assert message in body["error"]
    got, _ = request(url + "api/predict", {"image_id": loaded["image_id"], "box": [10, 10, 90, 90]})
    assert got == 200


def test_a_burst_beyond_the_in_flight_limit_is_answered_busy_at_once(served):
    session, url = served
    _, loaded = request(url + "api/scenes/1", b"")
    payload = {"image_id": loaded["image_id"], "box": [40, 40, 200, 200]}
    session.lock.acquire()  # the model is busy: accepted requests wait for it
    try:
        held, results, busy = hold_every_slot(session, url, payload, LIMITS["max_in_flight"])
        assert busy["error"] == ("the server is busy (2 requests in progress): try again in a "
                                 "moment")
        burst = [request(url + "api/predict", payload)[0] for _ in range(10)]
        assert burst == [429] * 10
        assert request(url + "api/info")[0] == 200  # reading the page is never refused
    finally:
        session.lock.release()
    for thread in held:
        thread.join(30)
    assert [status for status, _ in results] == [200, 200]
    assert request(url + "api/predict", payload)[0] == 200
