"""Compiled inner loops: the per-group scale search, rounding, dequantization and rANS coding.

numpy needs one full pass over a tensor per operation; a scale search over a few candidate
scales per group would take dozens. numba compiles each loop below once per machine (cached on
disk beside this file) and fuses the work into one or two passes, releasing the GIL so that
tensors encode in parallel threads. fastmath lets the error sums vectorise: results are the
same bytes on one machine, and may differ in the last place of a chosen scale across CPUs
(or vector widths: see wide_vector_features).
"""

from __future__ import annotations

import llvmlite.ir
import numba
import numba.core.codegen
import numba.core.registry
import numba.extending
import numpy as np


def wide_vector_features(host: str) -> str | None:
    """The CPU features to compile with, from the host's: on x86 with AVX-512, LLVM's tuning
    for Intel cores prefers 256-bit vectors (older Xeons slow their clock for 512-bit work),
    but the quantizer kernel runs 18-20% faster with 512-bit ones on a Cascade Lake Xeon
    (benchmarks/quantizer_kernel.py, docs/performance.md). None where that does not apply."""
    return f"{host},-prefer-256-bit" if "+avx512f" in host.split(",") else None


# Set before the first @njit below, which builds numba's code generator for the process: where
# something else defined a numba function first, the generator is built (256-bit) and this
# is left alone. A near-tie between candidate scales can then go the other way (the sums
# add in another order): about 1 group in 40,000 gets another, equally good, scale. The
# setting is process-wide: numba functions compiled after this import get it too. A
# NUMBA_CPU_FEATURES the user set wins.
if numba.config.CPU_FEATURES is None and \
        "_toplevel_target_context" not in vars(numba.core.registry.cpu_target):
    numba.config.CPU_FEATURES = wide_vector_features(numba.core.codegen.get_host_cpu_features())

JIT = {"cache": True, "nogil": True}
# Reassociation (so sums vectorise) but not "no NaN/Inf": infinities are used as sentinels.
FAST = {**JIT, "fastmath": {"reassoc", "contract", "arcp", "nsz"}}


def native(x: np.ndarray) -> np.ndarray:
    """x as a float type the kernels compile for: float16 and bfloat16 widen (exactly), from
    their bits in one compiled pass (numpy's float16 cast is several times slower)."""
    if x.dtype in (np.float32, np.float64):
        return x
    if x.dtype.name not in HALF_BITS:
        return x.astype(np.float32)
    out = np.empty(x.shape, np.float32)
    widen_half(half_bits(x).reshape(-1), out.reshape(-1))
    return out


#: The integer view each 16-bit float type is given to the kernels as: numba has no float16
#: (nor bfloat16), and the two views' types tell the two apart when a kernel is compiled.
HALF_BITS = {"bfloat16": np.uint16, "float16": np.int16}


def half_bits(x: np.ndarray) -> np.ndarray:
    """A float16 or bfloat16 array as its bits (HALF_BITS), native byte order, C order."""
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return np.ascontiguousarray(x).view(HALF_BITS[x.dtype.name])


@numba.njit(**JIT)
def widen_half(halves, out):
    """float32 values of float16 or bfloat16 bits (half_bits), exactly."""
    for i in range(halves.size):
        out[i] = _widened(halves[i])


# The helpers below are inlined into their callers (numba's own inliner: LLVM cannot see
# across separately compiled functions), and take a 2-D array and a row index rather than a
# row: a call per group, or a row view's reference count, cost the quantizer about 30%.
INLINE = {**FAST, "inline": "always"}


@numba.extending.intrinsic
def _float32_bits(typingctx, value):
    """The uint32 bits of a float32 (a register move, no scratch array)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.IntType(32))
    return numba.types.uint32(numba.types.float32), codegen


@numba.extending.intrinsic
def _float32_of_bits(typingctx, bits):
    """The float32 whose bits are a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.FloatType())
    return numba.types.float32(numba.types.uint32), codegen


@numba.extending.intrinsic
def _float64_bits(typingctx, value):
    """The uint64 bits of a float64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.IntType(64))
    return numba.types.uint64(numba.types.float64), codegen


@numba.extending.intrinsic
def _float64_of_bits(typingctx, bits):
    """The float64 whose bits are a uint64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.DoubleType())
    return numba.types.float64(numba.types.uint64), codegen


@numba.njit(**INLINE)
def _either(condition, a, b):
    """a if condition else b, for uint32 a and b, with masks rather than a branch: numba's
    inliner loses track of variables assigned in branches of a helper inlined through an
    overload (NumbaIRAssumptionWarning), and selects vectorise anyway."""
    mask = np.uint32(0) - np.uint32(condition)
    return (a & mask) | (b & ~mask)


@numba.njit(**INLINE)
def _from_float16_bits(h):
    """The float32 value of float16 bits h (int16), exactly: normal, infinite and NaN
    values by moving their bits, subnormals and ±0 as the mantissa times 2**-24."""
    u = np.uint32(h) & np.uint32(0xFFFF)
    sign = (u & np.uint32(0x8000)) << np.uint32(16)
    exponent = (u >> np.uint32(10)) & np.uint32(0x1F)
    mantissa = u & np.uint32(0x3FF)
    rebased = _either(exponent == 31, np.uint32(0x7F800000),
                      (exponent + np.uint32(112)) << np.uint32(23))
    normal = sign | rebased | (mantissa << np.uint32(13))
    tiny = sign | _float32_bits(np.float32(mantissa) * np.float32(2.0 ** -24))
    return _float32_of_bits(_either(exponent == 0, tiny, normal))


