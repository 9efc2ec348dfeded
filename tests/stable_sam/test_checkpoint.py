"""Plugin safetensors files and strict SAM checkpoint loading."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from stable_sam import (
    CheckpointError,
    PluginConfig,
    build_stable_sam,
    load_plugins,
    read_plugin_metadata,
    save_plugins,
)
from stable_sam.families.sam.build import build_tiny_sam
from model_helpers import embedding, perturb_plugins, prompts, tiny_model


@pytest.fixture
def saved(tmp_path):
    model = perturb_plugins(tiny_model(), seed=3)
    path = str(tmp_path / "plugins.safetensors")
    save_plugins(model, path)
    return model, path


def test_round_trip(saved, tmp_path):
    model, path = saved
    assert os.listdir(tmp_path) == ["plugins.safetensors"]  # the temp file was renamed, not left
    fresh = tiny_model()
    meta = load_plugins(fresh, path)
    assert meta["model_type"] == "tiny" and meta["plugin_config"] == PluginConfig()
    assert meta["format_version"] == "1" and meta["package_version"]
    for k, v in model.plugins.state_dict().items():
        assert torch.equal(fresh.plugins.state_dict()[k], v), k
    sparse, dense = prompts(model, "box", 2)
    pe = model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        a = model.decode(embedding(model), pe, sparse, dense, True)
        b = fresh.decode(embedding(model), pe, sparse, dense, True)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_builder_takes_the_config_from_the_file(tmp_path):
    config = PluginConfig(num_groups=4, offset_scale=2.0, routing_hidden_dim=24)
    model = perturb_plugins(build_stable_sam("tiny", plugin_config=config))
    path = str(tmp_path / "p.safetensors")
    save_plugins(model, path)
    loaded = build_stable_sam("tiny", plugin_checkpoint=path)
    assert loaded.plugin_config == config
    assert torch.equal(loaded.plugins.dsp.offset_proj.weight, model.plugins.dsp.offset_proj.weight)
    assert read_plugin_metadata(path)["plugin_config"] == config


def _rewrite(path, tensors=None, **metadata_changes):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata())
    metadata.update(metadata_changes)
    metadata = {k: v for k, v in metadata.items() if v is not None}
    save_file(load_file(path) if tensors is None else tensors, path, metadata=metadata)


def test_missing_file(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="plugin checkpoint .*nope.safetensors.* does not exist"
    ):
        load_plugins(tiny_model(), str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_or_truncated(saved, damage):
    model, path = saved
    data = open(path, "rb").read()
    data = {
        "garbage": b"\x93NUMPY not safetensors" * 10,
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }[damage]
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_plugins(tiny_model(), path)


def test_not_a_plugin_file(tmp_path):
    path = str(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="is not a Stable-SAM plugin file"):
        load_plugins(tiny_model(), path)


def test_format_version(saved):
    _, path = saved
    _rewrite(path, format_version="99")
    with pytest.raises(CheckpointError, match="format version '99'"):
        load_plugins(tiny_model(), path)


def test_model_type_mismatch(saved):
    _, path = saved
    _rewrite(path, model_type="vit_h")
    with pytest.raises(
        CheckpointError, match="trained for model type 'vit_h', the model is 'tiny'"
    ):
        load_plugins(tiny_model(), path)


def test_config_mismatch(saved):
    _, path = saved
    with pytest.raises(
        CheckpointError, match="another plugin config: num_groups: file 8 vs model 4"
    ):
        load_plugins(build_stable_sam("tiny", plugin_config=PluginConfig(num_groups=4)), path)
    _rewrite(path, plugin_config=json.dumps({"num_groups": "eight"}))
    with pytest.raises(CheckpointError, match="no valid plugin_config"):
        load_plugins(tiny_model(), path)


@pytest.mark.parametrize(
    "change, match",
    [
        ("missing", "missing keys \\[dsp.offset_proj.bias\\]"),
        ("extra", "unexpected keys \\[dsp.extra\\]"),
        (
            "shape",
            "wrong shapes \\[dsp.dwconv.weight: file \\(256, 1, 3, 3\\) vs model \\(256, 1, 5, 5\\)\\]",
        ),
    ],
)
def test_tensor_mismatch(saved, change, match):
    _, path = saved
    tensors = load_file(path)
    if change == "missing":
        del tensors["dsp.offset_proj.bias"]
    elif change == "extra":
        tensors["dsp.extra"] = torch.zeros(3)
    else:
        tensors["dsp.dwconv.weight"] = torch.zeros(256, 1, 3, 3)
    _rewrite(path, tensors)
    fresh = tiny_model()
    before = {k: v.clone() for k, v in fresh.plugins.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_plugins(fresh, path)
    for k, v in fresh.plugins.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "value, match",
    [
        (lambda t: t.round().to(torch.int64),
         r"another kind .*dsp\.dwconv\.weight \(torch\.int64\)"),
        (lambda t: t > 0, r"another kind .*dsp\.dwconv\.weight \(torch\.bool\)"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")),
         r"NaN or infinite values in \[dsp\.dwconv\.weight\]"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")),
         r"NaN or infinite values in \[dsp\.dwconv\.weight\]"),
    ],
)
def test_integer_boolean_and_non_finite_tensors_are_refused(saved, value, match):
    _, path = saved
    tensors = load_file(path)
    tensors["dsp.dwconv.weight"] = value(tensors["dsp.dwconv.weight"])
    _rewrite(path, tensors)
    fresh = tiny_model()
    before = {k: v.clone() for k, v in fresh.plugins.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_plugins(fresh, path)
    for k, v in fresh.plugins.state_dict().items():
        assert torch.equal(v, before[k])


def test_plugin_file_honours_the_umask_and_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    previous = os.umask(0o027)
    try:
        save_plugins(tiny_model(), str(tmp_path / "p.safetensors"))
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "p.safetensors").st_mode & 0o777 == 0o640
    assert str(tmp_path) in synced  # the folder, after the rename
    assert any(s.startswith(str(tmp_path / ".p.safetensors.")) for s in synced)  # the file


class TestSamCheckpoint:
    @pytest.fixture
    def sam_path(self, tmp_path):
        sam = build_tiny_sam()
        with torch.no_grad():
            for p in sam.parameters():
                p.add_(0.01)  # differ from the seeded random init, so loading is visible
        path = str(tmp_path / "sam_tiny.pth")
        torch.save(sam.state_dict(), path)
        return sam, path

    def test_loads_strictly_into_model_sam(self, sam_path):
        sam, path = sam_path
        model = build_stable_sam("tiny", sam_checkpoint=path)
        for k, v in sam.state_dict().items():
            assert torch.equal(model.sam.state_dict()[k], v), k
        assert set(model.sam.state_dict()) == set(sam.state_dict())

    @pytest.mark.parametrize(
        "tamper, match",
        [
            ("drop", "missing keys \\[mask_decoder.iou_token.weight\\]"),
            ("add", "unexpected keys \\[mask_decoder.adapter.weight\\]"),
            ("reshape", "wrong shapes \\[mask_decoder.iou_token.weight: file \\(1, 128\\)"),
        ],
    )
    def test_tampered_state_dict_fails(self, sam_path, tamper, match):
        _, path = sam_path
        state = torch.load(path, weights_only=True)
        if tamper == "drop":
            del state["mask_decoder.iou_token.weight"]
        elif tamper == "add":
            state["mask_decoder.adapter.weight"] = torch.zeros(2)
        else:
            state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
        torch.save(state, path)
        with pytest.raises(
            CheckpointError,
            match=f"SAM checkpoint .*sam_tiny.pth.* does not match the model: {match}",
        ):
            build_stable_sam("tiny", sam_checkpoint=path)

    def test_unsafe_or_unreadable_files_fail(self, tmp_path):
        pickled = str(tmp_path / "evil.pth")
        torch.save({"fn": os.getcwd}, pickled)  # arbitrary objects are refused by weights_only
        with pytest.raises(CheckpointError, match="evil.pth.* could not be read"):
            build_stable_sam("tiny", sam_checkpoint=pickled)
        garbage = tmp_path / "garbage.pth"
        garbage.write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointError, match="garbage.pth.* could not be read"):
            build_stable_sam("tiny", sam_checkpoint=str(garbage))
        tensor_only = str(tmp_path / "tensor.pth")
        torch.save(torch.zeros(3), tensor_only)
        with pytest.raises(CheckpointError, match="must hold a state dict, holds Tensor"):
            build_stable_sam("tiny", sam_checkpoint=tensor_only)
        with pytest.raises(
            FileNotFoundError, match="SAM checkpoint .*missing.pth.* does not exist"
        ):
            build_stable_sam("tiny", sam_checkpoint=str(tmp_path / "missing.pth"))

    def test_unknown_model_type(self):
        with pytest.raises(ValueError, match="model_type must be one of .*is 'vit_x'"):
            build_stable_sam("vit_x")


def test_file_without_model_type_loads_only_into_a_model_without_one(saved):
    # such a file comes from a model built without model_type: its backbone is unknown
    from stable_sam import StableSam

    model, path = saved
    _rewrite(path, model_type="")
    with pytest.raises(CheckpointError, match="records no model type, the model is 'tiny'"):
        load_plugins(tiny_model(), path)
    untyped = StableSam(build_tiny_sam())
    load_plugins(untyped, path)
    for key, value in model.plugins.state_dict().items():
        assert torch.equal(untyped.plugins.state_dict()[key], value)


def test_plugin_config_may_be_a_dict(saved):
    from stable_sam import StableSam

    config = {"num_groups": 4, "use_routing": False}
    built = build_stable_sam("tiny", plugin_config=config)
    direct = StableSam(build_tiny_sam(), config)
    assert built.plugins.config == direct.plugins.config == PluginConfig(**config)
    assert built.plugins.drp is None
    with pytest.raises(TypeError, match="PluginConfig.num_groups must be int"):
        build_stable_sam("tiny", plugin_config={"num_groups": "4"})
    with pytest.raises(TypeError, match="plugin_config must be a PluginConfig, a dict"):
        build_stable_sam("tiny", plugin_config=[("num_groups", 4)])
