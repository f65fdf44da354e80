"""Every shipped sample model keeps its task metric through compression.

8 bits: within 0.5 points of accuracy (1% of perplexity); 4 bits with the defaults: within
2 points (5% of perplexity). Each model is compressed from and decompressed to each of its
three formats, then scored by its own numpy evaluation script.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import ModuleType

import pytest
from conftest import SAMPLES

import modelpress_cli as mp


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Sample:
    stem: str
    script: str
    lower_is_better: bool  # perplexity; else accuracy in percent

    def metric(self, path) -> float:
        module = load_script(self.script)
        weights = module.load_weights(path)
        return module.perplexity(weights) if self.lower_is_better else module.accuracy(weights)

    def worsening(self, before: float, after: float) -> float:
        """Accuracy points lost, or perplexity gained as a fraction."""
        return (after - before) / before if self.lower_is_better else before - after


SAMPLE_MODELS = [Sample("digits_mlp", "eval_digits", False),
                 Sample("digits_cnn", "eval_digits_cnn", False),
                 Sample("charlm", "eval_charlm", True)]
BASELINES = {s.stem: s.metric(SAMPLES / f"{s.stem}.npz") for s in SAMPLE_MODELS}


@pytest.mark.parametrize("sample", SAMPLE_MODELS, ids=lambda s: s.stem)
def test_the_three_formats_hold_the_same_trained_model(sample):
    for suffix in ("h5", "safetensors"):
        assert sample.metric(SAMPLES / f"{sample.stem}.{suffix}") == BASELINES[sample.stem]
        assert (SAMPLES / f"{sample.stem}.{suffix}").stat().st_size < 2_000_000
    baseline = BASELINES[sample.stem]
    assert baseline < 5 if sample.lower_is_better else baseline > 95  # trained for real


@pytest.mark.parametrize("suffix", ["npz", "h5", "safetensors"])
@pytest.mark.parametrize("sample", SAMPLE_MODELS, ids=lambda s: s.stem)
@pytest.mark.parametrize(("bits", "max_points", "max_fraction"), [(8, 0.5, 0.01), (4, 2.0, 0.05)])
def test_compressed_sample_model_keeps_its_metric(tmp_path, sample, suffix, bits, max_points,
                                                  max_fraction):
    mp.compress(SAMPLES / f"{sample.stem}.{suffix}", tmp_path / "m.mpz", bits=bits)
    mp.decompress(tmp_path / "m.mpz", tmp_path / f"back.{suffix}")
    after = sample.metric(tmp_path / f"back.{suffix}")
    limit = max_fraction if sample.lower_is_better else max_points
    assert sample.worsening(BASELINES[sample.stem], after) <= limit