def _widened(h):
    """The float32 value of one half_bits() element: bfloat16 (uint16) or float16 (int16)."""


@numba.extending.overload(_widened, inline="always")
def _widened_overload(h):
    if h == numba.types.uint16:  # bfloat16 is the top half of a float32
        return lambda h: _float32_of_bits(np.uint32(h) << np.uint32(16))
    if h == numba.types.int16:
        return lambda h: _from_float16_bits(h)
    return None


@numba.njit(**INLINE)
def _group_error(groups, i, scale, lo, hi):
    """Squared error of rounding group i to levels lo…hi times `scale`."""
    inv = np.float32(1.0) / scale
    err = np.float32(0.0)
    for j in range(groups.shape[1]):
        x = groups[i, j]
        q = min(max(np.float32(np.rint(x * inv)), lo), hi)
        d = x - q * scale
        err += d * d
    return err


@numba.njit(**INLINE)
def _least_squares_scale(groups, i, scale, lo, hi):
    """The scale that best fits the codes `scale` gives group i: sum(x·q) / sum(q·q)."""
    inv = np.float32(1.0) / scale
    sxq = np.float32(0.0)
    sqq = np.float32(0.0)
    for j in range(groups.shape[1]):
        x = groups[i, j]
        q = min(max(np.float32(np.rint(x * inv)), lo), hi)
        sxq += x * q
        sqq += q * q
    return sxq / sqq if sqq > 0 else scale


@numba.njit(**INLINE)
def _signed_peak(group_bits, i):
    """Group i's float32 entry of largest magnitude, with its sign (+ on a tie), from the
    groups' uint32 view: integer maxima vectorise where float ones (NaN rules) do not.
    (numba types integer arithmetic as 64-bit: each result is cast back to 32 bits, which
    keeps the loop at 16 lanes a vector rather than 8, 20% faster; as in _codes_measured.)"""
    pos = np.uint32(0)
    neg = np.uint32(0)
    for j in range(group_bits.shape[1]):
        b = group_bits[i, j]
        a = np.uint32(b & np.uint32(0x7FFFFFFF))
        negative = b != a
        pos = max(pos, np.uint32(0) if negative else a)
        neg = max(neg, a if negative else np.uint32(0))
    return _float32_of_bits(pos if pos >= neg else neg | np.uint32(0x80000000))


@numba.njit(**INLINE)
def _pick_of_any(groups, i, base, ratios, lo, hi):
    """Of the scales base·r for r in `ratios`, the one with the least squared error for
    group i (the first on a tie), skipping any that underflows to 0 (weights near 1e-45:
    no usable step there; base itself if all do)."""
    best = base
    best_err = np.float32(np.inf)
    for r in ratios:
        if base * r == 0:
            continue
        err = _group_error(groups, i, base * r, lo, hi)
        if err < best_err:
            best_err = err
            best = base * r
    return best


@numba.njit(**INLINE)
def _search_block(groups, n, base, best, lo, hi, ratios, refine):
    """Fill best[b] with the scale of least squared error for group b < n; 0 for an
    all-zero group. base[b] is the group's _signed_peak / lo.

    Candidates are base·r for r in `ratios`: the peak maps to the extra negative level (as
    llama.cpp's Q4_0 does), shrunk by r to trade clipping of the peak for finer steps; four
    are measured in one read of the group, and a single one is taken without measuring it.
    Then `refine` least-squares updates (HQQ-style alternation). An update never adds error
    at the float32 scale, so none is measured: the old codes fit the new scale at least as
    well as the old scale (least squares), and rounding afresh picks each weight's nearest
    level. (The float16 rounding of the scale that follows can still cost a group a little,
    as it could when each update was checked in float32.)

    Each step is taken for all n groups before the next: a group's pass is short (64
    values) and ends in a reduction or a division that its next pass waits on, and the
    other groups' passes in between let the CPU overlap those waits (15% faster than
    finishing one group before the next).
    """
    for b in range(n):
        best[b] = base[b]
    if ratios.size == 1:
        for b in range(n):
            if base[b] * ratios[0] != 0:
                best[b] = base[b] * ratios[0]
    else:
        for b in range(n):
            if ratios.size == 4 and base[b] * ratios[0] != 0 and base[b] * ratios[3] != 0:
                i = b  # written out: as an inlined helper, 10% slower
                s0 = base[b] * ratios[0]
                s1 = base[b] * ratios[1]
                s2 = base[b] * ratios[2]
                s3 = base[b] * ratios[3]
                i0 = np.float32(1.0) / s0
                i1 = np.float32(1.0) / s1
                i2 = np.float32(1.0) / s2
                i3 = np.float32(1.0) / s3
                e0 = np.float32(0.0)
                e1 = np.float32(0.0)
                e2 = np.float32(0.0)
                e3 = np.float32(0.0)
                for j in range(groups.shape[1]):
                    x = groups[i, j]
                    d = x - min(max(np.float32(np.rint(x * i0)), lo), hi) * s0
                    e0 += d * d
                    d = x - min(max(np.float32(np.rint(x * i1)), lo), hi) * s1
                    e1 += d * d
                    d = x - min(max(np.float32(np.rint(x * i2)), lo), hi) * s2
                    e2 += d * d
                    d = x - min(max(np.float32(np.rint(x * i3)), lo), hi) * s3
                    e3 += d * d
                best[b] = s0
                if e1 < e0:
                    best[b] = s1
                    e0 = e1
                if e2 < e0:
                    best[b] = s2
                    e0 = e2
                if e3 < e0:
                    best[b] = s3
            elif base[b] != 0:
                best[b] = _pick_of_any(groups, b, base[b], ratios, lo, hi)
    for _ in range(refine):  # no error check needed: see the docstring
        for b in range(n):
            if best[b] != 0:
                fitted = _least_squares_scale(groups, b, best[b], lo, hi)
                if fitted != 0:
                    best[b] = fitted


