"""Regenerates the README's screenshot of the demo page (not a test): a held-out scene, its
casual box, then the shake; the browser is the tests' headless chromium.

    .venv/bin/python tests/stable_sam/serve/make_screenshot.py docs/serve_demo.png [--scene 17]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))

from serve_helpers import live_server, start_chromium  # noqa: E402


def wait(driver, key, before=None, timeout=60):
    deadline = time.monotonic() + timeout
    while driver.execute_script(f"return document.body.dataset.{key} || null;") in (None, before):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the page did not set data-{key} in {timeout} s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--scene", type=int, default=17)
    parser.add_argument("--sampling", action="store_true", help="draw the sampling points too")
    args = parser.parse_args()

    from selenium.webdriver.support.ui import Select

    from stable_sam.build import build_stable_sam
    from stable_sam.data._io import write_atomic

    with live_server(build_stable_sam("demo").eval(), 4) as (_, url), \
            tempfile.TemporaryDirectory() as downloads:
        driver = start_chromium(downloads, 1000, 900)
        try:
            driver.get(url)
            wait(driver, "ready")
            Select(driver.find_element("id", "scene")).select_by_value(str(args.scene))
            driver.find_element("id", "load-scene").click()
            wait(driver, "image")
            driver.find_element("id", "casual").click()
            wait(driver, "masks", driver.execute_script("return document.body.dataset.masks;"))
            if args.sampling:
                driver.find_element("id", "show-sampling").click()
            driver.find_element("id", "shake").click()
            wait(driver, "shaken")
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(png)

    write_atomic(args.out, write)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
