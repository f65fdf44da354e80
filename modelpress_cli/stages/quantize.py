"""Uniform integer quantization and the float16/bfloat16 cast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import ml_dtypes
import numpy as np

from ..errors import ConfigError, FormatError
from ..formats.base import DTYPES
from .base import Parts, Stage, register, require

GRANULARITIES = ("channel", "tensor")
FLOAT16_MAX = 65504.0


def grouped(x2d: np.ndarray, group_size: int) -> np.ndarray:
    """(rows, cols) → (rows, n_groups, group_size), zero-padded on the right.

    Zero padding is harmless: every range we fit contains 0.
    """
    rows, cols = x2d.shape
    n_groups = max(1, -(-cols // group_size))
    pad = n_groups * group_size - cols
    if pad:
        x2d = np.pad(x2d, ((0, 0), (0, pad)))
    return x2d.reshape(rows, n_groups, group_size)


def as_rows(shape: tuple[int, ...], group_size: int | str) -> tuple[tuple[int, int], int]:
    """The 2-D view (rows, cols) a tensor is grouped in, and the group length along cols."""
    size = int(np.prod(shape))
    if group_size == "tensor" or len(shape) == 0:
        rows = 1
    elif group_size == "channel":
        rows = shape[0]  # one scale per slice along axis 0 (PyTorch's output channels)
    else:
        rows = size // shape[-1] if shape[-1] else 0
    cols = size // rows if rows else 0
    group = group_size if isinstance(group_size, int) else max(cols, 1)
    return (rows, cols), group


def round_up_float16(scale: np.ndarray) -> np.ndarray:
    """float16 scales no smaller than `scale` (float64: no underflow to 0), so no code clips."""
    s16 = scale.astype(np.float16)
    low = s16.astype(np.float64) < scale
    s16[low] = np.nextafter(s16[low], np.float16(np.inf))
    return s16


@register
@dataclass(frozen=True)
class UniformQuantize(Stage):
    """Round each weight to one of 2**bits levels, with a float16 scale per group.

    Symmetric: levels −(2**(bits−1) − 1) … 2**(bits−1) − 1 times the scale; affine adds an
    integer zero point z per group and fits [min(x, 0), max(x, 0)], so 0 is always exact. Codes
    are stored as the signed level v (decoded value v·scale) taken modulo 2**bits: code 0 is
    always the value 0, which is what lets the sparse stage drop zeros whatever the scheme.
    """

    stage_id: ClassVar[str] = "quantize.uniform"
    bits: int
    group_size: int | str = 64  # values per scale along the last axis, or "channel"/"tensor"
    symmetric: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) \
                or self.bits not in range(2, 9):
            raise ConfigError(f"bits must be 2 to 8, got {self.bits!r}")
        if not (self.group_size in GRANULARITIES or (
                isinstance(self.group_size, int) and not isinstance(self.group_size, bool)
                and 1 <= self.group_size <= 1 << 20)):
            raise ConfigError(f"group size must be 1 to 1048576, 'channel' or 'tensor', "
                              f"got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"symmetric must be true or false, got {self.symmetric!r}")

    def encode(self, parts: Parts) -> Parts:
        x = parts["values"]
        (rows, cols), group = as_rows(x.shape, self.group_size)
        g = grouped(x.reshape(rows, cols).astype(np.float32, copy=False), group)
        levels = (1 << self.bits) - 1
        if self.symmetric:
            half = (1 << (self.bits - 1)) - 1
            scale = round_up_float16(np.abs(g).max(axis=2).astype(np.float64) / half)
            low, high = np.float32(-half), np.float32(half)
        else:
            lo, hi = np.minimum(g.min(axis=2), 0), np.maximum(g.max(axis=2), 0)
            scale = round_up_float16((hi.astype(np.float64) - lo) / levels)
            safe = np.where(scale > 0, scale.astype(np.float32), 1)
            zero = np.clip(np.rint(-lo / safe), 0, levels).astype(np.uint8)
            low = -zero.astype(np.float32)[..., None]
            high = levels + low
        v = g / np.where(scale > 0, scale.astype(np.float32), 1)[..., None]
        np.rint(v, out=v)
        np.maximum(v, low, out=v)  # in place: np.clip with broadcast bounds is several times slower
        np.minimum(v, high, out=v)
        codes = (v.astype(np.int16) & levels).astype(np.uint8)
        codes = codes.reshape(rows, -1)[:, :cols].reshape(x.shape)
        out = {"codes": codes, "scales": scale}
        if not self.symmetric:
            out["zeros"] = zero
        return out

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, "codes", "scales", *(() if self.symmetric else ("zeros",)),
                stage=self.stage_id)
        (rows, cols), group = as_rows(tuple(shape), self.group_size)
        n_groups = max(1, -(-cols // group))
        expected = {"scales": (rows, n_groups), "zeros": (rows, n_groups)}
        for name, want in expected.items():
            if name in parts and parts[name].shape != want:
                raise FormatError(f"{name} have shape {list(parts[name].shape)}, expected "
                                  f"{list(want)} for groups of {self.group_size}")
        if parts["codes"].size != rows * cols or np.dtype(dtype).kind not in "fV":
            raise FormatError(f"{parts['codes'].size} codes cannot decode to shape "
                              f"{list(shape)} of {np.dtype(dtype).name}")
        levels = (1 << self.bits) - 1
        zero = (np.int16(1 << (self.bits - 1)) if self.symmetric
                else parts["zeros"].astype(np.int16)[..., None])
        g = grouped(parts["codes"].reshape(rows, cols), group).astype(np.int16)
        v = ((g + zero) & levels) - zero
        x = (v * parts["scales"].astype(np.float32)[..., None]).reshape(rows, -1)[:, :cols]
        return {"values": x.reshape(shape).astype(dtype)}

    def part_bits(self) -> dict[str, int]:
        return {"codes": self.bits, "zeros": self.bits}

    def code_bits(self) -> int:
        return self.bits

    def max_magnitude(self) -> float:
        """The float16 scale max|x| / (2**(bits-1) - 1) must stay finite (affine needs less)."""
        return FLOAT16_MAX * ((1 << (self.bits - 1)) - 1)

    def describe(self) -> str:
        group = self.group_size if isinstance(self.group_size, str) else f"g{self.group_size}"
        return f"q{self.bits} {group} {'sym' if self.symmetric else 'affine'}"


@register
@dataclass(frozen=True)
class HalfCast(Stage):
    """Store floats as float16 or bfloat16: half the bytes, 11 or 8 significant bits."""

    stage_id: ClassVar[str] = "quantize.half"
    to: str = "float16"

    def __post_init__(self) -> None:
        if self.to not in ("float16", "bfloat16"):
            raise ConfigError(f"half type must be float16 or bfloat16, got {self.to!r}")

    def encode(self, parts: Parts) -> Parts:
        return {**parts, "values": parts["values"].astype(DTYPES[self.to])}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, "values", stage=self.stage_id)
        return {**parts, "values": parts["values"].astype(dtype)}

    def describe(self) -> str:
        return self.to

    def code_bits(self) -> int:
        return 16

    def max_magnitude(self) -> float:
        """From half an ulp above the type's largest value, the cast rounds to infinity."""
        finfo = ml_dtypes.finfo(DTYPES[self.to])
        top = float(finfo.max)
        return top + 2.0 ** (math.floor(math.log2(top)) - finfo.nmant - 1)