@numba.njit(**INLINE)
def _float16_value(v):
    """float32 v rounded to the nearest float16 value, ties to even, as numpy's cast does
    (beyond 65504, ±inf), kept as a float32. From the bits (numba has no float16): normal
    float16 values keep float32's top 11 significant bits; below 2**-14 the step is a
    fixed 2**-24. (_float16_bits_of rounds the same way, to the bits; widening its result
    instead made the float16 quantizer 20-30% slower.)"""
    bits = _float32_bits(v)
    tiny = _float32_bits(np.float32(np.rint(v * np.float32(2.0 ** 24))) * np.float32(2.0 ** -24))
    r = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    infinite = (r & np.uint32(0x80000000)) | np.uint32(0x7F800000)
    normal = _either(r & np.uint32(0x7FFFFFFF) <= np.uint32(0x477FE000), r, infinite)  # 65504
    return _float32_of_bits(_either(bits & np.uint32(0x7FFFFFFF) < np.uint32(0x38800000),
                                    tiny, normal))  # |v| < 2**-14


@numba.njit(**INLINE)
def nearest_float16(s):
    """float32 s rounded to the nearest float16 value (ties to even; 65504 at most), or to
    the smallest one of its sign if it would round to 0: a group of tiny weights keeps a
    usable step."""
    if s == 0:
        return np.float32(0.0)
    r = _float16_value(s)
    if r == 0:
        r = np.float32(2.0 ** -24) if s > 0 else np.float32(-2.0 ** -24)
    return min(max(r, np.float32(-65504.0)), np.float32(65504.0))


