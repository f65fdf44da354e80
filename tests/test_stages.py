"""Stages: each round-trips, keeps its error promise and is found again from its JSON config."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelpress_cli import kernels
from modelpress_cli.container import encode_block
from modelpress_cli.errors import FormatError, IntegrityError
from modelpress_cli.formats.base import DTYPES, TensorInfo
from modelpress_cli.pipeline import decode, encode
from modelpress_cli.stages import (
    REGISTRY,
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
    stage_from_config,
)
from modelpress_cli.stages.quantize import as_dtype, normal_float_codebook

EXAMPLES = [MagnitudePrune(0.5), UniformQuantize(4, 32, False), UniformQuantize(8, "channel"),
            HalfCast("bfloat16"), SparsePack("values"), BytePlanes("float16"),
            StructuredPrune(2, 4), StructuredPack("codes", 1, 8), UniformQuantize(4, 16, True, 7),
            CodebookQuantize(3, "kmeans"), CodebookQuantize(4, "nf", 32), StepQuantize(0.01),
            RansPack("codes", -5, 14)]


def float_tensors(max_dims: int = 4):
    return hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=max_dims, max_side=40),
                      elements=st.floats(-100, 100, width=32))


def round_trip(x: np.ndarray, stages) -> np.ndarray:
    info = TensorInfo("t", x.shape, next(k for k, v in DTYPES.items() if v == x.dtype))
    return decode(encode(x, stages), stages, info)


def per_element_scale(scales: np.ndarray, shape, group_size) -> np.ndarray:
    """The scale docs/format.md assigns to each element, computed independently."""
    if group_size == "tensor":
        return np.full(shape, scales.item())
    if group_size == "channel":
        return np.broadcast_to(scales.reshape((shape[0],) + (1,) * (len(shape) - 1)), shape)
    cols = np.arange(shape[-1]) // group_size
    return scales.reshape(shape[:-1] + (-1,))[..., cols]


@given(x=float_tensors(), bits=st.integers(2, 8),
       group_size=st.sampled_from([1, 3, 32, 64, "channel", "tensor"]))
def test_affine_values_are_within_half_a_step(x, bits, group_size):
    stage = UniformQuantize(bits, group_size, symmetric=False)
    parts = stage.encode({"values": x})
    y = round_trip(x, [stage])
    step = per_element_scale(parts["scales"].astype(np.float32), x.shape, group_size)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-3) + 1e-6 * np.abs(x))
    assert parts["codes"].max(initial=0) < 2 ** bits
    assert np.all(y[x == 0] == 0)


def naive_group_errors(x2d: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Squared error per group of Q4_0-style rounding: scale = signed peak / −2**(bits−1)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    g = x2d.reshape(-1, group).astype(np.float64)
    peak = g[np.arange(len(g)), np.abs(g).argmax(axis=1)]
    scale = (peak / lo).astype(np.float16).astype(np.float64)
    safe = np.where(scale == 0, 1, scale)
    y = np.clip(np.rint(g / safe[:, None]), lo, hi) * scale[:, None]
    return ((g - y) ** 2).sum(axis=1)


@given(x=float_tensors(), bits=st.integers(2, 8), scale_bits=st.sampled_from([None, 6, 8]),
       group_size=st.sampled_from([1, 4, 32]))
def test_searched_scales_beat_the_peak_scale_group_by_group(x, bits, scale_bits, group_size):
    assume(x.shape[-1] % group_size == 0)
    stage = UniformQuantize(bits, group_size, scale_bits=scale_bits)
    parts = stage.encode({"values": x})
    y = round_trip(x, [stage])
    assert y.shape == x.shape and np.all(y[x == 0] == 0)
    assert parts["codes"].max(initial=0) < 2 ** bits
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    ours = ((rows - y.reshape(rows.shape)) ** 2).reshape(-1, group_size).sum(axis=1)
    naive = naive_group_errors(rows, bits, group_size)
    if scale_bits is None:  # only float16 rounding of the chosen scale separates the two
        assert np.all(ours <= naive * 1.01 + 1e-12 * (rows ** 2).reshape(len(naive), -1).sum(1))
    else:  # a coarser scale grid: on average no further off than the largest weight near
        # it (a group below the grid's finest step rounds to zeros: each error is then |x|)
        peak = np.abs(rows).reshape(-1, group_size * 16).max(axis=1) if rows.size % (
            group_size * 16) == 0 else np.abs(rows).max()
        rms = np.sqrt(ours / group_size)
        assert np.all(rms.reshape(np.shape(peak) + (-1,) if np.ndim(peak) else -1)
                      <= (np.expand_dims(peak, -1) if np.ndim(peak) else peak) * (1 + 1e-6))


@given(x=float_tensors(), bits=st.integers(2, 8), group_size=st.sampled_from([1, 5, 32, 64]),
       scale=st.sampled_from([1e-9, 1e-3, 1.0, 300.0]),
       dtype=st.sampled_from(["float32", "bfloat16", "float16"]))
def test_the_fused_quantizer_reports_exactly_what_decoding_gives(x, bits, group_size, scale,
                                                                 dtype):
    """The fused path measures its own decode while encoding, down to the decoder's final
    cast to a 16-bit dtype; it must be the decode's."""
    x = (x * np.float32(scale)).astype(DTYPES[dtype])
    stage = UniformQuantize(bits, group_size)
    parts, measured = stage.encode_measured({"values": x})
    assert parts["scales"].dtype == np.float16 and np.all(np.isfinite(parts["scales"]))
    y = round_trip(x, [stage])
    assert y.dtype == x.dtype
    y = y.astype(np.float64)
    d = y - x.astype(np.float64)
    ref, err, peak, zeros, seen = measured
    assert seen == float(np.abs(x.astype(np.float32)).max(initial=0))  # stands in for a scan
    # groups are summed in float32 (kernels._codes_measured): at worst 64·2**-24, not the last bit
    assert ref == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=4e-6, abs=1e-300)
    assert err == pytest.approx(float((d * d).sum()), rel=4e-6, abs=1e-300)
    assert peak == pytest.approx(float(np.abs(d).max(initial=0)), rel=4e-6, abs=1e-300)
    assert zeros == int(np.count_nonzero(y == 0))
    assert UniformQuantize(bits, group_size).encode_measured(
        {"values": x.astype(np.float64)})[1] is None  # float64: decoded back and measured


