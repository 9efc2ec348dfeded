"""Stable-SAM's plugins, shared by every base family: the deformable sampling plugin (`dsp`),
the dynamic routing plugin (`drp`), their container and config (`stable_sam_plugins`), and the
plugin site in a two-way transformer (`two_way_site`) that each family's decoder adapter runs."""
from stable_sam.plugins.drp import DynamicRoutingPlugin
from stable_sam.plugins.dsp import DeformableSamplingPlugin
from stable_sam.plugins.stable_sam_plugins import PluginConfig, StableSamPlugins

__all__ = [
    "DeformableSamplingPlugin",
    "DynamicRoutingPlugin",
    "PluginConfig",
    "StableSamPlugins",
]