@numba.njit(**INLINE)
def _bfloat16_value(y):
    """float32 y rounded to the nearest bfloat16 value, ties to even, as the decoder's final
    cast (ml_dtypes) makes it, kept as a float32: bfloat16 is a float32's top 16 bits."""
    bits = _float32_bits(y)
    return _float32_of_bits((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
                            & np.uint32(0xFFFF0000))


#: Groups searched together, each step for all of them (_search_block).
BLOCK = 32


# quantize_groups takes float32 groups, or bfloat16 and float16 ones as their bits
# (half_bits): those are widened a block at a time into a scratch array the cache holds,
# rather than into a float32 copy of the tensor (a pass that cost a third of the
# quantizer), and their codes are measured after the decoder's final cast back to their
# type. Each helper below has one body per input type, chosen when numba compiles the
# caller: no branch at run time.
def _block_of(groups, first, n, scratch):
    """Rows first…first+n−1 of `groups` as float32: a view, or widened into scratch."""


def _value(groups, i, j):
    """groups[i, j] as float32."""


def _decoded(y, groups):
    """A decoded float32 value as the reader gets it: 16-bit inputs are cast back."""


def _float32_groups(groups):
    """Whether a kernel argument's numba type is float32 groups (else half_bits ones)."""
    return groups.dtype == numba.types.float32


@numba.extending.overload(_block_of, inline="always")
def _block_of_overload(groups, first, n, scratch):
    if _float32_groups(groups):
        return lambda groups, first, n, scratch: groups[first:first + n]

    def widen(groups, first, n, scratch):
        for b in range(n):
            for j in range(groups.shape[1]):
                scratch[b, j] = _widened(groups[first + b, j])
        return scratch[:n]
    return widen


@numba.extending.overload(_value, inline="always")
def _value_overload(groups, i, j):
    if _float32_groups(groups):
        return lambda groups, i, j: groups[i, j]
    return lambda groups, i, j: _widened(groups[i, j])


@numba.extending.overload(_decoded, inline="always")
def _decoded_overload(y, groups):
    if _float32_groups(groups):
        return lambda y, groups: y
    if groups.dtype == numba.types.uint16:
        return lambda y, groups: _bfloat16_value(y)
    return lambda y, groups: _float16_value(y)


#: The longest group summed in float32: 64 terms of one sign keep at worst 64·2**-24 (4e-6)
#: of their sum, about 1e-7 on real weights. A longer group (a "channel" or "tensor" one)
#: would lose more, so its tensor is measured again in float64 (_wide_measure).
FLOAT32_GROUP = 64
#: The squared sums of a group that float32 keeps: no overflow, and nothing that matters
#: lost below float32's smallest normal. Outside them, or if a group's nonzero gaps |y−x|
#: are all below 2**-50 (squares that float32 flushes), the tensor is measured again in
#: float64 too: rare weights (beyond 1e15 or below 1e-15), and one pass more. A group of
#: zeros is exact as it is.
SUMS_RANGE = (np.float32(2.0 ** -100), np.float32(2.0 ** 100))
SMALLEST_GAP_BITS = np.uint32(0x26800000)  # 2**-50


@numba.njit(**INLINE)
def _codes_measured(block, i, s, lo, hi, mask, codes, row, groups):
    """Write the codes of row i of `block` at scale s (v taken modulo 2**bits) into row
    `row` of codes, and measure what the reader will decode, y = v·s (cast back to a
    16-bit input's type, see _decoded), against x: (Σx², Σ(y−x)², max|y−x|, count of
    y == 0, whether float32 sums kept them; see SUMS_RANGE). v·s is exact in float32 (an
    integer of at most 8 bits times a float16), and so is y−x for all but clipped
    weights; the group's sums are float32 (float64 made the quantizer 6-11%
    slower). (A loop over chunks of long groups here, even one never run, made the usual
    groups 10-15% slower: long groups are measured again instead.)

    Every value in the loop is 32 bits wide, so that it runs 16 lanes a vector: zeros are
    counted in float32 (exact up to 2**24, and longer groups are counted again), and
    integer results are cast back from numba's 64 bits (25% faster than 64-bit lanes)."""
    inv = np.float32(1.0) / s if s != 0 else np.float32(0.0)
    ref = np.float32(0.0)
    err = np.float32(0.0)
    zeros = np.float32(0.0)
    gap = np.uint32(0)
    for j in range(block.shape[1]):
        x = block[i, j]
        q = min(max(np.float32(np.rint(x * inv)), lo), hi)
        codes[row, j] = np.uint8(np.int32(q) & mask)
        d = _decoded(q * s, groups) - x
        ref += x * x
        err += d * d
        zeros += np.float32(q == 0)
        gap = max(gap, np.uint32(_float32_bits(d) & np.uint32(0x7FFFFFFF)))
    kept = (SUMS_RANGE[0] <= ref <= SUMS_RANGE[1] and (gap == 0 or gap >= SMALLEST_GAP_BITS)) \
        or (ref == 0 and gap == 0)  # all zeros: y = x = 0
    return (np.float64(ref), np.float64(err), np.float64(_float32_of_bits(gap)), np.int64(zeros),
            kept)


@numba.njit(**INLINE)
def _wide_measure(groups, codes, scales, bits):
    """(Σx², Σ(y−x)², max|y−x|) of decoded codes in float64 throughout, and the count of
    y == 0 in int64 (a float32 count would stop at 2**24 in a long group)."""
    half = np.int32(1 << (bits - 1))
    ref = 0.0
    err = 0.0
    peak = 0.0
    zeros = 0
    for i in range(groups.shape[0]):
        s = scales[i]
        for j in range(groups.shape[1]):
            a = np.float64(_value(groups, i, j))
            v = np.float32((np.int32(codes[i, j]) ^ half) - half)
            d = np.float64(_decoded(v * s, groups)) - a
            ref += a * a
            err += d * d
            peak = max(peak, abs(d))
            zeros += v == 0  # a zero scale has only zero codes (_codes_measured)
    return ref, err, peak, zeros


@numba.njit(**FAST)
def quantize_groups(groups, lo, hi, ratios, refine, bits, codes, scales, scale_limit):
    """The symmetric quantizer in one read of each group from memory: search its scale
    (_search_block), round that to float16 (no larger than `scale_limit`, a float16 value),
    write the codes and measure what the reader will decode (_codes_measured). `groups`
    are float32, or bfloat16 or float16 given as their bits (half_bits, _block_of).

    Fills `codes` (uint8, groups' shape) and `scales`; returns (Σx², Σ(y−x)², max|y−x|,
    count of y == 0) in float64, and the bits of the largest |x| (as uint32: from
    0x7F800000 up, x holds an Inf or NaN, and the other figures mean nothing). That last
    figure lets the quantizer stand in for a separate scan of the tensor.
    """
    lo = np.float32(lo)
    hi = np.float32(hi)
    scale_limit = np.float32(scale_limit)  # a float64 limit made the last pass float64
    mask = np.int32((1 << bits) - 1)
    scratch = np.empty((BLOCK, groups.shape[1]), np.float32)
    base = np.empty(BLOCK, np.float32)
    best = np.empty(BLOCK, np.float32)
    ref = 0.0
    err = 0.0
    peak = 0.0
    zeros = 0
    top = np.uint32(0)
    narrow = True
    for first in range(0, groups.shape[0], BLOCK):
        n = min(BLOCK, groups.shape[0] - first)
        block = _block_of(groups, first, n, scratch)
        block_bits = block.view(np.uint32)
        for b in range(n):
            signed_peak = _signed_peak(block_bits, b)
            top = max(top, np.uint32(_float32_bits(signed_peak) & np.uint32(0x7FFFFFFF)))
            base[b] = signed_peak / lo
        _search_block(block, n, base, best, lo, hi, ratios, refine)
        for b in range(n):
            s = min(max(nearest_float16(best[b]), -scale_limit), scale_limit)
            scales[first + b] = s
            group_ref, group_err, group_peak, group_zeros, kept = _codes_measured(
                block, b, s, lo, hi, mask, codes, first + b, groups)
            ref += group_ref
            err += group_err
            peak = max(peak, group_peak)
            zeros += group_zeros
            narrow &= kept
    if not narrow or groups.shape[1] > FLOAT32_GROUP:
        ref, err, peak, zeros = _wide_measure(groups, codes, scales, bits)
    return ref, err, peak, zeros, top


@numba.njit(**FAST)
def search_scale_codes(groups, lo, hi, unit, qmax, ratios):
    """Per group, the integer q in −qmax…qmax whose scale q·unit[i] has the least error.

    The second level of double quantization: `unit` is the group's super-block scale. Tries
    the integers nearest to each candidate of `_best_scale`, then the least-squares fit.
    """
    lo = np.float32(lo)
    hi = np.float32(hi)
    out = np.zeros(groups.shape[0], np.int32)
    group_bits = groups.view(np.uint32)
    for i in range(groups.shape[0]):
        u = unit[i]
        base = _signed_peak(group_bits, i) / lo
        if base == 0 or u == 0:
            continue
        best_err = np.float32(np.inf)
        best = 0
        away = 1 if base > 0 else -1
        for r in ratios:
            nearest = int(np.rint(base * r / u))
            for q in (nearest, nearest + away):  # rounding the scale up avoids clipping
                q = min(max(q, -qmax), qmax)
                if q == 0:  # a group far below its super-block's peak: the finest step
                    q = away
                if q != best:
                    err = _group_error(groups, i, q * u, lo, hi)
                    if err < best_err:
                        best_err = err
                        best = q
        if best != 0:
            fitted = _least_squares_scale(groups, i, best * u, lo, hi)
            q = int(min(max(np.rint(fitted / u), -qmax), qmax))
            if q != 0 and q != best and _group_error(groups, i, q * u, lo, hi) < best_err:
                best = q
        out[i] = best
    return out


@numba.njit(**FAST)
def round_to_codes(groups, scales, lo, hi, bits, out):
    """Codes into `out` (uint8, groups' shape): round(x / scale) clipped to lo…hi, stored
    modulo 2**bits (0 stays 0)."""
    lo = np.float32(lo)
    hi = np.float32(hi)
    mask = (1 << bits) - 1
    for i in range(groups.shape[0]):
        s = scales[i]
        inv = np.float32(1.0) / s if s != 0 else np.float32(0.0)
        for j in range(groups.shape[1]):
            q = min(max(np.float32(np.rint(groups[i, j] * inv)), lo), hi)
            out[i, j] = np.int32(q) & mask


@numba.njit(**JIT)
def scan_bits(bits, magnitude, infinity):
    """(count of NaN/±Inf, bits of the largest finite |x|) of a flat float array given as
    its unsigned-integer view: `magnitude` masks off the sign, and finite values order as
    their bits, below `infinity`'s. Integer maxima vectorise; a second pass only counts
    when something is not finite."""
    top = bits.dtype.type(0)
    for i in range(bits.size):
        top = max(top, bits[i] & magnitude)
    if top < infinity:
        return 0, top
    bad = 0
    top = bits.dtype.type(0)
    for i in range(bits.size):
        a = bits[i] & magnitude
        if a >= infinity:
            bad += 1
        elif a > top:
            top = a
    return bad, top


@numba.njit(**INLINE)
def _float16_bits_of(y):
    """The float16 bits (int16) nearest float32 y, ties to even, as numpy's cast gives them:
    past 65504 (65520 and up) ±inf, NaN keeps its top payload bits."""
    bits = _float32_bits(y)
    sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
    a = bits & np.uint32(0x7FFFFFFF)
    rounded = a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))
    normal = _either(rounded >= np.uint32(0x47800000), np.uint32(0x7C00),
                     (rounded >> np.uint32(13)) - np.uint32(112 << 10))
    # below 2**-14 the steps are 2**-24 (|y| clamped there first, NaN too: no float-to-int
    # conversion of a value out of range)
    clamped = _float32_of_bits(_either(a < np.uint32(0x38800000), a, np.uint32(0x38800000)))
    tiny = np.uint32(np.rint(clamped * np.float32(2.0 ** 24)))
    payload = (a >> np.uint32(13)) & np.uint32(0x3FF)
    special = np.uint32(0x7C00) | _either(a > np.uint32(0x7F800000), max(payload, np.uint32(1)),
                                         np.uint32(0))
    h = _either(a < np.uint32(0x38800000), tiny,
                _either(a >= np.uint32(0x7F800000), special, normal))
    return np.int16(np.int32(h | sign) - (np.int32(sign) << 1))  # into int16's range


