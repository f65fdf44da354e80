"""Exact bit-packing: n codes of b bits take ceil(n·b/8) bytes.

Layout (LSB-first, as in docs/format.md): code i occupies bits i·b … i·b+b−1 of the stream,
where bit k of the stream is bit k mod 8 of byte k // 8. Widths 2–7 run in a compiled loop
(kernels.py); 1 and 8 are numpy's packbits and a plain view.
"""

from __future__ import annotations

import numpy as np

from . import kernels


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
    kernels.pack_bits(flat.astype(np.uint8, copy=False), bits, out)
    return out


def unpack_bits(buffer: np.ndarray, bits: int, n_codes: int) -> np.ndarray:
    """The `n_codes` codes packed by `pack_bits`, as uint8 (bool for 1 bit)."""
    buffer = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) \
        else buffer.reshape(-1)
    if bits == 1:
        return np.unpackbits(buffer, count=n_codes, bitorder="little").view(bool)
    if bits == 8:
        return buffer[:n_codes].copy()
    if buffer.size < packed_size(n_codes, bits):
        raise ValueError(f"{buffer.size} bytes cannot hold {n_codes} codes of {bits} bits")
    out = np.empty(n_codes, dtype=np.uint8)
    kernels.unpack_bits(buffer, bits, out)
    return out
