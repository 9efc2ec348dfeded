"""The one image reader: every pixel format a dataset or a user hands over comes out as the
same uint8 pixels, upright; what cannot be read is one clear error naming the file."""
import numpy as np
import pytest
from PIL import Image

from stable_sam.commands import CliError
from stable_sam.commands._common import load_image
from stable_sam.data import HQSegDataset
from stable_sam.data.image_files import (
    PIXEL_LIMIT_ENV,
    ImageReadError,
    read_gray,
    read_image_header,
    read_rgb,
)

RAMP = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))  # 6 x 25, values 0..240


def _rgb_ramp():
    return np.stack([RAMP, 255 - RAMP, np.full_like(RAMP, 77)], axis=2)


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F", "RGB", "RGBA", "LA", "P", "CMYK"])
def test_every_pixel_format_reads_as_the_same_8_bit_picture(tmp_path, mode):
    if mode in ("I;16", "I"):
        im = Image.fromarray(RAMP.astype(np.uint16) * 257)  # full 16-bit range
        if mode == "I":
            im = im.convert("I")
        expected = np.repeat(RAMP[..., None], 3, axis=2)
    elif mode == "F":
        im = Image.fromarray(RAMP.astype(np.float32) / 255.0, "F")
        expected = np.repeat(RAMP[..., None], 3, axis=2)
    elif mode in ("L", "LA"):
        im = Image.fromarray(RAMP, "L").convert(mode)
        expected = np.repeat(RAMP[..., None], 3, axis=2)
    else:
        im = Image.fromarray(_rgb_ramp(), "RGB")
        if mode == "RGBA":
            im.putalpha(10)  # nearly transparent: the pixels under the alpha are still the image
        elif mode == "P":
            im = im.quantize(colors=256)
        elif mode == "CMYK":
            im = im.convert("CMYK")
        expected = np.asarray(im.convert("RGB"))
    suffix = ".tif" if mode in ("I", "F", "CMYK") else ".png"
    path = tmp_path / f"x{suffix}"
    im.save(path)
    image = read_rgb(path)
    assert image.dtype == np.uint8 and image.shape == (6, 25, 3)
    np.testing.assert_allclose(image.astype(int), expected.astype(int), atol=1)
    assert read_gray(path).shape == (6, 25)


def test_sixteen_bit_mask_keeps_its_foreground(tmp_path):
    gt = np.zeros((8, 8), np.uint16)
    gt[2:6, 2:6] = 65535
    Image.fromarray(gt).save(tmp_path / "m.png")
    mask = read_gray(tmp_path / "m.png")
    assert mask.dtype == np.uint8 and mask[3, 3] == 255 and mask[0, 0] == 0


def test_colour_mask_is_read_by_its_brightest_channel(tmp_path):
    gt = np.zeros((8, 8, 3), np.uint8)
    gt[2:6, 2:6, 0] = 255  # drawn in pure red
    Image.fromarray(gt).save(tmp_path / "m.png")
    assert (read_gray(tmp_path / "m.png") > 128).sum() == 16


def _exif_rotated(path, orientation):
    """A 4 x 10 (HxW) picture stored sideways with an EXIF orientation tag."""
    pixels = np.zeros((4, 10, 3), np.uint8)
    pixels[0:2, 0:3] = (255, 0, 0)
    im = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=100)


def test_exif_orientation_is_applied_on_every_path(tmp_path):
    root = tmp_path / "d"
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    _exif_rotated(root / "im" / "a.jpg", 6)  # "rotate 90 CW to display"
    mask = np.zeros((10, 4), np.uint8)  # drawn on the upright picture
    mask[1:3, 1:3] = 255
    Image.fromarray(mask).save(root / "gt" / "a.png")
    assert read_image_header(root / "im" / "a.jpg") == (10, 4)
    cli_image = load_image(str(root / "im" / "a.jpg"))
    sample = HQSegDataset(root)[0]
    assert cli_image.shape == sample["image"].shape == (10, 4, 3)
    np.testing.assert_array_equal(cli_image, sample["image"])
    assert sample["image"][0, 3, 0] > 200  # the red corner went to the top right


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, str(300 * 200 - 1))
    with pytest.raises(ImageReadError, match=r"bomb\.png is 300x200 = 60000 pixels, over the lim"):
        read_rgb(path)
    with pytest.raises(CliError, match="over the limit"):
        load_image(str(path))
    monkeypatch.setenv(PIXEL_LIMIT_ENV, str(300 * 200))
    assert read_rgb(path).shape == (200, 300, 3)


@pytest.mark.parametrize("values", [np.array([[0.0, 2.0]]), np.array([[0.0, np.nan]])])
def test_float_images_outside_zero_one_are_refused(tmp_path, values):
    Image.fromarray(values.astype(np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f\.tif holds float values outside \[0, 1\]"):
        read_rgb(tmp_path / "f.tif")


def test_not_an_image_and_truncated_image(tmp_path):
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageReadError, match=r"could not read image file .*t\.png"):
        read_rgb(tmp_path / "t.png")
    Image.fromarray(_rgb_ramp()).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_rgb(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_rgb(tmp_path / "none.png")
