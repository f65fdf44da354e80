"""--target-bpw: share a bit budget across tensors so the whole file's error is least.

Each tensor's rate-distortion curve is measured on a sample: for a ladder of steps, the
entropy of its codes (what rANS will spend, to 0.1%) and its relative squared error. The
budget then goes where it buys the most: every tensor is given the step at which its error
falls by the same amount per extra bit (equal slope, a Lagrange multiplier found by
bisection), which minimises the sum over tensors of size × relative squared error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stages.quantize import MAX_STEP_CODE

SAMPLE = 1 << 18          # values per tensor measured for its curve
LADDER = np.arange(-28, 7) / 2  # log2(step / rms): rates from ~16 bits down to ~0
FINE = 32                 # interpolated points per ladder rung
#: Embeddings and heads count this much more in the objective: the model is most sensitive
#: there (see Options.embed_bits); 16 is worth about 2 bits per weight.
EMBEDDING_WEIGHT = 16.0
RANS_OVERHEAD = 1.002     # rANS size over the entropy: 1.0003-1.0010 in entropy_coders.py


@dataclass(frozen=True)
class Curve:
    """One tensor's measured trade-off: bits per weight and relative squared error by step."""

    name: str
    size: int
    weight: float
    steps: np.ndarray
    bits: np.ndarray
    rel_err: np.ndarray


def measure_curve(name: str, x: np.ndarray, weight: float = 1.0) -> Curve | None:
    """The curve of one tensor, on a fixed-seed random sample, over the steps whose codes
    fit; None for an all-zero tensor (or one no step can code)."""
    flat = x.reshape(-1)
    if flat.size > SAMPLE:  # random, not strided: a stride can keep hitting the same columns
        where = np.sort(np.random.default_rng(0).integers(0, flat.size, SAMPLE))
        sample = flat[where].astype(np.float64)
    else:
        sample = flat.astype(np.float64)
    power = float(sample @ sample) / sample.size
    if power == 0:
        return None
    log_steps = LADDER + 0.5 * np.log2(power)
    peak = max(-float(flat.min()), float(flat.max()))
    log_steps = log_steps[2.0 ** log_steps > peak / MAX_STEP_CODE]  # steps plan() accepts
    if log_steps.size < 2:
        return None
    bits, errs = [], []
    for log_step in log_steps:
        step = 2.0 ** log_step
        codes = np.rint(sample / step)
        err = sample - codes * step
        errs.append(float(err @ err) / sample.size / power)
        low = codes.min()
        counts = np.bincount((codes - low).astype(np.int64)) if codes.max() - low < 1 << 24 \
            else np.unique(codes, return_counts=True)[1]  # a huge range: sort instead
        p = counts[counts > 0] / sample.size
        bits.append(float(-(p * np.log2(p)).sum()) * RANS_OVERHEAD)
    # interpolate in log-step for a fine ladder: rates are smooth in it
    fine = np.linspace(log_steps[0], log_steps[-1], (len(log_steps) - 1) * FINE + 1)
    return Curve(name, flat.size, weight, 2.0 ** fine, np.interp(fine, log_steps, bits),
                 np.exp(np.interp(fine, log_steps, np.log(np.maximum(errs, 1e-300)))))


def allocate(curves: list[Curve], budget_bits: float) -> dict[str, float]:
    """A step per tensor, spending at most `budget_bits` on the tensors' codes in all.

    For a slope λ, each tensor takes the point of its curve minimising
    weight·size·rel_err + λ·size·bits; λ is bisected until the total fits the budget.
    Raises ValueError if even the coarsest steps do not fit.
    """
    if not curves:
        return {}

    def choose(lam: float) -> tuple[list[int], float]:
        picks, total = [], 0.0
        for c in curves:
            i = int(np.argmin(c.weight * c.rel_err + lam * c.bits))
            picks.append(i)
            total += c.size * c.bits[i]
        return picks, total

    if choose(1e30)[1] > budget_bits:
        raise ValueError("budget below the coarsest step of every tensor")
    lo, hi = 1e-30, 1e30  # in log space: the slope spans many decades
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if choose(mid)[1] > budget_bits:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    picks, _ = choose(hi)
    return {c.name: float(c.steps[i]) for c, i in zip(curves, picks, strict=True)}
