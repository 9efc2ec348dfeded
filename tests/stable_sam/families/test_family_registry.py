"""stable_sam.families: every model type has one family, predictors dispatch by family, and no
family's code imports another family's predictor."""
import ast
import importlib.util
from pathlib import Path

import pytest

import stable_sam
from stable_sam import build_stable_sam, stable_sam_model_registry
from stable_sam.families import (
    EMBEDDED_MODEL_TYPES,
    FAMILIES,
    MODEL_TYPES,
    RANDOM_MODEL_TYPES,
    Family,
    base_predictor_for,
    family_of,
    family_of_model,
    predictor_for,
)
from stable_sam.families.sam import StableSam, StableSamPredictor
from stable_sam.families.sam.build import build_tiny_sam

FAMILIES_DIR = Path(stable_sam.__file__).parent / "families"


def test_every_model_type_belongs_to_exactly_one_family():
    owners = [f.name for f in FAMILIES for _ in f.model_types]
    assert len(owners) == len(MODEL_TYPES) == len(set(MODEL_TYPES))
    assert set(stable_sam_model_registry) == set(MODEL_TYPES)
    assert {"tiny", "hq_tiny"} <= set(RANDOM_MODEL_TYPES)
    assert EMBEDDED_MODEL_TYPES == ("demo",)
    assert family_of("vit_b").name == "sam"
    assert family_of("hq_vit_l").name == "hq"
    assert family_of("demo").name == "demo"


def test_the_registry_lists_exactly_what_each_family_builds():
    from stable_sam.families.hq.build import HQ_SAM_BUILDERS
    from stable_sam.families.sam.build import SAM_BUILDERS

    assert family_of("tiny").model_types == tuple(SAM_BUILDERS)
    assert family_of("hq_tiny").model_types == tuple(HQ_SAM_BUILDERS)


def test_an_unknown_model_type_names_the_known_ones():
    with pytest.raises(ValueError, match=r"model_type must be one of .*'vit_b'.*is 'vit_x'"):
        family_of("vit_x")
    with pytest.raises(ValueError, match="model_type must be one of"):
        build_stable_sam("vit_x")


@pytest.mark.parametrize("model_type, predictor, base", [
    ("tiny", "StableSamPredictor", "segment_anything.predictor.SamPredictor"),
    ("demo", "StableSamPredictor", "segment_anything.predictor.SamPredictor"),
    ("hq_tiny", "StableHQSamPredictor", "segment_anything_hq.predictor.SamPredictor"),
])
def test_predictors_dispatch_by_family(model_type, predictor, base):
    model = build_stable_sam(model_type)
    assert type(predictor_for(model)).__name__ == predictor
    plain = base_predictor_for(model)
    assert f"{type(plain).__module__}.{type(plain).__name__}" == base
    assert plain.model is model.sam


def test_a_model_without_a_model_type_is_placed_by_its_class():
    model = StableSam(build_tiny_sam())
    assert model.model_type is None
    assert family_of_model(model).name == "sam"
    assert isinstance(predictor_for(model), StableSamPredictor)
    with pytest.raises(TypeError, match="not a Stable-SAM model"):
        family_of_model(build_tiny_sam())


def test_a_subclassing_familys_model_is_placed_in_its_own_family():
    from stable_sam.families.hq import StableHQSam, StableHQSamPredictor
    from stable_sam.families.hq.build import build_tiny_hq_sam

    model = StableHQSam(build_tiny_hq_sam())  # a StableSam too, and without a model_type
    assert family_of_model(model).name == "hq"
    assert isinstance(predictor_for(model), StableHQSamPredictor)


def test_a_missing_optional_package_is_one_line_naming_the_extra(monkeypatch):
    family = Family("hq", ("hq_tiny",), requires=("segment_anything_hq", "no_such_package_x"),
                    extra="hq")
    message = family.missing_dependency()
    assert message == ("hq model types need no_such_package_x, not installed: "
                       "pip install 'stable-sam[hq]'")
    assert FAMILIES[0].missing_dependency() is None  # the hq extra is installed here


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(FAMILIES_DIR.parent.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_no_family_imports_another_familys_predictor():
    families = [f.name for f in FAMILIES]
    offenders = []
    for name in families:
        for path in (FAMILIES_DIR / name).glob("*.py"):
            for module in _imported_modules(path):
                for other in families:
                    if other != name and module.startswith(
                            f"stable_sam.families.{other}.predictor"):
                        offenders.append(f"{path.name} of {name} imports {module}")
    assert offenders == []
    assert families  # the walk saw the families


def test_the_old_homes_are_gone():
    root = FAMILIES_DIR.parent
    for old in ("modeling", "hq", "predictor.py", "reproduction/demo_model.py"):
        assert not (root / old).exists(), old
