"""Bit-packing: exact sizes, the documented LSB-first layout, lossless for every width."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpress_cli.bitpack import pack_bits, packed_size, unpack_bits


def reference_pack(codes: list[int], bits: int) -> bytes:
    """docs/format.md's definition, one Python int at a time: code i at bits i·b … i·b+b−1."""
    value = sum(c << (i * bits) for i, c in enumerate(codes))
    return value.to_bytes(packed_size(len(codes), bits), "little")


@given(bits=st.integers(1, 8), data=st.data())
def test_pack_matches_the_documented_layout_and_unpacks_exactly(bits, data):
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    array = np.array(codes, dtype=bool if bits == 1 else np.uint8)
    packed = pack_bits(array, bits)
    assert packed.tobytes() == reference_pack(codes, bits)
    assert packed.size == -(-len(codes) * bits // 8)  # 3-bit codes take 3 bits, not 8
    assert unpack_bits(packed, bits, len(codes)).astype(np.uint8).tolist() == codes


@pytest.mark.parametrize("bits", [2, 3, 5, 7])
def test_a_long_stream_of_odd_length_round_trips(bits):
    codes = np.random.default_rng(bits).integers(0, 1 << bits, (1 << 21) + 13, dtype=np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.size == packed_size(codes.size, bits)
    assert np.array_equal(unpack_bits(packed, bits, codes.size), codes)
