"""SQNR against bits per weight: modelpress's modes next to llama.cpp's formats (gguf's numpy).

Run by hand (not in CI); the figures in docs/quality.md come from

    python benchmarks/quality.py --size 4096 --repeat 1 --write-docs

(`pip install -e .[bench]` for gguf and matplotlib; `--size 512` is a quick run). In one run:

1. Three synthetic float32 tensors of shape (--size, --size), each generated with
   np.random.default_rng(0) and saved alone (as "w", so no name rule applies) to an .npz in
   --workdir: iid Gaussian (sigma 0.02), iid Laplacian and Student-t with 4 degrees of
   freedom, both scaled to the same standard deviation 0.02.
2. modelpress on each (always `min_elements=0`): fixed width uniform at 2..8 bits (group 64),
   fixed width at llama.cpp's sizes (4, 5 and 8 bits, group 16, 7-bit scales: 4.5, 5.5 and
   8.5 bpw like Q4_0, Q5_0 and Q8_0), k-means and normal-float codebooks at 3 and 4 bits, auto
   at 4, the entropy-constrained mode at --target-bpw 2..9, and at `min_sqnr` = each gguf
   format's SQNR on that tensor (the smallest file that is at least as accurate).
3. gguf's numpy quantizers on the same tensors: Q8_0, Q5_0, Q4_0 and MXFP4 (when the
   installed gguf has it).
4. Every 2-D float tensor of the sample models, each saved alone: modelpress 4-bit (group 64),
   4-bit group 16 with 7-bit scales, --target-bpw 4.5, and gguf Q4_0 where the last dimension
   is a multiple of 32.

Bits per weight: modelpress, the whole .mpz file (8 x file bytes / weights; for the sample
tensors also the tensor's own stored bytes, as the file's fixed header and index weigh on a
tensor of a few thousand weights); gguf, 8 x the quantized array's bytes / weights. SQNR is
computed here, in float64, from the decoded tensor (`mp.load` of the .mpz, gguf's dequantize)
against the original; gap = bpw - SQNR / 6.0206. Speeds are MB/s of float32 weights (1 MB =
1e6 bytes), median of --repeat: modelpress compress = the whole `mp.compress` call (read the
.npz, encode on every core, round-trip check, write the .mpz), decompress = `mp.load` of the
.mpz (decode every tensor into memory, nothing written); gguf = the quantize() and
dequantize() calls alone (numpy, in this process). Every setting runs once, untimed, on a
small tensor first (numba compiles each kernel on its first call). Prints the tables and the
done criteria, writes JSON (--json), and with --write-docs rewrites the results section of
docs/quality.md and docs/quality.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from provenance import code_state  # noqa: E402

import modelpress_cli as mp  # noqa: E402

MB = 1e6
DB_PER_BIT = 20 * np.log10(2)  # 6.0206
SIGMA, SEED = 0.02, 0
DISTRIBUTIONS = ("gaussian", "laplacian", "student-t4")
DIST_TITLES = {"gaussian": "Gaussian", "laplacian": "Laplacian",
               "student-t4": "Student-t (ν = 4)"}
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_0", "MXFP4")
PAIRED = ("Q8_0", "Q5_0", "Q4_0")  # the done criteria; MXFP4 is shown for information
FIXED_PAIRS = ((8, "Q8_0"), (5, "Q5_0"), (4, "Q4_0"))  # (bits at g16/s7, gguf type)
TARGETS = (2, 3, 4, 5, 6, 7, 8, 9)
SAMPLE_FILES = ("digits_mlp.h5", "digits_cnn.npz", "charlm.safetensors")
DOC, PLOT = ROOT / "docs" / "quality.md", ROOT / "docs" / "quality.png"
BEGIN, END = "<!-- results -->", "<!-- /results -->"

# The done criteria
GAP_LIMIT, GAP_TARGETS, GAP_DISTS = 0.40, range(3, 10), ("gaussian", "laplacian")
SAVED_AT_LEAST = 0.55
FIXED_DB_AT_LEAST, FIXED_BITS = 0.5, (4, 8)


def fixed_settings() -> list[tuple[str, str, dict]]:
    """(label, kind, options) of the modelpress runs that do not depend on gguf's results."""
    out = [(f"uniform q{b} g64", "fixed", {"bits": b, "method": "uniform"}) for b in range(2, 9)]
    out += [(f"uniform q{b} g16 s7", "fixed-g16", {"bits": b, "group_size": 16,
                                                   "scale_bits": 7}) for b in (4, 5, 8)]
    out += [(f"{m} q{b}", "codebook", {"bits": b, "method": m})
            for b in (3, 4) for m in ("kmeans", "nf")]
    out += [("auto q4", "codebook", {"bits": 4, "method": "auto"})]
    out += [(f"target {t} bpw", "entropy", {"target_bpw": float(t)}) for t in TARGETS]
    return out