def tiny_gaps() -> np.ndarray:
    """A group whose only errors are weights of 2**-80 rounded to 0: squares float32 flushes."""
    x = np.full((1, 64), 2.0 ** -80, np.float32)
    x[0, 0] = 1.0  # the peak, on a level
    return x


@pytest.mark.parametrize("x", [np.float32(m) * np.random.default_rng(7).normal(
    0, 1, (8, 128)).astype(np.float32) for m in (1e-30, 1e-12, 1.0, 1e12, 1e19)] + [tiny_gaps()],
    ids=["1e-30", "1e-12", "1", "1e12", "1e19", "tiny gaps"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_group_sums_hold_at_every_magnitude(x, dtype):
    """Groups are summed in float32 unless their squares could overflow or flush to zero
    (kernels.SUMS_RANGE); then the tensor is measured in float64. Either way the figures
    are the decoded weights' own (bfloat16: after the decoder's cast back)."""
    x = x.astype(DTYPES[dtype])
    stage = UniformQuantize(4, 64)
    _, (ref, err, peak, zeros, seen) = stage.encode_measured({"values": x})
    y = round_trip(x, [stage]).astype(np.float64)
    d = y - x.astype(np.float64)
    assert err > 0
    assert ref == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=4e-6, abs=0)
    assert err == pytest.approx(float((d * d).sum()), rel=4e-6, abs=0)
    assert peak == pytest.approx(float(np.abs(d).max()), rel=4e-6, abs=0)
    assert zeros == np.count_nonzero(y == 0) and seen == np.abs(x).max()


@pytest.mark.parametrize("magnitude", [2.0 ** -20, 1e-3, 1.0, 2e4])
def test_float16_group_sums_hold_from_subnormals_to_the_top(magnitude):
    """float16 goes to the kernel as its bits too, subnormals (below 2**-14) included, and is
    measured after the decoder's cast back to float16."""
    x = (magnitude * np.random.default_rng(9).normal(0, 1, (8, 128))).clip(-65504, 65504)
    x = x.astype(np.float16)
    stage = UniformQuantize(4, 64)
    _, (ref, err, peak, zeros, seen) = stage.encode_measured({"values": x})
    y = round_trip(x, [stage])
    assert y.dtype == np.float16 and np.isfinite(y).all()
    d = y.astype(np.float64) - x.astype(np.float64)
    assert err > 0
    assert ref == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=4e-6, abs=0)
    assert err == pytest.approx(float((d * d).sum()), rel=4e-6, abs=0)
    assert peak == pytest.approx(float(np.abs(d).max()), rel=4e-6, abs=0)
    assert zeros == np.count_nonzero(y == 0) and seen == np.abs(x).max()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_decode_is_bit_for_bit_the_cast_of_the_float32_values(dtype):
    """The symmetric decoder writes float16 and bfloat16 outputs as their bits: each must be
    the bits numpy's (ml_dtypes') cast of the float32 value v·scale gives, ties, subnormals,
    overflow to ±inf and NaN payloads included."""
    rng = np.random.default_rng(10)
    scales = np.concatenate([
        rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.arange(-70000, 70000, 0.37, dtype=np.float32),  # float16 ties, and past 65504
        np.float32([0, -0.0, 65504, 65519.99, 65520, 2 ** -14, 2 ** -25, 3 * 2 ** -26, np.inf,
                    -np.inf, np.nan, 1e-45]),
        (rng.normal(0, 1e-5, 100_000)).astype(np.float32)])  # float16 subnormals
    codes = np.full((scales.size, 1), 1, np.uint8)  # v = 1 at 8 bits: y = scale
    out = np.empty(codes.shape, DTYPES[dtype])
    kernels.dequantize_symmetric(codes, scales, 8, kernels.half_bits(out))
    with np.errstate(over="ignore", invalid="ignore"):
        want = (scales * np.float32(1)).astype(DTYPES[dtype]).reshape(codes.shape)
    assert np.array_equal(out.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", ">f2", "float64"])
def test_casts_to_16_bit_types_are_numpys_own(dtype):
    """--bits 16 and every decoder's last step: the compiled float32 -> float16/bfloat16 cast
    gives numpy's (ml_dtypes') bits, on a tensor big enough to be split over threads."""
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.integers(0, 2 ** 32, 1 << 20, dtype=np.uint64).astype(
        np.uint32).view(np.float32), rng.normal(0, 1e-5, 1 << 20).astype(np.float32)])
    x = x.reshape(1024, -1)[:, ::2]  # not contiguous
    target = np.dtype(DTYPES.get(dtype, dtype))
    with np.errstate(over="ignore", invalid="ignore"):  # numpy's warnings, where it casts
        got, want = as_dtype(x, target), x.astype(target)
    assert got.dtype == target and got.shape == x.shape
    assert got.tobytes() == want.tobytes()
    if target.kind == "f" and target.itemsize == 2 or target.name == "bfloat16":  # and back
        assert as_dtype(got, np.float32).tobytes() == want.astype(np.float32).tobytes()


