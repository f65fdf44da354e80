"""The quantizer kernel alone: nanoseconds per weight of kernels.quantize_groups, by bit width.

Run by hand (not in CI), at two commits to compare them:

    python benchmarks/quantizer_kernel.py

Gaussian float32 weights in groups of 64, the search that stages/quantize.py runs at each
width (four candidate scales and two refits below 7 bits, one and one from 7), called as
the stage calls it (a Python float scale limit). Each figure is the minimum over --repeat
runs: on a noisy machine the minimum moves least. --weights sets the tensor size; the
default, 16M, is 64 MB of input, more than the caches hold, as a model's tensors are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelpress_cli import kernels  # noqa: E402
from modelpress_cli.stages.quantize import search_ratios, search_refits  # noqa: E402

GROUP = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=9)
    opts = parser.parse_args()
    groups = np.random.default_rng(0).standard_normal(
        opts.weights // GROUP * GROUP).astype(np.float32).reshape(-1, GROUP)
    codes = np.empty(groups.shape, np.uint8)
    scales = np.empty(groups.shape[0], np.float32)
    for bits in range(2, 9):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        args = (groups, lo, hi, search_ratios(bits), search_refits(bits), bits, codes, scales,
                float("inf"))
        ref, err, *_ = kernels.quantize_groups(*args)  # compiles or loads it first
        times = []
        for _ in range(opts.repeat):
            start = time.perf_counter()
            kernels.quantize_groups(*args)
            times.append(time.perf_counter() - start)
        print(f"{bits} bits: {min(times) / groups.size * 1e9:5.2f} ns/weight "
              f"(SQNR {10 * np.log10(ref / err):.2f} dB)")


if __name__ == "__main__":
    main()
