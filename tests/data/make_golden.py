"""Write the golden .mpz of format version 1 and what it decodes to. Run once per format version;
the files it writes are committed and must decode the same forever."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import modelpress_cli as mp

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(2026)
    tensors = {
        "dense/kernel": rng.normal(0, 0.05, (64, 96)).astype(np.float32),   # q4 g64 sparse mask
        "dense/bias": rng.normal(0, 0.01, 96).astype(np.float32),           # lossless
        "conv/kernel": rng.normal(0, 0.1, (3, 3, 8, 40)).astype(np.float16),  # affine, ragged
        "embed": rng.normal(0, 0.02, (50, 100)).astype(np.float32),
        "head": None,
        "count": np.array([1, 2, 3], dtype=np.int64),
    }
    tensors["head"] = tensors["embed"].copy()  # tied
    src = HERE / "golden_source.npz"
    np.savez(src, **tensors)
    try:
        mp.compress(src, HERE / "v1_golden.mpz", bits=4, prune=0.5, group_size=48,
                    symmetric=False, min_elements=1000, force=True)
    finally:
        src.unlink()
    np.savez(HERE / "v1_expected.npz", **mp.load(HERE / "v1_golden.mpz"))


if __name__ == "__main__":
    sys.exit(main())
