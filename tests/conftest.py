"""Shared fixtures: a CLI runner that lets crashes through, and small models in every format."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from modelpress_cli.formats import open_reader

settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI")
                                     else "default"))

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


@pytest.fixture
def runner() -> CliRunner:
    """A crash fails the test instead of showing up as exit status 1."""
    return CliRunner(catch_exceptions=False)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """A small model with every kind of tensor the defaults treat differently."""
    rng = np.random.default_rng(seed)
    return {
        "embed.weight": rng.normal(0, 0.02, (96, 64)).astype(np.float32),
        "layer0.kernel": rng.normal(0, 0.05, (64, 128)).astype(np.float32),
        "layer0.bias": rng.normal(0, 0.01, 128).astype(np.float32),
        "layer1.kernel": rng.normal(0, 0.05, (128, 100)).astype(np.float16),
        "conv.kernel": rng.normal(0, 0.1, (3, 3, 16, 32)).astype(np.float64),
        "small.kernel": rng.normal(0, 0.1, (8, 8)).astype(np.float32),
        "steps": np.array(12345, dtype=np.int64),
        "token_ids": rng.integers(-1000, 1000, 500).astype(np.int32),
        "flags": rng.random(300) > 0.5,
        "lm_head.weight": None,  # tied to embed.weight, filled below
    }


def model(seed: int = 0) -> dict[str, np.ndarray]:
    tensors = weights(seed)
    tensors["lm_head.weight"] = tensors["embed.weight"].copy()
    return tensors


def write_npz(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    np.savez(path, **tensors)
    return path


def write_h5(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """Keras-2-style layout: attributes on the file, groups and datasets, an empty group."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = np.bytes_(b"numpy")
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([b"dense", b"dropout"])
        group.attrs["ratio"] = np.float32(0.5)
        f.create_group("model_weights/dropout").attrs["weight_names"] = np.array([], dtype="S1")
        for name, value in tensors.items():
            ds = f.create_dataset(f"model_weights/dense/{name}", data=value)
            ds.attrs["role"] = name.split(".")[-1]
            ds.attrs["shape_hint"] = np.array(value.shape, dtype=np.int64)
    return path


def write_safetensors(path: Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> Path:
    from safetensors.numpy import save_file
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def tiny_npz(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("src") / "tiny.npz", model())


@pytest.fixture
def tiny_h5(tmp_path_factory) -> Path:
    return write_h5(tmp_path_factory.mktemp("src") / "tiny.h5", model())


@pytest.fixture
def tiny_safetensors(tmp_path_factory) -> Path:
    return write_safetensors(tmp_path_factory.mktemp("src") / "tiny.safetensors", model(),
                             {"format": "np", "note": "tiny"})


@pytest.fixture(params=["npz", "h5", "safetensors"])
def tiny_model(request) -> Path:
    """The tiny model in each of the three formats, in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


def read_all(path: Path) -> dict[str, np.ndarray]:
    reader = open_reader(path)
    try:
        return {i.name: reader.read(i.name) for i in reader.infos()}
    finally:
        reader.close()
