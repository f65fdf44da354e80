"""Exact bit-packing: n codes of b bits take ceil(n·b/8) bytes.

Layout (LSB-first, as in docs/format.md): code i occupies bits i·b … i·b+b−1 of the stream,
where bit k of the stream is bit k mod 8 of byte k // 8. Vectorised 8 codes at a time: eight
b-bit codes make one b-byte little-endian word.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 20  # codes per step: bounds the uint64 temporaries to 8 MiB each


def packed_size(n_codes: int, bits: int) -> int:
    return -(-n_codes * bits // 8)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned `bits`-bit codes (any shape, C order) into a uint8 array."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    if bits == 1:
        return np.packbits(flat.astype(bool, copy=False), bitorder="little")
    if bits == 8:
        return flat.view(np.uint8)
    out = np.empty(packed_size(flat.size, bits), dtype=np.uint8)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK]
        words = np.zeros((-(-chunk.size // 8), 8), dtype=np.uint64)
        words.reshape(-1)[:chunk.size] = chunk
        word = np.bitwise_or.reduce(words << shifts, axis=1).astype("<u8")
        packed = word.view(np.uint8).reshape(-1, 8)[:, :bits].reshape(-1)
        begin = start * bits // 8
        out[begin:begin + packed_size(chunk.size, bits)] = packed[:packed_size(chunk.size, bits)]
    return out


def unpack_bits(buffer: np.ndarray, bits: int, n_codes: int) -> np.ndarray:
    """The `n_codes` codes packed by `pack_bits`, as uint8 (bool for 1 bit)."""
    buffer = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) \
        else buffer.reshape(-1)
    if bits == 1:
        return np.unpackbits(buffer, count=n_codes, bitorder="little").view(bool)
    if bits == 8:
        return buffer[:n_codes].copy()
    out = np.empty(n_codes, dtype=np.uint8)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    mask = np.uint64((1 << bits) - 1)
    for start in range(0, n_codes, CHUNK):
        count = min(CHUNK, n_codes - start)
        n_words = -(-count // 8)
        raw = np.zeros((n_words, 8), dtype=np.uint8)
        piece = buffer[start * bits // 8:start * bits // 8 + packed_size(count, bits)]
        flat = np.zeros(n_words * bits, dtype=np.uint8)
        flat[:piece.size] = piece
        raw[:, :bits] = flat.reshape(n_words, bits)
        words = raw.view("<u8")  # (n_words, 1)
        out[start:start + count] = ((words >> shifts) & mask).reshape(-1)[:count]
    return out
