"""Training with --amp bf16 on the CPU: autocast reaches the fused op with mixed dtypes, the op
runs in bfloat16, and the steps stay close to the float32 run's."""
import csv

import pytest
import torch

import stable_sam.plugins.stable_sam_plugins as plugins_module
from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.training import LOG_NAME, TrainConfig, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("amp_shapes"), num_images=4,
                                      image_size=(96, 128), seed=5))


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def op_calls(monkeypatch):
    """Records, for each call of the fused op by the plugins, the autocast state and the dtypes
    of its inputs and of its output."""
    calls = []
    real = plugins_module.deformable_sample

    def spy(value, offset, amplitude=None, residual=None, alpha=None, **kwargs):
        out = real(value, offset, amplitude, residual, alpha, **kwargs)
        dtypes = {t.dtype for t in (value, offset, amplitude, residual, alpha) if t is not None}
        calls.append((torch.is_autocast_enabled("cpu"), dtypes, out.dtype))
        return out

    monkeypatch.setattr(plugins_module, "deformable_sample", spy)
    return calls


def _losses(config, out):
    result = train(config)
    with open(out / LOG_NAME, newline="") as f:
        return result, [float(r["loss"]) for r in csv.DictReader(f)]


def _config(data, out, amp):
    return TrainConfig(model_type="tiny", data=[data], steps=2, batch_size=2, num_points=256,
                       lr_drop_epochs=[], num_workers=0, ckpt_every=100, log_every=1,
                       out_dir=str(out), amp=amp)


def test_bf16_training_runs_the_op_under_autocast(shapes, tmp_path, op_calls):
    result, bf16_losses = _losses(_config(shapes, tmp_path / "bf16", "bf16"), tmp_path / "bf16")
    assert result["step"] == 2 and len(bf16_losses) == 2
    # Every plugin call ran under CPU autocast with bfloat16 among mixed inputs, and the op
    # answered in bfloat16.
    assert op_calls
    for autocast_on, dtypes, out_dtype in op_calls:
        assert autocast_on and torch.bfloat16 in dtypes and out_dtype == torch.bfloat16
    assert any(len(dtypes) > 1 for _, dtypes, _ in op_calls)  # the mix the op used to refuse

    op_calls.clear()
    _, fp32_losses = _losses(_config(shapes, tmp_path / "fp32", "none"), tmp_path / "fp32")
    assert all(not on and dtypes == {torch.float32} for on, dtypes, _ in op_calls)
    # The same samples and initial weights: bfloat16 only rounds, so the losses stay close.
    for bf16, fp32 in zip(bf16_losses, fp32_losses):
        assert abs(bf16 - fp32) <= 0.05 * fp32, (bf16_losses, fp32_losses)


def test_fp16_off_cuda_is_refused_before_any_step(shapes, tmp_path):
    # fp16 needs CUDA's loss scaling; on the CPU it used to train in float32 without a word.
    config = _config(shapes, tmp_path / "fp16", "fp16").replace(device="cpu")
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        train(config)
    assert not (tmp_path / "fp16" / LOG_NAME).exists()
