"""Compress and decompress speed and peak memory on a random-normal .safetensors model.

Run by hand (not in CI): ``python benchmarks/throughput.py --size-mb 100``. Every figure is the
median of --repeat runs, each in a fresh process (so peak RSS is that run's own), next to a
baseline measured in the same run: zstd level 3 over the same raw bytes. Prints a table and
writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelpress_cli.formats.safetensors import write_safetensors  # noqa: E402

SETTINGS = {"lossless": {}, "8-bit": {"bits": 8}, "4-bit": {"bits": 4},
            "4-bit + 50% pruning": {"bits": 4, "prune": 0.5}}
CHILD = """
import ast, re, sys, time, modelpress_cli as mp
args = ast.literal_eval(sys.argv[1])
start = time.perf_counter()
getattr(mp, args.pop("op"))(args.pop("src"), args.pop("dst"), force=True, **args)
seconds = time.perf_counter() - start
peak_kb = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(seconds, int(peak_kb) * 1024)
"""


class ArrayReader:
    """Just enough of a TensorReader to write a synthetic model with our streaming writer."""

    format, metadata = "npz", {}

    def __init__(self, shapes: dict[str, tuple[int, int]], seed: int) -> None:
        from modelpress_cli.formats.base import TensorInfo
        self._infos = [TensorInfo(n, s, "float32") for n, s in shapes.items()]
        self._seed = seed

    def infos(self):
        return iter(self._infos)

    def read(self, name: str) -> np.ndarray:
        index, info = next((k, i) for k, i in enumerate(self._infos) if i.name == name)
        rng = np.random.default_rng([self._seed, index])  # distinct tensors: no tied weights
        return rng.normal(0, 0.02, info.shape).astype(np.float32)


def make_model(path: Path, size_mb: int) -> None:
    side = 2048
    n = max(1, round(size_mb * 1e6 / (side * side * 4)))
    write_safetensors(path, ArrayReader({f"layers.{i}.weight": (side, side) for i in range(n)},
                                        seed=0), lambda _: None)


def run_child(args: dict) -> tuple[float, int]:
    """Seconds the operation took inside the child, and the child's peak RSS in bytes."""
    # Peak RSS comes from the child's own VmHWM: ru_maxrss would include the parent's at fork.
    done = subprocess.run([sys.executable, "-c", CHILD, repr(args)], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"benchmark run failed: {args}\n{done.stderr}")
    seconds, peak = done.stdout.split()
    return float(seconds), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, mpz, back = Path(tmp, "m.safetensors"), Path(tmp, "m.mpz"), Path(tmp, "b.safetensors")
        make_model(src, opts.size_mb)
        mb = src.stat().st_size / 1e6
        zstd_s = zstd_seconds(src, opts.repeat)
        rows = []
        for label, settings in SETTINGS.items():
            comp = [run_child({"op": "compress", "src": str(src), "dst": str(mpz), **settings})
                    for _ in range(opts.repeat)]
            size = mpz.stat().st_size
            dec = [run_child({"op": "decompress", "src": str(mpz), "dst": str(back)})
                   for _ in range(opts.repeat)]
            rows.append({"setting": label, "input_mb": round(mb, 1),
                         "ratio": round(src.stat().st_size / size, 3),
                         "compress_mb_s": round(mb / statistics.median(c[0] for c in comp), 1),
                         "decompress_mb_s": round(mb / statistics.median(d[0] for d in dec), 1),
                         "compress_peak_rss_mb": round(max(c[1] for c in comp) / 1e6),
                         "decompress_peak_rss_mb": round(max(d[1] for d in dec) / 1e6)})
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    result = {"machine": machine,
              "numpy": np.__version__, "baseline_zstd3_mb_s": round(mb / zstd_s, 1),
              "rows": rows}
    print(f"{mb:.0f} MB random-normal float32 .safetensors; {result['machine']}; "
          f"median of {opts.repeat}; baseline zstd -3 alone: {result['baseline_zstd3_mb_s']} MB/s")
    print(f"{'setting':22} {'ratio':>6} {'comp MB/s':>10} {'decomp MB/s':>12} {'comp RSS':>9} "
          f"{'decomp RSS':>10}")
    for r in rows:
        print(f"{r['setting']:22} {r['ratio']:>6} {r['compress_mb_s']:>10} "
              f"{r['decompress_mb_s']:>12} {r['compress_peak_rss_mb']:>7}MB "
              f"{r['decompress_peak_rss_mb']:>8}MB")
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")


def zstd_seconds(path: Path, repeat: int) -> float:
    """The baseline: median seconds of zstd level 3 over the file's bytes, in this process."""
    raw = path.read_bytes()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        zstandard.ZstdCompressor(level=3).compress(raw)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
