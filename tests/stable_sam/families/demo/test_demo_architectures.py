"""The demo encoder architectures: the weights file names its own, so a demo-sam/1 file (the
earlier shipped base) keeps loading beside the shipped demo-sam/2 (stride-4 detail folded into
the embedding's channels), and SAM's prompt encoder and mask decoder stay the same in both."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from stable_sam.build import build_stable_sam
from stable_sam.checkpoint import CheckpointError
from stable_sam.families.demo.build import (DEMO_SAM_WEIGHTS, ENCODERS, build_demo_sam,
                                            load_sam_weights, read_architecture,
                                            save_sam_weights)
from stable_sam.families.demo.encoder import ConvImageEncoder, FoldedDetailEncoder


def test_the_shipped_file_is_the_folded_detail_architecture():
    assert read_architecture(DEMO_SAM_WEIGHTS) == "demo-sam/2"
    model = build_stable_sam("demo")
    assert isinstance(model.sam.image_encoder, FoldedDetailEncoder)
    assert isinstance(build_demo_sam().image_encoder, FoldedDetailEncoder)


@pytest.mark.parametrize("saved, into", [("demo-sam/2", "demo-sam/1"),
                                         ("demo-sam/1", "demo-sam/2")])
def test_a_file_loads_into_its_own_architecture(tmp_path, saved, into):
    sam = build_demo_sam(saved)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.01)
    path = save_sam_weights(sam, tmp_path / "base.safetensors")
    assert read_architecture(path) == saved
    other = build_demo_sam(into)
    load_sam_weights(other, path)
    assert other.image_encoder.ARCHITECTURE == saved
    image = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        expected = sam.half().float().image_encoder(image)  # the file holds float16
        assert torch.allclose(other.image_encoder(image), expected, atol=1e-4)
    assert build_stable_sam("demo", sam_checkpoint=str(path)).sam.image_encoder.ARCHITECTURE \
        == saved


def test_an_unknown_architecture_is_refused(tmp_path):
    path = save_sam_weights(build_demo_sam(), tmp_path / "base.safetensors")
    state = load_file(str(path))
    save_file(state, str(tmp_path / "future.safetensors"),
              metadata={"format": "demo-sam", "architecture": "demo-sam/99"})
    with pytest.raises(CheckpointError, match="demo-sam/99"):
        load_sam_weights(build_demo_sam(), tmp_path / "future.safetensors")
    with pytest.raises(ValueError, match="architecture must be one of"):
        build_demo_sam("demo-sam/99")


def test_only_the_encoder_differs():
    one, two = (build_demo_sam(a).state_dict() for a in ("demo-sam/1", "demo-sam/2"))
    shared = {k for k in one if not k.startswith("image_encoder.")}
    assert shared == {k for k in two if not k.startswith("image_encoder.")}
    assert all(one[k].shape == two[k].shape for k in shared)
    assert sorted(ENCODERS) == ["demo-sam/1", "demo-sam/2"]


def test_folded_detail_reaches_its_own_token():
    # an edge moved inside one 16 px token changes that token's embedding more through the
    # folded stride-4 channels than through the stride-16 context alone
    torch.manual_seed(0)
    encoder = FoldedDetailEncoder(256, 256, width=8).eval()
    image = torch.zeros(1, 3, 256, 256)
    image[..., 64:80, 64:68] = 1.0  # the left 4 px column of token (4, 4)
    moved = torch.zeros(1, 3, 256, 256)
    moved[..., 64:80, 76:80] = 1.0  # the right 4 px column of the same token
    with torch.no_grad():
        fine = encoder.stem(image)
        folded = torch.nn.functional.pixel_unshuffle(encoder.detail(fine), 4)
        folded_moved = torch.nn.functional.pixel_unshuffle(encoder.detail(encoder.stem(moved)), 4)
        assert encoder(image).shape == (1, 256, 16, 16)
    change = (folded - folded_moved).abs().sum(1)[0]
    assert change[4, 4] > 0
    assert change.argmax() == 4 * 16 + 4  # the moved edge's own token changes most