def test_big_endian_float16_quantizes_as_native_float16_does():
    """Near 65504 the scale is capped so that no code decodes to inf: in either byte order."""
    x = np.random.default_rng(11).uniform(60000, 65504, (16, 64)) * np.where(
        np.random.default_rng(12).random((16, 64)) < 0.5, -1, 1)
    native, swapped = x.astype(np.float16), x.astype(">f2")
    stage = UniformQuantize(2, 64)
    (parts, figures), (parts_be, figures_be) = (stage.encode_measured({"values": v})
                                                for v in (native, swapped))
    assert np.array_equal(parts["codes"], parts_be["codes"])
    assert np.array_equal(parts["scales"], parts_be["scales"])
    assert figures == figures_be and np.isfinite(figures[1])


@pytest.mark.parametrize("group_size", [256, "channel", "tensor"])
def test_groups_longer_than_64_are_measured_to_the_last_digits(group_size):
    """A float32 sum over a long group drifts (1.6e-4 over a 4M-weight "tensor" group, and
    1.9e-6 over 256 values with one large weight before the small ones): groups longer than
    kernels.FLOAT32_GROUP are measured in float64."""
    x = np.random.default_rng(8).normal(0, 1, (64, 4096)).astype(np.float32)
    x[3, :256] = 2.0 ** -12
    x[3, 0] = 1.0
    stage = UniformQuantize(4, group_size)
    _, (ref, err, peak, _, _) = stage.encode_measured({"values": x})
    d = round_trip(x, [stage]).astype(np.float64) - x.astype(np.float64)
    assert ref == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=1e-9)
    assert err == pytest.approx(float((d * d).sum()), rel=1e-9)
    assert peak == float(np.abs(d).max())


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scale_bits", [None, 6])
def test_float16_weights_at_the_top_of_their_range_never_decode_to_inf(bits, scale_bits):
    """A scale whose codes reach past 65504 would turn finite float16 weights into ±inf at
    the decoder's final cast: the scale is capped instead."""
    rng = np.random.default_rng(bits)
    x = np.clip(rng.normal(0, 20000, (128, 64)), -65504, 65504).astype(np.float16)
    x[:, 0] = np.float16(65504)
    stage = UniformQuantize(bits, 64 if scale_bits is None else 16, scale_bits=scale_bits)
    y = round_trip(x, [stage])
    assert np.isfinite(y).all()
    d = y.astype(np.float64) - x
    assert np.sqrt((d * d).sum() / (x.astype(np.float64) ** 2).sum()) < 2.0 ** -bits * 4
    if scale_bits is None:  # the fused path's own figure is the decoded one (float32 sums)
        err = stage.encode_measured({"values": x})[1][1]
        assert err == pytest.approx(float((d * d).sum()), rel=4e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_weights_widen_exactly_for_the_kernels(dtype):
    """Every bit pattern: kernels.native must agree with the dtype's own cast."""
    x = np.arange(1 << 16, dtype=np.uint16).view(DTYPES[dtype])
    got, want = kernels.native(x), x.astype(np.float32)
    assert np.array_equal(got.view(np.uint32)[~np.isnan(want)],
                          want.view(np.uint32)[~np.isnan(want)])
    assert np.isnan(got[np.isnan(want)]).all()
    if dtype == "float16":  # other byte orders are widened by numpy
        swapped = np.float16([1.5, -2.0, 65504]).astype(">f2")
        assert kernels.native(swapped).tolist() == [1.5, -2.0, 65504.0]


def test_scales_round_to_the_nearest_float16_and_never_to_zero():
    """The kernel's float16 rounding (numba has no float16) against numpy's, ties included."""
    rng = np.random.default_rng(1)
    grid = np.arange(1, 0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float32)
    ties = (grid[:-1].astype(np.float64) + grid[1:]) / 2  # exact midpoints: ties to even
    values = np.concatenate([grid, ties.astype(np.float32), np.float32(10) ** rng.uniform(
        -12, 4.8, 20000).astype(np.float32), np.float32([2 ** -25, 2 ** -26, 1e-30, 65504])])
    values = np.concatenate([values, -values])
    got = np.array([kernels.nearest_float16(v) for v in values], np.float32)
    want = values.astype(np.float16).astype(np.float32)
    tiny = want == 0
    want[tiny] = np.copysign(np.float32(2 ** -24), values[tiny])
    assert np.array_equal(got, want)


def test_search_gains_what_llama_cpp_leaves_on_gaussian_weights():
    x = np.random.default_rng(0).normal(0, 0.02, (256, 1024)).astype(np.float32)
    naive = naive_group_errors(x, 4, 32).sum()
    searched = ((x - round_trip(x, [UniformQuantize(4, 32)])).astype(np.float64) ** 2).sum()
    double = ((x - round_trip(x, [UniformQuantize(4, 16, scale_bits=7)])).astype(np.float64)
              ** 2).sum()
    assert 10 * np.log10(naive / searched) > 0.3  # dB from the search alone, same 4.5 bpw
    assert 10 * np.log10(naive / double) > 1.2   # and from double-quantized scales at 4.5 bpw


@given(x=float_tensors(), sparsity=st.floats(0.0, 0.95))
def test_prune_zeroes_exactly_the_smallest_weights(x, sparsity):
    stage = MagnitudePrune(sparsity)
    y = stage.decode(stage.encode({"values": x}), x.shape, x.dtype)["values"]
    pruned = (y == 0) & (x != 0)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.count_nonzero(y == 0) >= round(sparsity * x.size)
    assert np.array_equal(y[~pruned], x[~pruned])  # survivors are bit-exact
    if pruned.any() and (~pruned).any():
        assert np.abs(x[pruned]).max() <= np.abs(x[~pruned & (x != 0)]).min(initial=np.inf)


def test_kernels_ask_for_512_bit_vectors_only_on_cpus_with_avx512():
    """LLVM warns on stderr about a feature it does not know (on ARM, say): the flag is
    added only where AVX-512 is."""
    assert kernels.wide_vector_features("+avx2,+avx512f,+fma") == \
        "+avx2,+avx512f,+fma,-prefer-256-bit"
    assert kernels.wide_vector_features("+avx2,-avx512f,+fma") is None
    assert kernels.wide_vector_features("+neon,+fp-armv8") is None
    assert kernels.wide_vector_features("") is None


@given(values=st.lists(st.floats(width=64), min_size=1, max_size=300), data=st.data())
def test_kth_magnitude_bits_is_the_kth_of_the_sorted_magnitudes(values, data):
    """The radix select behind pruning picks numpy's k-th smallest |x|, NaN last, in every
    round of bits (float64 values that differ only in their lowest bits included)."""
    for dtype, unsigned in ((np.float64, np.uint64), (np.float32, np.uint32)):
        with np.errstate(over="ignore"):
            x = np.array(values).astype(dtype)
        k = data.draw(st.integers(1, x.size))
        want = np.sort(np.abs(x))[k - 1]
        got = np.array(kernels.kth_magnitude_bits(x.view(unsigned), k), unsigned).view(dtype)
        assert got == want or (np.isnan(got) and np.isnan(want))


def test_kth_magnitude_bits_refuses_a_rank_outside_the_array():
    x = np.ones(3, np.float32).view(np.uint32)
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be from 1"):
            kernels.kth_magnitude_bits(x, k)


def test_kth_magnitude_bits_tells_apart_float64s_in_their_last_bits():
    x = np.random.default_rng(5).permutation(-(1.0 + np.arange(40) * 2.0 ** -52))
    for k in range(1, 41):
        got = np.array(kernels.kth_magnitude_bits(x.view(np.uint64), k), np.uint64)
        assert got.view(np.float64) == 1.0 + (k - 1) * 2.0 ** -52


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_prune_breaks_ties_by_position_and_keeps_survivors_bit_exact(dtype):
    """k = 2 of the three weights of magnitude 1 go, the first two in order; the others keep
    every bit (float64 survivors with their lowest mantissa bit set included)."""
    x = np.array([3, -1, 1, 2, -1, 5, 4, 6], np.float64)
    if dtype == "float64":
        x[[0, 3, 5]] += 2.0 ** -50
    x = x.astype(DTYPES[dtype])
    y = MagnitudePrune(0.25).encode({"values": x})["values"]
    assert y.dtype == x.dtype
    assert y.tobytes() == np.concatenate([x[:1], np.zeros(2, x.dtype), x[3:]]).tobytes()


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize(("zero_fraction", "layout"), [(0.5, "mask"), (0.97, "gaps")])
def test_sparse_pack_restores_every_bit(dtype, zero_fraction, layout):
    """Only all-zero bits are dropped: -0.0, NaN and float64's lowest bits come back."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 80)).astype(np.float64)
    x[rng.random(x.shape) < zero_fraction] = 0
    x = (np.abs(x) * 40).astype(np.uint8) if dtype == "uint8" else x.astype(DTYPES[dtype])
    if dtype != "uint8":
        x[0, :3] = [np.nan, -0.0, 1.0 + (2.0 ** -52 if dtype == "float64" else 0.0)]
    stage = SparsePack("values")
    parts = stage.encode({"values": x})
    assert layout in parts and parts["values"].size == np.count_nonzero(
        x.view(f"u{x.itemsize}"))
    y = stage.decode(parts, x.shape, x.dtype)["values"]
    assert y.dtype == x.dtype and y.shape == x.shape and y.tobytes() == x.tobytes()


@pytest.mark.parametrize("dtype", ["float32", ">f4", "float64", "float16", "bfloat16"])
def test_n_m_prune_keeps_the_largest_of_each_run_ties_by_position(dtype):
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=(64, 32)) * 4) / 4  # coarse values: many ties in a run
    x[0, :4] = [1, -1, 1, 0.5]
    x = x.astype(DTYPES.get(dtype, dtype))
    y = StructuredPrune(2, 4).encode({"values": x})["values"]
    runs, mags = y.reshape(-1, 4), np.abs(x.astype(np.float64)).reshape(-1, 4)
    rank = ((mags[:, None, :] > mags[:, :, None]) | ((mags[:, None, :] == mags[:, :, None])
            & (np.arange(4)[None, None, :] < np.arange(4)[None, :, None]))).sum(axis=2)
    want = np.where(rank < 2, x.reshape(-1, 4), 0).astype(y.dtype)
    assert y.dtype == x.dtype.newbyteorder("=") and runs.tobytes() == want.tobytes()
    assert runs[0].tolist() == [1, -1, 0, 0]
    nan = StructuredPrune(2, 4).encode({"values": np.array([np.nan, 1, 2, 3], x.dtype)})
    assert np.isnan(nan["values"][0]) and nan["values"][1:].tolist() == [0, 0, 3]


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "bfloat16"])
def test_n_m_pack_restores_every_bit_and_refuses_bad_positions(dtype):
    x = np.random.default_rng(5).normal(size=(16, 64)).astype(np.float64)
    x = (np.abs(x) * 40).astype(np.uint8) if dtype == "uint8" else x.astype(DTYPES[dtype])
    x = StructuredPrune(2, 4).encode({"values": x})["values"]
    if dtype != "uint8":
        x[0, :4] = [-0.0, 0, 0, 1.0]  # a -0.0 kept as it is, beside a run's zero padding
    stage = StructuredPack("values", 2, 4)
    parts = stage.encode({"values": x})
    assert parts["positions"].dtype == np.uint8 and parts["values"].shape == (256, 2)
    if dtype != "uint8":  # -0.0 is not all-zero bits: it is stored, the +0.0 are not
        assert parts["positions"][0].tolist() == [0, 3]
    y = stage.decode(parts, x.shape, x.dtype)["values"]
    assert y.dtype == x.dtype and y.tobytes() == x.tobytes()
    with pytest.raises(FormatError, match="positions must be uint8"):
        stage.decode({**parts, "positions": parts["positions"].astype(np.int64)}, x.shape,
                     x.dtype)


def test_a_sparse_mask_that_is_not_bool_is_refused():
    """A crafted file's mask of another dtype must not reach the compiled scatter, which
    trusts one kept entry per true mask entry."""
    x = np.where(np.arange(64) % 3 == 0, 1.5, 0).astype(np.float32)
    stage = SparsePack("values")
    parts = stage.encode({"values": x})
    for mask in (parts["mask"].astype(np.int64) * -(1 << 40), parts["mask"].astype(np.float32)):
        with pytest.raises(FormatError, match="sparse mask must be bool"):
            stage.decode({**parts, "mask": mask}, x.shape, x.dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_prune_gives_the_same_zeros_for_big_endian_weights(dtype):
    x = np.random.default_rng(3).normal(size=4096).astype(dtype)
    little = MagnitudePrune(0.5).encode({"values": x})["values"]
    big = MagnitudePrune(0.5).encode({"values": x.astype(x.dtype.newbyteorder(">"))})["values"]
    assert np.array_equal(big, little) and np.count_nonzero(little) == 2048


@pytest.mark.parametrize(("sparsity", "layout"), [(0.5, "mask"), (0.97, "gaps")])
def test_sparse_picks_the_smaller_layout_and_restores_zeros(sparsity, layout):
    x = np.random.default_rng(0).normal(size=(300, 200)).astype(np.float32)
    stages = [MagnitudePrune(sparsity), UniformQuantize(4), SparsePack("codes")]
    blocks = encode(x, stages)
    assert layout in blocks and ({"mask", "gaps"} - {layout}).isdisjoint(blocks)
    y = round_trip(x, stages)
    assert np.count_nonzero(y) <= round((1 - sparsity) * x.size)
    assert np.all(y[np.abs(x) < np.quantile(np.abs(x), sparsity) * 0.999] == 0)


def test_sparse_gaps_handle_long_runs_of_zeros():
    x = np.zeros(200_000, dtype=np.float32)
    x[[0, 70_000, 199_999]] = [1.5, -2.0, 3.0]
    stage = SparsePack("values")
    parts = stage.encode({"values": x})
    assert parts["gaps"].dtype == np.uint32 and parts["gaps"].tolist() == [0, 69_999, 129_998]
    assert np.array_equal(stage.decode(parts, x.shape, x.dtype)["values"], x)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int64", "bool"])
def test_byteplanes_are_bit_exact_including_nan_and_negative_zero(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7)).astype(np.float64)
    if dtype not in ("int64", "bool"):
        x[0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    x = (x > 0) if dtype == "bool" else x.astype(DTYPES[dtype])
    y = round_trip(x, [BytePlanes(dtype)])
    assert y.dtype == x.dtype and y.tobytes() == x.tobytes()


def test_half_cast_rounds_to_the_nearest_half_value():
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    for half in ("float16", "bfloat16"):
        y = round_trip(x, [HalfCast(half), BytePlanes(half)])
        assert y.dtype == np.float32
        assert np.array_equal(y, x.astype(DTYPES[half]).astype(np.float32))
    assert DTYPES["bfloat16"] == np.dtype(ml_dtypes.bfloat16)


def test_every_registered_stage_has_an_example_here():
    assert {type(s).stage_id for s in EXAMPLES} == set(REGISTRY)


@pytest.mark.parametrize("stage", EXAMPLES, ids=lambda s: s.stage_id)
def test_config_is_json_and_rebuilds_the_same_stage(stage):
    config = json.loads(json.dumps(stage.get_config()))
    assert config["id"] == stage.stage_id
    assert stage_from_config(config) == stage


@pytest.mark.parametrize(("config", "message"), [
    ({"id": "quantize.magic"}, "unknown stage 'quantize.magic'"),
    ({"id": "quantize.uniform", "bits": 9}, "bits must be 2 to 8"),
    ({"id": "quantize.uniform", "bits": 4, "group_size": 0}, "group size"),
    ({"id": "prune.magnitude", "sparsity": 1.5}, "sparsity must be in"),
    ({"id": "prune.magnitude"}, "bad parameters"),
    ({"bits": 4}, "has no id"),
])
def test_bad_stage_configs_are_format_errors(config, message):
    with pytest.raises(FormatError, match=message):
        stage_from_config(config)


RUNS_OF_FOUR = st.tuples(st.integers(1, 6), st.integers(1, 5).map(lambda k: 4 * k))


@given(x=hnp.arrays(np.float32, RUNS_OF_FOUR, elements=st.floats(-10, 10, width=32)),
       bits=st.sampled_from([None, 3, 8]))
def test_two_of_four_keeps_the_two_largest_of_every_run_exactly(x, bits):
    stages = [StructuredPrune(2, 4)]
    stages += [UniformQuantize(bits), StructuredPack("codes")] if bits else [
        StructuredPack("values"), BytePlanes("float32")]
    y = round_trip(x, stages)
    runs_x, runs_y = x.reshape(-1, 4), y.reshape(-1, 4)
    assert np.all(np.count_nonzero(runs_y, axis=1) <= 2)  # the pattern tensor cores need
    kept = runs_y != 0
    if bits is None:  # survivors bit-exact and no smaller than anything pruned
        assert np.array_equal(runs_y[kept], runs_x[kept])
        pruned_max = np.where(kept, 0, np.abs(runs_x)).max(axis=1)
        kept_min = np.where(kept, np.abs(runs_x), np.inf).min(axis=1)
        assert np.all((pruned_max <= kept_min) | ~kept.any(axis=1))


@pytest.mark.parametrize(("bits", "limit_bpw"), [(8, 5.0), (4, 3.0)])
def test_two_of_four_packs_to_two_bits_of_position_per_kept_value(bits, limit_bpw):
    x = np.random.default_rng(0).normal(size=(512, 1024)).astype(np.float32)
    stages = [StructuredPrune(2, 4), UniformQuantize(bits), StructuredPack("codes")]
    blocks = encode(x, stages)
    positions = blocks["positions"][0]
    assert positions.bits == 2 and positions.shape == (x.size // 4, 2)
    stored = sum(b.length for name, (b, _) in blocks.items() if name != "scales")
    assert stored * 8 / x.size <= limit_bpw  # (bits + 2) / 2 per weight, before scales


@given(x=float_tensors(), bits=st.integers(2, 8), method=st.sampled_from(["kmeans", "nf"]))
def test_codebook_values_are_the_nearest_level(x, bits, method):
    stage = CodebookQuantize(bits, method, 32)
    parts = stage.encode({"values": x})
    y = round_trip(x, [stage])
    assert y.shape == x.shape and np.all(y[x == 0] == 0)
    levels = parts["codebook"].astype(np.float64)
    assert levels[0] == 0 and levels.size == 2 ** bits
    if method == "kmeans":  # no level is nearer to any weight than the one it got
        dist = np.abs(x.reshape(-1, 1).astype(np.float64) - levels)
        got = np.abs(x.reshape(-1).astype(np.float64) - y.reshape(-1))
        assert np.all(got <= dist.min(axis=1) * (1 + 1e-6) + 1e-7)


def test_kmeans_and_nf_beat_uniform_levels_on_their_own_ground():
    rng = np.random.default_rng(0)
    def sqnr(x, stage):
        e = (x - round_trip(x, [stage])).astype(np.float64)
        return 10 * np.log10((x.astype(np.float64) ** 2).sum() / (e ** 2).sum())
    bimodal = np.concatenate([rng.normal(-1, 0.05, 4096), rng.normal(3, 0.05, 4096)])
    bimodal = rng.permutation(bimodal).astype(np.float32).reshape(64, 128)
    assert sqnr(bimodal, CodebookQuantize(2, "kmeans")) > sqnr(bimodal, UniformQuantize(2)) + 10
    gauss = rng.normal(0, 1, (256, 256)).astype(np.float32)
    assert sqnr(gauss, CodebookQuantize(4, "nf", 64)) > 19  # NF4's known ~20 dB on normals
    assert CodebookQuantize(4, "nf").encode({"values": gauss})["codebook"][0] == 0


def test_normal_float_levels_match_qlora_nf4():
    nf4 = normal_float_codebook(4)
    assert nf4.size == 16 and nf4.min() == -1 and nf4.max() == 1
    assert np.allclose(np.sort(nf4)[[1, 7, 8, 14]], [-0.6962, 0.0, 0.0796, 0.7230], atol=2e-4)


@given(x=float_tensors(), step=st.floats(0.01, 10))
def test_step_codes_are_within_half_a_step(x, step):
    stage = StepQuantize(step)
    codes = stage.encode({"values": x})["codes"]
    coded = [stage, RansPack.fit(int(codes.min(initial=0)), int(codes.max(initial=0)))]
    y = round_trip(x, coded)
    assert y.shape == x.shape
    assert np.all(np.abs(y.astype(np.float64) - x) <= step / 2 * (1 + 1e-6) + 1e-6 * np.abs(x))


@pytest.mark.parametrize(("n", "p"), [(1 << 20, 0.5), (300_000, 0.05), (5, 0.5)])
def test_rans_is_exact_and_within_a_percent_of_the_empirical_entropy(n, p):
    codes = np.random.default_rng(1).geometric(p, n).astype(np.int32) - 3  # known law
    stage = RansPack.fit(int(codes.min()), int(codes.max()))
    parts = stage.encode({"codes": codes})
    back = stage.decode(parts, codes.shape, np.float32)["codes"]
    assert np.array_equal(back, codes)
    _, counts = np.unique(codes, return_counts=True)
    entropy_bits = -(counts * np.log2(counts / n)).sum()
    stored_bits = 8 * sum(encode_block(v, None)[0].length for v in parts.values())
    if n > 1000:  # tables and stream heads are fixed costs: small inputs cannot amortise them
        assert stored_bits <= entropy_bits * 1.01 + 64 * 8


def test_rans_refuses_damaged_streams():
    codes = np.random.default_rng(2).integers(-9, 9, 200_000).astype(np.int32)
    stage = RansPack.fit(int(codes.min()), int(codes.max()))
    parts = stage.encode({"codes": codes})
    for damage in ("word", "length", "freq"):
        bad = {k: v.copy() for k, v in parts.items()}
        if damage == "word":
            bad["words"][len(bad["words"]) // 2] ^= 0x5A5A5A5A
        elif damage == "length":
            bad["lengths"][0] += 1
        else:
            bad["freqs"][3] += 1
        with pytest.raises(IntegrityError):
            stage.decode(bad, codes.shape, np.float32)
