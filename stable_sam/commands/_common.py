"""Shared pieces of the segment and visualize commands: model options, image and prompt
parsing with validation, colour overlays and atomic PNG writes."""

import argparse
import os
import stat
import sys
import tempfile
from typing import List, Optional, Tuple

import numpy as np

from . import CliError
from ..prompting import Prompts

from ..families import EMBEDDED_MODEL_TYPES, MODEL_TYPES, RANDOM_MODEL_TYPES  # noqa: F401

# SAM's input size by model type where it is not the ViTs' 1024 (the prompts' coarse-mask logits
# and the image-size check need it before a model is built)
MODEL_IMAGE_SIZES = {"tiny": 256, "hq_tiny": 256, "demo": 256, "sam2_tiny_random": 256}


def model_image_size(model_type: str) -> int:
    return MODEL_IMAGE_SIZES.get(model_type, 1024)


def check_family_installed(model_type: str) -> None:
    """The model type's family can be built here (HQ-SAM needs the hq extra); checked right
    after parsing, so no command writes, binds or loads anything for a model it cannot build."""
    from ..families import family_of

    missing = family_of(model_type).missing_dependency()
    if missing is not None:
        raise CliError(missing)


def check_tensorboard() -> None:
    """Training logs to tensorboard where it is installed (it is no dependency, and its absence
    is silent); an installed one that fails to import is said now, not after OUT exists."""
    from ..optional_imports import describe_failures, failing_imports

    failures = failing_imports(("tensorboard",), {"tensorboard": "torch.utils.tensorboard"})
    if failures:
        raise CliError(f"training logs to tensorboard where it is installed, and "
                       f"{describe_failures(failures)}: repair or uninstall it")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        default="vit_b",
        help="SAM backbone (default vit_b), hq_* for HQ-SAM, sam2.1_hiera_* for SAM 2.1; "
        "'tiny', 'hq_tiny' and 'sam2_tiny_random' are random models for demos; 'demo' has its "
        "weights in the package (a small model trained on generated scenes, to show the "
        "method, not a segmenter for photographs)",
    )
    parser.add_argument("--sam-checkpoint", help="official SAM weights, e.g. "
                        "sam_vit_b_01ec64.pth or sam2.1_hiera_large.pt")
    parser.add_argument(
        "--plugin-checkpoint",
        help="Stable-SAM plugin weights (.safetensors); without it the plugins "
        "are at their identity init and Stable-SAM equals SAM",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="input image (any format Pillow reads)")
    parser.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box prompt in image pixels",
    )
    parser.add_argument(
        "--points",
        nargs="+",
        metavar="X,Y[,LABEL]",
        default=None,
        help="point prompts in image pixels; LABEL 1 = foreground (default), 0 = background",
    )
    parser.add_argument(
        "--clip-prompts",
        action="store_true",
        help="clip prompts that fall outside the image instead of failing",
    )
    parser.add_argument("--out-dir", default=".", help="output folder (created if missing)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that already exist (refused without it)")


def check_model_arguments(args) -> None:
    """--model-type/--sam-checkpoint/--plugin-checkpoint/--device, checked without loading
    SAM's weights (the plugin file is read and checked: it is small)."""
    from ..checkpoint import CheckpointError, check_plugin_file

    check_family_installed(args.model_type)
    for flag, path in (
        ("--sam-checkpoint", args.sam_checkpoint),
        ("--plugin-checkpoint", args.plugin_checkpoint),
    ):
        if path is not None and not os.path.isfile(path):
            raise CliError(f"{flag} {path!r}: no such file")
    if (args.sam_checkpoint is None and args.model_type not in RANDOM_MODEL_TYPES
            and args.model_type not in EMBEDDED_MODEL_TYPES):
        raise CliError(f"--sam-checkpoint is required for --model-type {args.model_type}")
    if args.plugin_checkpoint is not None:
        try:
            check_plugin_file(args.plugin_checkpoint)
        except CheckpointError as exc:
            raise CliError(str(exc)) from None
    check_device(args.device)


