"""One home per base family, and the registry that maps model types to them.

A family is a subpackage (`sam`, `hq`, `demo`) holding its builders, its decoder adapter, its
model class and its predictor; the plugins (`stable_sam.plugins`) are shared by all. A family
package exposes `build_base(model_type)` and `load_base_weights(base, path)` (and
`embedded_checkpoints` when its weights ship in the package), and,
when it has its own adapter, `MODEL_CLASS`, `PREDICTOR_CLASS` and `base_predictor(model)`. A
family without its own adapter names the family whose adapter it uses (`demo` is a
segment_anything `Sam`, so it uses SAM's).

The model types are listed here, not read from the packages, and the packages are imported on
first use, so a family whose optional dependencies are missing costs
nothing until one of its model types is asked for, and then says in one line what to install.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Optional, Tuple

from ..optional_imports import describe_failures, failing_imports, not_installed

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    model_types: Tuple[str, ...]
    random_model_types: Tuple[str, ...] = ()  # random on purpose: no checkpoint needed
    embedded_model_types: Tuple[str, ...] = ()  # weights ship in the package
    requires: Tuple[str, ...] = ()  # import names of the optional packages it needs
    extra: Optional[str] = None  # the pip extra that installs them
    adapter: Optional[str] = None  # the family whose decoder adapter it uses (None: its own)

    @property
    def package(self) -> str:
        return f"{__name__}.{self.name}"

    def missing_dependency(self) -> Optional[str]:
        """None when the family can be built here, else one line naming what to install, or
        which installed package fails to import and how (the packages are imported to know:
        finding one is not enough, an incompatible version raises on import)."""
        missing = not_installed(self.requires)
        if missing:
            return (f"{self.name} model types need {', '.join(missing)}, not installed: "
                    f"pip install 'stable-sam[{self.extra}]'")
        failures = failing_imports(self.requires)
        if failures:
            return (f"{self.name} model types: {describe_failures(failures)}; the "
                    f"{self.extra} extra's versions: pip install 'stable-sam[{self.extra}]'")
        return None

    def load(self) -> ModuleType:
        """The family's package (builders, weights loader)."""
        return importlib.import_module(self.package)

    def load_adapter(self) -> ModuleType:
        """The package with the model class and predictor this family's models use."""
        return get_family(self.adapter).load() if self.adapter else self.load()


FAMILIES: Tuple[Family, ...] = (
    Family("sam", ("vit_b", "vit_l", "vit_h", "tiny"), random_model_types=("tiny",)),
    Family("demo", ("demo",), embedded_model_types=("demo",), adapter="sam"),
    Family("hq", ("hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny", "hq_tiny"),
           random_model_types=("hq_tiny",), requires=("segment_anything_hq", "timm"),
           extra="hq"),
    Family("sam2", ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
                    "sam2.1_hiera_large", "sam2_tiny_random"),
           random_model_types=("sam2_tiny_random",), requires=("sam2", "hydra", "iopath"),
           extra="sam2"),
)

MODEL_TYPES: Tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)
RANDOM_MODEL_TYPES: Tuple[str, ...] = tuple(t for f in FAMILIES for t in f.random_model_types)
EMBEDDED_MODEL_TYPES: Tuple[str, ...] = tuple(t for f in FAMILIES for t in f.embedded_model_types)


def get_family(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"no base family {name!r}; families: {[f.name for f in FAMILIES]}")


def family_of(model_type: str) -> Family:
    """The family of a model type; ValueError naming the known types otherwise."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(f"model_type must be one of {sorted(MODEL_TYPES)}, is {model_type!r}")


def family_of_model(model: nn.Module) -> Family:
    """The family whose model class `model` is (its model_type decides when it has one)."""
    model_type = getattr(model, "model_type", None)
    if model_type in MODEL_TYPES:
        return family_of(model_type)
    matches = [f for f in FAMILIES if f.adapter is None and f.missing_dependency() is None
               and isinstance(model, f.load().MODEL_CLASS)]
    if not matches:
        raise TypeError(f"{type(model).__name__} is not a Stable-SAM model of any base family")
    # a family's model class may subclass another's (StableHQSam is a StableSam): the most
    # derived class is the model's own family
    return max(matches, key=lambda f: len(f.load().MODEL_CLASS.__mro__))


def predictor_for(model: nn.Module):
    """The model's drop-in predictor: StableSamPredictor on SAM and the demo model,
    StableHQSamPredictor on HQ-SAM (its decoder also reads the encoder's early features)."""
    return family_of_model(model).load_adapter().PREDICTOR_CLASS(model)


def base_predictor_for(model: nn.Module):
    """A plain predictor of the base package over the model's own frozen base model."""
    return family_of_model(model).load_adapter().base_predictor(model)
