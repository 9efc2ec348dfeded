"""HTTP and image helpers shared by the serve tests."""
import base64
import contextlib
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image


def request(url, data=None, content_type="application/json", method=None, timeout=60,
            headers=None):
    """(status, parsed JSON or raw bytes) of one HTTP request; 4xx/5xx are returned, not raised.
    `headers` are sent as given (e.g. a foreign Host or Origin); content_type=None sends none."""
    if isinstance(data, (dict, list)):
        data = json.dumps(data).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None
                                                                    else "GET"))
    if data is not None and content_type is not None:
        req.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, body = response.status, response.read()
            kind = response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(), exc.headers.get_content_type()
    return status, json.loads(body) if kind == "application/json" else body


def png_array(data) -> np.ndarray:
    """A PNG (bytes or a data URL) as a numpy array."""
    if isinstance(data, str):
        data = base64.b64decode(data.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def png_file_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


CHROMIUM = next((path for path in ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
                 if os.path.exists(path)), None)
CHROMEDRIVER = shutil.which("chromedriver")


def start_chromium(download_dir, width: int = 1300, height: int = 1000):
    """Debian's headless chromium through its chromedriver (Selenium; nothing is downloaded)."""
    assert CHROMIUM and CHROMEDRIVER, (
        "the browser tests need Debian's chromium and chromium-driver: run scripts/setup.sh "
        "(as root it installs them) or apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@contextlib.contextmanager
def live_server(model, cache_size: int, request_timeout: float = 30.0, **limits):
    """(session, url) of the demo app on 127.0.0.1 (a free port), stopped when the block ends."""
    from stable_sam.serve.app import create_app
    from stable_sam.serve.server import ServerThread
    from stable_sam.serve.session import DemoSession

    session = DemoSession(model, cache_size=cache_size)
    with ServerThread(create_app(session, **limits), request_timeout=request_timeout) as url:
        yield session, url


def hold_every_slot(session, url, payload, slots: int, timeout: float = 60):
    """With `session.lock` held by the caller: `slots` threads whose predict requests are
    accepted and wait for the model, so every in-flight slot is taken; returns the threads and
    their (status, body) list once a probe is answered busy. A thread answered 429 (a probe held
    a slot at that moment) tries again: only an accepted request counts."""
    results = []
    deadline = time.monotonic() + timeout

    def held():
        while time.monotonic() < deadline:
            status, body = request(url + "api/predict", payload)
            if status != 429:
                results.append((status, body))
                return
            time.sleep(0.01)

    threads = [threading.Thread(target=held) for _ in range(slots)]
    for thread in threads:
        thread.start()
    while True:  # a free slot answers the probe's bad seed with 400; a full house with 429
        status, body = request(url + "api/shake", {"seed": -1})
        if status == 429:
            return threads, results, body
        assert time.monotonic() < deadline, "the held requests never took every slot"
        time.sleep(0.02)
