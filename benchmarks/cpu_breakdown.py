"""Where a compress spends its CPU: seconds of thread CPU time in each part, one warm run.

Run by hand (not in CI), on a model made by benchmarks/llm.py for example:

    python benchmarks/cpu_breakdown.py /tmp/modelpress-llm-bench/llm-...-L17-....safetensors

A tiny compress first loads the kernels (start-up is not counted); then the model is compressed
once, with the quantizer kernel, zstd, bit-packing, CRC-32, the scan and the writing of each
tensor wrapped to add up their thread CPU time (helper threads included). "other" is the rest:
planning, the tensors' first reads outside the kernel, Python glue. The wrapping itself costs a
little: the MB/s printed is a shade under an unwrapped run's.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import modelpress_cli as mp  # noqa: E402
from modelpress_cli import api, container, pipeline  # noqa: E402
from modelpress_cli.stages import prune, quantize  # noqa: E402

SPENT: collections.Counter = collections.Counter()
OPEN = threading.local()  # per thread: the CPU time of timed calls inside the current one


def timed(owner, name: str, label: str) -> None:
    """Replace owner.name by a wrapper that adds its thread CPU time to SPENT[label], less
    the time of timed calls it makes (decoding back calls CRC-32: counted once, as CRC)."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        outer = getattr(OPEN, "nested", 0.0)
        OPEN.nested = 0.0
        start = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent = time.thread_time() - start
            SPENT[label] += spent - OPEN.nested
            OPEN.nested = outer + spent

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--prune", type=float, default=0.0)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp, "warm.npz")
        rng = np.random.default_rng(0)
        np.savez(warm, w=rng.normal(0, 0.02, (256, 256)).astype(np.float32),
                 norm=np.ones(256, np.float32))
        mp.compress(warm, Path(tmp, "warm.mpz"), bits=opts.bits, prune=opts.prune)
        timed(quantize.kernels, "quantize_groups", "quantizer kernel")
        timed(pipeline.kernels, "scan_bits", "scan")
        timed(container, "compress", "zstd")
        timed(container, "pack_bits", "bit-packing")
        timed(container, "crc32", "CRC-32")
        timed(api, "_write_tensor", "writing")
        timed(prune.MagnitudePrune, "encode_measured", "pruning")
        timed(pipeline, "decode", "decoding back")  # paths that do not measure as they encode
        timed(pipeline, "measure", "measuring")
        start, cpu = time.perf_counter(), time.process_time()
        mp.compress(opts.model, Path(tmp, "out.mpz"), bits=opts.bits, prune=opts.prune)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{opts.model.name}, --bits {opts.bits} --prune {opts.prune}: "
          f"{os.path.getsize(opts.model) / wall / 1e6:.0f} MB/s, {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU ({cpu / wall:.0%} of one core)")
    for label, seconds in SPENT.most_common():
        print(f"  {label:18} {seconds:6.2f} s  {seconds / cpu:4.0%}")
    rest = cpu - sum(SPENT.values())
    print(f"  {'other':18} {rest:6.2f} s  {rest / cpu:4.0%}")


if __name__ == "__main__":
    main()
