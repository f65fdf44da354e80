"""A bounded fuzz slice: mutated files of every format are decoded correctly or refused.

The long run is `python benchmarks/fuzz.py --count 20000` (a memory cap and a time limit per
input, so a large allocation or a hang fails it too).
"""

from __future__ import annotations

import random

import pytest
from fuzzing import mutate, outcome, seed_files
from hypothesis import given, settings
from hypothesis import strategies as st

NAMES = ["plain.npz", "deflated.npz", "keras.h5", "st.safetensors", "lossless.mpz", "q4.mpz",
         "sparse.mpz"]


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    assert sorted(seed_files(folder)) == sorted(NAMES)
    return folder


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60)
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_mutated_files_decode_or_are_refused(seed_folder, tmp_path_factory, name, seed):
    data = mutate((seed_folder / name).read_bytes(), random.Random(seed), name)
    assert outcome(data, name, tmp_path_factory.mktemp("fuzz")) in ("ok", "refused")
