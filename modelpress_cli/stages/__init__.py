"""Stages, registered by id on import: quantize → prune → pack, each reversible."""

from .base import REGISTRY, Parts, Stage, stage_from_config
from .pack import BytePlanes, SparsePack, StructuredPack
from .prune import MagnitudePrune, StructuredPrune
from .quantize import HalfCast, UniformQuantize

__all__ = ["REGISTRY", "BytePlanes", "HalfCast", "MagnitudePrune", "Parts", "SparsePack",
           "Stage", "StructuredPack", "StructuredPrune", "UniformQuantize", "stage_from_config"]
