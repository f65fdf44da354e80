"""Lossless layouts: sparse zeros, N:M positions, ZipNN-style byte planes, rANS coding."""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np

from .. import kernels
from ..errors import ConfigError, FormatError, IntegrityError
from ..formats.base import DTYPES
from ..parallel import in_parts
from .base import Parts, Stage, register, require

GAP_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def _bits(array: np.ndarray) -> np.ndarray:
    """The array's entries as unsigned integers of their width: what the compiled layouts
    move (any dtype of 1, 2, 4 or 8 bytes), and zero exactly when all bits are zero."""
    return array.view(f"u{array.itemsize}")


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
        """Zero is all-zero bits, so -0.0 is kept as it is. A bitmap takes n/8 bytes, gaps at
        least one a kept entry: only below n/8 kept entries are gaps worth computing."""
        dense = np.ascontiguousarray(parts[self.part]).reshape(-1)
        bits = _bits(dense)
        count = int(np.count_nonzero(bits))
        out = {k: v for k, v in parts.items() if k != self.part}
        if count < -(-dense.size // 8):
            positions = np.flatnonzero(bits)
            gaps = np.diff(positions, prepend=-1) - 1
            gap_dtype = next(t for t in GAP_DTYPES if gaps.max(initial=0) <= np.iinfo(t).max)
            if count * np.dtype(gap_dtype).itemsize < -(-dense.size // 8):
                return {**out, self.part: dense[positions], "gaps": gaps.astype(gap_dtype)}
        kept = np.empty(count, dense.dtype)
        mask = np.empty(dense.size, np.bool_)
        kernels.sparse_split(bits, _bits(kept), mask)
        return {**out, self.part: kept, "mask": mask.reshape(parts[self.part].shape)}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, self.part, stage=self.stage_id)
        kept = parts[self.part]
        out = {k: v for k, v in parts.items() if k not in (self.part, "mask", "gaps")}
        if "mask" in parts:
            mask = parts["mask"]
            if mask.dtype != np.bool_:  # the kernel below trusts one count per true entry
                raise FormatError(f"sparse mask must be bool, not {mask.dtype}")
            if mask.size != prod(shape) or np.count_nonzero(mask) != kept.size:
                raise IntegrityError(f"sparse bitmap of {mask.size} entries marks "
                                     f"{np.count_nonzero(mask)} kept, {kept.size} stored")
            kept = np.ascontiguousarray(kept).reshape(-1)
            dense = np.empty(mask.size, dtype=kept.dtype)
            kernels.sparse_fill(np.ascontiguousarray(mask).reshape(-1), _bits(kept), _bits(dense))
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


@register
@dataclass(frozen=True)
class StructuredPack(Stage):
    """Store an N:M-sparse part as its n kept entries per run of m, plus their positions.

    Positions take ceil(log2 m) bits each (2 bits for 2:4), instead of a bit per entry; the
    part becomes shape (runs, n), `positions` the same shape, ascending within a run.
    """

    stage_id: ClassVar[str] = "pack.nm"
    lossy: ClassVar[bool] = False
    part: str = "codes"
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if self.part not in ("codes", "values") or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in (self.n, self.m)) \
                or not 1 <= self.n < self.m <= 16:
            raise ConfigError(f"N:M pack needs part codes/values and 1 <= N < M <= 16, got "
                              f"{self.part!r} {self.n}:{self.m}")

    def encode(self, parts: Parts) -> Parts:
        """Zero is all-zero bits (a -0.0 is kept); runs with fewer than n non-zeros keep
        their earliest zeros too, so that every run stores n."""
        values = np.ascontiguousarray(parts[self.part]).reshape(-1)
        if values.size % self.m:
            raise ConfigError(f"{values.size} entries are not runs of {self.m}")
        runs = values.size // self.m
        kept = np.empty((runs, self.n), values.dtype)
        positions = np.empty((runs, self.n), np.uint8)
        if not kernels.nm_select(_bits(values), self.m, self.n, _bits(kept), positions):
            raise ConfigError(f"more than {self.n} non-zeros in a run of {self.m}: prune with "
                              f"the {self.n}:{self.m} pattern first")
        return {**parts, self.part: kept, "positions": positions}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, self.part, "positions", stage=self.stage_id)
        kept, positions = parts[self.part], parts["positions"]
        runs = prod(shape) // self.m
        if prod(shape) % self.m or kept.size != runs * self.n or positions.shape != (
                runs, self.n) or positions.max(initial=0) >= self.m:
            raise IntegrityError(f"{self.n}:{self.m} blocks do not fit shape {list(shape)}")
        if positions.dtype != np.uint8 or kept.dtype.itemsize not in (1, 2, 4, 8):
            raise FormatError(f"{self.n}:{self.m} positions must be uint8 and entries 1, 2, 4 "
                              f"or 8 bytes, not {positions.dtype} and {kept.dtype}")
        kept = np.ascontiguousarray(kept).reshape(runs, self.n)  # byte planes: flat
        dense = np.empty((runs, self.m), dtype=kept.dtype)
        kernels.nm_scatter(_bits(kept), np.ascontiguousarray(positions), _bits(dense))
        out = {k: v for k, v in parts.items() if k != "positions"}
        return {**out, self.part: dense.reshape(shape)}

    def part_bits(self) -> dict[str, int]:
        return {"positions": max(1, (self.m - 1).bit_length())}

    def describe(self) -> str:
        return ""  # the pruning stage already says "2:4 sparse"


