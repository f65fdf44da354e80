"""The shipped sample model keeps its accuracy: 8 bits within 0.5 points, 4 bits within 2."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import SAMPLES

import modelpress_cli as mp


def load_eval():
    spec = importlib.util.spec_from_file_location("eval_digits", SAMPLES / "eval_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVAL = load_eval()
TEST_SET = SAMPLES / "digits_test.npz"
BASELINE = EVAL.accuracy(EVAL.load_weights(SAMPLES / "digits_mlp.npz"), TEST_SET)


def test_the_three_formats_hold_the_same_trained_model():
    for suffix in ("h5", "safetensors"):
        weights = EVAL.load_weights(SAMPLES / f"digits_mlp.{suffix}")
        assert EVAL.accuracy(weights, TEST_SET) == BASELINE
    assert BASELINE > 95  # trained for real, not random weights


@pytest.mark.parametrize("suffix", ["npz", "h5", "safetensors"])
@pytest.mark.parametrize(("bits", "max_drop", "max_bpw"), [(8, 0.5, 9.5), (4, 2.0, 5.5)])
def test_compressed_sample_model_keeps_its_accuracy(tmp_path, suffix, bits, max_drop, max_bpw):
    report = mp.compress(SAMPLES / f"digits_mlp.{suffix}", tmp_path / "m.mpz", bits=bits)
    mp.decompress(tmp_path / "m.mpz", tmp_path / f"back.{suffix}")
    accuracy = EVAL.accuracy(EVAL.load_weights(tmp_path / f"back.{suffix}"), TEST_SET)
    assert BASELINE - accuracy <= max_drop
    assert report.bits_per_weight <= max_bpw  # everything counted, small tensors lossless
