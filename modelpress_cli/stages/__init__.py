"""Stages, registered by id on import: quantize → prune → pack, each reversible."""

from .base import REGISTRY, Parts, Stage, stage_from_config
from .pack import BytePlanes, RansPack, SparsePack, StructuredPack
from .prune import MagnitudePrune, StructuredPrune
from .quantize import CodebookQuantize, HalfCast, StepQuantize, UniformQuantize

__all__ = ["REGISTRY", "BytePlanes", "CodebookQuantize", "HalfCast", "MagnitudePrune", "Parts",
           "RansPack", "SparsePack", "Stage", "StepQuantize", "StructuredPack",
           "StructuredPrune", "UniformQuantize", "stage_from_config"]
