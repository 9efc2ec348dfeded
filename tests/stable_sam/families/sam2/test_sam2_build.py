"""The SAM 2 family's builders and checkpoint loading. Real SAM 2.1 checkpoints cannot be
downloaded here, so each sam2.1_hiera_* type's state-dict keys and shapes are checked against the
sam2 package's own builder (build_sam2 with the type's config), and loading is checked with
files in the official format ({"model": state_dict}) saved from those builders."""

import pickle

import pytest
import torch

from stable_sam import build_stable_sam
from stable_sam.checkpoint import CheckpointError
from stable_sam.families import get_family
from stable_sam.families.sam2.build import SAM2_CONFIGS, build_sam2_model_type, import_sam2

# parameters of SAM 2.1 as Meta's model card gives them (millions)
PUBLISHED_MILLIONS = {"sam2.1_hiera_tiny": 38.9, "sam2.1_hiera_small": 46.0,
                      "sam2.1_hiera_base_plus": 80.8, "sam2.1_hiera_large": 224.4}


def test_the_registry_lists_every_sam2_type():
    family = get_family("sam2")
    assert set(family.model_types) == set(SAM2_CONFIGS) | {"sam2_tiny_random"}
    assert family.random_model_types == ("sam2_tiny_random",)


@pytest.mark.parametrize("model_type", sorted(SAM2_CONFIGS))
def test_keys_and_shapes_are_sam2s_own_builder(model_type):
    ours = build_sam2_model_type(model_type)
    theirs = import_sam2("sam2.build_sam").build_sam2(SAM2_CONFIGS[model_type], device="cpu")
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    millions = sum(p.numel() for p in ours.parameters()) / 1e6
    assert abs(millions - PUBLISHED_MILLIONS[model_type]) < 0.1
    assert ours.sam_mask_decoder.dynamic_multimask_via_stability  # build_sam2's default


def test_an_official_format_checkpoint_loads_strictly(tmp_path):
    """sam2.1_hiera_tiny's keys from sam2's own builder, saved as Meta ships them, load into
    our model strictly, and the weights arrive; Meta's own loader accepts the same file."""
    theirs = import_sam2("sam2.build_sam").build_sam2(SAM2_CONFIGS["sam2.1_hiera_tiny"],
                                                      device="cpu")
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": theirs.state_dict()}, path)
    model = build_stable_sam("sam2.1_hiera_tiny", sam_checkpoint=str(path))
    for key, value in theirs.state_dict().items():
        assert torch.equal(model.sam.state_dict()[key], value), key
    assert model.num_trainable_parameters() == sum(
        p.numel() for p in model.plugins.parameters())
    assert round(model.num_trainable_parameters() / 1e6, 2) == 0.08  # the paper's 0.08 M
    import_sam2("sam2.build_sam")._load_checkpoint(theirs, str(path))  # raises on a mismatch


def test_the_small_random_type_reloads_strictly(tmp_path):
    model = build_stable_sam("sam2_tiny_random")
    state = {k: v + 1.0 if v.is_floating_point() else v
             for k, v in model.sam.state_dict().items()}
    path = tmp_path / "small.pt"
    torch.save({"model": state}, path)
    reloaded = build_stable_sam("sam2_tiny_random", sam_checkpoint=str(path))
    for key, value in state.items():
        assert torch.equal(reloaded.sam.state_dict()[key], value), key
    # the same build twice is the same random model
    again = build_stable_sam("sam2_tiny_random")
    assert all(torch.equal(a, b) for a, b in zip(model.sam.state_dict().values(),
                                                 again.sam.state_dict().values()))


def test_bad_checkpoints_are_refused(tmp_path):
    model = build_stable_sam("sam2_tiny_random")
    state = model.sam.state_dict()
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)  # SAM 1's layout, not SAM 2's {"model": ...}
    with pytest.raises(CheckpointError, match="must hold"):
        build_stable_sam("sam2_tiny_random", sam_checkpoint=str(bare))
    missing = tmp_path / "missing.pt"
    torch.save({"model": {k: v for k, v in state.items() if "sam_mask_decoder" not in k}},
               missing)
    with pytest.raises(CheckpointError, match="missing keys"):
        build_stable_sam("sam2_tiny_random", sam_checkpoint=str(missing))
    unsafe = tmp_path / "unsafe.pt"
    with open(unsafe, "wb") as f:  # an arbitrary object: weights_only refuses to unpickle it
        pickle.dump({"model": object()}, f)
    with pytest.raises(CheckpointError, match="could not be read"):
        build_stable_sam("sam2_tiny_random", sam_checkpoint=str(unsafe))
    with pytest.raises(FileNotFoundError):
        build_stable_sam("sam2_tiny_random", sam_checkpoint=str(tmp_path / "absent.pt"))