def build_model(args):
    """StableSam from --model-type/--sam-checkpoint/--plugin-checkpoint, errors as CliError."""
    import torch

    from ..build import build_stable_sam
    from ..checkpoint import CheckpointError

    check_model_arguments(args)
    if args.sam_checkpoint is None and args.model_type not in EMBEDDED_MODEL_TYPES:
        print(
            f"WARNING: --model-type {args.model_type} without --sam-checkpoint is a RANDOMLY "
            "INITIALISED SAM; its masks are meaningless (demo/test use only).",
            file=sys.stderr,
        )
    try:
        model = build_stable_sam(args.model_type, args.sam_checkpoint, args.plugin_checkpoint)
    except (CheckpointError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def load_image(path: str, model_type: Optional[str] = None) -> np.ndarray:
    """RGB uint8 HxWx3, through the package's one image reader; with a model type, also
    checked to fit that model's input (the predictor's own check, made before any model)."""
    from ..data.image_files import ImageReadError, read_rgb
    from ..families import family_of
    from ..families.predictor_base import ImageSizeError

    try:
        image = read_rgb(path)
    except (ImageReadError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    if model_type is not None:
        # the predictor's own rule (SAM's resize keeps the aspect ratio; SAM 2's does not)
        predictor_class = family_of(model_type).load_adapter().PREDICTOR_CLASS
        check = getattr(predictor_class, "check_image_size", None)
        try:
            if check is not None:
                check(image.shape[0], image.shape[1], model_image_size(model_type))
        except ImageSizeError as exc:
            raise CliError(f"{path}: {exc}") from None
    return image


def check_device(text: Optional[str]) -> None:
    """--device must name a device this machine has; checked before any heavy work."""
    if text is None:
        return
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise CliError(f"--device {text!r} is not a torch device ({exc})") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise CliError(f"--device {text!r}: only cpu and cuda devices are supported")
    if not torch.cuda.is_available():
        raise CliError(f"--device {text!r}: CUDA is not available on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"--device {text!r}: this machine has {torch.cuda.device_count()} "
                       "CUDA device(s)")


def _parse_point(text: str) -> Tuple[float, float, int]:
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise CliError(f"--points: {text!r} is not X,Y or X,Y,LABEL") from None
    if label not in (0, 1):
        raise CliError(f"--points: label in {text!r} must be 0 or 1, is {label}")
    if not (np.isfinite(x) and np.isfinite(y)):
        raise CliError(f"--points: {text!r} is not finite")
    return x, y, label


def _inside(x: float, y: float, width: int, height: int) -> bool:
    # Prompts are continuous pixel coordinates: the far edges (x = W, y = H) are inside.
    return 0 <= x <= width and 0 <= y <= height


def parse_prompts(args, image_shape: Tuple[int, ...]) -> Prompts:
    """Validates --box/--points against the image: errors for inverted boxes and for prompts
    outside the image (clipped instead with --clip-prompts)."""
    height, width = image_shape[:2]
    if args.box is None and not args.points:
        raise CliError("give a prompt: --box X0 Y0 X1 Y1 and/or --points X,Y[,LABEL] ...")
    coords = labels = box = None
    if args.points:
        parsed: List[Tuple[float, float, int]] = [_parse_point(p) for p in args.points]
        for x, y, _ in parsed:
            if not _inside(x, y, width, height):
                if not args.clip_prompts:
                    raise CliError(
                        f"point ({x:g}, {y:g}) lies outside the {width}x{height} image; "
                        "pass --clip-prompts to clip it"
                    )
        coords = np.array([[x, y] for x, y, _ in parsed], dtype=np.float64)
        coords[:, 0] = coords[:, 0].clip(0, width)
        coords[:, 1] = coords[:, 1].clip(0, height)
        labels = np.array([label for _, _, label in parsed], dtype=np.int64)
    if args.box is not None:
        x0, y0, x1, y1 = args.box
        if not all(np.isfinite(args.box)):
            raise CliError(f"--box {args.box} is not finite")
        if x1 <= x0 or y1 <= y0:
            raise CliError(f"--box must have X0 < X1 and Y0 < Y1, got {x0:g} {y0:g} {x1:g} {y1:g}")
        if not (_inside(x0, y0, width, height) and _inside(x1, y1, width, height)):
            if not args.clip_prompts:
                raise CliError(
                    f"--box {x0:g} {y0:g} {x1:g} {y1:g} reaches outside the {width}x{height} "
                    "image; pass --clip-prompts to clip it"
                )
        box = np.array(
            [
                min(max(x0, 0), width),
                min(max(y0, 0), height),
                min(max(x1, 0), width),
                min(max(y1, 0), height),
            ],
            dtype=np.float64,
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            raise CliError(
                f"--box {x0:g} {y0:g} {x1:g} {y1:g} is empty after clipping to the image"
            )
    return Prompts(coords, labels, box)


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, color=(30, 144, 255), opacity: float = 0.5
) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = (1 - opacity) * out[mask] + opacity * np.array(color, dtype=np.float32)
    return out.round().astype(np.uint8)


def draw_prompts(image: np.ndarray, prompts: Prompts) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(image.shape[:2]) / 300))
    if prompts.box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in prompts.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), thickness)
    if prompts.point_coords is not None:
        for (x, y), label in zip(prompts.point_coords, prompts.point_labels):
            color = (0, 255, 0) if label == 1 else (255, 0, 0)
            cv2.drawMarker(
                out,
                (int(round(x)), int(round(y))),
                color,
                cv2.MARKER_STAR,
                markerSize=6 * thickness + 6,
                thickness=thickness,
            )
    return out