RANS_CHUNK = 1 << 16     # symbols per independent stream: 12 bytes of overhead per 65536
MAX_RANS_PREC = 20       # probability resolution 2**-20; the decoder's table has 2**prec entries
MAX_ALPHABET = 1 << 20


def normalized_freqs(counts: np.ndarray, prec: int) -> np.ndarray:
    """Frequencies summing to 2**prec, each symbol that occurs getting at least 1.

    Scales the counts by the largest factor whose rounded sum still fits, then gives what is
    left to the most frequent symbol, where it costs the fewest bits.
    """
    total = 1 << prec
    present = counts > 0
    lo, hi = 0.0, total / counts.sum()
    for _ in range(50):
        mid = (lo + hi) / 2
        if np.where(present, np.maximum(1, np.floor(counts * mid)), 0).sum() <= total:
            lo = mid
        else:
            hi = mid
    freqs = np.where(present, np.maximum(1, np.floor(counts * lo)), 0).astype(np.int64)
    freqs[np.argmax(counts)] += total - freqs.sum()
    return freqs.astype(np.uint32)


def rans_precision(alphabet: int) -> int:
    """2**prec at least 256 times the alphabet: rounding frequencies then costs < 0.5%."""
    return int(min(MAX_RANS_PREC, max(12, math.ceil(math.log2(max(2, alphabet))) + 8)))


