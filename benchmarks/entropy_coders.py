"""Which entropy coder for the entropy-constrained mode: zstd, constriction's ANS, or ours.

Run by hand: ``python benchmarks/entropy_coders.py`` (constriction is optional: ``pip install
constriction``). Codes are what ``--target-bpw`` makes: round(x / step) of 2**24 iid Gaussian
weights, at steps giving about 2, 4, 6 and 8 bits per weight. For each coder: its size over
the codes' order-0 empirical entropy (1.000 = ideal), and encode / decode speed in millions of
codes per second and in MB/s of int16 codes (the narrowest type holding them). Medians of
--repeat runs, one thread each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelpress_cli.stages import RansPack  # noqa: E402


def entropy_bits(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    return float(-(counts * np.log2(counts / codes.size)).sum())


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def coders(codes: np.ndarray):
    """(name, encode() -> bytes size, decode-of-that function) for each coder available."""
    narrow = codes.astype(np.int8 if np.abs(codes).max() < 128 else np.int16)

    def zstd(level):
        def enc():
            return zstandard.ZstdCompressor(level=level).compress(narrow.tobytes())
        return enc, lambda blob: zstandard.ZstdDecompressor().decompress(blob)

    out = [(f"zstd -{lvl} ({narrow.dtype})", *zstd(lvl)) for lvl in (1, 3, 19)]
    stage = RansPack.fit(int(codes.min()), int(codes.max()))
    out.append(("modelpress rANS", lambda: stage.encode({"codes": codes}),
                lambda parts: stage.decode(parts, codes.shape, np.float32)))
    try:
        import constriction
    except ImportError:
        return out
    offset = int(codes.min())
    symbols = (codes - offset).astype(np.int32)
    counts = np.bincount(symbols).astype(np.float64)
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)

    def c_enc():
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, model)
        return coder.get_compressed()

    out.append(("constriction ANS", c_enc,
                lambda blob: constriction.stream.stack.AnsCoder(blob).decode(model,
                                                                              symbols.size)))
    return out


def size_of(blob) -> int:
    if isinstance(blob, dict):  # our stage's parts, each stored as a block
        return sum(v.nbytes for v in blob.values())
    return len(blob) if isinstance(blob, bytes) else blob.nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(0, 1, args.n)
    rows = []
    for step in (1.2, 0.3, 0.075, 0.019):  # about 2, 4, 6 and 8 bits per weight
        codes = np.rint(x / step).astype(np.int32)
        h = entropy_bits(codes)
        for name, enc, dec in coders(codes):
            t_enc, blob = timed(enc, args.repeat)
            t_dec, _ = timed(lambda blob=blob, dec=dec: dec(blob), args.repeat)
            rows.append({"step": step, "entropy_bits_per_code": h / codes.size, "coder": name,
                         "size_over_entropy": 8 * size_of(blob) / h,
                         "encode_mcodes_s": codes.size / t_enc / 1e6,
                         "decode_mcodes_s": codes.size / t_dec / 1e6})
    print(f"{'H bits':>7} {'coder':<22} {'size/H':>7} {'enc Mcodes/s':>13} "
          f"{'dec Mcodes/s':>13} {'enc MB/s int16':>15} {'dec MB/s int16':>15}")
    for r in rows:
        print(f"{r['entropy_bits_per_code']:7.3f} {r['coder']:<22} "
              f"{r['size_over_entropy']:7.4f} {r['encode_mcodes_s']:13.1f} "
              f"{r['decode_mcodes_s']:13.1f} {2 * r['encode_mcodes_s']:15.0f} "
              f"{2 * r['decode_mcodes_s']:15.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