# ---------------------------------------------------------------- inputs

def make_tensor(dist: str, size: int) -> np.ndarray:
    """The synthetic tensor: iid, standard deviation SIGMA, its own default_rng(SEED)."""
    rng = np.random.default_rng(SEED)
    shape = (size, size)
    if dist == "gaussian":
        x = rng.normal(0.0, SIGMA, shape)
    elif dist == "laplacian":
        x = rng.laplace(0.0, SIGMA / np.sqrt(2), shape)  # variance 2 b^2
    elif dist == "student-t4":
        x = rng.standard_t(4, shape) * (SIGMA / np.sqrt(2))  # variance nu / (nu - 2) = 2
    else:
        raise ValueError(dist)
    return x.astype(np.float32)


def sample_tensors() -> list[tuple[str, str, np.ndarray]]:
    """(file, tensor name, array) for every 2-D float tensor of the sample models."""
    out = []
    for file in SAMPLE_FILES:
        for name, x in mp.load(ROOT / "sample_models" / file).items():
            if x.ndim == 2 and np.issubdtype(x.dtype, np.floating):
                out.append((file, name, x))
    return out


# ---------------------------------------------------------------- measures

def sqnr_db(x: np.ndarray, y: np.ndarray, chunk: int = 1 << 20) -> float:
    """10 log10(sum x^2 / sum (x - y)^2), in float64, a chunk at a time."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    power = noise = 0.0
    for k in range(0, xf.size, chunk):
        a = xf[k:k + chunk].astype(np.float64)
        d = a - yf[k:k + chunk]
        power += float(a @ a)
        noise += float(d @ d)
    return float("inf") if noise == 0 else 10 * np.log10(power / noise)


def gap(bpw: float, sqnr: float) -> float:
    return bpw - sqnr / DB_PER_BIT


def run_modelpress(src: Path, mpz: Path, x: np.ndarray, options: dict, repeat: int,
                   timed: bool = True) -> dict:
    """Compress `src` with `options` (+ min_elements=0) `repeat` times, load the .mpz back,
    and measure it. The quality figures are those of the last run (the bytes are the same)."""
    comp, dec, report = [], [], None
    for _ in range(repeat if timed else 1):
        start = time.perf_counter()
        report = mp.compress(src, mpz, force=True, min_elements=0, **options)
        comp.append(time.perf_counter() - start)
    y = None
    for _ in range(repeat if timed else 1):
        del y
        start = time.perf_counter()
        y = mp.load(mpz)["w"]
        dec.append(time.perf_counter() - start)
    file_bytes = mpz.stat().st_size
    row = report.rows[0]
    bpw, sqnr = 8 * file_bytes / x.size, sqnr_db(x, y)
    out = {"options": options, "stored_as": row.method, "file_bytes": file_bytes,
           "bpw": bpw, "tensor_bpw": row.bits_per_weight, "sqnr_db": sqnr,
           "gap_bits": gap(bpw, sqnr), "report_sqnr_db": row.errors.sqnr_db}
    if timed:
        out |= {"compress_mb_s": x.nbytes / MB / statistics.median(comp),
                "decompress_mb_s": x.nbytes / MB / statistics.median(dec),
                "compress_runs_s": comp, "decompress_runs_s": dec}
    if row.errors.sqnr_db is not None and abs(row.errors.sqnr_db - sqnr) > 0.01:
        print(f"  note: the report says {row.errors.sqnr_db:.3f} dB, measured {sqnr:.3f} dB",
              file=sys.stderr)
    mpz.unlink(missing_ok=True)
    return out


def gguf_types() -> tuple[dict, list[str]]:
    """The gguf quantization types this gguf can run, and notes on those it cannot."""
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize, quantize
    except ImportError:
        return {}, ["gguf is not installed (pip install -e .[bench]): no gguf baselines"]
    probe = np.random.default_rng(1).normal(0, SIGMA, (2, 256)).astype(np.float32)
    found, notes = {}, []
    for name in GGUF_TYPES:
        qtype = getattr(GGMLQuantizationType, name, None)
        if qtype is None:
            notes.append(f"gguf has no {name}: skipped")
            continue
        try:
            dequantize(quantize(probe, qtype), qtype)
        except Exception as e:  # e.g. NotImplementedError in older gguf releases
            notes.append(f"gguf cannot quantize {name} in numpy ({type(e).__name__}): skipped")
            continue
        found[name] = qtype
    return found, notes


def block_size(qtype) -> int:
    from gguf import GGML_QUANT_SIZES
    return GGML_QUANT_SIZES[qtype][0]


def run_gguf(x: np.ndarray, qtype, repeat: int, timed: bool = True) -> dict:
    from gguf.quants import dequantize, quantize
    qs, ds = [], []
    q = y = None
    for _ in range(repeat if timed else 1):
        del q
        start = time.perf_counter()
        q = quantize(x, qtype)
        qs.append(time.perf_counter() - start)
    for _ in range(repeat if timed else 1):
        del y
        start = time.perf_counter()
        y = dequantize(q, qtype)
        ds.append(time.perf_counter() - start)
    bpw, sqnr = 8 * q.nbytes / x.size, sqnr_db(x, y)
    out = {"bpw": bpw, "sqnr_db": sqnr, "gap_bits": gap(bpw, sqnr), "bytes": int(q.nbytes)}
    if timed:
        out |= {"compress_mb_s": x.nbytes / MB / statistics.median(qs),
                "decompress_mb_s": x.nbytes / MB / statistics.median(ds),
                "compress_runs_s": qs, "decompress_runs_s": ds}
    return out


# ---------------------------------------------------------------- the runs

def warm_up(workdir: Path, types: dict) -> None:
    """Run every setting once on a small tensor, untimed: numba compiles each kernel on its
    first call, which would otherwise land in the first timed run of each setting."""
    print("warm-up (numba compiles on first use)...", file=sys.stderr)
    x = np.random.default_rng(SEED).normal(0, SIGMA, (64, 256)).astype(np.float32)
    src, mpz = workdir / "warm-up.npz", workdir / "warm-up.mpz"
    np.savez(src, w=x)
    for _, _, options in [*fixed_settings(), ("", "", {"min_sqnr": 20.0})]:
        run_modelpress(src, mpz, x, options, 1, timed=False)
    for qtype in types.values():
        run_gguf(x, qtype, 1, timed=False)
    src.unlink()


def measure_distribution(dist: str, size: int, workdir: Path, repeat: int,
                         types: dict) -> dict:
    x = make_tensor(dist, size)
    src, mpz = workdir / f"{dist}-{size}.npz", workdir / f"{dist}-{size}.mpz"
    np.savez(src, w=x)
    rows = []
    for label, kind, options in fixed_settings():
        print(f"{dist}: modelpress {label}...", file=sys.stderr)
        rows.append({"setting": label, "kind": kind, "tool": "modelpress",
                     **run_modelpress(src, mpz, x, options, repeat)})
    for name, qtype in types.items():
        if x.shape[-1] % block_size(qtype):
            print(f"{dist}: gguf {name} skipped: the last dimension is not a multiple of "
                  f"{block_size(qtype)}", file=sys.stderr)
            continue
        print(f"{dist}: gguf {name}...", file=sys.stderr)
        rows.append({"setting": f"gguf {name}", "kind": "gguf", "tool": "gguf", "type": name,
                     **run_gguf(x, qtype, repeat)})
    for r in [r for r in rows if r["kind"] == "gguf"]:
        # the smallest modelpress file at least as accurate as this gguf format
        wanted = r["sqnr_db"]
        print(f"{dist}: modelpress min_sqnr={wanted:.3f} (= {r['type']})...", file=sys.stderr)
        rows.append({"setting": f"min-sqnr {wanted:.2f} (= {r['type']})", "kind": "pair",
                     "tool": "modelpress", "pair_of": r["type"],
                     **run_modelpress(src, mpz, x, {"min_sqnr": wanted}, repeat)})
    return {"file": str(src), "shape": list(x.shape), "std": float(x.std()),
            "rows": rows}


def measure_samples(workdir: Path, types: dict) -> list[dict]:
    folder = workdir / "samples"
    folder.mkdir(exist_ok=True)
    out = []
    settings = (("q4 g64", {"bits": 4}),
                ("q4 g16 s7", {"bits": 4, "group_size": 16, "scale_bits": 7}),
                ("target 4.5", {"target_bpw": 4.5}))
    for k, (file, name, x) in enumerate(sample_tensors()):
        print(f"sample {file}: {name}...", file=sys.stderr)
        x = x.astype(np.float32, copy=False)
        src, mpz = folder / f"t{k}.npz", folder / f"t{k}.mpz"
        np.savez(src, w=x)  # alone and under a neutral name: no size or name rule applies
        row = {"file": file, "tensor": name, "shape": list(x.shape), "results": {}}
        for label, options in settings:
            try:
                row["results"][label] = run_modelpress(src, mpz, x, options, 1, timed=False)
            except mp.ConfigError as e:  # a target below the file's fixed overhead
                row["results"][label] = {"error": str(e)}
        qtype = types.get("Q4_0")
        if qtype is not None and x.shape[-1] % block_size(qtype) == 0:
            row["results"]["gguf Q4_0"] = run_gguf(x, qtype, 1, timed=False)
        else:
            row["results"]["gguf Q4_0"] = {"error": "last dimension not a multiple of 32"
                                           if qtype is not None else "gguf has no Q4_0"}
        out.append(row)
    return out


def pairs(dists: dict) -> tuple[list[dict], list[dict]]:
    """Entropy-constrained at gguf's SQNR, and fixed width g16/s7 against gguf's formats."""
    entropy, fixed = [], []
    for dist, d in dists.items():
        by = {r["setting"]: r for r in d["rows"]}
        for r in d["rows"]:
            if r["kind"] != "pair":
                continue
            g = by[f"gguf {r['pair_of']}"]
            entropy.append({"distribution": dist, "gguf": r["pair_of"],
                            "gguf_bpw": g["bpw"], "gguf_sqnr_db": g["sqnr_db"],
                            "modelpress_bpw": r["bpw"], "modelpress_sqnr_db": r["sqnr_db"],
                            "bits_saved": g["bpw"] - r["bpw"],
                            "saved_fraction": 1 - r["bpw"] / g["bpw"]})
        for bits, name in FIXED_PAIRS:
            g, m = by.get(f"gguf {name}"), by.get(f"uniform q{bits} g16 s7")
            if g and m:
                fixed.append({"distribution": dist, "gguf": name, "bits": bits,
                              "gguf_bpw": g["bpw"], "gguf_sqnr_db": g["sqnr_db"],
                              "modelpress_bpw": m["bpw"], "modelpress_sqnr_db": m["sqnr_db"],
                              "db_more": m["sqnr_db"] - g["sqnr_db"]})
    return entropy, fixed


def criteria(dists: dict, entropy_pairs: list[dict], fixed_pairs: list[dict]) -> list[dict]:
    out = []
    worst = []
    for dist in GAP_DISTS:
        for r in dists[dist]["rows"]:
            t = r["options"].get("target_bpw") if r["kind"] == "entropy" else None
            if t is not None and round(t) in GAP_TARGETS:
                worst.append((r["gap_bits"], dist, t))
    ok = bool(worst) and all(g <= GAP_LIMIT for g, _, _ in worst)
    g, dist, t = max(worst) if worst else (float("nan"), "-", 0)
    out.append({"id": "i", "passed": ok,
                "rule": f"entropy-constrained gap <= {GAP_LIMIT} bit at every target 3..9 on "
                        "Gaussian and Laplacian",
                "detail": f"largest gap {g:+.3f} bit ({dist}, target {t:g})"})
    ps = [p for p in entropy_pairs if p["gguf"] in PAIRED]
    bad = [p for p in ps if p["modelpress_sqnr_db"] < p["gguf_sqnr_db"]
           or p["bits_saved"] < SAVED_AT_LEAST]
    least = min(ps, key=lambda p: p["bits_saved"]) if ps else None
    out.append({"id": "ii", "passed": bool(ps) and not bad and len(ps) == 3 * len(dists),
                "rule": f"for {', '.join(PAIRED)}: modelpress reaches at least the same SQNR "
                        f"with >= {SAVED_AT_LEAST} bit less (every distribution)",
                "detail": "no gguf pairs" if not least else
                f"least saved {least['bits_saved']:.3f} bit ({least['distribution']}, "
                f"{least['gguf']}); " + (f"{len(bad)} pair(s) short: " + ", ".join(
                    f"{p['distribution']} {p['gguf']} {p['bits_saved']:.3f} bit, "
                    f"{p['modelpress_sqnr_db'] - p['gguf_sqnr_db']:+.3f} dB" for p in bad)
                    if bad else "all pairs pass")})
    fs = [p for p in fixed_pairs if p["bits"] in FIXED_BITS]
    bad = [p for p in fs if p["db_more"] < FIXED_DB_AT_LEAST
           or p["modelpress_bpw"] > p["gguf_bpw"]]
    least = min(fs, key=lambda p: p["db_more"]) if fs else None
    out.append({"id": "iii", "passed": bool(fs) and not bad and len(fs) == 2 * len(dists),
                "rule": f"fixed width g16/s7 at 4 and 8 bits: >= {FIXED_DB_AT_LEAST} dB more "
                        "SQNR than Q4_0/Q8_0 at no more bpw (every distribution)",
                "detail": "no gguf pairs" if not least else
                f"least {least['db_more']:+.3f} dB ({least['distribution']}, q{least['bits']} "
                f"{least['modelpress_bpw']:.3f} vs {least['gguf']} {least['gguf_bpw']:.3f} bpw)"
                + (f"; {len(bad)} pair(s) short" if bad else "; all pairs pass")})
    return out


# ---------------------------------------------------------------- facts

def machine_facts() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), None)
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or None, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "gguf": ver("gguf"), "matplotlib": ver("matplotlib"),
            "modelpress": mp.__version__, **code_state(), "source_digest": source_digest(),
            "date": time.strftime("%Y-%m-%d")}


def source_digest() -> str:
    """A digest of modelpress_cli's .py files: compared at the end, it tells whether the code
    measured changed during the run."""
    h = hashlib.blake2b(digest_size=8)
    folder = Path(mp.__file__).parent
    for path in sorted(folder.rglob("*.py")):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


# ---------------------------------------------------------------- output

def f1(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def dist_table(rows: list[dict]) -> list[list[str]]:
    return [[r["setting"], r.get("stored_as", r.get("type", "")), f"{r['bpw']:.3f}",
             f"{r['sqnr_db']:.2f}", f"{r['gap_bits']:+.3f}", f1(r.get("compress_mb_s")),
             f1(r.get("decompress_mb_s"))] for r in rows]


DIST_HEAD = ["setting", "stored as", "bpw", "SQNR dB", "gap bits", "comp MB/s",
             "decomp MB/s"]


def entropy_pair_table(ps: list[dict]) -> list[list[str]]:
    return [[DIST_TITLES[p["distribution"]], p["gguf"] + ("" if p["gguf"] in PAIRED else " *"),
             f"{p['gguf_bpw']:.3f}", f"{p['gguf_sqnr_db']:.2f}", f"{p['modelpress_bpw']:.3f}",
             f"{p['modelpress_sqnr_db']:.2f}", f"{p['bits_saved']:.3f}",
             f"{p['saved_fraction']:.1%}"] for p in ps]


ENTROPY_PAIR_HEAD = ["distribution", "gguf", "gguf bpw", "gguf SQNR", "modelpress bpw",
                     "modelpress SQNR", "bits saved", "smaller by"]


def fixed_pair_table(ps: list[dict]) -> list[list[str]]:
    return [[DIST_TITLES[p["distribution"]], p["gguf"], f"{p['gguf_bpw']:.3f}",
             f"{p['gguf_sqnr_db']:.2f}", f"q{p['bits']} g16 s7", f"{p['modelpress_bpw']:.3f}",
             f"{p['modelpress_sqnr_db']:.2f}", f"{p['db_more']:+.2f}"] for p in ps]


FIXED_PAIR_HEAD = ["distribution", "gguf", "gguf bpw", "gguf SQNR", "modelpress",
                   "modelpress bpw", "modelpress SQNR", "dB more"]
SAMPLE_SETTINGS = ("q4 g64", "q4 g16 s7", "target 4.5", "gguf Q4_0")


def sample_cell(r: dict) -> str:
    if "error" in r:
        return "—"
    return f"{r.get('tensor_bpw', r['bpw']):.2f} / {r['sqnr_db']:.1f}"


def sample_table(samples: list[dict]) -> list[list[str]]:
    return [[s["file"], s["tensor"], "×".join(map(str, s["shape"])),
             *(sample_cell(s["results"][k]) for k in SAMPLE_SETTINGS)] for s in samples]


SAMPLE_HEAD = ["file", "tensor", "shape", *(f"{k}: bpw / dB" for k in SAMPLE_SETTINGS)]


def print_plain(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    for row in (head, *rows):
        print("  ".join(c.ljust(w) if k < 2 else c.rjust(w)
                        for k, (c, w) in enumerate(zip(row, widths, strict=True))))


def markdown(head: list[str], rows: list[list[str]], left: int = 2) -> str:
    align = ["---" if k < left else "---:" for k in range(len(head))]
    lines = [head, align, *rows]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                     for line in lines)


def print_result(result: dict) -> None:
    m = result["machine"]
    print(f"{result['size']}x{result['size']} float32 per distribution; {m['cpu']}, "
          f"{m['cpu_count']} cores, Python {m['python']}, numpy {m['numpy']}, gguf {m['gguf']}; "
          f"median of {result['repeat']}")
    for dist, d in result["distributions"].items():
        print(f"\n{DIST_TITLES[dist]} (std {d['std']:.5f})")
        print_plain(DIST_HEAD, dist_table(d["rows"]))
    print("\nEntropy-constrained (min_sqnr = gguf's SQNR) against gguf")
    print_plain(ENTROPY_PAIR_HEAD, entropy_pair_table(result["entropy_pairs"]))
    print("\nFixed width g16/s7 against gguf")
    print_plain(FIXED_PAIR_HEAD, fixed_pair_table(result["fixed_pairs"]))
    print("\nSample-model tensors (bpw of the tensor's stored bytes / SQNR dB)")
    print_plain(SAMPLE_HEAD, sample_table(result["samples"]))
    for note in result["notes"]:
        print(f"note: {note}")
    print("\nDone criteria" + ("" if result["size"] == 4096 else
                               f" (they are set for --size 4096; this run: {result['size']})"))
    for c in result["criteria"]:
        print(f"  ({c['id']}) {'PASS' if c['passed'] else 'FAIL'}: {c['rule']}: {c['detail']}")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = result["distributions"]
    fig, axes = plt.subplots(1, len(dists), figsize=(5.2 * len(dists), 4.8), sharey=True)
    axes = np.atleast_1d(axes)
    xs = np.linspace(0, 9.6, 50)
    for ax, (dist, d) in zip(axes, dists.items(), strict=True):
        rows = d["rows"]

        def pick(kind, rows=rows):
            sel = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["bpw"])
            return [r["bpw"] for r in sel], [r["sqnr_db"] for r in sel], sel

        ax.plot(xs, DB_PER_BIT * xs, "--", color="0.45", lw=1,
                label="Gaussian bound: 6.02 dB per bit")
        ax.plot(xs, DB_PER_BIT * (xs - 0.2546), ":", color="0.6", lw=1,
                label="bound − 1.53 dB (ideal ECSQ, high rate)")
        x, y, _ = pick("fixed")
        ax.plot(x, y, "o-", color="tab:blue", ms=4, lw=1, label="modelpress uniform, g64")
        x, y, _ = pick("fixed-g16")
        ax.plot(x, y, "s", color="tab:cyan", ms=6, mec="k", mew=0.5,
                label="modelpress uniform, g16 s7")
        x, y, _ = pick("codebook")
        ax.plot(x, y, "^", color="tab:purple", ms=5, label="modelpress kmeans / nf / auto")
        x, y, _ = pick("entropy")
        ax.plot(x, y, "o-", color="tab:green", ms=4, lw=1.5,
                label="modelpress entropy-constrained")
        x, y, _ = pick("pair")
        ax.plot(x, y, "D", color="tab:green", ms=5, mec="k", mew=0.5,
                label="  … at gguf's SQNR (min_sqnr)")
        x, y, sel = pick("gguf")
        ax.plot(x, y, "X", color="tab:red", ms=8, mec="k", mew=0.5, label="gguf (llama.cpp)")
        for r in sel:
            low = r["type"] == "MXFP4"  # next to Q4_0: its label goes lower
            ax.annotate(r["type"], (r["bpw"], r["sqnr_db"]), textcoords="offset points",
                        xytext=(6, -20 if low else -10), fontsize=8, color="tab:red")
        ax.set_title(f"{DIST_TITLES[dist]}, {d['shape'][0]}×{d['shape'][1]}")
        ax.set_xlabel("bits per weight (whole file)")
        ax.set_xlim(0, 9.6)
        ax.set_ylim(0, 60)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SQNR dB (measured)")
    axes[0].legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def docs_section(result: dict) -> str:
    m = result["machine"]
    out = [f"Measured on {m['date']} with `{result['command']}`. Synthetic tensors are "
           f"{result['size']}×{result['size']} float32, standard deviation {SIGMA}, "
           f"`np.random.default_rng({SEED})`; every modelpress run passes `min_elements=0`. "
           "Bits per weight count the whole .mpz file (8 × file bytes / weights) or gguf's "
           "quantized array; SQNR is measured by the script from the decoded tensor; "
           f"gap = bpw − SQNR / {DB_PER_BIT:.4f}.",
           "",
           "![SQNR against bits per weight](quality.png)",
           "",
           "### Entropy-constrained against llama.cpp's formats, at the same SQNR",
           "",
           "modelpress run with `min_sqnr` set to the SQNR gguf's quantizer reached on the same "
           "tensor: the smallest file at least as accurate.",
           "",
           markdown(ENTROPY_PAIR_HEAD, entropy_pair_table(result["entropy_pairs"])),
           ""]
    if any(p["gguf"] not in PAIRED for p in result["entropy_pairs"]):
        out += ["\\* MXFP4 is shown for information; the comparisons above are for Q8_0, Q5_0 "
                "and Q4_0.", ""]
    out += ["### Fixed width against llama.cpp's formats, at their size",
            "",
            "`--bits B --group-size 16 --scale-bits 7` (B + 0.5 bpw before zstd, like "
            "Q4_0/Q5_0/Q8_0's 32-weight blocks with a float16 scale):",
            "",
            markdown(FIXED_PAIR_HEAD, fixed_pair_table(result["fixed_pairs"])),
            "",
            "### Checks",
            ""]
    for c in result["criteria"]:
        out.append(f"- ({c['id']}) **{'pass' if c['passed'] else 'FAIL'}**: {c['rule']}: "
                   f"{c['detail']}.")
    out += ["", "### Every setting, per distribution", "",
            "Speeds are MB/s of float32 weights, median of "
            f"{result['repeat']} run{'s' if result['repeat'] > 1 else ''}, after an untimed "
            "warm-up run of every setting on a small tensor (numba compiles on first use). "
            "modelpress: "
            f"compress = the whole `mp.compress` call (read the .npz, encode on "
            f"{m['cpu_count']} threads, round-trip check, write the .mpz); decompress = "
            "`mp.load` of the .mpz (decode into memory, nothing written). gguf: its numpy "
            "`quantize()` / `dequantize()` calls alone, in the same process.", ""]
    for dist, d in result["distributions"].items():
        out += [f"**{DIST_TITLES[dist]}**", "", markdown(DIST_HEAD, dist_table(d["rows"])), ""]
    out += ["### Sample-model tensors", "",
            "Every 2-D float tensor of `digits_mlp.h5`, `digits_cnn.npz` and "
            "`charlm.safetensors`, each compressed alone under a neutral name (so no size or "
            "embedding rule applies). Cells are bits per weight / SQNR dB; for modelpress the "
            "bits are the tensor's own stored bytes (codes, scales, tables): the .mpz's header "
            "and index add a fixed "
            f"{result['samples_overhead_bytes'][0]}–{result['samples_overhead_bytes'][1]} "
            "bytes per file, which weigh several bits per weight on tensors this small. "
            "`--target-bpw 4.5` counts them, so its tensors get less than 4.5 and the "
            "smallest cannot be made at all (—). gguf Q4_0 needs a last dimension that is a "
            "multiple of 32 (— otherwise).", "",
            markdown(SAMPLE_HEAD, sample_table(result["samples"]), left=3), "",
            "### Machine", "",
            f"- {m['cpu']}, {m['cpu_count']} cores, {m['platform']}",
            f"- Python {m['python']}, numpy {m['numpy']}, gguf {m['gguf']}, matplotlib "
            f"{m['matplotlib']}, modelpress {m['modelpress']} at "
            f"{m['commit'][:10] if m['commit'] else 'a folder outside git'}"
            f"{' + uncommitted changes' if m['uncommitted_changes'] else ''}",
            f"- command: `{result['command']}`"]
    out += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(out)


def write_docs(result: dict) -> None:
    text = DOC.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{DOC}: expected one {BEGIN} … {END} section")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    DOC.write_text(f"{head}{BEGIN}\n{docs_section(result)}\n{END}{tail}")
    plot(result, PLOT)
    print(f"wrote {DOC.relative_to(ROOT)} (results section) and {PLOT.relative_to(ROOT)}",
          file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096,
                        help="the synthetic tensors are SIZE x SIZE (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir(), "modelpress-quality-bench"),
                        help="where the synthetic .npz files are written (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite the results section of docs/quality.md and "
                             "docs/quality.png")
    opts = parser.parse_args()
    if opts.repeat < 1 or opts.size < 8:
        parser.error("--repeat must be positive and --size at least 8")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    types, notes = gguf_types()
    started = time.perf_counter()
    warm_up(opts.workdir, types)
    dists = {d: measure_distribution(d, opts.size, opts.workdir, opts.repeat, types)
             for d in DISTRIBUTIONS}
    samples = measure_samples(opts.workdir, types)
    overheads = [r["file_bytes"] - r["tensor_bpw"] * np.prod(s["shape"]) / 8
                 for s in samples for r in s["results"].values() if "tensor_bpw" in r]
    entropy_pairs, fixed_pairs = pairs(dists)
    if source_digest() != facts["source_digest"]:
        notes.append("modelpress_cli's files changed on disk during this run: the code "
                     "measured is what was imported at the start (the commit above); run "
                     "again to measure the new one")
    result = {"command": command_line(), "machine": facts, "size": opts.size,
              "repeat": opts.repeat, "sigma": SIGMA, "seed": SEED,
              "seconds": round(time.perf_counter() - started, 1),
              "distributions": dists, "entropy_pairs": entropy_pairs,
              "fixed_pairs": fixed_pairs, "samples": samples,
              "samples_overhead_bytes": [int(min(overheads)), int(max(overheads))]
              if overheads else [0, 0],
              "criteria": criteria(dists, entropy_pairs, fixed_pairs), "notes": notes}
    print_result(result)
    print(f"\n{result['seconds']:.0f} s in all", file=sys.stderr)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    if opts.write_docs:
        write_docs(result)


if __name__ == "__main__":
    main()
