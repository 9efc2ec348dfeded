"""The demo page's round trips through the real HTTP server (`stable-sam serve`'s app on
127.0.0.1, uvicorn, the embedded demo model), against the same work without HTTP in the same run.

  prompt  POST /api/predict -> both models' masks (PNG + COCO RLE) and sampling points, i.e.
          what the page waits for after each box or click; the issue's target: <= 150 ms
  shake   POST /api/shake   -> 20 noisy boxes x 2 models, coverage PNGs and mSF
  upload  POST /api/images  -> decode + the image embedding (once per image)

Baseline: DemoSession.predict / .shake called directly (the model and the encoding, no HTTP),
timed in turn with the HTTP calls so that load from other processes hits both alike. Prompts
are casual boxes (noisy, scale 0.4) around each scene's target, one click on it, or both.
Usage:

    .venv/bin/python benchmarks/bench_serve.py [--prompts 50] [--no-write]

Writes the table to benchmarks/RESULTS.md (section "Demo server round trips (cpu)").
"""

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    machine_description,
    markdown_table,
    write_results_section,
)

TARGET_MS = 150.0


def post(url: str, payload, content_type: str = "application/json") -> dict:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=120) as response:
        return json.loads(response.read())


def prompts_for(scene, count: int, rng: np.random.Generator, scale: float) -> list:
    from stable_sam.data.prompts import noisy_box, positive_points

    target = scene.masks[scene.target]
    out = []
    for i in range(count):
        box = (noisy_box(target, rng, 0.4, (0.0, 1.0)) * scale).round(1).tolist()
        coords, _ = positive_points(target, 1, rng)
        click = [[float(coords[0, 0]) * scale, float(coords[0, 1]) * scale, 1]]
        out.append([(box, None), (None, click), (box, click)][i % 3])
    return out


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=50, help="prompts per image size")
    parser.add_argument("--shakes", type=int, default=10, help="shakes per image size")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    import cv2

    from stable_sam.build import build_stable_sam
    from stable_sam.data.scenes import TEST_SEED, make_scene
    from stable_sam.serve.app import create_app
    from stable_sam.serve.encoding import png_bytes
    from stable_sam.serve.server import ServerThread
    from stable_sam.serve.session import DemoSession

    load_start = os.getloadavg()[0]
    session = DemoSession(build_stable_sam("demo").eval(), cache_size=4)
    rng = np.random.default_rng(0)
    rows = []
    with ServerThread(create_app(session)) as url:
        for size in (256, 1024):
            scene = make_scene(TEST_SEED, 0)
            image = cv2.resize(scene.image, (size, size), interpolation=cv2.INTER_CUBIC)
            encoded = png_bytes(image)
            start = time.perf_counter()
            loaded = post(url + "api/images", encoded, "application/octet-stream")
            upload_ms = 1000 * (time.perf_counter() - start)
            image_id = loaded["image_id"]
            times = {"http": [], "direct": []}
            prompts = prompts_for(scene, args.prompts, rng, size / 256)
            for box, points in prompts[:3]:  # warm-up
                post(url + "api/predict", {"image_id": image_id, "box": box, "points": points})
            for i, (box, points) in enumerate(prompts):
                order = ("http", "direct") if i % 2 == 0 else ("direct", "http")
                for way in order:
                    start = time.perf_counter()
                    if way == "http":
                        post(url + "api/predict", {"image_id": image_id, "box": box,
                                                   "points": points})
                    else:
                        session.predict(image_id, box, points)
                    times[way].append(1000 * (time.perf_counter() - start))
            shakes = {"http": [], "direct": []}
            for i in range(args.shakes):
                box = prompts[3 * (i % (len(prompts) // 3))][0]
                for way in ("http", "direct") if i % 2 == 0 else ("direct", "http"):
                    start = time.perf_counter()
                    if way == "http":
                        post(url + "api/shake", {"image_id": image_id, "box": box, "seed": i})
                    else:
                        session.shake(image_id, box, i)
                    shakes[way].append(1000 * (time.perf_counter() - start))
            for what, samples in (("prompt", times), ("shake (20 boxes x 2 models)", shakes)):
                http, direct = samples["http"], samples["direct"]
                target = ""
                if what == "prompt":
                    met = percentile(http, 95) <= TARGET_MS
                    target = f"{'met' if met else 'MISSED'} (p95 <= {TARGET_MS:.0f} ms)"
                rows.append([f"{size}x{size}", what, len(http), statistics.median(direct),
                             statistics.median(http), percentile(http, 95), max(http), target])
            rows.append([f"{size}x{size}", "upload + embedding (once per image)", 1, "-",
                         upload_ms, "-", "-", ""])
    load_end = os.getloadavg()[0]

    header = ["image", "request", "n", "direct median ms (baseline)", "HTTP median ms",
              "HTTP p95 ms", "HTTP max ms", "target"]
    table = markdown_table(header, rows)
    print(table)
    body = (
        f"Machine: {machine_description()}. Device: cpu. Load average (1 min): "
        f"{load_start:.1f} at the start, {load_end:.1f} at the end, on {os.cpu_count()} cores "
        "(other work was running on the machine: the times include waiting for the cores).\n\n"
        "Round trips of the demo page's requests through the real HTTP server (uvicorn on "
        "127.0.0.1, the embedded `demo` model, one process), measured from a client in the same "
        "process: request sent to the JSON answer parsed (both models' masks as PNG + COCO RLE, "
        "the sampling points). Baseline: the same work called directly on `DemoSession` (model "
        "+ encoding, no HTTP), timed in turn with the HTTP calls. Prompts: casual boxes (noisy, "
        "scale 0.4) around a held-out scene's target, one click on it, or both; the 1024 px "
        "image is the same scene upscaled, as an uploaded photo would be "
        "(`benchmarks/bench_serve.py`).\n\n" + table)
    if not args.no_write:
        write_results_section("Demo server round trips (cpu)", body)
        print("wrote the section 'Demo server round trips (cpu)' of benchmarks/RESULTS.md")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
