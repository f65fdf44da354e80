"""The least error for the size: codebooks, the entropy-constrained mode, the reported gap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT, write_safetensors

import modelpress_cli as mp
from modelpress_cli.formats.base import DTYPES


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory):
    """Two iid tensors, Gaussian and Laplacian, as a .npz model."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("quality") / "iid.npz"
    np.savez(path, gauss=rng.normal(0, 0.02, (512, 512)).astype(np.float32),
             laplace=rng.laplace(0, 0.014, (256, 512)).astype(np.float32))
    return path


def sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return 10 * math.log10((x ** 2).sum() / ((x - y) ** 2).sum())


@pytest.mark.parametrize(("model", "targets"), [
    ("digits_mlp.h5", [5.0, 8.0]), ("charlm.safetensors", [3.0, 6.0]),
    ("digits_cnn.npz", [8.0])])
def test_target_bpw_lands_within_2_percent_for_the_whole_file(tmp_path, model, targets):
    for target in targets:
        dst = tmp_path / f"{target}.mpz"
        report = mp.compress(ROOT / "sample_models" / model, dst, target_bpw=target)
        assert report.bits_per_weight == pytest.approx(8 * dst.stat().st_size / report.params)
        assert abs(report.bits_per_weight / target - 1) <= 0.02, (model, target)


def test_target_bpw_that_cannot_be_met_says_what_it_needs(tmp_path):
    with pytest.raises(mp.ConfigError, match="--target-bpw 2 is below what this model needs"):
        mp.compress(ROOT / "sample_models" / "digits_cnn.npz", tmp_path / "m.mpz",
                    target_bpw=2.0)
    assert not (tmp_path / "m.mpz").exists()


def test_target_bpw_spends_bits_where_they_buy_the_most(tmp_path, gaussian):
    """Equal slope: tensors end at about the same SQNR (their error per bit is the same
    for iid weights), and beat one fixed width at the same size."""
    fixed = mp.compress(gaussian, tmp_path / "f.mpz", bits=4, group_size=16, scale_bits=7)
    report = mp.compress(gaussian, tmp_path / "t.mpz", target_bpw=fixed.bits_per_weight)
    sqnrs = [r.errors.sqnr_db for r in report.rows]
    assert max(sqnrs) - min(sqnrs) < 1.0
    assert report.bits_per_weight <= fixed.bits_per_weight * 1.01
    assert report.errors.sqnr_db > fixed.errors.sqnr_db + 1.0


def test_entropy_coded_mode_is_within_a_third_of_a_bit_of_the_bound(tmp_path, gaussian):
    for target in (3.0, 6.0, 9.0):
        report = mp.compress(gaussian, tmp_path / f"{target}.mpz", target_bpw=target)
        for row in report.rows:
            assert row.gap_bits <= 0.40, (target, row.name, row.gap_bits)


def test_min_sqnr_and_max_rel_error_hold_for_every_tensor(tmp_path, gaussian):
    got = mp.compress(gaussian, tmp_path / "s.mpz", min_sqnr=30.0)
    loaded = mp.load(tmp_path / "s.mpz")
    original = dict(np.load(gaussian))
    for row in got.rows:
        assert "rANS" in row.method
        assert 30.0 <= sqnr_db(original[row.name], loaded[row.name]) < 30.5
        assert row.bits is None and 4 < row.bits_per_weight < 8  # no fixed width, not float32's
    got = mp.compress(gaussian, tmp_path / "e.mpz", max_rel_error=0.01)
    for row in got.rows:
        assert 0.0095 < row.errors.rel_error <= 0.01


def test_reported_gap_matches_an_independent_computation(tmp_path, gaussian):
    report = mp.compress(gaussian, tmp_path / "m.mpz", bits=4).to_json()
    loaded = mp.load(tmp_path / "m.mpz")
    original = dict(np.load(gaussian))
    for row in report["tensors"]:
        bits = 8 * row["compressed_bytes"] / original[row["name"]].size
        gap = bits - sqnr_db(original[row["name"]], loaded[row["name"]]) / (20 * math.log10(2))
        assert row["gap_bits"] == pytest.approx(gap, abs=1e-4)
        assert row["gap_db"] == pytest.approx(gap * 6.0206, abs=1e-3)


@pytest.mark.parametrize("options", [
    {"bits": 4, "method": "auto"}, {"bits": 3, "method": "kmeans"}, {"bits": 4, "method": "nf"},
    {"bits": 4, "group_size": 16, "scale_bits": 7}, {"target_bpw": 4.0}, {"min_sqnr": 25.0}])