@numba.njit(**INLINE)
def _bfloat16_bits_of(y):
    """The bfloat16 bits (uint16) nearest float32 y, ties to even, as ml_dtypes' cast gives
    them; NaN becomes its quiet NaN, 0x7FC0 with y's sign."""
    bits = _float32_bits(y)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (bits >> np.uint32(16)) & np.uint32(0x8000) | np.uint32(0x7FC0)
    return np.uint16(_either((bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000), nan,
                             rounded))


def _stored(y, out):
    """Decoded float32 y as an element of `out`: float32, or half_bits() of the output type
    (the decoder's final cast, done here rather than by numpy: its float16 cast took 5.3 ns
    a weight, more than the rest of a 4-bit decode)."""


@numba.extending.overload(_stored, inline="always")
def _stored_overload(y, out):
    if out.dtype == numba.types.float32:
        return lambda y, out: y
    if out.dtype == numba.types.uint16:
        return lambda y, out: _bfloat16_bits_of(y)
    if out.dtype == numba.types.int16:
        return lambda y, out: _float16_bits_of(y)
    return None  # no other output type: a typing error, not a silent misreading


@numba.njit(**JIT)
def narrow(values, out):
    """float32 values into `out`: the half_bits() of float16 or bfloat16, rounded as the
    cast would round them (_stored)."""
    for i in range(values.size):
        out[i] = _stored(values[i], out)


