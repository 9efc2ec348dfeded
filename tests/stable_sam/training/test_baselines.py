"""Which parameters each training method trains, and the DT-SAM / PT-SAM weights files."""
import os

import pytest
import torch

from stable_sam.build import build_stable_sam
from stable_sam.training import baselines


@pytest.fixture(scope="module")
def tiny_model():
    return build_stable_sam("tiny")


def test_stable_sam_trains_exactly_the_plugins(tiny_model):
    names = [n for n, _ in baselines.trainable_named_parameters(tiny_model, "stable_sam")]
    assert names and all(n.startswith("plugins.") for n in names)
    assert len(names) == len(list(tiny_model.plugin_parameters()))


def test_dt_sam_trains_the_whole_mask_decoder(tiny_model):
    names = {n for n, _ in baselines.trainable_named_parameters(tiny_model, "dt_sam")}
    expected = {f"sam.mask_decoder.{n}" for n, _ in tiny_model.sam.mask_decoder.named_parameters()}
    assert names == expected


def test_pt_sam_trains_the_output_token_and_its_hypernetwork(tiny_model):
    picked = baselines.trainable_named_parameters(tiny_model, "pt_sam")
    names = {n for n, _ in picked}
    mlp0 = {f"sam.mask_decoder.output_hypernetworks_mlps.0.{n}"
            for n, _ in tiny_model.sam.mask_decoder.output_hypernetworks_mlps[0].named_parameters()}
    assert names == {"sam.mask_decoder.mask_tokens.weight"} | mlp0
    # about the paper's 0.13 M: one 3-layer MLP 256-256-256-32 plus four 256-d tokens
    assert sum(p.numel() for _, p in picked) == 4 * 256 + (256 * 256 + 256) * 2 + 256 * 32 + 32


def test_freeze_sets_requires_grad_on_exactly_the_selection(tiny_model):
    for method in baselines.METHODS:
        picked = {id(p) for _, p in baselines.freeze_all_but_trainable(tiny_model, method)}
        grads = {id(p) for p in tiny_model.parameters() if p.requires_grad}
        assert grads == picked, method
    assert not any(p.requires_grad for p in tiny_model.sam.image_encoder.parameters())


def test_trainable_state_round_trip_and_mismatch(tiny_model):
    state = baselines.trainable_state_dict(tiny_model, "pt_sam")
    changed = {k: v + 1 for k, v in state.items()}
    baselines.load_trainable_state_dict(tiny_model, "pt_sam", changed)
    after = baselines.trainable_state_dict(tiny_model, "pt_sam")
    assert all(torch.equal(after[k], changed[k]) for k in state)
    baselines.load_trainable_state_dict(tiny_model, "pt_sam", state)
    with pytest.raises(ValueError, match="missing"):
        baselines.load_trainable_state_dict(tiny_model, "dt_sam", state)
    bad = dict(state)
    bad["sam.mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    with pytest.raises(ValueError, match=r"expected shape \(4, 256\)"):
        baselines.load_trainable_state_dict(tiny_model, "pt_sam", bad)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="dt_sam"):
        baselines.get_method("lora")


def test_baseline_weights_file_round_trip(tiny_model, tmp_path):
    path = tmp_path / "pt_sam.safetensors"
    baselines.save_baseline_weights(tiny_model, "pt_sam", path)
    fresh = build_stable_sam("tiny")
    with torch.no_grad():
        fresh.sam.mask_decoder.mask_tokens.weight.add_(1.0)
    assert baselines.load_baseline_weights(fresh, path) == "pt_sam"
    assert torch.equal(fresh.sam.mask_decoder.mask_tokens.weight,
                       tiny_model.sam.mask_decoder.mask_tokens.weight)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        baselines.load_baseline_weights(fresh, path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_baseline_weights_file_honours_the_umask(tiny_model, tmp_path, umask):
    old = os.umask(umask)
    try:
        baselines.save_baseline_weights(tiny_model, "pt_sam", tmp_path / "pt_sam.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "pt_sam.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["pt_sam.safetensors"]


@pytest.mark.parametrize("method,twin", [("stable_sam_no_rts", "stable_sam"),
                                         ("stable_sam_no_drp_no_rts", "stable_sam_no_drp"),
                                         ("dt_sam_no_rts", "dt_sam"),
                                         ("pt_sam_no_rts", "pt_sam")])
def test_without_rts_methods_train_what_their_twins_train(tiny_model, method, twin):
    spec, twin_spec = baselines.get_method(method), baselines.get_method(twin)
    assert not spec.robust_prompts and twin_spec.robust_prompts
    assert (spec.uses_plugins, spec.use_routing, spec.sam_prefixes) == (
        twin_spec.uses_plugins, twin_spec.use_routing, twin_spec.sam_prefixes)
    if spec.uses_plugins:  # the plugins' tensors depend on use_routing, compared above
        return
    assert ([n for n, _ in baselines.trainable_named_parameters(tiny_model, method)]
            == [n for n, _ in baselines.trainable_named_parameters(tiny_model, twin)])
