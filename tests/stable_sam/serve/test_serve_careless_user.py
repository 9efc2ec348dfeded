"""The demo server against careless and hostile clients (issue 27): a client that goes quiet
mid-request holds no slot and is cut off at the deadline; a page of another site (foreign
Origin or Host, a type a browser sends cross-site unasked) is refused; a full-image shake on the
largest allowed upload costs what its limits allow, not what the image's size would; a huge JSON
body is refused by its size before it is parsed; odd JSON and the framework's own refusals are
JSON messages in the app's shape."""
import json
import socket
import time

import numpy as np
import pytest
from serve_helpers import live_server, png_array, png_file_bytes, request

from stable_sam.data.scenes import TEST_SEED, make_scene

IN_FLIGHT = 4


def address(url):
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    return host, int(port)


def raw_client(url, data: bytes) -> socket.socket:
    """A connection that has sent `data` (part of a request) and then goes quiet."""
    sock = socket.create_connection(address(url), timeout=30)
    sock.sendall(data)
    return sock


def partial_requests(url, image_id):
    """Requests cut off in their headers and in their bodies, as a stalled client leaves them."""
    host = "%s:%d" % address(url)
    body = json.dumps({"image_id": image_id, "box": [10, 10, 90, 90]}).encode()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return ([head[:40], head[:-2]]  # half a request line and headers; all but the blank line
            + [head + body[:5]] * IN_FLIGHT)  # headers and a few bytes of body: one per slot


def read_reply(sock, within: float = 10) -> bytes:
    """One whole response (its headers and Content-Length bytes of body)."""
    sock.settimeout(within)
    reply = b""
    while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
            reply.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


