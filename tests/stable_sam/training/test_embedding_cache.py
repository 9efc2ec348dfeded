"""The trainer's embedding cache: a run with cache_embeddings trains the same weights as the
same run encoding every image at every step (up to the encoder's batch-composition rounding),
encodes each reused image once, still encodes an occluded image for its step, and is refused
with large-scale jitter."""

import pytest
import torch

from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.training import TrainConfig, train
from stable_sam.training import embedding_cache
from stable_sam.training.embedding_cache import EmbeddingCache, row, stack_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_images=4,
                                      image_size=(96, 128), seed=3))


def _config(data, out, **kw):
    # 4 images, batch 2, 6 steps: every image is seen three times
    base = dict(model_type="tiny", data=[data], steps=6, batch_size=2, num_points=256,
                lr_drop_epochs=[], num_workers=0, ckpt_every=100, log_every=100,
                out_dir=str(out), lsj=False, lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


def _plugins(result):
    return {k: v.detach().clone() for k, v in result["model"].plugins.state_dict().items()}


@pytest.mark.parametrize("occlusion", [0.0, 0.5])
def test_cached_run_trains_the_uncached_runs_weights(shapes, tmp_path, monkeypatch, occlusion):
    encoded = []
    lookup = EmbeddingCache.lookup

    def counting_lookup(self, images, encode, cacheable):
        out = lookup(self, images, encode, cacheable)
        encoded.append(self.encoded)
        return out

    monkeypatch.setattr(EmbeddingCache, "lookup", counting_lookup)
    rts = {"occlusion_probability": occlusion}
    plain = train(_config(shapes, tmp_path / "plain", rts=rts))
    cached = train(_config(shapes, tmp_path / "cached", rts=rts, cache_embeddings=True))
    a, b = _plugins(plain), _plugins(cached)
    moved = max(float((a[k] - _plugins_init(shapes, tmp_path, rts)[k]).abs().max()) for k in a)
    assert moved > 1e-3  # the plugins trained, so equal weights mean equal steps
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
    if occlusion == 0.0:
        assert encoded[-1] == 4  # 12 samples, 4 images: each encoded once
    else:
        assert 4 < encoded[-1] < 12  # occluded images are encoded for their own step


def _plugins_init(shapes, tmp_path, rts):
    result = train(_config(shapes, tmp_path / "init", rts=rts, steps=1, lr=1e-12),
                   overwrite=True)
    return _plugins(result)


def test_same_image_shares_one_entry_and_step_images_are_not_kept():
    cache = EmbeddingCache(torch.device("cpu"))
    images = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    images[2] = images[0]
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return {"image_embed": x.float().mean(1, keepdim=True),
                "high_res_feats": [x.float(), x.float() * 2]}

    out = cache.lookup(images, encode, [True, True, True])
    assert calls == [2] and len(cache) == 2
    assert torch.equal(out["image_embed"][2], out["image_embed"][0])
    out = cache.lookup(images, encode, [True, False, True])
    assert calls == [2, 1] and len(cache) == 2  # the step-only image is encoded, not stored
    assert torch.equal(out["high_res_feats"][1], images.float() * 2)


def test_rows_round_trip_nested_embeddings():
    batch = (torch.arange(6.0).view(3, 2), [torch.arange(9.0).view(3, 3)])
    rows = [row(batch, i) for i in range(3)]
    back = stack_rows(rows)
    assert torch.equal(back[0], batch[0]) and torch.equal(back[1][0], batch[1][0])
    assert rows[1][0].untyped_storage().nbytes() == 2 * 4  # a row owns only its own memory


def test_image_key_tells_images_apart():
    a = torch.zeros(3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0] = 1
    assert embedding_cache.image_key(a) == embedding_cache.image_key(a.clone())
    assert embedding_cache.image_key(a) != embedding_cache.image_key(b)
    assert embedding_cache.image_key(a) != embedding_cache.image_key(a.view(3, 2, 8))


def test_refused_with_large_scale_jitter(tmp_path):
    with pytest.raises(ValueError, match="cache_embeddings needs lsj off"):
        TrainConfig(model_type="tiny", cache_embeddings=True, lsj=True)