@register
@dataclass(frozen=True)
class RansPack(Stage):
    """Entropy-code one integer part with rANS: each code costs about −log2 of its frequency.

    zstd's Huffman stage spends a whole bit on symbols more likely than 1/2 and cannot code
    alphabets beyond 256; rANS (Duda's asymmetric numeral systems) comes within 0.1% of the
    codes' order-0 entropy on weights (benchmarks/entropy_coders.py; by construction the
    rounding of frequencies costs under 0.5%). Symbols are code − offset; the parts are
    their frequencies (scaled to sum to 2**prec), the 32-bit words of independent streams
    of `chunk` symbols, and each stream's length in words. See docs/format.md for the exact coder.
    """

    stage_id: ClassVar[str] = "pack.rans"
    lossy: ClassVar[bool] = False
    part: str = "codes"
    offset: int = 0
    prec: int = 16
    chunk: int = RANS_CHUNK

    def __post_init__(self) -> None:
        for name, value, low, high in (("offset", self.offset, -(1 << 31), (1 << 31) - 1),
                                       ("prec", self.prec, 1, MAX_RANS_PREC),
                                       ("chunk", self.chunk, 1, 1 << 24)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"rANS {name} must be an integer in {low}…{high}, "
                                  f"got {value!r}")
        if self.part != "codes":
            raise ConfigError(f"rANS part must be 'codes', got {self.part!r}")

    @classmethod
    def fit(cls, low: int, high: int, part: str = "codes") -> RansPack:
        """The coder for codes in low…high: low as offset, a precision to match the range."""
        return cls(part, low, rans_precision(high - low + 1))

    def encode(self, parts: Parts) -> Parts:
        codes = np.ascontiguousarray(parts[self.part].reshape(-1), dtype=np.int32)
        alphabet = max(1, min(MAX_ALPHABET, int(codes.max(initial=0)) - self.offset + 1))
        counts, ok = kernels.rans_counts(codes, self.offset, alphabet)
        if not ok:
            raise ConfigError(f"codes outside {self.offset}…{self.offset + alphabet - 1}: "
                              f"rANS takes at most {MAX_ALPHABET} symbols")
        freqs = normalized_freqs(counts, self.prec)
        cums = (np.cumsum(freqs, dtype=np.uint64) - freqs).astype(np.uint32)
        n_chunks = -(-codes.size // self.chunk)
        pieces = in_parts(lambda first, last: kernels.rans_encode(
            codes, self.offset, freqs, cums, self.prec, self.chunk, first, last), n_chunks,
            codes.size, align=4)
        out = {k: v for k, v in parts.items() if k != self.part}
        return {**out, "freqs": freqs, "words": np.concatenate([w for w, _ in pieces]),
                "lengths": np.concatenate([n for _, n in pieces])}

    def decode(self, parts: Parts, shape, dtype) -> Parts:
        require(parts, "freqs", "words", "lengths", stage=self.stage_id)
        for name in ("freqs", "words", "lengths"):  # the kernels trust these: check first
            if parts[name].dtype != np.uint32:
                raise FormatError(f"rANS part {name!r} must be uint32, not {parts[name].dtype}")
        freqs = np.ascontiguousarray(parts["freqs"].reshape(-1))
        words = np.ascontiguousarray(parts["words"].reshape(-1))
        lengths = parts["lengths"].reshape(-1).astype(np.int64)
        n = prod(shape)
        if not 0 < freqs.size <= MAX_ALPHABET or int(freqs.sum(dtype=np.uint64)) != 1 << self.prec:
            raise IntegrityError(f"rANS frequencies must sum to 2**{self.prec}")
        if self.offset + freqs.size - 1 > np.iinfo(np.int32).max:
            raise FormatError(f"rANS codes {self.offset} + {freqs.size} overflow int32")
        if lengths.size != -(-n // self.chunk) or (lengths.size and lengths.min() < 2) \
                or int(lengths.sum()) != words.size:
            raise IntegrityError(f"rANS stream lengths do not cover {words.size} words "
                                 f"in {-(-n // self.chunk)} chunks")
        cums = (np.cumsum(freqs, dtype=np.uint64) - freqs).astype(np.uint32)
        table_type = np.uint16 if freqs.size <= 1 << 16 else np.uint32  # half the cache lines
        slot_symbol = np.repeat(np.arange(freqs.size, dtype=table_type), freqs)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        symbols = np.empty(n, np.uint32)
        ok = in_parts(lambda first, last: kernels.rans_decode(  # lockstep: groups of four
            words, starts, freqs, cums, slot_symbol, self.prec, self.chunk, n, first, last,
            symbols), lengths.size, n, align=4)
        if not all(ok):
            raise IntegrityError("rANS stream is damaged: it does not decode to its length")
        codes = symbols.view(np.int32)
        codes += np.int32(self.offset)
        out = {k: v for k, v in parts.items() if k not in ("freqs", "words", "lengths")}
        return {**out, self.part: codes.reshape(shape)}

    def describe(self) -> str:
        return "rANS"