def closed_by_server(sock, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


@pytest.fixture(scope="module")
def served(demo_model):
    with live_server(demo_model, cache_size=3, max_in_flight=IN_FLIGHT) as served:
        yield served


@pytest.fixture
def scene_id(served):
    _, url = served
    status, loaded = request(url + "api/scenes/0", {})
    assert status == 200
    return loaded["image_id"]


# -- a slow client -------------------------------------------------------------------------------

def test_clients_that_go_quiet_mid_request_hold_no_slot(served, scene_id):
    """More stalled clients than slots (headers, or headers and part of the body, then
    silence): the others are still served at once (before: 429 while those sockets stayed)."""
    _, url = served
    stalled = [raw_client(url, data) for data in partial_requests(url, scene_id)]
    try:
        time.sleep(0.5)  # every stalled request has reached the app
        start = time.monotonic()
        for _ in range(IN_FLIGHT + 2):
            status, _ = request(url + "api/predict",
                                {"image_id": scene_id, "box": [20, 20, 99, 99]})
            assert status == 200
        assert time.monotonic() - start < 20
    finally:
        for sock in stalled:
            sock.close()


def test_a_stalled_request_is_cut_off_at_the_deadline(demo_model):
    """No read timeout existed: half-sent headers stayed open past a minute. Now each stalled
    connection (nothing sent, part of the headers, part of the body) closes at the deadline."""
    with live_server(demo_model, cache_size=1, request_timeout=1.0,
                     max_in_flight=IN_FLIGHT) as (_, url):
        _, loaded = request(url + "api/scenes/0", {})
        stalled = [raw_client(url, data)
                   for data in [b""] + partial_requests(url, loaded["image_id"])]
        start = time.monotonic()
        assert all(closed_by_server(sock, 15) for sock in stalled)
        assert time.monotonic() - start < 15
        assert request(url + "api/info")[0] == 200  # a prompt client is unaffected


def test_a_slow_but_steady_upload_within_the_deadline_is_served(demo_model):
    with live_server(demo_model, cache_size=1, request_timeout=5.0) as (_, url):
        data = png_file_bytes(make_scene(TEST_SEED, 4, 96).image)
        host = "%s:%d" % address(url)
        sock = raw_client(url, (f"POST /api/images HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                                f"application/octet-stream\r\nContent-Length: {len(data)}\r\n"
                                "\r\n").encode())
        with sock:
            for start in range(0, len(data), len(data) // 4 + 1):
                time.sleep(0.2)
                sock.sendall(data[start:start + len(data) // 4 + 1])
            reply = read_reply(sock)
        assert reply.startswith(b"HTTP/1.1 200") and b'"width":96' in reply


# -- a foreign page ------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, status, message", [
    ({"Origin": "http://evil.example"}, 403, "comes from the page 'http://evil.example'"),
    ({"Origin": "null"}, 403, "comes from the page 'null'"),
    ({"Host": "evil.example"}, 403, "names another port"),
    ({"Host": "PORT_OF:rebound.example"}, 403, "does not name this server's address"),
    ({"Host": "PORT_OF:10.1.2.3"}, 403, "does not name this server's address"),
    ({"Content-Type": "text/plain"}, 415, "takes Content-Type application/"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "takes Content-Type"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "takes Content-Type"),
])
def test_a_foreign_page_cannot_drive_the_server(served, scene_id, headers, status, message):
    """What a page of another site (or one on a DNS name rebound to this machine) can send:
    refused before any work, with nothing loaded or computed."""
    session, url = served
    _, port = address(url)
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "own")
    headers = {name: value.replace("PORT_OF:", "") + (f":{port}" if "PORT_OF:" in value else "")
               for name, value in headers.items()}
    before = session.cached_ids()
    for path, payload, own_type in (
            ("api/shake", {"image_id": scene_id, "box": [5, 5, 80, 80]}, "application/json"),
            ("api/scenes/4", {}, "application/json"),
            ("api/images", png_file_bytes(make_scene(TEST_SEED, 8, 64).image),
             "application/octet-stream")):
        got, body = request(url + path, payload,
                            own_type if content_type == "own" else content_type, headers=headers)
        assert got == status and message in body["error"], body
    assert session.cached_ids() == before
    if "Host" in headers or "Origin" in headers:  # nor can it read anything
        got, body = request(url + "api/info", headers=headers)
        assert got == 403 and message in body["error"]


def test_the_servers_own_page_is_answered(served, scene_id):
    """The page's own requests (Origin of the served page, Host by address or localhost)."""
    _, url = served
    host = "%s:%d" % address(url)
    local = f"localhost:{address(url)[1]}"
    for headers in ({"Origin": f"http://{host}"}, {"Host": local, "Origin": f"http://{local}"}):
        status, _ = request(url + "api/predict", {"image_id": scene_id, "box": [5, 5, 80, 80]},
                            headers=headers)
        assert status == 200
    assert request(url + "api/scenes/1", {}, headers={"Origin": f"http://{host}"})[0] == 200


def test_image_ids_are_not_a_hash_anyone_can_compute(demo_model):
    """The same pixels keep their id within a server (the embedding is reused), but another
    server (another process's secret) gives another: a page cannot guess the id of an image."""
    import hashlib

    from stable_sam.serve.session import DemoSession

    image = make_scene(TEST_SEED, 6, 64).image
    first, second = DemoSession(demo_model), DemoSession(demo_model)
    ids = [first.add_image(image)["image_id"], first.add_image(image)["image_id"],
           second.add_image(image)["image_id"]]
    assert ids[0] == ids[1] != ids[2]
    plain = hashlib.sha256(image.tobytes())
    plain.update(repr(image.shape).encode())
    assert ids[0] != plain.hexdigest()[:20]


# -- a huge shake --------------------------------------------------------------------------------

def _peak_rss_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmHWM"))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # Linux: resets VmHWM to the current resident size


def test_a_full_image_shake_on_the_largest_upload_is_bounded(demo_model):
    """8000x5000 (the default pixel limit) with a full-image box: the 2 x 20 masks were built at
    full size in float32 (24 s, +5 GB under the model lock). Now they are made at most 1024 px
    on a side: the cost is the limit's, not the image's."""
    from stable_sam.serve.uploads import MAX_UPLOAD_PIXELS

    width, height = 8000, 5000
    assert width * height == MAX_UPLOAD_PIXELS
    pixels = np.full((height, width, 3), 40, np.uint8)
    pixels[1000:4000, 2000:6000] = (200, 180, 60)
    data = png_file_bytes(pixels)
    del pixels
    with live_server(demo_model, cache_size=1) as (session, url):
        status, loaded = request(url + "api/images", data, "application/octet-stream")
        assert status == 200 and (loaded["width"], loaded["height"]) == (width, height)
        _reset_peak_rss()
        before = _peak_rss_mib()
        start = time.monotonic()
        status, shaken = request(url + "api/shake", {"image_id": loaded["image_id"],
                                                     "box": [0, 0, width, height], "seed": 1})
        elapsed = time.monotonic() - start
        grown = _peak_rss_mib() - before
    assert status == 200, shaken
    assert shaken["mask_size"] == [1024, 640]
    for model in ("sam", "stable_sam"):
        coverage = png_array(shaken["models"][model]["frequency_png"])
        assert coverage.shape == (640, 1024) and coverage.max() > 0
        assert 0 <= shaken["models"][model]["stability"] <= 1
    assert grown < 500, f"the shake took {grown} MiB more memory"
    assert elapsed < 15, f"the shake took {elapsed:.1f} s"


def test_a_shake_on_an_image_within_the_frame_is_at_full_size(served, scene_id):
    _, url = served
    status, shaken = request(url + "api/shake", {"image_id": scene_id, "box": [20, 20, 200, 200]})
    assert status == 200 and shaken["mask_size"] == [256, 256]
    assert png_array(shaken["models"]["sam"]["frequency_png"]).shape == (256, 256)


# -- a huge JSON body ----------------------------------------------------------------------------

def test_a_huge_json_body_is_refused_by_its_size_before_parsing(served, scene_id, monkeypatch):
    """Megabytes of clicks (before: read in full, parsed, then refused: 60 MB took 8 s and
    +0.9 GB): refused (413) from its Content-Length before a byte of it is sent, and without one
    as soon as what arrived passes the limit; never parsed."""
    import stable_sam.serve.app as app_module

    parsed = []
    real_json_body = app_module._json_body

    async def json_body(request):
        parsed.append(request.url.path)
        return await real_json_body(request)

    monkeypatch.setattr(app_module, "_json_body", json_body)
    _, url = served
    host = "%s:%d" % address(url)
    clicks = json.dumps({"image_id": scene_id, "box": [5, 5, 80, 80],
                         "points": [[10, 10, 1]] * 400_000}).encode()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n")
    declared = raw_client(url, (head + f"Content-Length: {len(clicks)}\r\n\r\n").encode())
    chunked = raw_client(url, (head + "Transfer-Encoding: chunked\r\n\r\n").encode())
    for start in range(0, 100_000, 10_000):  # 100 kB, no length declared, no end
        chunked.sendall(b"%x\r\n%s\r\n" % (10_000, clicks[start:start + 10_000]))
    for sock in (declared, chunked):
        with sock:
            reply = read_reply(sock)
        assert reply.startswith(b"HTTP/1.1 413 ")
        assert reply.endswith(
            b'{"error": "the request body is over the server\'s limit of 64 KiB"}')
    assert parsed == []
    assert request(url + "api/predict", {"image_id": scene_id, "box": [5, 5, 80, 80]})[0] == 200
    assert parsed == ["/api/predict"]


def test_a_request_without_a_content_type_is_refused(served):
    """A page's fetch or form with no body sends no Content-Type, and a browser sends that
    cross-site unasked: the scene route wants JSON too."""
    import http.client

    session, url = served
    before = session.cached_ids()
    connection = http.client.HTTPConnection(*address(url), timeout=30)
    connection.request("POST", "/api/scenes/9")
    response = connection.getresponse()
    assert response.status == 415
    assert json.loads(response.read()) == {
        "error": "POST /api/scenes/9 takes Content-Type application/json, not None"}
    connection.close()
    assert session.cached_ids() == before


# -- odd JSON and the framework's own refusals ---------------------------------------------------

@pytest.mark.parametrize("path, raw, status, message", [
    ("api/predict", '{"image_id": "ID", "box": [1%s, 1, 5, 5]}' % ("0" * 400), 400,
     "a box coordinate must be a finite number, got a 401-digit integer"),
    ("api/predict", '{"image_id": "ID", "points": [[5, -%s, 1]]}' % ("9" * 400), 400,
     "a click's y must be a finite number, got a 400-digit integer"),
    ("api/shake", '{"image_id": "ID", "box": [1, 1, 5, 5], "seed": %s}' % ("7" * 400), 400,
     "seed must be an integer in [0, 2**32), got 7777"),
    ("api/predict", '{"image_id": "ID", "box": %s1%s}' % ("[" * 20000, "]" * 20000), 400,
     "the request body is JSON nested too deeply"),
    ("api/predict", '{"image_id": "ID", "box": %s1%s}' % ("[" * 500, "]" * 500), 400,
     "a box is [x0, y0, x1, y1], got [[[[[[[["),
])
def test_odd_json_is_a_json_refusal_with_a_message(served, scene_id, path, raw, status, message):
    _, url = served
    got, body = request(url + path, raw.replace("ID", scene_id).encode())
    assert got == status and isinstance(body, dict) and message in body["error"], body
    assert len(body["error"]) < 200


@pytest.mark.parametrize("method, path, status, message", [
    ("GET", "api/nothing-here", 404, "there is no /api/nothing-here on this server"),
    ("GET", "api/predict", 405, "/api/predict does not take GET"),
    ("POST", "api/scenes/x", 422, "path index: Input should be a valid integer"),
    ("GET", "api/images/unknown.png", 404, "is not loaded on the server"),
])
def test_the_frameworks_refusals_come_in_the_apps_shape(served, method, path, status, message):
    """The page shows body.error; a {"detail": ...} body showed only 'the server answered 422'."""
    _, url = served
    got, body = request(url + path, {} if method == "POST" else None, method=method)
    assert got == status and set(body) == {"error"} and message in body["error"], body


def test_an_unexpected_failure_is_a_json_500(served, scene_id, monkeypatch):
    session, url = served

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(session, "predict", broken)
    got, body = request(url + "api/predict", {"image_id": scene_id, "box": [5, 5, 80, 80]})
    assert got == 500 and body == {"error": "the server failed on this request (RuntimeError); "
                                            "its terminal shows the details"}


def test_an_image_too_elongated_for_the_model_is_a_refusal_not_a_failure(served):
    """3000x2 decodes, but SAM's resize to the model's input makes its short side 0 pixels."""
    session, url = served
    before = session.cached_ids()
    status, body = request(url + "api/images", png_file_bytes(np.zeros((2, 3000, 3), np.uint8)),
                           "application/octet-stream")
    assert status == 400 and body["error"].startswith("the uploaded image cannot be used: "), body
    assert session.cached_ids() == before


def test_a_client_that_stops_reading_is_dropped_at_the_deadline(demo_model):
    """An answer the client does not take stays in the server's memory for as long as the
    connection lives; now the connection is dropped once the answer has waited the deadline."""
    noise = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    with live_server(demo_model, cache_size=1, request_timeout=1.0) as (session, url):
        status, loaded = request(url + "api/images", png_file_bytes(noise),
                                 "application/octet-stream")
        assert status == 200
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(address(url))
        sock.sendall((f"GET /api/images/{loaded['image_id']}.png HTTP/1.1\r\nHost: "
                      "%s:%d\r\n\r\n" % address(url)).encode())
        time.sleep(4)  # the answer (6.8 MB of noise) waits in the server's buffer
        received = b""
        sock.settimeout(10)
        try:
            while chunk := sock.recv(1 << 20):
                received += chunk
        except ConnectionResetError:
            pass
        finally:
            sock.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < 6_000_000, "the whole answer waited for a client that did not read"


@pytest.mark.parametrize("host, server, answered", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000), True),
    ("localhost:8000", ("127.0.0.2", 8000), True),
    ("LOCALHOST:8000", ("::1", 8000), True),
    ("[::1]:8000", ("::1", 8000), True),
    ("127.0.0.1:8000", ("::ffff:127.0.0.1", 8000), True),  # IPv4 on a socket bound to ::
    ("192.168.1.5:8000", ("192.168.1.5", 8000), True),
    ("localhost:8000", ("192.168.1.5", 8000), False),  # localhost is not that address
    ("mybox.example:8000", ("192.168.1.5", 8000), False),  # a name can be rebound
    ("127.0.0.1", ("127.0.0.1", 8000), False),  # port 80 implied
    ("127.0.0.1:8001", ("127.0.0.1", 8000), False),
    ("127.0.0.1:80x", ("127.0.0.1", 8000), False),
    ("[::1:8000", ("::1", 8000), False),
    (None, ("127.0.0.1", 8000), False),
])
def test_which_host_headers_name_the_server(host, server, answered):
    from stable_sam.serve.guards import _host_problem

    assert (_host_problem(host, server) is None) == answered