@numba.njit(**FAST)
def dequantize_symmetric(codes, scales, bits, out):
    """v·scale into `out` for (n_groups, group) codes read as b-bit two's complement v:
    float32, or the bits of float16 or bfloat16 (half_bits) rounded as the cast would.
    (v is cast back to int32 from numba's 64-bit arithmetic: 16 lanes a vector, not 8.)"""
    half = np.int32(1 << (bits - 1))
    for i in range(codes.shape[0]):
        s = scales[i]
        for j in range(codes.shape[1]):
            v = np.float32(np.int32((np.int32(codes[i, j]) ^ half) - half))
            out[i, j] = _stored(v * s, out)


@numba.njit(**JIT)
def dequantize_affine(codes, scales, zeros, bits):
    """float32 v·scale of (n_groups, group) codes, v = ((u + z) mod 2**b) − z per group."""
    mask = (1 << bits) - 1
    out = np.empty(codes.shape, np.float32)
    for i in range(codes.shape[0]):
        s = scales[i]
        z = zeros[i]
        for j in range(codes.shape[1]):
            out[i, j] = (((np.int32(codes[i, j]) + z) & mask) - z) * s
    return out


@numba.njit(**JIT)
def pack_bits(codes, bits, out):
    """Pack `bits`-bit codes LSB-first into `out` (ceil(n·bits/8) bytes; docs/format.md)."""
    if bits == 4:  # the common width: two codes a byte, no bit buffer
        half = codes.size // 2
        for i in range(half):
            out[i] = codes[2 * i] | (codes[2 * i + 1] << 4)
        if codes.size % 2:
            out[half] = codes[codes.size - 1]
        return
    acc = np.uint64(0)
    filled = 0
    pos = 0
    for i in range(codes.size):
        acc |= np.uint64(codes[i]) << np.uint64(filled)
        filled += bits
        while filled >= 8:
            out[pos] = np.uint8(acc & np.uint64(0xFF))
            acc >>= np.uint64(8)
            filled -= 8
            pos += 1
    if filled > 0:
        out[pos] = np.uint8(acc & np.uint64(0xFF))


@numba.njit(**JIT)
def unpack_bits(packed, bits, out):
    """The inverse of pack_bits: out.size codes of `bits` bits from `packed`."""
    if bits == 4:
        half = out.size // 2
        for i in range(half):
            out[2 * i] = packed[i] & 15
            out[2 * i + 1] = packed[i] >> 4
        if out.size % 2:
            out[out.size - 1] = packed[half] & 15
        return
    mask = np.uint64((1 << bits) - 1)
    acc = np.uint64(0)
    filled = 0
    pos = 0
    for i in range(out.size):
        while filled < bits:
            acc |= np.uint64(packed[pos]) << np.uint64(filled)
            filled += 8
            pos += 1
        out[i] = np.uint8(acc & mask)
        acc >>= np.uint64(bits)
        filled -= bits


@numba.njit(**JIT)
def sparse_split(dense, kept, mask):
    """The entries of flat `dense` whose bits are not all zero into `kept` (sized to their
    count), in order, and mask[i] = whether dense[i] was kept. Branch-free: every entry is
    written at the next free slot, which only a kept one then claims."""
    n = 0
    last = kept.size - 1
    for i in range(dense.size):
        v = dense[i]
        nonzero = v != 0
        mask[i] = nonzero
        if n <= last:
            kept[n] = v
        n += nonzero


@numba.njit(**JIT)
def sparse_fill(mask, kept, dense):
    """The inverse of sparse_split into `dense`: kept entries where `mask` is set, in order,
    zeros elsewhere. The caller has checked that mask's count equals kept.size."""
    zero = dense.dtype.type(0)  # typed: a literal 0 would pass uint64 bits through float64
    n = 0
    last = kept.size - 1
    for i in range(mask.size):
        v = kept[min(n, last)] if last >= 0 else zero
        dense[i] = v if mask[i] else zero
        n += mask[i]


@numba.njit(**JIT)
def kth_magnitude_bits(bits, k):
    """The bits of the k-th smallest |x| (k from 1) of a float array given as its unsigned
    integer view (uint32 or uint64): non-negative floats order as their bits do, and NaN
    ranks above every number, as in numpy's sort. A radix select, 16 bits a round (two
    passes over float32, four over float64): np.partition needed an absolute-value copy of
    the tensor, and the two took 1.5 times as long."""
    if k < 1 or k > bits.size:
        raise ValueError("k must be from 1 to the number of values")
    width = bits.itemsize * 8
    magnitude = ~(np.uint64(1) << np.uint64(width - 1))  # clears the sign bit
    counts = np.zeros(1 << 16, np.int64)
    shift = np.uint64(width - 16)
    for b in bits:  # the first round: the top 16 bits of every value
        counts[(np.uint64(b) & magnitude) >> shift] += 1
    prefix = np.uint64(0)  # the answer's bits found so far, from the top
    rank = k  # its rank among the values that share those bits
    while True:
        digit = 0
        while rank > counts[digit]:
            rank -= counts[digit]
            digit += 1
        prefix |= np.uint64(digit) << shift
        if shift == 0:
            return prefix
        above = shift  # the next round: the next 16 bits of the values that share prefix's
        shift -= np.uint64(16)
        counts[:] = 0
        for b in bits:
            a = np.uint64(b) & magnitude
            if a >> above == prefix >> above:
                counts[(a >> shift) & np.uint64(0xFFFF)] += 1


