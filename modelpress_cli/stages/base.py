"""The stage interface: one reversible step on one tensor, found by its id in an .mpz index."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, FormatError

#: What stages pass along: {"values": x} in, e.g. {"codes": c, "scales": s} out.
Parts = dict[str, np.ndarray]

REGISTRY: dict[str, type[Stage]] = {}


class Stage(ABC):
    """One reversible step on one tensor: get_config() plus the parts it returns decode it.

    `decode` is told the shape and dtype of the tensor being rebuilt, the only context a stage
    needs besides its own parameters and parts.
    """

    stage_id: ClassVar[str]  # stored in every .mpz index: never rename one, add a new id
    lossy: ClassVar[bool] = True  # False: decode gives back exactly what encode was given

    @abstractmethod
    def encode(self, parts: Parts) -> Parts: ...

    @abstractmethod
    def decode(self, parts: Parts, shape: tuple[int, ...], dtype: np.dtype) -> Parts: ...

    def encode_measured(self, parts: Parts) -> tuple[Parts, tuple | None]:
        """encode(), and, where the stage can compute it on the way, what its decode will
        give back measured against parts["values"]: (Σx², Σ(y−x)², max|y−x|, number of
        y == 0), sums in float64. None: the caller decodes the stored bytes and measures."""
        return self.encode(parts), None

    @abstractmethod
    def describe(self) -> str:
        """A few words for reports: 'q4 g64 sym', 'prune 50%'; '' for the plain layout."""

    def code_bits(self) -> int | None:
        """Bits per stored value this stage sets (4 for 4-bit codes), if it sets any."""
        return None

    def max_magnitude(self) -> float:
        """Largest |value| this stage encodes faithfully; larger tensors stay lossless."""
        return float("inf")

    def part_bits(self) -> dict[str, int]:
        """Parts whose values fit in fewer than 8 bits, to be bit-packed at that width."""
        return {}

    def get_config(self) -> dict[str, Any]:
        return {"id": self.stage_id, **dataclasses.asdict(self)}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage findable by its id."""
    if cls.stage_id in REGISTRY:
        raise RuntimeError(f"stage id {cls.stage_id!r} registered twice")
    REGISTRY[cls.stage_id] = cls
    return cls


def stage_from_config(config: Any) -> Stage:
    """The stage an index entry describes; FormatError for unknown ids or bad parameters."""
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise FormatError(f"stage description {config!r} has no id")
    params = dict(config)
    stage_id = params.pop("id")
    if stage_id not in REGISTRY:
        raise FormatError(f"unknown stage {stage_id!r}: written by a newer modelpress? "
                          "upgrade modelpress to read it")
    try:
        return REGISTRY[stage_id](**params)
    except (TypeError, ConfigError) as e:
        raise FormatError(f"stage {stage_id!r} has bad parameters: {e}") from None


def describe_chain(stages: list[Stage]) -> str:
    """What a chain does, for reports: 'prune 50% + q4 g64 sym + sparse', or 'lossless'."""
    named = [s.describe() for s in stages if s.describe()]
    return " + ".join(named) if named else "lossless"


def require(parts: Parts, *names: str, stage: str) -> None:
    """FormatError unless every named part is present (a damaged or hand-made index)."""
    missing = [n for n in names if n not in parts]
    if missing:
        raise FormatError(f"stage {stage!r} is missing part(s) {', '.join(missing)}")


def decode_chain(stages: list[Stage], parts: Parts, shape: tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray:
    """Undo `stages` last to first; the tensor they rebuild, checked against shape and dtype."""
    for stage in reversed(stages):
        parts = stage.decode(parts, shape, dtype)
    values = parts.get("values")
    if values is None or values.size != int(np.prod(shape)) or values.dtype != dtype:
        got = "nothing" if values is None else f"{values.size} {values.dtype} values"
        raise FormatError(f"stages decode to {got}, expected shape {list(shape)} of {dtype}")
    return values.reshape(shape)
