"""HTTP and image helpers shared by the serve tests."""
import base64
import contextlib
import io
import json
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
from PIL import Image


def request(url, data=None, content_type="application/json", method=None, timeout=60):
    """(status, parsed JSON or raw bytes) of one HTTP request; 4xx/5xx are returned, not raised."""
    if isinstance(data, (dict, list)):
        data = json.dumps(data).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None
                                                                    else "GET"))
    if data is not None:
        req.add_header("Content-Type", content_type)
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
def live_server(model, cache_size: int, **limits):
    """(session, url) of the demo app on 127.0.0.1 (a free port), stopped when the block ends."""
    from stable_sam.serve.app import create_app
    from stable_sam.serve.server import ServerThread
    from stable_sam.serve.session import DemoSession

    session = DemoSession(model, cache_size=cache_size)
    with ServerThread(create_app(session, **limits)) as url:
        yield session, url