@numba.njit(**{**JIT, "fastmath": {"reassoc"}})  # the sums vectorise; zeros keep their sign
def zero_smallest(values, threshold, k):
    """Set to +0.0, in place, every entry of float `values` whose |value| is below
    `threshold`, then, first ones first, as many entries whose |value| equals it as make k
    in all: the k smallest magnitudes, ties broken by position. NaN is never below or
    equal: it stays. Returns what that costs, in float64 over the values as given: (Σx²,
    Σ of the zeroed x², largest zeroed |x|), and the number of zeros left."""
    zero = values.dtype.type(0)
    below = 0
    zeros = 0
    ref = 0.0
    err = 0.0
    top = np.uint64(0)  # bits of the largest zeroed |x|
    for i in range(values.size):
        v = values[i]
        a = np.float64(v)
        small = abs(v) < threshold
        ref += a * a
        err += a * a if small else 0.0
        top = max(top, _float64_bits(abs(a)) if small else np.uint64(0))
        kept = zero if small else v
        values[i] = kept
        below += small
        zeros += kept == 0
    needed = k - below
    for i in range(values.size):
        if needed <= 0:
            break
        a = np.float64(values[i])
        if abs(values[i]) == threshold:
            err += a * a
            top = max(top, _float64_bits(abs(a)))
            zeros += a != 0
            values[i] = zero
            needed -= 1
    return ref, err, _float64_of_bits(top), zeros


@numba.njit(**JIT)
def carry_zeros(wide_bits, bits):
    """Zero `bits` (a 16-bit float tensor's) where its float32 widening, `wide_bits`, was
    set to +0.0: the pruned entries (a -0.0 left alone keeps its sign bit)."""
    zero = bits.dtype.type(0)
    for i in range(bits.size):
        bits[i] = zero if wide_bits[i] == 0 else bits[i]


@numba.njit(**JIT)
def keep_largest(values, m, n):
    """In place on float `values`, read as runs of m: set to +0.0 all but the n largest
    |values| of each run, ties kept by position (earlier first); a NaN counts as larger
    than any number, so that exactly n stay."""
    zero = values.dtype.type(0)
    magnitudes = np.empty(m, values.dtype)
    for start in range(0, values.size - m + 1, m):
        for j in range(m):
            a = abs(values[start + j])
            magnitudes[j] = a if a == a else np.inf
        for j in range(m):
            rank = 0  # entries that come before this one: larger, or as large and earlier
            for k in range(m):
                rank += magnitudes[k] > magnitudes[j] or (
                    magnitudes[k] == magnitudes[j] and k < j)
            if rank >= n:
                values[start + j] = zero


@numba.njit(**JIT)
def nm_select(bits, m, n, kept, positions):
    """For each run of m entries of `bits` (a part's unsigned view), the positions of its n
    kept entries into `positions` (runs, n), ascending, and the entries into `kept`: every
    entry whose bits are not all zero, then the earliest zero ones to make n. False if a run
    has more than n non-zero entries."""
    for r in range(positions.shape[0]):
        base = r * m
        count = 0
        for j in range(m):
            if bits[base + j] != 0:
                if count < n:
                    positions[r, count] = j
                count += 1
        if count > n:
            return False
        for j in range(m):
            if count >= n:
                break
            if bits[base + j] == 0:
                positions[r, count] = j
                count += 1
        for a in range(1, n):  # insertion sort: n is at most 15
            v = positions[r, a]
            b = a - 1
            while b >= 0 and positions[r, b] > v:
                positions[r, b + 1] = positions[r, b]
                b -= 1
            positions[r, b + 1] = v
        for a in range(n):
            kept[r, a] = bits[base + positions[r, a]]
    return True


@numba.njit(**JIT)
def nm_scatter(kept, positions, dense):
    """The inverse of nm_select into `dense` (runs, m), zeroed first; the caller has checked
    that every position is below m."""
    zero = dense.dtype.type(0)
    for r in range(dense.shape[0]):
        for j in range(dense.shape[1]):
            dense[r, j] = zero
        for a in range(positions.shape[1]):
            dense[r, positions[r, a]] = kept[r, a]


@numba.njit(**FAST)
def error_sums(x, y):
    """(Σx², Σ(y−x)², max|y−x|) in float64, one pass; NaN-free inputs."""
    ref = 0.0
    err = 0.0
    top = np.uint64(0)  # bits of the largest |y−x|: integer maxima vectorise
    for k in range(x.size):
        a = np.float64(x[k])
        d = np.float64(y[k]) - a
        ref += a * a
        err += d * d
        top = max(top, _float64_bits(abs(d)))
    return ref, err, _float64_of_bits(top)


@numba.njit(**JIT)
def step_codes(x, step):
    """int32 round(x / step), in float64: the codes of the entropy-constrained quantizer."""
    out = np.empty(x.size, np.int32)
    for i in range(x.size):
        out[i] = np.int32(np.rint(np.float64(x[i]) / step))
    return out


@numba.njit(**FAST)
def mean_square(x):
    """Mean of x² in float64."""
    total = 0.0
    for i in range(x.size):
        total += np.float64(x[i]) * np.float64(x[i])
    return total / max(x.size, 1)


