"""HQSegDataset: layout parsing and one clear error per broken case."""
import numpy as np
import pytest

from stable_sam.data import HQSegDataset, hqseg44k_datasets, hqseg44k_roots
from stable_sam.data._io import write_image_atomic


def write_pair(image_dir, mask_dir, stem, size=(20, 30), fg=((5, 10), (8, 20))):
    image = np.full(size + (3,), 90, np.uint8)
    image[..., 0] = np.arange(size[1], dtype=np.uint8)[None]  # distinguishes R from B
    gt = np.zeros(size, np.uint8)
    gt[fg[0][0]:fg[0][1], fg[1][0]:fg[1][1]] = 255
    gt[0, 0] = 128  # exactly 128 is background (gt > 128)
    write_image_atomic(image_dir / f"{stem}.jpg", image)
    write_image_atomic(mask_dir / f"{stem}.png", gt)
    return gt


def test_folder_layout(tmp_path):
    gts = {s: write_pair(tmp_path / "im", tmp_path / "gt", s) for s in ("b", "a", "c")}
    ds = HQSegDataset(tmp_path, name="toy")
    assert len(ds) == 3 and ds.name == "toy"
    assert [ds[i]["name"] for i in range(3)] == ["a", "b", "c"]
    sample = ds[1]
    assert sample["index"] == 1
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (20, 30, 3)
    # RGB order: the red channel carries the column ramp written above.
    assert sample["image"][0, 25, 0] > sample["image"][0, 5, 0]
    np.testing.assert_array_equal(sample["mask"], gts["b"] > 128)
    assert sample["mask"].dtype == bool and not sample["mask"][0, 0]
    assert ds[-1]["name"] == "c"
    with pytest.raises(IndexError):
        ds[3]


def test_pairs_and_shared_folder(tmp_path):
    # cascade_psp stores image.jpg and image.png side by side.
    write_pair(tmp_path / "shared", tmp_path / "shared", "x")
    write_pair(tmp_path / "im", tmp_path / "gt", "y")
    ds = HQSegDataset([(tmp_path / "shared", tmp_path / "shared"),
                       (tmp_path / "im", tmp_path / "gt")])
    assert [ds[i]["name"] for i in range(2)] == ["x", "y"]
    assert ds.name == tmp_path.name


def test_missing_mask_names_the_file(tmp_path):
    write_pair(tmp_path / "im", tmp_path / "gt", "a")
    write_image_atomic(tmp_path / "im" / "lonely.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"lonely\.jpg has no mask.*lonely\.png"):
        HQSegDataset(tmp_path)


def test_empty_folder_names_it(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no .jpg images in folder: {tmp_path / 'im'}"):
        HQSegDataset(tmp_path)


def test_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        HQSegDataset(tmp_path)
    (tmp_path / "im").mkdir()
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        HQSegDataset(tmp_path)
    with pytest.raises(ValueError, match="empty list"):
        HQSegDataset([])
    with pytest.raises(ValueError, match="pairs"):
        HQSegDataset([tmp_path])


def test_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path / "im", tmp_path / "gt", "a")
    write_image_atomic(tmp_path / "gt" / "a.png", np.zeros((21, 30), np.uint8))
    ds = HQSegDataset(tmp_path)
    with pytest.raises(ValueError, match=r"mask .*a\.png is 30x21 .* image .*a\.jpg is 30x20"):
        ds[0]


@pytest.mark.parametrize("broken", ["im/a.jpg", "gt/a.png"])
def test_unreadable_file_is_named(tmp_path, broken):
    write_pair(tmp_path / "im", tmp_path / "gt", "a")
    (tmp_path / broken).write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"could not read .*{broken}"):
        HQSegDataset(tmp_path)[0]


def test_hqseg44k_folder_names(tmp_path):
    val = hqseg44k_roots(tmp_path, "val")
    assert [v[0] for v in val] == ["DIS5K-VD", "ThinObject5k-TE", "COIFT", "HRSOD"]
    assert val[0][1:] == (tmp_path / "DIS5K/DIS-VD/im", tmp_path / "DIS5K/DIS-VD/gt")
    train = hqseg44k_roots(tmp_path, "train", names=["DUTS-TR"])
    duts = tmp_path / "cascade_psp/DUTS-TR"
    assert train == [("DUTS-TR", duts, duts)]
    with pytest.raises(ValueError, match="unknown val set"):
        hqseg44k_roots(tmp_path, "val", names=["DUTS-TR"])
    with pytest.raises(ValueError, match="split"):
        hqseg44k_roots(tmp_path, "test")
    write_pair(tmp_path / "thin_object_detection/COIFT/images",
               tmp_path / "thin_object_detection/COIFT/masks", "c")
    (coift,) = hqseg44k_datasets(tmp_path, "val", names=["COIFT"])
    assert coift.name == "COIFT" and len(coift) == 1
