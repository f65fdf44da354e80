"""What the quantizer's scale search buys: SQNR with fewer candidate scales or refits.

Run by hand (not in CI):

    python benchmarks/search_candidates.py

The search (stages/quantize.py: four candidate scales, then two least-squares refits, below
7 bits) is most of the compress CPU at 4 bits. This prints, for 2 to 6 bits and for Gaussian,
Laplace and Student-t(3) weights and the sample models' 2-D weights, the SQNR of the full search
and how many dB each cheaper variant loses, through the same kernel with other parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelpress_cli import kernels  # noqa: E402
from modelpress_cli.formats import open_reader  # noqa: E402
from modelpress_cli.stages.quantize import SEARCH_SPREAD, search_ratios  # noqa: E402

GROUP = 64


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 1 << 21
    found = {"gauss": rng.standard_normal(n), "laplace": rng.laplace(size=n),
             "t3": rng.standard_t(3, n)}
    real = []
    for path in sorted(Path(__file__).resolve().parent.parent.glob("sample_models/*.npz")):
        with open_reader(path) as reader:
            for info in reader.infos():
                x = np.asarray(reader.read(info.name), np.float32)
                if x.ndim == 2 and x.shape[-1] % GROUP == 0 and x.size >= 4096:
                    real.append(x.reshape(-1))
    found["samples"] = np.concatenate(real)
    return found


def sqnr_db(x: np.ndarray, bits: int, ratios: np.ndarray, refits: int) -> float:
    groups = x[:x.size // GROUP * GROUP].astype(np.float32).reshape(-1, GROUP)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = np.empty(groups.shape, np.uint8)
    scales = np.empty(groups.shape[0], np.float32)
    ref, err, *_ = kernels.quantize_groups(groups, lo, hi, ratios, refits, bits, codes, scales,
                                           np.float32(np.inf))
    return 10 * np.log10(ref / err)


def main() -> None:
    data = weights()
    for bits in (2, 3, 4, 5, 6):
        spread = SEARCH_SPREAD[bits]
        variants = {"2 cand + 2 refits": (np.array([1 - spread / 3, 1 - 2 * spread / 3]), 2),
                    "1 cand (mid) + 2 refits": (np.array([1 - spread / 2]), 2),
                    "1 cand (mid) + 3 refits": (np.array([1 - spread / 2]), 3),
                    "peak only + 2 refits": (np.array([1.0]), 2)}
        print(f"{bits} bits")
        for name, x in data.items():
            full = sqnr_db(x, bits, search_ratios(bits), 2)
            losses = ", ".join(f"{label} {sqnr_db(x, bits, r.astype(np.float32), f) - full:+.3f}"
                               for label, (r, f) in variants.items())
            print(f"  {name:8} full search {full:6.2f} dB; {losses}")


if __name__ == "__main__":
    main()
