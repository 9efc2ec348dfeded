"""route_reliance on the shipped demo base: it finds the route that carries the mask and scores
a route that carries nothing (planted: its output projection zeroed beforehand) at exactly zero,
and leaves every weight as it found it."""

import copy

import pytest
import torch

from stable_sam import build_stable_sam
from stable_sam.data.scenes import VAL_SEED, SceneTargets
from stable_sam.evaluation.prompts import freeze_prompts
from stable_sam.evaluation.route_reliance import (SITE, decoder_transformer, route_reliance,
                                                  route_removed, transformer_routes)
from stable_sam.families import base_predictor_for
from stable_sam.families.demo.build import DEMO_IMAGE_SIZE

KINDS = ("box",)
LIVE = "layers[0].image_to_token"  # the shipped base's masks go through it (about 65 points)
DEAD = "final.token_to_image"


@pytest.fixture(scope="module")
def setting():
    model = build_stable_sam("demo").eval()
    dataset = SceneTargets(VAL_SEED, 3, 2, DEMO_IMAGE_SIZE)
    prompts = freeze_prompts(dataset, KINDS, 2, model_image_size=DEMO_IMAGE_SIZE)
    return model, dataset, prompts


def test_finds_the_live_route_and_scores_a_planted_dead_one_zero(setting):
    model, dataset, prompts = setting
    model = copy.deepcopy(model)
    with torch.no_grad():  # plant a route that contributes nothing
        for p in transformer_routes(decoder_transformer(model))[DEAD].out_proj.parameters():
            p.zero_()
    result = route_reliance(base_predictor_for(model), dataset, prompts, KINDS,
                            routes=[LIVE, DEAD, SITE])
    assert result["routes"][DEAD]["drop"]["box"] == 0.0
    assert result["routes"][DEAD]["mIoU"] == result["full"]
    assert result["routes"][LIVE]["drop"]["box"] > 20.0
    assert result["site"] == SITE and set(result["routes"]) == {LIVE, DEAD, SITE}


def test_weights_are_restored_also_after_an_error(setting):
    model, _, _ = setting
    attention = transformer_routes(decoder_transformer(model))[LIVE]
    before = [p.clone() for p in attention.out_proj.parameters()]
    with pytest.raises(RuntimeError):
        with route_removed(attention):
            assert all(not p.any() for p in attention.out_proj.parameters())
            raise RuntimeError("stop")
    assert all(torch.equal(a, b) for a, b in zip(before, attention.out_proj.parameters()))


def test_every_family_has_its_routes():
    sam2 = build_stable_sam("sam2_tiny_random")
    names = list(transformer_routes(decoder_transformer(sam2)))
    assert names == ["layers[0].token_to_image", "layers[0].image_to_token",
                     "layers[1].token_to_image", "layers[1].image_to_token",
                     "final.token_to_image"]
    assert list(transformer_routes(decoder_transformer(build_stable_sam("demo")))) == names


def test_unknown_route_is_refused(setting):
    model, dataset, prompts = setting
    with pytest.raises(ValueError, match="unknown route"):
        route_reliance(base_predictor_for(model), dataset, prompts, KINDS, routes=["layers[9]"])
