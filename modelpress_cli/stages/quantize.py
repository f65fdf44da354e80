"""Quantizers: uniform integer codes, codebooks, one step per tensor, and the half cast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import prod
from typing import ClassVar

import ml_dtypes
import numpy as np

from .. import kernels
from ..errors import ConfigError, FormatError
from ..formats.base import DTYPES
from ..parallel import in_parts
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
    # a group longer than the row is the row: the same groups, without padding to the claim
    group = min(group_size, max(cols, 1)) if isinstance(group_size, int) else max(cols, 1)
    return (rows, cols), group


def round_up_float16(scale: np.ndarray) -> np.ndarray:
    """float16 scales no smaller than `scale` (float64: no underflow to 0), so no code clips."""
    s16 = scale.astype(np.float16)
    low = s16.astype(np.float64) < scale
    s16[low] = np.nextafter(s16[low], np.float16(np.inf))
    return s16


#: How far below the peak the scale search looks, by bit width: coarse codes gain more from
#: clipping the peak. Four candidates spread over [1 − spread, 1], then least-squares refits.
#: From 7 bits on, clipping the peak does not pay: the peak alone and one refit (the search
#: then costs a third as much, for 0.05 dB less on Gaussian weights; a second candidate at
#: 1 − spread won no group on Gaussian, Laplacian or Student-t weights, so it is not tried).
SEARCH_SPREAD = {2: 0.5, 3: 0.36, 4: 0.24, 5: 0.16, 6: 0.12}


def search_ratios(bits: int) -> np.ndarray:
    if bits >= 7:
        return np.ones(1, np.float32)
    return (1 - np.linspace(0, SEARCH_SPREAD[bits], 4)).astype(np.float32)


def search_refits(bits: int) -> int:
    return 2 if bits < 7 else 1


def largest_scale(dtype: np.dtype, lo: int) -> float:
    """The largest float16 scale whose codes all decode inside `dtype`'s range: for float16
    tensors, lo·scale must not pass 65504, or the decoder's cast would make a finite weight
    infinite; no limit for wider types."""
    if np.dtype(dtype).name != "float16":  # either byte order
        return math.inf
    scale = np.float16(FLOAT16_MAX / -lo)
    while float(scale) * -lo > FLOAT16_MAX:
        scale = np.nextafter(scale, np.float16(0))
    return float(scale)


def as_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """values.astype(dtype), the same values: float32 to float16 or bfloat16 runs compiled, on
    every core (kernels.narrow; numpy's float16 cast took 5.3 ns a weight on one thread), and
    so does the widening back (kernels.native)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32 and values.dtype.name in kernels.HALF_BITS:
        return kernels.native(values)
    if values.dtype != np.float32 or dtype.name not in kernels.HALF_BITS or not dtype.isnative:
        return values.astype(dtype, copy=False)
    out = np.empty(values.shape, dtype)
    flat, bits = np.ascontiguousarray(values).reshape(-1), kernels.half_bits(out).reshape(-1)
    in_parts(lambda a, b: kernels.narrow(flat[a:b], bits[a:b]), flat.size, flat.size)
    return out


def sign_extend(codes: np.ndarray, bits: int) -> np.ndarray:
    """b-bit two's-complement codes (stored modulo 2**b) as signed int32."""
    v = codes.astype(np.int32)
    return v - ((v >> (bits - 1)) & 1) * (1 << bits)


@register
@dataclass(frozen=True)
class UniformQuantize(Stage):
    """Round each weight to one of 2**bits levels v·scale, with a scale per group.

    Symmetric: levels v = −2**(bits−1) … 2**(bits−1) − 1. The scale (it may be negative) is
    searched per group for the least squared error: the peak mapped to the extra negative
    level as in llama.cpp's Q4_0, shrunk a few ways to clip it, then least-squares refits.
    Affine adds an integer zero point z per group and fits [min(x, 0), max(x, 0)], so 0 is
    always exact. Codes are stored as v taken modulo 2**bits: code 0 is always the value 0,
    which is what lets the sparse stage drop zeros whatever the scheme.

    Scales are float16 per group, or with `scale_bits` k, double-quantized as K-quants do:
    a signed k-bit integer per group times a float16 unit per `super_group` groups.
    """

    stage_id: ClassVar[str] = "quantize.uniform"
    bits: int
    group_size: int | str = 64  # values per scale along the last axis, or "channel"/"tensor"
    symmetric: bool = True
    scale_bits: int | None = None
    super_group: int = 16

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
        if self.scale_bits is not None and (not isinstance(self.scale_bits, int) or isinstance(
                self.scale_bits, bool) or self.scale_bits not in range(3, 9)):
            raise ConfigError(f"scale bits must be 3 to 8, got {self.scale_bits!r}")
        if self.scale_bits is not None and not self.symmetric:
            raise ConfigError("double-quantized scales (scale bits) need symmetric codes")
        if not isinstance(self.super_group, int) or isinstance(self.super_group, bool) \
                or not 1 <= self.super_group <= 1 << 16:
            raise ConfigError(f"super group must be 1 to 65536 groups, got {self.super_group!r}")

    def encode(self, parts: Parts) -> Parts:
        return self._encode(parts, measure=False)[0]

    def measures_itself(self, dtype) -> bool:
        """Whether encode_measured measures a tensor of `dtype` as it encodes it: float32,
        bfloat16 or float16 under symmetric codes with float16 scales (the fused kernel)."""
        return self.symmetric and self.scale_bits is None and (
            np.dtype(dtype) == np.float32 or np.dtype(dtype).name in kernels.HALF_BITS)

    def encode_measured(self, parts: Parts) -> tuple[Parts, tuple | None]:
        """The errors come with the codes when measures_itself(dtype): the fused kernel
        decodes each group as it writes it, down to the decoder's final cast (bit-for-bit
        decode's values). They are (Σx², Σ(y−x)², max|y−x|, count of y == 0, max|x|); the
        last is inf or nan when x holds an Inf or NaN, and then the others mean nothing."""
        return self._encode(parts, measure=True)

    def _encode(self, parts: Parts, measure: bool) -> tuple[Parts, tuple | None]:
        """encode_measured; the errors come free with the codes, and without `measure` they
        are not returned."""
        x = parts["values"]
        (rows, cols), group = as_rows(x.shape, self.group_size)
        if self.symmetric and self.scale_bits is None and x.dtype.name in kernels.HALF_BITS:
            # widened by the kernel, a block at a time, from its bits
            g = grouped(kernels.half_bits(x.reshape(rows, cols)), group)
        else:
            g = grouped(kernels.native(x.reshape(rows, cols)).astype(np.float32, copy=False),
                        group)
        if not self.symmetric:
            return self._encode_affine(g, x.shape, rows, cols), None
        flat = g.reshape(-1, group)
        lo, hi = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        ratios = search_ratios(self.bits)
        codes = np.empty(flat.shape, np.uint8)
        out: Parts = {}
        errors = None

        def split(work) -> list:  # groups are independent: any split gives the same bytes
            return in_parts(lambda a, b: work(slice(a, b)), flat.shape[0], flat.size)

        if self.scale_bits is None:
            scale = np.empty(flat.shape[0], np.float32)
            limit = largest_scale(x.dtype, lo)
            sums = split(lambda k: kernels.quantize_groups(
                flat[k], lo, hi, ratios, search_refits(self.bits), self.bits, codes[k],
                scale[k], limit))
            out["scales"] = as_dtype(scale, np.float16).reshape(rows, -1)  # exact: float16 values
            if measure and self.measures_itself(x.dtype):
                padding = rows * (flat.size // rows - cols)  # zeros that decode crops
                top = np.array(max(s[4] for s in sums), np.uint32).view(np.float32)
                errors = (sum(s[0] for s in sums), sum(s[1] for s in sums),
                          max(s[2] for s in sums), sum(s[3] for s in sums) - padding,
                          float(top))
        else:
            qmax = (1 << (self.scale_bits - 1)) - 1
            peak = np.abs(flat).max(axis=1).astype(np.float64) / -lo
            unit = round_up_float16(self._per_super(peak).max(axis=1) / qmax)
            unit_each = np.repeat(unit.astype(np.float32), self.super_group)[:flat.shape[0]]
            q = np.concatenate(split(lambda k: kernels.search_scale_codes(
                flat[k], lo, hi, unit_each[k], qmax, ratios)))
            cap = np.floor(largest_scale(x.dtype, lo) / np.maximum(unit_each, 2.0 ** -24))
            q = np.clip(q, -cap, cap).astype(np.int32)  # inside the dtype's range, as above
            out["scales"] = unit
            out["scale_codes"] = (q & ((1 << self.scale_bits) - 1)).astype(np.uint8).reshape(
                rows, -1)
            effective = q * unit_each
            split(lambda k: kernels.round_to_codes(flat[k], effective[k], lo, hi, self.bits,
                                                   codes[k]))
        codes = codes.reshape(rows, -1)[:, :cols].reshape(x.shape)
        return {"codes": codes, **out}, errors

    def _per_super(self, per_group: np.ndarray) -> np.ndarray:
        """(n_groups,) → (n_super, super_group), zero-padded."""
        pad = -per_group.size % self.super_group
        return np.pad(per_group, (0, pad)).reshape(-1, self.super_group)

    def _encode_affine(self, g: np.ndarray, shape, rows: int, cols: int) -> Parts:
        levels = (1 << self.bits) - 1
        lo, hi = np.minimum(g.min(axis=2), 0), np.maximum(g.max(axis=2), 0)
        scale = round_up_float16((hi.astype(np.float64) - lo) / levels)
        safe = np.where(scale > 0, scale.astype(np.float32), 1)
        zero = np.clip(np.rint(-lo / safe), 0, levels).astype(np.uint8)
        v = g / safe[..., None]
        np.rint(v, out=v)
        low = -zero.astype(np.float32)[..., None]
        np.maximum(v, low, out=v)  # in place: np.clip with broadcast bounds is several times slower
        np.minimum(v, levels + low, out=v)
        codes = (v.astype(np.int16) & levels).astype(np.uint8)
        codes = codes.reshape(rows, -1)[:, :cols].reshape(shape)
        return {"codes": codes, "scales": scale, "zeros": zero}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        double = self.scale_bits is not None
        require(parts, "codes", "scales", *(() if self.symmetric else ("zeros",)),
                *(("scale_codes",) if double else ()), stage=self.stage_id)
        (rows, cols), group = as_rows(tuple(shape), self.group_size)
        n_groups = max(1, -(-cols // group))
        n_super = -(-rows * n_groups // self.super_group)
        expected = {"scales": (n_super,) if double else (rows, n_groups),
                    "zeros": (rows, n_groups), "scale_codes": (rows, n_groups)}
        for name, want in expected.items():
            if name in parts and parts[name].shape != want:
                raise FormatError(f"{name} have shape {list(parts[name].shape)}, expected "
                                  f"{list(want)} for groups of {self.group_size}")
        if parts["codes"].size != rows * cols or np.dtype(dtype).kind not in "fV":
            raise FormatError(f"{parts['codes'].size} codes cannot decode to shape "
                              f"{list(shape)} of {np.dtype(dtype).name}")
        for name in ("codes", "zeros", "scale_codes"):
            if name in parts and parts[name].dtype != np.uint8:
                raise FormatError(f"{name} must be uint8, not {parts[name].dtype}")
        if parts["scales"].dtype.kind != "f":
            raise FormatError(f"scales must be floats, not {parts['scales'].dtype}")
        scales = parts["scales"].astype(np.float32).reshape(-1)
        if double:
            scales = sign_extend(parts["scale_codes"].reshape(-1), self.scale_bits) * np.repeat(
                scales, self.super_group)[:rows * n_groups]
        codes = grouped(parts["codes"].reshape(rows, cols), group).reshape(-1, group)
        scales = scales.astype(np.float32, copy=False)
        if self.symmetric:  # float16 and bfloat16 are written as their bits, cast and all
            half = np.dtype(dtype).name in kernels.HALF_BITS and np.dtype(dtype).isnative
            x = np.empty(codes.shape, dtype if half else np.float32)
            target = kernels.half_bits(x) if half else x
            in_parts(lambda a, b: kernels.dequantize_symmetric(codes[a:b], scales[a:b],
                                                               self.bits, target[a:b]),
                     codes.shape[0], codes.size)
        else:
            zeros = parts["zeros"].reshape(-1).astype(np.int32)
            x = kernels.dequantize_affine(codes, scales, zeros, self.bits)
        x = x.reshape(rows, -1)[:, :cols]
        return {"values": as_dtype(x.reshape(shape), dtype)}

    def get_config(self) -> dict:
        """Without the double-quantization fields when unused: files that do not need them
        stay readable by modelpress versions that predate them."""
        config = super().get_config()
        if self.scale_bits is None:
            del config["scale_bits"], config["super_group"]
        return config

    def part_bits(self) -> dict[str, int]:
        out = {"codes": self.bits, "zeros": self.bits}
        if self.scale_bits is not None:
            out["scale_codes"] = self.scale_bits
        return out

    def code_bits(self) -> int:
        return self.bits

    def max_magnitude(self) -> float:
        """The float16 scale max|x| / 2**(bits-1) must stay finite (affine needs less)."""
        return FLOAT16_MAX * ((1 << (self.bits - 1)) - 1)

    def describe(self) -> str:
        group = self.group_size if isinstance(self.group_size, str) else f"g{self.group_size}"
        double = f" s{self.scale_bits}" if self.scale_bits is not None else ""
        return f"q{self.bits} {group}{double} {'sym' if self.symmetric else 'affine'}"


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
        return {**parts, "values": as_dtype(parts["values"], DTYPES[self.to])}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, "values", stage=self.stage_id)
        return {**parts, "values": as_dtype(parts["values"], dtype)}

    def describe(self) -> str:
        return self.to

    def code_bits(self) -> int:
        return 16

    def max_magnitude(self) -> float:
        """From half an ulp above the type's largest value, the cast rounds to infinity."""
        finfo = ml_dtypes.finfo(DTYPES[self.to])
        top = float(finfo.max)
        return top + 2.0 ** (math.floor(math.log2(top)) - finfo.nmant - 1)


def normal_float_codebook(bits: int) -> np.ndarray:
    """NF-b levels (QLoRA's NF4 for b = 4): normal quantiles scaled to [−1, 1], 0 included.

    2**(b−1) positive and 2**(b−1) − 1 negative levels at evenly spaced probabilities, so
    each level is equally likely for normal weights. Entry 0 is the value 0.
    """
    from statistics import NormalDist

    n = 1 << bits
    edge = 1 - 0.5 * (1 / (2 * (n - 1)) + 1 / (2 * n))  # QLoRA's 0.9677083 at b = 4
    inv = NormalDist().inv_cdf
    pos = [inv(p) for p in np.linspace(edge, 0.5, (1 << (bits - 1)) + 1)[:-1]]
    neg = [-inv(p) for p in np.linspace(edge, 0.5, 1 << (bits - 1))[:-1]]
    levels = np.array(pos + neg) / max(pos)
    return np.concatenate([[0.0], np.sort(levels)]).astype(np.float32)


def nearest_codes(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry for each value (ties to the lower one)."""
    order = np.argsort(codebook, kind="stable")
    ordered = codebook[order].astype(np.float64)
    edges = (ordered[1:] + ordered[:-1]) / 2  # float64: no overflow near float32's limits
    return order[np.searchsorted(edges, x, side="left")].astype(np.uint8)


def kmeans_codebook(x: np.ndarray, k: int, iterations: int = 25) -> np.ndarray:
    """k levels with the least squared error on x (1-D Lloyd), entry 0 held at 0.

    Lloyd runs on a 65536-bin histogram (sums and counts per bin), so each iteration costs
    O(bins) instead of a pass over the tensor; quantile initialisation makes it deterministic.
    The zero level keeps pruned weights exact, as Deep Compression's shared weights do not.
    """
    flat = x.reshape(-1).astype(np.float64)  # float64: ranges near float32's limits
    flat = flat[flat != 0]  # zeros (pruned) have their level: fit the others
    if not flat.size:
        return np.zeros(k, np.float32)
    lo, hi = float(flat.min()), float(flat.max())
    if lo == hi:
        return np.concatenate([[0.0], np.full(k - 1, lo)]).astype(np.float32)
    bins = 1 << 16
    index = np.clip(((flat - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    sums = np.bincount(index, weights=flat, minlength=bins)
    centers = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    cdf = np.cumsum(counts) / counts.sum()
    levels = centers[np.minimum(np.searchsorted(cdf, (np.arange(k - 1) + 0.5) / (k - 1)),
                                bins - 1)]
    levels = np.concatenate([[0.0], levels])
    for _ in range(iterations):
        order = np.argsort(levels, kind="stable")
        edges = (levels[order][1:] + levels[order][:-1]) / 2
        member = order[np.searchsorted(edges, centers)]
        weight = np.bincount(member, weights=counts, minlength=k)
        total = np.bincount(member, weights=sums, minlength=k)
        new = np.where(weight > 0, total / np.maximum(weight, 1), levels)
        new[0] = 0.0
        if np.array_equal(new, levels):
            break
        levels = new
    return levels.astype(np.float32)


CODEBOOK_METHODS = ("kmeans", "nf")


@register
@dataclass(frozen=True)
class CodebookQuantize(Stage):
    """Each weight becomes a b-bit index into 2**b levels: value = codebook[code] · scale.

    "kmeans": one codebook fitted to the whole tensor (weight sharing as in Deep Compression),
    no scales. "nf": the fixed normal-float levels (QLoRA's NF4 for 4 bits) with a float16
    scale per group, the group's largest |weight|. Codebook entry 0 is always 0.
    """

    stage_id: ClassVar[str] = "quantize.codebook"
    bits: int
    method: str = "kmeans"
    group_size: int | str = 64  # for "nf": values per scale along the last axis

    def __post_init__(self) -> None:
        UniformQuantize(self.bits, self.group_size)  # the same bounds on bits and groups
        if self.method not in CODEBOOK_METHODS:
            raise ConfigError(f"codebook method must be kmeans or nf, got {self.method!r}")

    def encode(self, parts: Parts) -> Parts:
        x = parts["values"].astype(np.float32, copy=False)
        if self.method == "kmeans":
            codebook = kmeans_codebook(x, 1 << self.bits)
            return {"codes": nearest_codes(x, codebook).reshape(x.shape), "codebook": codebook}
        codebook = normal_float_codebook(self.bits)
        (rows, cols), group = as_rows(x.shape, self.group_size)
        g = grouped(x.reshape(rows, cols), group)
        scale = round_up_float16(np.abs(g).max(axis=2).astype(np.float64))
        safe = np.where(scale > 0, scale.astype(np.float32), 1)
        codes = nearest_codes(g / safe[..., None], codebook)
        codes = codes.reshape(rows, -1)[:, :cols].reshape(x.shape)
        return {"codes": codes, "codebook": codebook, "scales": scale}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, "codes", "codebook", *(("scales",) if self.method == "nf" else ()),
                stage=self.stage_id)
        if parts["codes"].dtype != np.uint8 or parts["codebook"].dtype.kind != "f":
            raise FormatError(f"codes must be uint8 and the codebook floats, not "
                              f"{parts['codes'].dtype} and {parts['codebook'].dtype}")
        codebook = parts["codebook"].astype(np.float32).reshape(-1)
        if codebook.size != 1 << self.bits or parts["codes"].size != prod(shape) \
                or np.dtype(dtype).kind not in "fV":
            raise FormatError(f"a {codebook.size}-entry codebook and {parts['codes'].size} "
                              f"codes cannot decode to shape {list(shape)} of "
                              f"{np.dtype(dtype).name} at {self.bits} bits")
        values = codebook[parts["codes"].reshape(-1).astype(np.intp) & (codebook.size - 1)]
        if self.method == "nf":
            (rows, cols), group = as_rows(tuple(shape), self.group_size)
            n_groups = max(1, -(-cols // group))
            scales = parts["scales"]
            if scales.shape != (rows, n_groups):
                raise FormatError(f"scales have shape {list(scales.shape)}, expected "
                                  f"{[rows, n_groups]} for groups of {self.group_size}")
            g = grouped(values.reshape(rows, cols), group) * scales.astype(np.float32)[..., None]
            values = g.reshape(rows, -1)[:, :cols]
        return {"values": as_dtype(values.reshape(shape), dtype)}

    def part_bits(self) -> dict[str, int]:
        return {"codes": self.bits}

    def code_bits(self) -> int:
        return self.bits

    def max_magnitude(self) -> float:
        return FLOAT16_MAX if self.method == "nf" else float(np.finfo(np.float32).max)

    def describe(self) -> str:
        if self.method == "kmeans":
            return f"kmeans{self.bits}"
        group = self.group_size if isinstance(self.group_size, str) else f"g{self.group_size}"
        return f"nf{self.bits} {group}"


#: Codes of the step quantizer are int32; the entropy coder's alphabet is bounded by this.
MAX_STEP_CODE = 1 << 15


@register
@dataclass(frozen=True)
class StepQuantize(Stage):
    """Round each weight to the nearest multiple of one step: value = code · step.

    The entropy-constrained mode: no fixed width, so the codes' range follows the weights'
    and the entropy coder that follows stores each at about its information content.
    """

    stage_id: ClassVar[str] = "quantize.step"
    step: float

    def __post_init__(self) -> None:
        try:
            ok = not isinstance(self.step, bool) and 0 < float(self.step) < math.inf
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ConfigError(f"step must be a positive finite number, got {self.step!r}")

    def encode(self, parts: Parts) -> Parts:
        x = parts["values"]
        low, high = self.code_range(x)
        if max(-low, high) > MAX_STEP_CODE:
            raise ConfigError(f"step {self.step:.3g} gives codes beyond ±{MAX_STEP_CODE}")
        codes = kernels.step_codes(kernels.native(x.reshape(-1)), float(self.step))
        return {"codes": codes.reshape(x.shape)}

    def code_range(self, x: np.ndarray) -> tuple[int, int]:
        """The smallest and largest code of x, without coding it (rounding is monotonic)."""
        if not x.size:
            return 0, 0
        return (int(np.rint(np.float64(x.min()) / self.step)),
                int(np.rint(np.float64(x.max()) / self.step)))

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, "codes", stage=self.stage_id)
        codes = parts["codes"]
        if codes.size != prod(shape) or codes.dtype != np.int32 \
                or np.dtype(dtype).kind not in "fV":
            raise FormatError(f"{codes.size} {codes.dtype} codes cannot decode to shape "
                              f"{list(shape)} of {np.dtype(dtype).name}")
        if np.dtype(dtype) == np.float64:
            values = codes.reshape(shape) * np.float64(self.step)
        else:  # one rule for every narrower type: via float32
            values = kernels.step_values(codes.reshape(-1), float(self.step)).reshape(shape)
        return {"values": as_dtype(values, dtype)}

    def describe(self) -> str:
        return f"step {float(self.step):.3g}"