def write_png(path: str, array: np.ndarray) -> None:
    """Writes a uint8 HxW or HxWx3 (RGB) PNG atomically (temp file + os.replace)."""
    from PIL import Image

    from ..data._io import write_atomic

    write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def check_output_file(flag: str, path: str, overwrite: bool) -> None:
    """An output file may replace only a regular file, and only with --overwrite: a FIFO, a
    socket, a device (/dev/null) or a folder, or a link to one, is refused, since writing
    atomically replaces the path itself. Its folder must exist and take a new file, checked by
    creating and removing one (os.access says yes to root on a read-only filesystem)."""
    if os.path.isdir(path):
        raise CliError(f"{flag} {path!r} is a folder")
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise CliError(f"{flag} {path!r} is a link to a missing file") from None
        except OSError as exc:  # a path we may not look at
            raise CliError(f"{flag} {path!r} cannot be replaced: {exc.strerror or exc}") from None
        if not stat.S_ISREG(mode):
            raise CliError(f"{flag} {path!r} is not a regular file (a FIFO, socket or device); "
                           "give a file path")
        if not overwrite:
            raise CliError(f"{flag} {path!r} exists; pass --overwrite to replace it")
    check_writable_folder(flag, os.path.dirname(os.path.realpath(path)))


def check_writable_folder(flag: str, folder: str) -> None:
    """The nearest existing folder of `folder` (it is created later) takes a new file."""
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing):
        raise CliError(f"{flag}: {existing!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".stable-sam-write-check-")
    except OSError as exc:
        raise CliError(f"{flag}: folder {existing!r} is not writable "
                       f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def output_paths(args, suffixes: Tuple[str, ...]) -> List[str]:
    """OUT_DIR/STEM_SUFFIX.png for the image; checked (before any work) by check_output_file."""
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise CliError(f"--out-dir {args.out_dir!r} is a file, not a folder")
    stem = os.path.splitext(os.path.basename(args.image))[0]
    paths = [os.path.join(args.out_dir, f"{stem}_{suffix}.png") for suffix in suffixes]
    for path in paths:
        check_output_file("output", path, args.overwrite)
    return paths


def prepare_out_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out-dir {path!r} could not be created: {exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"--out-dir {path!r} is not writable")
    return path
