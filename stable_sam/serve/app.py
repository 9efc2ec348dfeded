"""The demo's web app (FastAPI): the page, its static files and a small JSON API.

    GET  /                       the page
    GET  /api/info               model, scenes, limits
    POST /api/scenes/{index}     {} -> load a bundled held-out scene: {image_id, width, height, box}
    POST /api/images             load an uploaded image (the file as the body) -> {image_id, ...}
    GET  /api/images/{id}.png    a loaded image, as the server decoded it (EXIF applied)
    POST /api/predict            {image_id, box?, points?} -> both models' masks
    POST /api/shake              {image_id, box, seed?} -> 20 noisy boxes, both models' masks
                                 (at most 1024 px on a side: mask_size), mSF
    POST /api/worst_box          {image_id, box?, tau?} -> SAM's worst box with IoU >= tau (0.5)
                                 to the box (no box: the scene target's), both models' masks
                                 on it and their IoUs (mask_size as the shake's)

Every answer that is not a success is a JSON {"error": message} with its status (the app's own
refusals, the framework's 404/405/422 and an unexpected failure's 500 alike), which the page
shows as it is. Before a request reaches a route it passes the guards (stable_sam.serve.guards):
only this server's own page is answered (Host and Origin), a POST must be JSON (or image bytes
for an upload) of at most its route's size, read in full before it takes one of the
`max_in_flight` slots (the others get 429 at once), and the server closes a connection whose
request has not arrived within its deadline (stable_sam.serve.deadline). The model runs one
request at a time.
"""
from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..reproduction.pipeline import NUM_TEST_SCENES
from .encoding import png_bytes
from .guards import BodyRule, BodyRules, InFlightLimit, SameOriginOnly
from .prompts import PromptError, shown
from .session import (SHAKE_BOXES, SHAKE_NOISE_SCALE, WORST_BOX_TAU, DemoSession,
                      UnknownImageError, scene_with_target)
from .uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, UploadError, decode_image

MAX_IN_FLIGHT = 4
# A prompt is an image id, a box and at most 64 clicks: a few KB. The limit bounds the work of
# parsing what a client sends (JSON is parsed whole, in memory) to well under a millisecond.
MAX_JSON_BYTES = 64 * 1024
# Types a browser sends cross-site only after asking (a CORS preflight, which this server never
# approves): a page of another site cannot post here. text/plain, forms and multipart it could.
JSON_TYPES = ("application/json",)
UPLOAD_TYPES = ("application/octet-stream", "image/*")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except RecursionError:
        raise PromptError("the request body is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise PromptError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise PromptError("the request body must be a JSON object")
    return body


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = " ".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}"
                     + (f", got {shown(error['input'])}" if "input" in error else ""))
    return "; ".join(parts) or "the request is not valid"


def create_app(session: DemoSession, *, model_name: str = "demo",
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_upload_pixels: int = MAX_UPLOAD_PIXELS,
               max_in_flight: int = MAX_IN_FLIGHT, num_scenes: int = NUM_TEST_SCENES):
    """The ASGI app serving `session`, behind the guards (outermost first: same origin only,
    body rules, the in-flight limit)."""
    app = FastAPI(title="Stable-SAM demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(packages=[("stable_sam.serve", "static")]), name="static")

    @app.exception_handler(UploadError)
    @app.exception_handler(PromptError)
    async def _bad_input(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(UnknownImageError)
    async def _unknown_image(request, exc):
        return _error(404, str(exc))

    # The framework's own refusals (no such route, wrong method, a path parameter of the wrong
    # type) and an unexpected failure in the app's shape, so the page can show the message.
    @app.exception_handler(HTTPException)
    async def _framework_refusal(request, exc):
        message = {404: f"there is no {request.url.path} on this server",
                   405: f"{request.url.path} does not take {request.method}"}
        return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request, exc):
        return _error(422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def _failure(request, exc):
        return _error(500, f"the server failed on this request ({type(exc).__name__}); its "
                      "terminal shows the details")

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
        image, box, target = await run_in_threadpool(scene_with_target, index, num_scenes)
        loaded = await run_in_threadpool(session.add_image, image, target)
        return {**loaded, "box": box}

    @app.post("/api/images")
    async def upload(request: Request):
        image = await run_in_threadpool(decode_image, await request.body(), max_upload_pixels)
        try:
            return await run_in_threadpool(session.add_image, image)
        except ValueError as exc:  # an image the model cannot take (e.g. far too elongated)
            raise UploadError(f"the uploaded image cannot be used: {exc}") from None

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
            raise PromptError(f"seed must be an integer in [0, 2**32), got {shown(seed)}")
        return await run_in_threadpool(session.shake, str(body.get("image_id")),
                                       body.get("box"), seed)

    @app.post("/api/worst_box")
    async def worst_box(request: Request):
        body = await _json_body(request)
        tau = body.get("tau", WORST_BOX_TAU)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < 1:
            raise PromptError(f"tau must be a number in (0, 1), got {shown(tau)}")
        return await run_in_threadpool(session.worst_box, str(body.get("image_id")),
                                       body.get("box"), float(tau))

    bodies = BodyRules(InFlightLimit(app, max_in_flight),
                       {"/api/images": BodyRule(UPLOAD_TYPES, max_upload_bytes, "the upload")},
                       BodyRule(JSON_TYPES, MAX_JSON_BYTES))
    return SameOriginOnly(bodies)
