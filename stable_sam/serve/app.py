"""The demo's web app (FastAPI): the page, its static files and a small JSON API.

    GET  /                       the page
    GET  /api/info               model, scenes, limits
    POST /api/scenes/{index}     load a bundled held-out scene -> {image_id, width, height, box}
    POST /api/images             load an uploaded image (the file as the body) -> {image_id, ...}
    GET  /api/images/{id}.png    a loaded image, as the server decoded it (EXIF applied)
    POST /api/predict            {image_id, box?, points?} -> both models' masks
    POST /api/shake              {image_id, box, seed?} -> 20 noisy boxes, both models' masks, mSF

Every refusal is a JSON {"error": message} with a 4xx status, which the page shows as it is.
The model runs one request at a time; at most `max_in_flight` POSTs are accepted at once (the
others get 429 at once instead of queueing without bound), so a burst cannot pile up work.
"""
from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..reproduction.pipeline import NUM_TEST_SCENES
from .encoding import png_bytes
from .prompts import PromptError
from .session import (SHAKE_BOXES, SHAKE_NOISE_SCALE, DemoSession, UnknownImageError,
                      scene_image)
from .uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, UploadError, decode_image

MAX_IN_FLIGHT = 4


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class InFlightLimit:
    """ASGI middleware: answers 429 to a POST when `limit` POSTs are already being served."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0  # touched only on the event loop's thread

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            busy = _error(429, f"the server is busy ({self.in_flight} requests in progress): "
                               "try again in a moment")
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise PromptError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise PromptError("the request body must be a JSON object")
    return body


class UploadTooLarge(UploadError):
    """An upload over the byte limit (answered 413)."""


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (no more is read)."""
    declared = request.headers.get("content-length")
    limit_text = f"{round(limit / 1024)} KiB" if limit < 2**20 else f"{limit / 2**20:.1f} MiB"
    too_big = f"the upload is over the server's limit of {limit_text}"
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(session: DemoSession, *, model_name: str = "demo",
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_upload_pixels: int = MAX_UPLOAD_PIXELS,
               max_in_flight: int = MAX_IN_FLIGHT, num_scenes: int = NUM_TEST_SCENES):
    """The ASGI app serving `session` (wrapped in the in-flight limit)."""
    app = FastAPI(title="Stable-SAM demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(packages=[("stable_sam.serve", "static")]), name="static")

    @app.exception_handler(UploadTooLarge)
    async def _too_large(request, exc):
        return _error(413, str(exc))

    @app.exception_handler(UploadError)
    @app.exception_handler(PromptError)
    async def _bad_input(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(UnknownImageError)
    async def _unknown_image(request, exc):
        return _error(404, str(exc))

    @app.get("/")
    async def page():
        from importlib.resources import files

        return FileResponse(str(files("stable_sam.serve") / "static" / "index.html"))

    @app.get("/api/info")
    async def info():
        return {"model": model_name, "scenes": num_scenes, "max_upload_bytes": max_upload_bytes,
                "max_upload_pixels": max_upload_pixels, "max_in_flight": max_in_flight,
                "shake_boxes": SHAKE_BOXES, "shake_noise_scale": SHAKE_NOISE_SCALE}

    @app.post("/api/scenes/{index}")
    async def scene(index: int):
        image, box = await run_in_threadpool(scene_image, index, num_scenes)
        loaded = await run_in_threadpool(session.add_image, image)
        return {**loaded, "box": box}

    @app.post("/api/images")
    async def upload(request: Request):
        data = await _read_limited(request, max_upload_bytes)
        image = await run_in_threadpool(decode_image, data, max_upload_pixels)
        return await run_in_threadpool(session.add_image, image)

    @app.get("/api/images/{image_id}.png")
    async def image(image_id: str):
        pixels = await run_in_threadpool(session.image, image_id)
        return Response(await run_in_threadpool(png_bytes, pixels), media_type="image/png")

    @app.post("/api/predict")
    async def predict(request: Request):
        body = await _json_body(request)
        return await run_in_threadpool(session.predict, str(body.get("image_id")),
                                       body.get("box"), body.get("points"))

    @app.post("/api/shake")
    async def shake(request: Request):
        body = await _json_body(request)
        seed = body.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise PromptError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        return await run_in_threadpool(session.shake, str(body.get("image_id")),
                                       body.get("box"), seed)

    return InFlightLimit(app, max_in_flight)
