"""`stable-sam serve`: bad options and a taken port are one-line errors before the model loads;
with no arguments it serves the embedded default on 127.0.0.1, prints the URL, and writes no
file anywhere (working folder, temp folder, home)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_helpers import png_file_bytes, request

from stable_sam import cli
from stable_sam.data.scenes import TEST_SEED, make_scene

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model would be built."""
    import stable_sam.build

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(stable_sam.build, "build_stable_sam", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be in 0..65535, is 70000"),
    (["--port", "-1"], "--port must be in 0..65535, is -1"),
    (["--host", " "], "--host is empty"),
    (["--cache-images", "0"], "--cache-images must be in 1..64, is 0"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be >= 1, is 0"),
    (["--max-pixels", "0"], "--max-pixels must be >= 1, is 0"),
    (["--max-in-flight", "0"], "--max-in-flight must be >= 1, is 0"),
    (["--port", "0", "--sam-checkpoint", "missing.pth"],
     "--sam-checkpoint 'missing.pth': no such file"),
    (["--port", "0", "--model-type", "vit_b"],
     "--sam-checkpoint is required for --model-type vit_b"),
    (["--port", "0", "--device", "bogus"], "--device 'bogus' is not a torch device"),
    (["--port", "0", "--host", "203.0.113.7"], "cannot listen on 203.0.113.7:0"),
])
def test_bad_options_are_one_line_errors_before_the_model_loads(no_model, capsys, argv, message):
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stable-sam serve: error: {message}")
    assert err.count("\n") == 1


def test_a_taken_port_is_reported_before_the_model_loads(no_model, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stable-sam serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert err.endswith("(another --port, or --port 0 for a free one)\n")
    assert err.count("\n") == 1


def test_no_arguments_serve_the_embedded_model_and_write_nothing(tmp_path):
    work, temp, home = (tmp_path / name for name in ("work", "temp", "home"))
    for folder in (work, temp, home):
        folder.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "stable_sam.cli", "serve", "--port", "0"],
                               cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()  # bounded: the process prints it or exits
        match = re.search(r"demo model on cpu; open (http://127\.0\.0\.1:\d+/)", line)
        assert match, (line, process.poll() is not None and process.stderr.read())
        url = match.group(1)
        deadline = time.monotonic() + 30
        while request(url + "api/info")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status, loaded = request(url + "api/images",
                                 png_file_bytes(make_scene(TEST_SEED, 7, 160).image),
                                 "application/octet-stream")
        assert status == 200
        status, out = request(url + "api/predict", {"image_id": loaded["image_id"],
                                                    "box": [10, 10, 120, 150]})
        assert status == 200 and set(out["models"]) == {"sam", "stable_sam"}
        assert request(url + "api/shake", {"image_id": loaded["image_id"],
                                           "box": [10, 10, 120, 150]})[0] == 200
        assert request(url + "api/images", b"junk", "application/octet-stream")[0] == 400
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
            errors = process.stderr.read()
            process.stdout.close()
            process.stderr.close()
    assert process.returncode == 0 and "Traceback" not in errors, errors
    for folder in (work, temp, home):
        assert sorted(p.name for p in folder.rglob("*")) == [], f"{folder.name} was written to"


@pytest.mark.parametrize("value, message", [
    ("lots", "STABLE_SAM_MAX_IMAGE_PIXELS='lots' is not an integer"),
    ("0", "STABLE_SAM_MAX_IMAGE_PIXELS must be >= 1, is 0"),
])
def test_a_malformed_pixel_limit_is_refused_at_start(no_model, capsys, monkeypatch, value,
                                                     message):
    """Before: the server started, then every upload failed with this message."""
    monkeypatch.setenv("STABLE_SAM_MAX_IMAGE_PIXELS", value)
    assert cli.main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"stable-sam serve: error: {message}\n"


def _served_once(monkeypatch, argv):
    """Runs `stable-sam serve argv` up to the point of serving; returns what it passed on."""
    import stable_sam.serve.server

    seen = {}

    def serve_forever(app, sock, *args, **kwargs):
        seen["app"], seen["address"] = app, sock.getsockname()

    monkeypatch.setattr(stable_sam.serve.server, "serve_forever", serve_forever)
    assert cli.main(["serve", "--port", "0", *argv]) == 0
    return seen


@pytest.mark.parametrize("host, warned", [
    ("127.0.0.1", False), ("127.0.0.2", False), ("localhost", False), ("::1", False),
    ("0.0.0.0", True),
])
def test_only_an_address_other_machines_reach_warns(monkeypatch, capsys, host, warned):
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    _served_once(monkeypatch, ["--host", host])
    err = capsys.readouterr().err
    assert ("other machines can reach this page" in err) == warned, err


def test_the_pixel_limit_of_the_image_reader_holds_for_uploads(monkeypatch, capsys):
    from stable_sam.serve.server import ServerThread

    monkeypatch.setenv("STABLE_SAM_MAX_IMAGE_PIXELS", "5000")
    with ServerThread(_served_once(monkeypatch, [])["app"]) as url:
        assert request(url + "api/info")[1]["max_upload_pixels"] == 5000
        status, body = request(url + "api/images",
                               png_file_bytes(make_scene(TEST_SEED, 1, 80).image),
                               "application/octet-stream")
    assert status == 400 and "80x80 = 6400 pixels, over the" in body["error"]


def test_a_server_on_every_address_prints_a_url_it_answers(demo_model):
    """--host 0.0.0.0 printed http://0.0.0.0:PORT/, a Host no request arrives on."""
    from stable_sam.serve.app import create_app
    from stable_sam.serve.server import ServerThread
    from stable_sam.serve.session import DemoSession

    with ServerThread(create_app(DemoSession(demo_model)), host="0.0.0.0") as url:
        assert url.startswith("http://127.0.0.1:")
        assert request(url + "api/info")[0] == 200