@numba.njit(**FAST)
def step_mse(x, step):
    """Mean squared error of rounding x to multiples of step, without storing the codes."""
    total = 0.0
    for i in range(x.size):
        a = np.float64(x[i])
        d = a - np.rint(a / step) * step
        total += d * d
    return total / max(x.size, 1)


@numba.njit(**JIT)
def step_values(codes, step):
    """float32(float64(code) × step): one pass, no float64 array."""
    out = np.empty(codes.size, np.float32)
    for i in range(codes.size):
        out[i] = np.float32(np.float64(codes[i]) * step)
    return out


# rANS with a 64-bit state and 32-bit output words (docs/format.md, "pack.rans").
RANS_LOW = np.uint64(1 << 31)
MASK32 = np.uint64(0xFFFFFFFF)


@numba.njit(**JIT)
def rans_counts(codes, offset, alphabet):
    """(how often each symbol code − offset occurs, ok): ok is False if a code falls outside
    offset … offset + alphabet − 1."""
    counts = np.zeros(alphabet, np.int64)
    for i in range(codes.size):
        s = np.int64(codes[i]) - offset
        if s < 0 or s >= alphabet:
            return counts, False
        counts[s] += 1
    return counts, True


@numba.njit(**JIT)
def rans_encode(codes, offset, freqs, cums, prec, chunk, first, last):
    """Encode chunks first…last−1 of the symbols code − offset; returns (their words, words
    per chunk). The codes must have been checked by rans_counts.

    Chunks are independent, so ranges of them can be coded in parallel and concatenated.
    Each is coded last symbol first so that its decoder reads forward: its stream is the
    final state (two words, low first), then the words that renormalization emitted.
    """
    n = codes.size
    start = first * chunk
    stop = min(n, last * chunk)
    out = np.empty(stop - start + 2 * (last - first), np.uint32)  # ≤ one word per symbol
    lengths = np.empty(last - first, np.uint32)
    buf = np.empty(chunk + 2, np.uint32)
    shift = np.uint64(prec)
    bound = (RANS_LOW >> shift) << np.uint64(32)
    written = 0
    for c in range(first, last):
        x = RANS_LOW
        pos = buf.size
        for k in range(min(n, (c + 1) * chunk) - 1, c * chunk - 1, -1):
            s = np.int64(codes[k]) - offset
            f = np.uint64(freqs[s])
            if x >= bound * f:
                pos -= 1
                buf[pos] = np.uint32(x & MASK32)
                x >>= np.uint64(32)
            x = ((x // f) << shift) + (x % f) + np.uint64(cums[s])
        pos -= 2
        buf[pos] = np.uint32(x & MASK32)
        buf[pos + 1] = np.uint32(x >> np.uint64(32))
        size = buf.size - pos
        out[written:written + size] = buf[pos:]
        lengths[c - first] = size
        written += size
    return out[:written], lengths


@numba.njit(**JIT)
def _rans_decode_chunk(words, pos, end, freqs, cums, slot_symbol, prec, out, start, stop):
    """Decode out[start:stop] from words[pos:end]; False if the stream is damaged."""
    shift = np.uint64(prec)
    mask = np.uint64((1 << prec) - 1)
    if end - pos < 2:
        return False
    x = np.uint64(words[pos]) | (np.uint64(words[pos + 1]) << np.uint64(32))
    pos += 2
    for k in range(start, stop):
        slot = x & mask
        s = slot_symbol[slot]
        out[k] = s
        x = np.uint64(freqs[s]) * (x >> shift) + slot - np.uint64(cums[s])
        if x < RANS_LOW:
            if pos >= end:
                return False
            x = (x << np.uint64(32)) | np.uint64(words[pos])
            pos += 1
    return x == RANS_LOW and pos == end


@numba.njit(**JIT)
def rans_decode(words, starts, freqs, cums, slot_symbol, prec, chunk, n, first, last, out):
    """Decode chunks first…last−1 into `out` (n symbols in all); False if any is damaged.

    `starts[c]` is where chunk c's words begin (starts[-1] = words.size). Four chunks are
    decoded in lockstep: their states are independent, so the CPU overlaps their latencies.
    """
    shift = np.uint64(prec)
    mask = np.uint64((1 << prec) - 1)
    c = first
    while c + 4 <= last and (c + 4) * chunk <= n:
        xs = np.empty(4, np.uint64)
        pos = np.empty(4, np.int64)
        for j in range(4):
            p = starts[c + j]
            if starts[c + j + 1] - p < 2:
                return False
            xs[j] = np.uint64(words[p]) | (np.uint64(words[p + 1]) << np.uint64(32))
            pos[j] = p + 2
        for k in range(chunk):
            for j in range(4):
                x = xs[j]
                slot = x & mask
                s = slot_symbol[slot]
                out[(c + j) * chunk + k] = s
                x = np.uint64(freqs[s]) * (x >> shift) + slot - np.uint64(cums[s])
                if x < RANS_LOW:
                    if pos[j] >= starts[c + j + 1]:
                        return False
                    x = (x << np.uint64(32)) | np.uint64(words[pos[j]])
                    pos[j] += 1
                xs[j] = x
        for j in range(4):
            if xs[j] != RANS_LOW or pos[j] != starts[c + j + 1]:
                return False
        c += 4
    while c < last:
        if not _rans_decode_chunk(words, starts[c], starts[c + 1], freqs, cums, slot_symbol,
                                  prec, out, c * chunk, min(n, (c + 1) * chunk)):
            return False
        c += 1
    return True
