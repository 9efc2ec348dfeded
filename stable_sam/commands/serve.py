"""`stable-sam serve`: the interactive demo page, SAM and Stable-SAM side by side.

Options are checked, and the port bound, before the model loads: a bad option or a taken port
is a one-line error at once, not after the model has loaded.
"""

import argparse
import ipaddress
import sys

from . import CliError, _common

HELP = ("start a local web page: upload an image or pick a scene, draw a box or click, and see "
        "SAM's and Stable-SAM's masks side by side (runs on the embedded demo model by default)")
# what stable_sam.serve imports from the serve extra (starlette and h11 come with fastapi and
# uvicorn, and the server imports them itself)
SERVE_PACKAGES = ("fastapi", "starlette", "uvicorn", "h11")
MAX_CACHE_IMAGES = 64  # each cached embedding is 256x64x64 floats (4 MiB) for SAM's ViTs


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help=HELP, description=HELP)
    _common.add_model_arguments(parser)
    # The other commands default to vit_b; the page runs with no arguments on the embedded model.
    model_type = next(action for action in parser._actions if action.dest == "model_type")
    model_type.default = "demo"
    model_type.help = model_type.help.replace("(default vit_b)", "(default demo, the embedded "
                                              "model: no checkpoint needed)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--cache-images", type=int, default=4,
                        help="image embeddings kept in memory, least recently used dropped "
                        "first (default 4)")
    parser.add_argument("--max-upload-mb", type=int, default=20,
                        help="largest upload accepted, in MiB (default 20)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="largest uploaded image accepted, in pixels (default 40000000)")
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help="requests served at once; more get 'busy' at once (default 4)")
    return parser


def _check(args) -> None:
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be in 0..65535, is {args.port}")
    if not args.host.strip():
        raise CliError("--host is empty")
    if not 1 <= args.cache_images <= MAX_CACHE_IMAGES:
        raise CliError(f"--cache-images must be in 1..{MAX_CACHE_IMAGES}, is {args.cache_images}")
    if args.max_upload_mb < 1:
        raise CliError(f"--max-upload-mb must be >= 1, is {args.max_upload_mb}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise CliError(f"--max-pixels must be >= 1, is {args.max_pixels}")
    if args.max_in_flight is not None and args.max_in_flight < 1:
        raise CliError(f"--max-in-flight must be >= 1, is {args.max_in_flight}")


def _check_serve_extra() -> None:
    """FastAPI and uvicorn are installed and import: an incompatible version raises on import
    (anything, not only ImportError), and that is one line, not a traceback."""
    from ..optional_imports import describe_failures, failing_imports, not_installed

    missing = not_installed(SERVE_PACKAGES)
    if missing:
        raise CliError(f"the demo server needs {missing[0]!r}: install the serve extra, "
                       "pip install -e '.[serve]'")
    failures = failing_imports(SERVE_PACKAGES)
    if failures:
        raise CliError(f"the demo server: {describe_failures(failures)}; the serve extra's "
                       "versions: pip install -e '.[serve]'")


def _image_pixel_limit() -> int:
    """STABLE_SAM_MAX_IMAGE_PIXELS, checked now: a malformed value would otherwise start the
    server and then fail every upload."""
    from ..data.image_files import ImageReadError, max_image_pixels

    try:
        return max_image_pixels()
    except ImageReadError as exc:
        raise CliError(str(exc)) from None


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only: localhost or any loopback address (127.0.0.0/8,
    ::1), which other machines cannot reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    _check(args)
    reader_limit = _image_pixel_limit()
    _common.check_model_arguments(args)
    _check_serve_extra()
    try:
        from ..serve.app import create_app
        from ..serve.server import bind, serve_forever, url_of
        from ..serve.session import DemoSession
        from ..serve.uploads import MAX_UPLOAD_PIXELS
    except ModuleNotFoundError as exc:
        raise CliError(f"the demo server needs {exc.name!r}: install the serve extra, "
                       "pip install -e '.[serve]'") from None
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} (another "
                       "--port, or --port 0 for a free one)") from None
    with sock:
        model = _common.build_model(args)
        session = DemoSession(model, cache_size=args.cache_images)
        # The image reader's own limit (STABLE_SAM_MAX_IMAGE_PIXELS) holds for uploads too.
        limits = {"max_upload_bytes": args.max_upload_mb * 1024 * 1024,
                  "max_upload_pixels": min(args.max_pixels or MAX_UPLOAD_PIXELS, reader_limit)}
        if args.max_in_flight is not None:
            limits["max_in_flight"] = args.max_in_flight
        app = create_app(session, model_name=args.model_type, **limits)
        print(f"stable-sam serve: {args.model_type} model on {session.device}; open "
              f"{url_of(sock)}  (Ctrl+C stops)", flush=True)
        if not is_loopback(args.host):
            print(f"WARNING: listening on {args.host}: other machines can reach this page (by "
                  "this machine's IP address: the server answers no other name)", file=sys.stderr)
        serve_forever(app, sock)
    return 0
