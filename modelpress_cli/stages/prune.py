"""Magnitude pruning: the smallest weights become exact zeros."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import kernels
from ..errors import ConfigError
from .base import Parts, Stage, register


def _carry_zeros(wide: np.ndarray, flat: np.ndarray) -> None:
    """Zero `flat` where its float copy `wide` (kernels.native(flat)) was pruned to +0.0."""
    if wide is flat:
        return
    if flat.dtype.name in ("float16", "bfloat16"):  # from the bits, in one compiled pass
        kernels.carry_zeros(wide.view(np.uint32), flat.view(np.uint16))
    else:  # integers and other types no plan prunes: numpy is enough
        flat[wide.view(np.uint32 if wide.itemsize == 4 else np.uint64) == 0] = 0


@register
@dataclass(frozen=True)
class MagnitudePrune(Stage):
    """Zero the `sparsity` fraction of smallest-magnitude weights; the count is exact.

    Runs before quantization, so that scales are fitted to the weights that survive.
    """

    stage_id: ClassVar[str] = "prune.magnitude"
    sparsity: float

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity!r}")

    def encode(self, parts: Parts) -> Parts:
        return self.encode_measured(parts)[0]

    def encode_measured(self, parts: Parts) -> tuple[Parts, tuple | None]:
        """Find the k-th smallest magnitude t from the bits (a radix select: no copy of the
        tensor, O(n)); then zero everything below t and as many of the weights equal to t
        as the count needs, first ones first, in one compiled pass, which also sums what
        was zeroed. 16-bit floats are widened to float32 for both. Measured as
        Stage.encode_measured says: decode gives the pruned values back, so the error is
        that of the pruned weights. None if no weight is pruned."""
        values = parts["values"]
        flat = values.reshape(-1).astype(values.dtype.newbyteorder("="))  # a native copy
        k = round(self.sparsity * flat.size)
        measured = None
        if k:
            wide = kernels.native(flat)
            unsigned = wide.view(np.uint32 if wide.itemsize == 4 else np.uint64)
            threshold = np.array(kernels.kth_magnitude_bits(unsigned, k),
                                 unsigned.dtype).view(wide.dtype)[()]
            measured = kernels.zero_smallest(wide, threshold, k)
            _carry_zeros(wide, flat)
        return {**parts, "values": flat.reshape(values.shape)}, measured

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        return parts  # lossy by design: the zeros travel as ordinary values

    def describe(self) -> str:
        return f"prune {self.sparsity:.0%}"


@register
@dataclass(frozen=True)
class StructuredPrune(Stage):
    """N:M sparsity: in every run of `m` values along the last axis, keep the `n` largest.

    The pattern sparse tensor cores accelerate (2:4 on NVIDIA Ampere and later). The last axis
    must be a multiple of `m`; the planner keeps other tensors exact.
    """

    stage_id: ClassVar[str] = "prune.nm"
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and not isinstance(
                self.n, bool) and 1 <= self.n < self.m <= 16):
            raise ConfigError(f"N:M pattern needs 1 <= N < M <= 16, got {self.n}:{self.m}")

    def encode(self, parts: Parts) -> Parts:
        """Ties go to the earlier position; the dropped entries become +0.0."""
        x = parts["values"]
        if x.size % self.m:
            raise ConfigError(f"{x.size} values are not runs of {self.m}")
        flat = x.reshape(-1).astype(x.dtype.newbyteorder("="))  # a native copy
        wide = kernels.native(flat)
        kernels.keep_largest(wide, self.m, self.n)
        _carry_zeros(wide, flat)
        return {**parts, "values": flat.reshape(x.shape)}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        return parts  # lossy by design: the zeros travel as ordinary values

    def describe(self) -> str:
        return f"{self.n}:{self.m} sparse"
