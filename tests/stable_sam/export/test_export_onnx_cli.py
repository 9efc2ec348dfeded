"""`stable-sam export-onnx` end to end (the README's flow: export, load both files in
onnxruntime, get the predictor's masks) and its errors, which come before any model is built."""

import os

import numpy as np
import onnxruntime as ort
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from stable_sam import StableSamPredictor, build_stable_sam, cli, save_plugins
from stable_sam.commands import _common
from stable_sam_ops import available_backends

from model_helpers import make_image, perturb_plugins, tiny_model

pytestmark = pytest.mark.skipif(
    "cpu" not in available_backends(), reason="the export needs the compiled op (cpu backend)"
)
LOGIT_TOL = 1e-4  # as in test_onnx_decoder.py


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "plugins.safetensors")
    save_plugins(perturb_plugins(tiny_model(), seed=3), path)
    return path


@pytest.fixture(scope="module")
def exported(plugin_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    decoder, encoder = str(folder / "decoder.onnx"), str(folder / "encoder.onnx")
    old_umask = os.umask(0o027)
    try:
        rc = cli.main(
            [
                "export-onnx",
                "--model-type", "tiny",
                "--plugin-checkpoint", plugin_path,
                "--output", decoder,
                "--encoder-output", encoder,
                "--quantize-out", str(folder / "quantized.onnx"),
            ]
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    assert rc == 0
    return folder, decoder, encoder


def test_files_are_complete_and_honour_the_umask(exported):
    folder, decoder, encoder = exported
    # no staging folder left behind
    assert sorted(os.listdir(folder)) == ["decoder.onnx", "encoder.onnx", "quantized.onnx"]
    for path in (decoder, encoder, folder / "quantized.onnx"):
        assert os.stat(path).st_mode & 0o777 == 0o640


@pytest.mark.parametrize("use_box", [False, True], ids=["points", "box+points"])
def test_onnx_files_give_the_predictors_masks(exported, plugin_path, use_box):
    _, decoder, encoder = exported
    image = make_image(180, 240)
    model = build_stable_sam("tiny", plugin_checkpoint=plugin_path).eval()
    predictor = StableSamPredictor(model)
    predictor.set_image(image)
    points = np.array([[120.0, 90.0], [30.0, 150.0]])
    labels = np.array([1, 0])
    box = np.array([60.0, 45.0, 180.0, 135.0]) if use_box else None
    expected, expected_scores, _ = predictor.predict(
        points, labels, box, multimask_output=False, return_logits=True
    )

    transform = ResizeLongestSide(model.image_encoder.img_size)
    embeddings = ort.InferenceSession(encoder).run(
        None, {"input_image": transform.apply_image(image).astype(np.float32)}
    )[0]
    coords = transform.apply_coords(points, image.shape[:2])
    if use_box:
        corners = transform.apply_boxes(box[None], image.shape[:2]).reshape(2, 2)
        coords, labels = np.concatenate([coords, corners]), np.concatenate([labels, [2, 3]])
    else:
        coords, labels = np.concatenate([coords, [[0.0, 0.0]]]), np.concatenate([labels, [-1]])
    masks, scores, _ = ort.InferenceSession(decoder).run(
        None,
        {
            "image_embeddings": embeddings,
            "point_coords": coords[None].astype(np.float32),
            "point_labels": labels[None].astype(np.float32),
            "mask_input": np.zeros((1, 1, 64, 64), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(image.shape[:2], np.float32),
        },
    )
    # output 0 is SAM's single-mask token, what predict(multimask_output=False) returns
    np.testing.assert_allclose(masks[0, :1], expected, atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(scores[0, :1], expected_scores, atol=1e-5, rtol=0)


@pytest.fixture
def no_model(monkeypatch):
    def fail(args):
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr(_common, "build_model", fail)


def _error(argv, capsys):
    rc = cli.main(["export-onnx", "--model-type", "tiny", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("stable-sam export-onnx: error: ") and err.count("\n") == 1
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--opset", "17"], "opset must be in 18..23, is 17"),
        (["--opset", "24"], "opset must be in 18..23, is 24"),
        (["--device", "cuda"], "--device must be cpu"),
        (["--encoder-output", "{out}"], "--encoder-output and --output are the same file"),
        (["--quantize-out", "{dir}/sub/q.onnx"], "folder '{dir}/sub' does not exist"),
    ],
)
def test_bad_arguments(no_model, tmp_path, capsys, argv, message):
    out = str(tmp_path / "decoder.onnx")
    argv = [a.format(out=out, dir=tmp_path) for a in argv]
    err = _error(["--output", out, *argv], capsys)
    assert message.format(dir=tmp_path) in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(no_model, tmp_path, capsys):
    out = tmp_path / "decoder.onnx"
    out.write_bytes(b"keep me")
    err = _error(["--output", str(out)], capsys)
    assert "exists; pass --overwrite" in err
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model-type", "vit_b"], "--sam-checkpoint is required for --model-type vit_b"),
        (["--plugin-checkpoint", "{dir}/none.safetensors"], "none.safetensors': no such file"),
    ],
)
def test_checkpoint_errors(tmp_path, capsys, argv, message):
    # build_model checks the checkpoints before it builds anything
    argv = [a.format(dir=tmp_path) for a in argv]
    err = _error(["--output", str(tmp_path / "d.onnx"), *argv], capsys)
    assert message.format(dir=tmp_path) in err
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_extra(no_model, tmp_path, capsys, monkeypatch):
    from stable_sam.commands import export_onnx

    real_find_spec = export_onnx.importlib.util.find_spec
    monkeypatch.setattr(
        export_onnx.importlib.util,
        "find_spec",
        lambda name: None if name == "onnxscript" else real_find_spec(name),
    )
    err = _error(["--output", str(tmp_path / "d.onnx")], capsys)
    assert "missing onnxscript: install the onnx extra" in err


def _fifo(folder):
    path = folder / "pipe.onnx"
    os.mkfifo(path)
    return path


def _socket(folder):
    import socket

    path = folder / "sock.onnx"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays
    return path


def _link_to_fifo(folder):
    os.symlink(_fifo(folder), folder / "link.onnx")
    return folder / "link.onnx"


@pytest.mark.parametrize("make", [_fifo, _socket, _link_to_fifo, lambda folder: "/dev/null"],
                         ids=["fifo", "socket", "link-to-fifo", "device"])
@pytest.mark.parametrize("flag", ["--output", "--encoder-output", "--quantize-out"])
def test_overwrite_replaces_only_a_regular_file(no_model, tmp_path, capsys, make, flag):
    target = make(tmp_path)
    before = os.lstat(target)
    argv = ["--output", str(tmp_path / "d.onnx")] if flag != "--output" else []
    err = _error([*argv, flag, str(target), "--overwrite"], capsys)
    assert "is not a regular file" in err
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_unwritable_folder_is_found_before_the_model(no_model, tmp_path, capsys, monkeypatch):
    # refused by the filesystem, not by permission bits (os.access says yes to root)
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, tmp_path):
            raise OSError(30, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    err = _error(["--output", str(tmp_path / "d.onnx")], capsys)
    assert f"folder '{tmp_path}' is not writable (Read-only file system)" in err
