"""Stages, registered by id on import: quantize → prune → pack, each reversible."""

from .base import REGISTRY, Parts, Stage, stage_from_config
from .pack import BytePlanes, SparsePack
from .prune import MagnitudePrune
from .quantize import HalfCast, UniformQuantize, lossy_refusal

__all__ = ["REGISTRY", "BytePlanes", "HalfCast", "MagnitudePrune", "Parts", "SparsePack",
           "Stage", "UniformQuantize", "lossy_refusal", "stage_from_config"]
