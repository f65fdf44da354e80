"""Lossless layouts: sparse storage of zeros, and ZipNN-style byte planes for floats."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np

from ..errors import ConfigError, IntegrityError
from ..formats.base import DTYPES
from .base import Parts, Stage, register, require

GAP_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


@register
@dataclass(frozen=True)
class SparsePack(Stage):
    """Keep only the non-zero entries of one part, plus where they were.

    Where they were is a bitmap (`mask`, one bit per entry) or the gaps between kept entries
    (`gaps`, zeros skipped before each, in the narrowest unsigned type that fits), whichever
    takes fewer bytes; the part itself becomes the 1-D array of kept entries.
    """

    stage_id: ClassVar[str] = "pack.sparse"
    lossy: ClassVar[bool] = False
    part: str = "codes"

    def __post_init__(self) -> None:
        if self.part not in ("codes", "values"):
            raise ConfigError(f"sparse part must be 'codes' or 'values', got {self.part!r}")

    def encode(self, parts: Parts) -> Parts:
        dense = parts[self.part]
        mask = dense != 0
        kept = dense[mask]
        positions = np.flatnonzero(mask)
        gaps = np.diff(positions, prepend=-1) - 1
        gap_dtype = next(t for t in GAP_DTYPES if gaps.max(initial=0) <= np.iinfo(t).max)
        out = {k: v for k, v in parts.items() if k != self.part}
        if kept.size * np.dtype(gap_dtype).itemsize < -(-dense.size // 8):
            return {**out, self.part: kept, "gaps": gaps.astype(gap_dtype)}
        return {**out, self.part: kept, "mask": mask}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, self.part, stage=self.stage_id)
        kept = parts[self.part]
        out = {k: v for k, v in parts.items() if k not in (self.part, "mask", "gaps")}
        if "mask" in parts:
            mask = parts["mask"]
            if mask.size != prod(shape) or np.count_nonzero(mask) != kept.size:
                raise IntegrityError(f"sparse bitmap of {mask.size} entries marks "
                                     f"{np.count_nonzero(mask)} kept, {kept.size} stored")
            dense = np.zeros(mask.shape, dtype=kept.dtype)
            dense[mask] = kept
            return {**out, self.part: dense.reshape(shape)}
        require(parts, "gaps", stage=self.stage_id)
        positions = np.cumsum(parts["gaps"].astype(np.uint64) + 1, dtype=np.uint64)
        if positions.size != kept.size or (positions.size and positions[-1] > prod(shape)):
            raise IntegrityError("sparse gaps point outside the tensor")
        dense = np.zeros(prod(shape), dtype=kept.dtype)
        dense[positions.astype(np.int64) - 1] = kept
        return {**out, self.part: dense.reshape(shape)}

    def describe(self) -> str:
        return "sparse"


@register
@dataclass(frozen=True)
class BytePlanes(Stage):
    """Store byte k of every value together (as ZipNN does): exponent bytes compress well.

    `dtype` is the values' dtype at this point of the chain (float16 after a half cast).
    """

    stage_id: ClassVar[str] = "pack.byteplanes"
    lossy: ClassVar[bool] = False
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}")

    def encode(self, parts: Parts) -> Parts:
        values = np.ascontiguousarray(parts["values"]).reshape(-1)
        planes = values.view(np.uint8).reshape(values.size, values.dtype.itemsize).T
        out = {k: v for k, v in parts.items() if k != "values"}
        return {**out, "planes": np.ascontiguousarray(planes)}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, "planes", stage=self.stage_id)
        planes = parts["planes"]
        if planes.ndim != 2 or planes.shape[0] != DTYPES[self.dtype].itemsize:
            raise IntegrityError(f"byte planes of shape {list(planes.shape)} do not fit "
                                 f"{self.dtype}")
        interleaved = np.empty(planes.shape[::-1], dtype=np.uint8)
        for k, plane in enumerate(planes):  # a plane at a time: ~4x faster than planes.T copy
            interleaved[:, k] = plane
        values = interleaved.view(DTYPES[self.dtype]).reshape(-1)
        out = {k: v for k, v in parts.items() if k != "planes"}
        return {**out, "values": values}

    def describe(self) -> str:
        return ""  # the plain lossless layout: reports say "lossless" when nothing else ran
