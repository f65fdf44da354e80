"""Entropy coding of stored blocks: zstd, kept only where it saves bytes."""

from __future__ import annotations

import threading

import zstandard

from .errors import IntegrityError
from .parallel import THREADS

CODECS = ("none", "zstd")
ZSTD_LEVEL = 1  # on codes and float byte planes as small as level 3, and twice as fast
#: For quantized codes: matches are rare in them and zstd's Huffman stage does the work, so
#: a shallow match search (level 1's strategy, one probe, 7-byte matches) gives the same
#: bytes' worth of saving 20-25% faster (4- and 8-bit codes of Gaussian weights).
CODES = {"window_log": 17, "hash_log": 12, "chain_log": 12, "search_log": 1, "min_match": 7,
         "target_length": 0, "strategy": zstandard.STRATEGY_FAST}
#: Blocks this big are cut into jobs of JOB_BYTES that zstd's own threads code at once (one
#: frame still, which any zstd decoder reads): a big tensor's block is otherwise coded on one
#: core while the other waits for it. zstd's multi-threaded output is the same bytes for any
#: number of threads (facebook/zstd#2238), so --threads changes no byte. That mode copies
#: each job in and out of buffers of its own, about 1.5x the CPU: only the biggest tensors,
#: with little else in flight beside them (api.IN_FLIGHT_BYTES), gain by it. At 8 MiB, the
#: 11.5 MB code blocks of an 8-bit LLM's MLP matrices paid it while the other core was busy
#: with the next tensor: 16 MiB made an 8-bit compress of the 4 GB benchmark model 15% faster.
SPLIT_BYTES = 16 << 20
JOB_BYTES = 4 << 20
#: One big block at a time gets --threads of zstd's threads; a big block coded meanwhile by
#: another tensor's worker gets one (still split in jobs: the same bytes), so that the
#: threads stay near the core count rather than its square.
_WIDE = threading.Semaphore(1)


def compress(raw: bytes | memoryview, codes: bool = False) -> tuple[str, bytes | memoryview]:
    """The smaller of `raw` itself and its zstd frame, with the codec's name; `codes` says
    that raw holds quantized codes (see CODES)."""
    if len(raw) < 64:
        return "none", raw
    if len(raw) < SPLIT_BYTES:
        return _smaller(raw, codes, {})
    wide = _WIDE.acquire(blocking=False)
    try:
        return _smaller(raw, codes, {"threads": THREADS.get() if wide else 1,
                                     "job_size": JOB_BYTES})
    finally:
        if wide:
            _WIDE.release()


def _smaller(raw: bytes | memoryview, codes: bool, split: dict) -> tuple[str, bytes | memoryview]:
    """compress() with zstd's thread settings given."""
    if codes:
        coder = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
            **CODES, **split))
    elif split:
        coder = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters
                                         .from_level(ZSTD_LEVEL, source_size=len(raw), **split))
    else:
        coder = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    packed = coder.compress(raw)
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