def test_every_method_is_deterministic_and_round_trips(tmp_path, gaussian, options):
    one = mp.compress(gaussian, tmp_path / "a.mpz", threads=1, **options)
    mp.compress(gaussian, tmp_path / "b.mpz", threads=2, **options)
    assert (tmp_path / "a.mpz").read_bytes() == (tmp_path / "b.mpz").read_bytes()
    loaded, original = mp.load(tmp_path / "a.mpz"), dict(np.load(gaussian))
    for row in one.rows:
        assert sqnr_db(original[row.name], loaded[row.name]) == pytest.approx(
            row.errors.sqnr_db, abs=2e-5)  # float32 group sums: 4e-6 of the error at worst
        assert row.errors.sqnr_db > 11  # 3 bits and more on iid weights: far from noise
    assert mp.verify(tmp_path / "a.mpz").tensors == 2


def test_auto_never_picks_worse_than_uniform(tmp_path, gaussian):
    uniform = mp.compress(gaussian, tmp_path / "u.mpz", bits=3)
    auto = mp.compress(gaussian, tmp_path / "a.mpz", bits=3, method="auto")
    for u, a in zip(uniform.rows, auto.rows, strict=True):
        assert a.errors.sum_sq_err <= u.errors.sum_sq_err
        assert a.compressed_bytes <= u.compressed_bytes * 1.01


def test_modes_exclude_each_other_with_a_clear_message(tmp_path, gaussian):
    with pytest.raises(mp.ConfigError, match="choose one of --bits, --target-bpw"):
        mp.compress(gaussian, tmp_path / "m.mpz", bits=4, min_sqnr=20.0)
    with pytest.raises(mp.ConfigError, match="--method must be one of"):
        mp.compress(gaussian, tmp_path / "m.mpz", bits=4, method="gptq")


def test_auto_tries_all_three_methods(tmp_path, gaussian, monkeypatch):
    import modelpress_cli.api as api
    tried, real_plan = [], api.plan
    monkeypatch.setattr(api, "plan", lambda info, x, opts, nf: (
        tried.append(opts.method), real_plan(info, x, opts, nf))[1])
    mp.compress(gaussian, tmp_path / "a.mpz", bits=4, method="auto", threads=1)
    assert tried == ["uniform", "kmeans", "nf"] * 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_min_sqnr_holds_after_the_cast_to_a_16_bit_dtype(tmp_path, dtype):
    x = np.random.default_rng(3).normal(0, 0.02, (256, 256)).astype(DTYPES[dtype])
    src = write_safetensors(tmp_path / "m.safetensors", {"w": x})
    for sqnr in (40.0, 50.0):
        mp.compress(src, tmp_path / "m.mpz", min_sqnr=sqnr, force=True)
        assert sqnr_db(x, mp.load(tmp_path / "m.mpz")["w"]) >= sqnr


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("options", [{"prune": 0.5}, {"prune": 0.3, "bits": 4},
                                     {"prune": 0.7, "bits": 8}, {"prune": 1e-6, "bits": 4}])
def test_pruned_tensors_report_what_the_reader_decodes(tmp_path, dtype, options):
    """Pruning and the quantizer after it each measure their own loss as they encode, and
    the two are added (pruned weights are stored as exact zeros): the report must still
    give the decoded weights' own figures, also when the sparsity rounds to no weight."""
    x = np.random.default_rng(6).normal(0, 0.02, (192, 320)).astype(DTYPES[dtype])
    x[0, :4] = [0, -0.0, 0, 1e-9]  # zeros before pruning, and a tie at the bottom
    src = write_safetensors(tmp_path / "m.safetensors", {"w": x})
    row = mp.compress(src, tmp_path / "m.mpz", **options).rows[0]
    y = mp.load(tmp_path / "m.mpz")["w"]
    assert "prune" in row.method
    xf, yf = x.astype(np.float64), y.astype(np.float64)
    # the quantizer sums each group in float32 (4e-6 at worst); pruning alone sums float16
    # in float64
    close = 1e-12 if dtype == "float16" and "bits" not in options else 4e-6
    assert row.errors.sum_sq_ref == pytest.approx((xf ** 2).sum(), rel=close)
    assert row.errors.sum_sq_err == pytest.approx(((yf - xf) ** 2).sum(), rel=close)
    assert row.errors.max_abs == pytest.approx(np.abs(yf - xf).max(), rel=close)
    assert row.sparsity == np.count_nonzero(y == 0) / y.size


def test_tiny_weights_keep_a_usable_scale(tmp_path):
    x = np.random.default_rng(4).normal(0, 1e-7, (64, 256)).astype(np.float32)
    np.savez(tmp_path / "t.npz", w=x)
    report = mp.compress(tmp_path / "t.npz", tmp_path / "t.mpz", bits=4)
    assert report.rows[0].errors.rel_error < 0.3  # float16 scales of 1e-8 round up, not to 0


def test_kmeans_after_pruning_spends_its_levels_on_the_survivors(tmp_path, gaussian):
    mp.compress(gaussian, tmp_path / "k.mpz", bits=4, method="kmeans", prune=0.5)
    with mp.open(tmp_path / "k.mpz") as weights:
        used = np.unique(weights["gauss"])
    assert used.size >= 15  # 0 and 15 distinct levels, not a pile of duplicate zeros
