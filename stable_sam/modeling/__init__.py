"""The networks: the deformable sampling plugin (`dsp`), the dynamic routing plugin (`drp`),
their container and config (`plugins`), SAM's decoder pass with the plugins at layer 2
(`decoder`) and the `StableSam` module (`stable_sam`); on HQ-SAM, HQ-SAM's decoder pass
(`hq_decoder`) and `StableHQSam` (`stable_hq_sam`)."""
from stable_sam.modeling.drp import DynamicRoutingPlugin
from stable_sam.modeling.dsp import DeformableSamplingPlugin
from stable_sam.modeling.plugins import PluginConfig, StableSamPlugins
from stable_sam.modeling.stable_sam import StableSam
from stable_sam.modeling.stable_hq_sam import StableHQSam

__all__ = [
    "DeformableSamplingPlugin",
    "DynamicRoutingPlugin",
    "PluginConfig",
    "StableHQSam",
    "StableSam",
    "StableSamPlugins",
]
