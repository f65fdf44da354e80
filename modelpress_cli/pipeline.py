"""Per tensor: choose the stages, encode, decode the stored bytes back, and measure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

import numpy as np

from . import kernels
from .container import Block, decode_block, encode_block
from .errors import ConfigError, IntegrityError
from .formats.base import DTYPES, FLOAT_DTYPES, TensorInfo
from .parallel import in_parts
from .stages import (
    BytePlanes,
    CodebookQuantize,
    HalfCast,
    MagnitudePrune,
    RansPack,
    SparsePack,
    StepQuantize,
    StructuredPack,
    StructuredPrune,
    UniformQuantize,
)
from .stages.base import Stage, decode_chain
from .stages.quantize import MAX_STEP_CODE, as_dtype

DEFAULT_GROUP_SIZE = 64
DEFAULT_MIN_ELEMENTS = 4096
#: Token/position embeddings and output heads, by the names common checkpoints give them.
EMBEDDING = re.compile(r"(^|[./_])(embed\w*|emb|wte|wpe|lm_head)([./_:]|$)"
                       r"|^(head|output)[./]weight$")


@dataclass(frozen=True)
class Options:
    """What to do to each tensor; the defaults keep everything lossless.

    bits: 2–8 for integer codes, 16 for a float16/bfloat16 cast, None for lossless only.
    group_size: values per scale along the last axis, or "channel" / "tensor". 64 costs
      0.25 bit per weight in float16 scales, between llama.cpp's 32 and GPTQ's 128.
    prune: magnitude pruning to this sparsity; nm: "N:M" structured sparsity instead.
    min_elements, quantize_1d: smaller tensors and 1-D ones (biases, norms) stay lossless,
      as llama.cpp and bitsandbytes keep them, unless asked otherwise.
    embed_bits: embeddings and output heads (names like embed_tokens, wte, tok_emb, lm_head)
      get at least this many bits: models are most sensitive there, which is why GPTQ and
      bitsandbytes leave them unquantized and llama.cpp gives its output tensor 6 bits.
    method: how --bits codes are made: "uniform" (searched scales per group), "kmeans" (one
      fitted codebook), "nf" (normal-float levels times a scale per group), or "auto" (per
      tensor, the least error of the three among those no more than 1% larger than uniform).
    scale_bits: double-quantize uniform scales to this many bits (K-quants style).
    target_bpw, min_sqnr, max_rel_error: the entropy-constrained mode instead of --bits: one
      step per tensor, codes entropy-coded with rANS; the smallest file for an average bits
      per weight (whole file), or per tensor for a least SQNR in dB or a largest relative
      error. step: that step, when already chosen (the target-bpw allocation sets it).
    keep, rule, forced: set by a recipe rule (recipe.py): keep the tensor exact; the rule's
      label; whether the rule set bits, prune or nm itself, so that the tensor gets them
      whatever its size, rank or name.
    """

    bits: int | None = None
    group_size: int | str = DEFAULT_GROUP_SIZE
    symmetric: bool = True
    prune: float = 0.0
    nm: str | None = None
    half: str = "float16"
    min_elements: int = DEFAULT_MIN_ELEMENTS
    quantize_1d: bool = False
    embed_bits: int = 8
    method: str = "uniform"
    scale_bits: int | None = None
    target_bpw: float | None = None
    min_sqnr: float | None = None
    max_rel_error: float | None = None
    step: float | None = None
    keep: bool = False
    rule: str | None = None
    forced: bool = False

    def __post_init__(self) -> None:
        if self.bits is not None and not (_is_int(self.bits) and self.bits in (*range(2, 9), 16)):
            raise ConfigError(f"--bits must be 2 to 8 or 16, got {self.bits!r}")
        if self.bits in range(2, 9):
            UniformQuantize(self.bits, self.group_size, self.symmetric, self.scale_bits)
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, "
                              f"got {self.method!r}")
        targets = [n for n in ("target_bpw", "min_sqnr", "max_rel_error")
                   if getattr(self, n) is not None]
        if len(targets) > 1 or (targets and (self.bits is not None or self.prune or self.nm)):
            raise ConfigError("choose one of --bits, --target-bpw, --min-sqnr and "
                              "--max-rel-error (pruning goes with --bits only)")
        for name, low, high in (("target_bpw", 0.1, 32.0), ("min_sqnr", 0.0, 150.0),
                                ("max_rel_error", 1e-7, 1.0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not low <= value <= high):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number in "
                                  f"{low:g}…{high:g}, got {value!r}")
        if self.step is not None:
            StepQuantize(self.step)
        MagnitudePrune(self.prune)
        HalfCast(self.half)
        if not (_is_int(self.embed_bits) and self.embed_bits in range(2, 9)):
            raise ConfigError(f"--embed-bits must be 2 to 8, got {self.embed_bits!r}")
        if not _is_int(self.min_elements) or self.min_elements < 0:
            raise ConfigError(f"min_elements must be an integer >= 0, got {self.min_elements!r}")
        if self.nm is not None:
            StructuredPrune(*self.nm_pattern)
            if self.prune:
                raise ConfigError("choose either prune (a fraction) or nm (a pattern), not both")

    @property
    def nm_pattern(self) -> tuple[int, int]:
        """("2:4") → (2, 4)."""
        try:
            n, m = (int(v) for v in str(self.nm).split(":"))
        except ValueError:
            raise ConfigError(f"nm must look like 2:4, got {self.nm!r}") from None
        return n, m

    @property
    def lossy(self) -> bool:
        return not self.keep and (self.bits is not None or self.prune > 0 or self.nm is not None
                                  or self.entropy_coded)

    @property
    def entropy_coded(self) -> bool:
        """The entropy-constrained mode: a step per tensor instead of fixed-width codes."""
        return any(v is not None for v in (self.target_bpw, self.min_sqnr, self.max_rel_error,
                                           self.step))

    @property
    def wanted_sqnr_db(self) -> float | None:
        """The per-tensor SQNR that --min-sqnr or --max-rel-error asks for."""
        if self.max_rel_error is not None:
            return -20 * np.log10(self.max_rel_error)
        return self.min_sqnr


METHODS = ("uniform", "kmeans", "nf", "auto")


def _is_int(value) -> bool:
    """An integer, and not a bool or a float that happens to be whole (4.0 breaks shifts)."""
    return isinstance(value, int) and not isinstance(value, bool)


def scan(x: np.ndarray) -> tuple[int, float]:
    """NaN and ±Inf entries of a float tensor, and its largest finite |value| (0, 0.0 for
    others): one pass, what plan() needs to know before choosing stages. A big tensor's
    pass is split over the cores (its first read of a mapped file: page faults included)."""
    if x.dtype.kind != "f" and x.dtype.name not in FLOAT_DTYPES:
        return 0, 0.0
    if x.itemsize > 1:  # IEEE layouts (float16/32/64, bfloat16): float8 may lack ±Inf
        uint = np.dtype(f"u{x.itemsize}")
        top = np.iinfo(uint).max >> 1
        infinity = np.array(np.inf, x.dtype).view(uint)
        flat = np.ascontiguousarray(x).reshape(-1).view(uint)
        found = in_parts(lambda a, b: kernels.scan_bits(flat[a:b], uint.type(top),
                                                        infinity[()]), flat.size, flat.size)
        peak = max(p for _, p in found)  # finite values order as their bits do
        return sum(int(b) for b, _ in found), float(np.array(peak, uint).view(x.dtype))
    finite = np.isfinite(x)
    return int(x.size - np.count_nonzero(finite)), float(np.abs(x[finite]).max(initial=0))


def plan(info: TensorInfo, x: np.ndarray, options: Options,
         found: tuple[int, float] | None = None) -> tuple[list[Stage], str | None]:
    """The stages for one tensor, and why it stays lossless when options asked otherwise.
    `found` is scan(x), when already known.

    Unless a recipe rule named the tensor (options.forced), the defaults of the best peers
    apply: small and 1-D tensors stay exact, and embeddings and output heads are not pruned
    and get at least embed_bits.
    """
    lossless = [BytePlanes(info.dtype)]
    if not options.lossy:
        return lossless, "kept by rule" if options.keep else None
    if info.dtype not in FLOAT_DTYPES:
        return lossless, "integer/bool"
    if DTYPES[info.dtype].itemsize == 1:
        return lossless, "8-bit float"
    if info.size == 0:
        return lossless, "empty"
    if not options.forced and len(info.shape) < 2 and not options.quantize_1d:
        return lossless, "1-D"
    if not options.forced and info.size < options.min_elements:
        return lossless, f"< {options.min_elements} elements"
    non_finite, peak = found if found is not None else scan(x)
    if options.entropy_coded:
        return _plan_step(x, options, non_finite, peak, lossless)
    bits, prune, nm = options.bits, options.prune, options.nm
    if not options.forced and EMBEDDING.search(info.name):
        prune, nm = 0.0, None
        if bits in range(2, 9):
            bits = max(bits, options.embed_bits)
    if nm and (not info.shape or info.shape[-1] % options.nm_pattern[1]):
        return lossless, f"last axis not a multiple of {options.nm_pattern[1]}"
    stages: list[Stage] = []
    if prune > 0:
        stages.append(MagnitudePrune(prune))
    if nm:
        stages.append(StructuredPrune(*options.nm_pattern))
    part, values_dtype = "values", info.dtype
    if bits in range(2, 9):
        stages.append(quantizer(bits, options))
        part = "codes"
    elif bits == 16 and DTYPES[info.dtype].itemsize > 2:
        stages.append(HalfCast(options.half))
        values_dtype = options.half
    if not stages:
        return lossless, "already 16-bit" if bits == 16 else "embedding: not pruned"
    if non_finite:
        return lossless, f"{non_finite} NaN/Inf kept exact"
    limit = min(s.max_magnitude() for s in stages)
    if peak >= limit:
        return lossless, f"|values| ≥ {limit:.6g} kept exact"
    if prune > 0:
        stages.append(SparsePack(part))
    if nm:
        stages.append(StructuredPack(part, *options.nm_pattern))
    if part == "values":
        stages.append(BytePlanes(values_dtype))
    return stages, None


def quantizer(bits: int, options: Options) -> Stage:
    """The --bits stage for options.method ("auto" plans uniform; api tries the others)."""
    if options.method in ("kmeans", "nf"):
        return CodebookQuantize(bits, options.method, options.group_size)
    return UniformQuantize(bits, options.group_size, options.symmetric, options.scale_bits)


def _plan_step(x: np.ndarray, options: Options, non_finite: int, peak: float,
               lossless: list[Stage]) -> tuple[list[Stage], str | None]:
    """The entropy-constrained chain: a step per tensor, then rANS over the codes."""
    if non_finite:
        return lossless, f"{non_finite} NaN/Inf kept exact"
    step = options.step
    if step is None and options.wanted_sqnr_db is not None:
        step = find_step(x, options.wanted_sqnr_db)
    if step is None:
        return lossless, "all zero" if not np.any(x) else "no step reaches the target"
    if peak / step >= MAX_STEP_CODE:
        return lossless, "step too fine for the codes: kept exact"
    quantize = StepQuantize(step)
    return [quantize, RansPack.fit(*quantize.code_range(x))], None


def find_step(x: np.ndarray, sqnr_db: float) -> float | None:
    """The largest step (to 1%) whose rounding error keeps SQNR ≥ sqnr_db; None if x is 0
    or no step reaches it.

    Starts from the high-rate rule MSE = step²/12 and corrects by the measured error: a few
    passes, each one rounding of the tensor.
    """
    flat = kernels.native(x.reshape(-1))
    power = kernels.mean_square(flat)
    if power == 0:
        return None
    wanted = power * 10 ** (-sqnr_db / 10)
    step = float(np.sqrt(12 * wanted))
    best = None
    for _ in range(8):
        mse = kernels.step_mse(flat, step)
        if mse <= wanted:
            best = step if best is None else max(best, step)
            if mse >= wanted * 0.98:
                break
        ratio = np.sqrt(wanted / mse) if mse > 0 else 2.0
        step *= float(np.clip(ratio, 0.5, 2.0)) * (0.995 if mse > wanted else 1.0)
    for _ in range(40):  # not converged (odd distributions): halve until the error holds
        if best is not None:
            break
        step /= 2
        if kernels.step_mse(flat, step) <= wanted:
            best = step
    if best is not None and x.dtype not in (np.float32, np.float64):
        best = _through_dtype(x, flat, best, wanted)
    return best


def _through_dtype(x: np.ndarray, flat: np.ndarray, step: float, wanted: float) -> float | None:
    """Shrink `step` until the error holds after the final cast to a 16-bit x.dtype, whose
    own rounding adds noise that the float64 search did not see."""
    for _ in range(60):
        y = as_dtype(kernels.step_values(kernels.step_codes(flat, step), step), x.dtype)
        d = y.astype(np.float64) - flat
        if float(d @ d) / flat.size <= wanted:
            return step
        step *= 0.97
    return None


def encode(x: np.ndarray, stages: list[Stage]) -> dict[str, tuple[Block, bytes]]:
    """Run the stages and entropy-code every part they produce."""
    return _encode(x, stages)[0]


def _encode(x: np.ndarray, stages: list[Stage]) -> tuple[dict[str, tuple[Block, bytes]],
                                                          list[tuple | None]]:
    """encode(), and the own measures (Stage.encode_measured) of the stages in
    _measuring(stages), in order."""
    parts = {"values": x}
    bits: dict[str, int] = {}
    measures = []
    measuring = _measuring(stages)
    for k, stage in enumerate(stages):
        if k in measuring:
            parts, measured = stage.encode_measured(parts)
            measures.append(measured)
        else:
            parts = stage.encode(parts)
        bits.update(stage.part_bits())
    return {name: encode_block(array, bits.get(name)) for name, array in parts.items()}, \
        measures


def _measuring(stages: list[Stage]) -> list[int]:
    """The stages whose own measures give the tensor's, if each has one: the first stage,
    when it is the only lossy one (later lossless ones give its output back exactly); or
    magnitude pruning and the lossy stage right after it, when there is no other. Pruned
    weights are stored as exact zeros, which that stage gives back exactly (symmetric codes,
    the only stage that measures itself: code 0 is 0), so the two errors fall on different
    weights and add up. Otherwise none: the stored bytes are decoded back and compared."""
    lossy = [k for k, stage in enumerate(stages) if stage.lossy]
    if lossy == [0, 1] and isinstance(stages[0], MagnitudePrune):
        return lossy
    return lossy if lossy == [0] else []


def encode_measured(info: TensorInfo, x: np.ndarray, stages: list[Stage]) \
        -> tuple[dict[str, tuple[Block, bytes]], ErrorStats, float, float | None]:
    """Encode x, and measure what a reader will decode: its errors, its fraction of zeros,
    and x's largest |value| if the encoding saw it (else None; inf or nan if x holds an Inf
    or NaN, and then nothing else returned means anything). The stages measure themselves
    as they encode where they can (_measuring); otherwise the stored bytes are decoded back
    and compared. A chain that starts with pruning measures correctly only finite tensors:
    api.py scans such a tensor first and keeps one that holds an Inf or NaN exact."""
    blocks, measures = _encode(x, stages)
    if len(measures) == 1 and measures[0] is not None:
        ref, err, peak, zeros, *seen = measures[0]  # only the quantizer sees max|x|
        return blocks, ErrorStats(ref, err, peak), zeros / x.size, seen[0] if seen else None
    if len(measures) == 2 and measures[1] is not None:  # pruning, then a quantizer
        if measures[0] is None:  # nothing pruned: the quantizer was given x itself
            ref, err, peak, zeros, _ = measures[1]
            return blocks, ErrorStats(ref, err, peak), zeros / x.size, None
        (ref, pruned_err, pruned_peak, _), (_, err, peak, zeros, _) = measures
        return blocks, ErrorStats(ref, pruned_err + err, max(pruned_peak, peak)), \
            zeros / x.size, None
    y = decode(blocks, stages, info)
    errors = measure(x, y, any(s.lossy for s in stages))
    zeros = float(np.count_nonzero(y == 0) / y.size) if y.size else 0.0
    return blocks, errors, zeros, None


def decode(blocks: dict[str, tuple[Block, bytes]], stages: list[Stage],
           info: TensorInfo) -> np.ndarray:
    """Rebuild a tensor from its encoded blocks: the same path a reader takes."""
    parts = {name: decode_block(block, bytes(payload)) for name, (block, payload) in
             blocks.items()}
    return decode_chain(stages, parts, info.shape, DTYPES[info.dtype])


@dataclass(frozen=True)
class ErrorStats:
    """Sums that combine across tensors: squared reference, squared error, worst error."""

    sum_sq_ref: float
    sum_sq_err: float
    max_abs: float

    @property
    def rel_error(self) -> float:
        return float(np.sqrt(self.sum_sq_err / self.sum_sq_ref)) if self.sum_sq_ref else 0.0

    @property
    def sqnr_db(self) -> float | None:
        """Signal to quantization noise in dB; None when there is no noise (exact)."""
        if self.sum_sq_err == 0:
            return None
        if self.sum_sq_ref == 0:
            return float("-inf")
        return float(10 * np.log10(self.sum_sq_ref / self.sum_sq_err))

    def __add__(self, other: ErrorStats) -> ErrorStats:
        return ErrorStats(self.sum_sq_ref + other.sum_sq_ref,
                          self.sum_sq_err + other.sum_sq_err, max(self.max_abs, other.max_abs))


def measure(x: np.ndarray, y: np.ndarray, lossy: bool, *, chunk: int = 1 << 20) -> ErrorStats:
    """Error of `y` against `x` in float64, chunk by chunk; lossless paths must be bit-exact."""
    if not lossy:
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(
                x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)):
            raise IntegrityError("lossless round trip is not bit-exact: please report this bug")
    ref = err = peak = 0.0
    if x.dtype.kind != "f" and x.dtype.name not in FLOAT_DTYPES:
        return ErrorStats(0.0, 0.0, 0.0)
    xf, yf = x.reshape(-1), y.reshape(-1)
    if lossy and x.dtype in (np.float32, np.float64) and y.dtype == x.dtype:
        return ErrorStats(*kernels.error_sums(xf, yf))  # one compiled pass, float64 sums
    if lossy and x.dtype.name in ("float16", "bfloat16") and y.dtype == x.dtype:
        for start in range(0, xf.size, chunk):  # widened exactly, a chunk at a time
            sums = kernels.error_sums(kernels.native(xf[start:start + chunk]),
                                      kernels.native(yf[start:start + chunk]))
            ref, err, peak = ref + sums[0], err + sums[1], float(np.maximum(peak, sums[2]))
        return ErrorStats(ref, err, peak)
    # Huge float64 weights saturate the sums to inf; float8 NaNs cast with a warning: both fine.
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, prod(x.shape), chunk):
            a = xf[start:start + chunk].astype(np.float64)
            if not lossy:
                a = a[np.isfinite(a)]
                ref += float(a @ a)
                continue
            d = yf[start:start + chunk].astype(np.float64) - a
            ref += float(a @ a)
            err += float(d @ d)
            peak = max(peak, float(np.abs(d).max(initial=0)))
    return ErrorStats(ref, err, peak)
