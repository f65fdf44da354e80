"""Entropy coding of stored blocks: zstd, kept only where it saves bytes."""

from __future__ import annotations

import zstandard

from .errors import IntegrityError

CODECS = ("none", "zstd")
ZSTD_LEVEL = 1  # on codes and float byte planes as small as level 3, and twice as fast


def compress(raw: bytes | memoryview) -> tuple[str, bytes | memoryview]:
    """The smaller of `raw` itself and its zstd frame, with the codec's name."""
    if len(raw) < 64:
        return "none", raw
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    return ("zstd", packed) if len(packed) < len(raw) else ("none", raw)


def decompress(codec: str, data: bytes, n_bytes: int) -> bytes:
    """The block's raw bytes; IntegrityError unless they are exactly `n_bytes` long."""
    if codec == "none":
        raw = data
    else:
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"bad zstd frame: {e}") from None
        if declared != n_bytes:  # checked before any allocation on the frame's word
            raise IntegrityError(f"zstd frame declares {declared} bytes, index says {n_bytes}")
        try:
            raw = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"corrupt zstd frame: {e}") from None
    if len(raw) != n_bytes:
        raise IntegrityError(f"block holds {len(raw)} bytes, index says {n_bytes}")
    return raw
