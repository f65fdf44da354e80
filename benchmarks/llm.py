"""Compress and decompress speed and peak memory on a big LLM-shaped .safetensors model.

Run by hand (not in CI), once per size, then check that peak memory did not grow with the model:

    python benchmarks/llm.py --size-gb 1 --json llm-1gb.json
    python benchmarks/llm.py --size-gb 4 --json llm-4gb.json
    python benchmarks/llm.py --compare llm-1gb.json llm-4gb.json

The model is random normal (sigma 0.02, fixed seed) in the shape of a Llama-style decoder with
TinyLlama-1.1B's widths: d_model 2048, MLP 5632, vocab 32000; per layer q/k/v/o (2048x2048),
gate/up (5632x2048), down (2048x5632) and two norms; then a final norm and an lm_head. Only the
number of layers follows --size-gb, so the largest tensor (the 32000x2048 embedding) is the same
for every size of a dtype. It is generated once, a tensor at a time, into --workdir and reused.

Each modelpress figure is the median of --repeat runs, each in a fresh process (peak RSS is that
run's own VmHWM, the highest of the runs). Compress is timed from before modelpress is imported,
start-up included; the start-up (imports, numba loading its cached kernels, and a warm-up compress
of a tiny file of the model's dtype) is also reported apart, and "warm" MB/s leaves it out: what a
library caller sees from its second file. MB/s is of the input file (compress) or of the tensors
written (decompress) or decoded in memory (decode, through mp.open, nothing written); compress runs
on every core; decompress and decode go a tensor at a time, each big tensor's kernels split over
every core (parallel.py). Baselines in the same run: gguf's numpy Q8_0 and Q4_0
(quantize/dequantize calls alone over the 2-D tensors, float32 input, one thread), zstd level 3
alone, streaming over the file's bytes (one thread), and the model file copied to a new file with
fsync (the disk's own ceiling for decompress).

Each 8-bit and 4-bit compress run is followed at once by a gguf Q8_0 or Q4_0 run, and "x gguf" is
the median of those pairs' speed ratios: on a shared virtual machine whose speed drifts by a
third over minutes, a ratio of runs seconds apart moves far less than one of medians taken minutes
apart. Every timed run reads its input from the page cache: the file is read through first,
untimed (the machine may page out memory left idle for a minute, its page cache included).
Prints a table, checks peak RSS <= 400 MB + 4 x the largest tensor's bytes, and writes JSON
(--json).
"""

from __future__ import annotations

import argparse
import compileall
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from provenance import code_state  # noqa: E402

import modelpress_cli  # noqa: E402
from modelpress_cli.formats.base import DTYPES, TensorInfo  # noqa: E402
from modelpress_cli.formats.safetensors import (  # noqa: E402
    SafetensorsReader,
    write_safetensors,
)

D_MODEL, FFN, VOCAB, SEED = 2048, 5632, 32000, 0
SETTINGS = {"8-bit": {"bits": 8}, "4-bit": {"bits": 4},
            "4-bit + 50% pruning": {"bits": 4, "prune": 0.5}}
#: the gguf type run beside each compress of these settings, and compared with it
PAIRED = {"8-bit": "Q8_0", "4-bit": "Q4_0"}
MB = 1e6
BOUND_BASE, BOUND_PER_LARGEST = 400 * MB, 4  # the spec: peak RSS <= 400 MB + 4 x largest tensor
COMPARE_TOLERANCE = 0.10

CHILD = """
import ast, json, re, sys, time
args = ast.literal_eval(sys.argv[1])
op = args.pop("op")
out = {}
if op == "gguf":
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from modelpress_cli.formats.safetensors import SafetensorsReader
    qtype = GGMLQuantizationType[args["qtype"]]
    out = {"quantize_s": 0.0, "dequantize_s": 0.0, "float32_bytes": 0, "quantized_bytes": 0,
           "quantized_params": 0, "other_bytes": 0}
    with SafetensorsReader(args["src"]) as reader:
        for info in reader.infos():
            if len(info.shape) != 2:  # norms: gguf keeps them as they are
                out["other_bytes"] += info.n_bytes
                continue
            x = reader.read(info.name).astype(np.float32, copy=False)  # not timed
            start = time.perf_counter()
            q = quantize(x, qtype)
            out["quantize_s"] += time.perf_counter() - start
            start = time.perf_counter()
            y = dequantize(q, qtype)
            out["dequantize_s"] += time.perf_counter() - start
            out["float32_bytes"] += x.nbytes
            out["quantized_bytes"] += q.nbytes
            out["quantized_params"] += x.size
            del x, q, y
elif op == "decode":  # every tensor decoded into memory and dropped: no file written
    import modelpress_cli as mp
    start = time.perf_counter()
    with mp.open(args["src"]) as weights:
        out["float32_bytes"] = sum(weights[name].nbytes for name in weights)
    out["seconds"] = time.perf_counter() - start
else:
    start = time.perf_counter()
    import modelpress_cli as mp
    warmup, src, dst = args.pop("warmup", None), args.pop("src"), args.pop("dst")
    if warmup:  # start-up (imports, numba loading its kernels) timed apart, on a tiny file
        getattr(mp, op)(warmup, dst, force=True, **args)
    out["startup_s"] = time.perf_counter() - start
    result = getattr(mp, op)(src, dst, force=True, **args)
    out["seconds"] = time.perf_counter() - start
    if op == "compress":
        out["ratio"], out["bits_per_weight"] = result.ratio, result.bits_per_weight
peak_kb = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
out["peak_rss"] = int(peak_kb) * 1024
print(json.dumps(out))
"""


class ModelReader:
    """Just enough of a TensorReader for our streaming writer: each tensor is made when read."""

    format, metadata = "safetensors", {"__metadata__": {"format": "pt"}}  # as HF files have

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: str, seed: int) -> None:
        self._infos = [TensorInfo(n, s, dtype) for n, s in shapes.items()]
        self._index = {n: k for k, n in enumerate(shapes)}
        self._seed = seed

    def infos(self):
        return iter(self._infos)

    def read(self, name: str) -> np.ndarray:
        info = self._infos[self._index[name]]
        rng = np.random.default_rng([self._seed, self._index[name]])  # distinct: no tied weights
        x = rng.standard_normal(info.shape, dtype=np.float32)
        x *= 0.02
        return x.astype(DTYPES[info.dtype], copy=False)


def model_shapes(n_layers: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes in file order, named and laid out like a Hugging Face Llama."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, D_MODEL)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (D_MODEL,)}
        shapes |= {f"{p}self_attn.{m}_proj.weight": (D_MODEL, D_MODEL) for m in "qkvo"}
        shapes |= {p + "post_attention_layernorm.weight": (D_MODEL,),
                   p + "mlp.gate_proj.weight": (FFN, D_MODEL),
                   p + "mlp.up_proj.weight": (FFN, D_MODEL),
                   p + "mlp.down_proj.weight": (D_MODEL, FFN)}
    shapes |= {"model.norm.weight": (D_MODEL,), "lm_head.weight": (VOCAB, D_MODEL)}
    return shapes


def layers_for(size_bytes: float, itemsize: int) -> int:
    """The layer count whose model is nearest `size_bytes` (at least one layer)."""
    fixed = (2 * VOCAB * D_MODEL + D_MODEL) * itemsize
    per_layer = (4 * D_MODEL * D_MODEL + 3 * D_MODEL * FFN + 2 * D_MODEL) * itemsize
    return max(1, round((size_bytes - fixed) / per_layer))


def make_model(workdir: Path, size_gb: float, dtype: str) -> tuple[Path, list[TensorInfo]]:
    """The cached model file (written on first use, atomically) and its tensors."""
    n_layers = layers_for(size_gb * 1e9, DTYPES[dtype].itemsize)
    shapes = model_shapes(n_layers)
    path = workdir / (f"llm-d{D_MODEL}-ffn{FFN}-vocab{VOCAB}-L{n_layers}-{dtype}-seed{SEED}"
                      ".safetensors")
    expected = [(n, s, dtype) for n, s in shapes.items()]
    if path.exists():
        try:
            with SafetensorsReader(path) as reader:  # checks the ranges tile the whole file
                if [(i.name, i.shape, i.dtype) for i in reader.infos()] == expected:
                    print(f"reusing {path}", file=sys.stderr)
                    return path, list(reader.infos())
        except modelpress_cli.FormatError:
            pass
    print(f"writing {path} ({n_layers} layers)...", file=sys.stderr)
    partial = path.with_name(path.name + ".partial")
    start = time.perf_counter()
    write_safetensors(partial, ModelReader(shapes, dtype, SEED), lambda _: None)
    os.replace(partial, path)
    print(f"  {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)
    with SafetensorsReader(path) as reader:
        return path, list(reader.infos())


def run_child(args: dict) -> dict:
    """What the child reports (seconds, peak RSS in bytes, ...), from a fresh interpreter.

    The output of the run before is deleted first, outside the timing, as measure_disk_write
    does: replacing a big file costs the file system's delete (4.3 s for 4 GB on our ext4,
    mounted with `discard`), which is not modelpress's work and would hide it.
    """
    if "dst" in args:
        Path(args["dst"]).unlink(missing_ok=True)
    # Peak RSS comes from the child's own VmHWM: ru_maxrss would include the parent's at fork.
    # cwd and PYTHONPATH: the child imports this checkout's modelpress_cli, as the parent does
    # (`python -c` puts the working folder first on sys.path).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", CHILD, repr(args)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"benchmark run failed: {args}\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def read_through(path: Path) -> None:
    """Bring the file into the page cache (untimed): what the next run reads comes from memory."""
    buffer = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def tensor_bytes(path: Path) -> int:
    with SafetensorsReader(path) as reader:
        return sum(i.n_bytes for i in reader.infos())


def prime(warmup: Path, workdir: Path, settings: dict) -> None:
    """Compress and decompress the tiny file once, untimed: numba compiles a kernel the
    first time a new build meets a new input type (seconds), and caches it on disk. And
    compile the checkout's bytecode, as `pip install` does for an installed package: where
    PYTHONDONTWRITEBYTECODE is set, every start-up would compile modelpress's modules."""
    compileall.compile_dir(ROOT / "modelpress_cli", quiet=1)
    mpz, back = workdir / "prime.mpz", workdir / f"prime{warmup.suffix}"
    run_child({"op": "compress", "src": str(warmup), "dst": str(mpz), **settings})
    run_child({"op": "decompress", "src": str(mpz), "dst": str(back)})
    mpz.unlink()
    back.unlink()


def timed_run(args: dict, reads: Path) -> dict:
    """run_child(args) with `reads` in the page cache first."""
    read_through(reads)
    return run_child(args)


def measure_modelpress(src: Path, workdir: Path, repeat: int, bound: float,
                       params: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """The modelpress rows, and the gguf runs made beside them (PAIRED), by gguf type. The
    pairs are compared in weights a second: gguf's input is float32 even for a bfloat16
    model (the cast is not timed)."""
    file_mb = src.stat().st_size / MB
    with SafetensorsReader(src) as reader:
        dtype = next(reader.infos()).dtype
    warmup = workdir / f"warmup-{dtype}.safetensors"  # a 2-D and a 1-D tensor, as the model has
    write_safetensors(warmup, ModelReader({"w.weight": (256, 256), "norm.weight": (256,)},
                                          dtype, SEED), lambda _: None)
    rows, gguf_runs = [], {}
    for k, (label, settings) in enumerate(SETTINGS.items()):
        mpz, back = workdir / f"out{k}.mpz", workdir / "back.safetensors"
        qtype = PAIRED.get(label)
        print(f"modelpress {label}: compress{f', each run then gguf {qtype}' if qtype else ''}"
              "...", file=sys.stderr)
        prime(warmup, workdir, settings)
        comp, pairs = [], []
        for _ in range(repeat):
            comp.append(timed_run({"op": "compress", "src": str(src), "dst": str(mpz),
                                   "warmup": str(warmup), **settings}, src))
            if qtype:
                pairs.append(timed_run({"op": "gguf", "src": str(src), "qtype": qtype}, src))
        print(f"modelpress {label}: decompress...", file=sys.stderr)
        dec = [timed_run({"op": "decompress", "src": str(mpz), "dst": str(back)}, mpz)
               for _ in range(repeat)]
        print(f"modelpress {label}: decode in memory...", file=sys.stderr)
        decode = [timed_run({"op": "decode", "src": str(mpz)}, mpz) for _ in range(repeat)]
        out_mb = tensor_bytes(back) / MB
        comp_rss, dec_rss = max(c["peak_rss"] for c in comp), max(d["peak_rss"] for d in dec)
        rows.append({"setting": label, "options": settings,
                     "ratio": round(comp[0]["ratio"], 3),
                     "bits_per_weight": round(comp[0]["bits_per_weight"], 3),
                     "compress_mb_s": round(file_mb / statistics.median(
                         c["seconds"] for c in comp), 1),
                     "compress_warm_mb_s": round(file_mb / statistics.median(
                         c["seconds"] - c["startup_s"] for c in comp), 1),
                     "startup_s": round(statistics.median(c["startup_s"] for c in comp), 2),
                     "decompress_mb_s": round(out_mb / statistics.median(
                         d["seconds"] for d in dec), 1),
                     "decode_mb_s": round(decode[0]["float32_bytes"] / MB / statistics.median(
                         d["seconds"] for d in decode), 1),
                     "compress_peak_rss_mb": round(comp_rss / MB),
                     "decompress_peak_rss_mb": round(dec_rss / MB),
                     "within_bound": max(comp_rss, dec_rss) <= bound,
                     "compress_runs_s": [round(c["seconds"], 3) for c in comp],
                     "decompress_runs_s": [round(d["seconds"], 3) for d in dec]})
        if qtype:
            gguf_rate = [g["quantized_params"] / g["quantize_s"] for g in pairs]  # weights/s
            rows[-1]["vs_gguf"] = {
                "gguf_type": qtype,
                "fresh": round(statistics.median(
                    params / c["seconds"] / g for c, g in zip(comp, gguf_rate, strict=True)), 2),
                "warm": round(statistics.median(
                    params / (c["seconds"] - c["startup_s"]) / g
                    for c, g in zip(comp, gguf_rate, strict=True)), 2),
                "gguf_runs_mb_s": [round(g["float32_bytes"] / MB / g["quantize_s"], 1)
                                   for g in pairs]}
            gguf_runs[qtype] = pairs
    return rows, gguf_runs


def gguf_rows(runs_by_type: dict[str, list[dict]], file_bytes: int, params: int) -> list[dict]:
    """The baseline rows, from the gguf runs made beside modelpress's (medians)."""
    rows = []
    for qtype, runs in runs_by_type.items():
        r = runs[0]
        stored = r["quantized_bytes"] + r["other_bytes"]  # the 1-D norms kept as they are
        rows.append({"setting": f"gguf {qtype}", "float32_mb": round(r["float32_bytes"] / MB),
                     "ratio": round(file_bytes / stored, 3),
                     "bits_per_weight": round(8 * stored / params, 3),
                     "quantize_mb_s": round(r["float32_bytes"] / MB / statistics.median(
                         x["quantize_s"] for x in runs), 1),
                     "dequantize_mb_s": round(r["float32_bytes"] / MB / statistics.median(
                         x["dequantize_s"] for x in runs), 1),
                     "peak_rss_mb": round(max(x["peak_rss"] for x in runs) / MB)})
    return rows


class _Counter:
    """A write-only sink that only counts bytes."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data) -> int:
        self.n += len(data)
        return len(data)


def measure_zstd(src: Path, params: int, repeat: int) -> dict:
    """The baseline: zstd level 3, one thread, streaming over the file's bytes, in this process."""
    print("zstd -3...", file=sys.stderr)
    times, out = [], 0
    for _ in range(repeat):
        sink = _Counter()
        read_through(src)
        with open(src, "rb") as f:
            start = time.perf_counter()
            zstandard.ZstdCompressor(level=3).copy_stream(f, sink, read_size=1 << 20)
            times.append(time.perf_counter() - start)
        out = sink.n
    return {"setting": "zstd -3", "ratio": round(src.stat().st_size / out, 3),
            "bits_per_weight": round(8 * out / params, 3),
            "compress_mb_s": round(src.stat().st_size / MB / statistics.median(times), 1)}


def measure_disk_write(src: Path, workdir: Path, repeat: int) -> dict:
    """The ceiling for decompress to a file: the model's own bytes copied to a new file in
    --workdir (16 MiB writes from the page cache, then fsync), one thread, in this process."""
    print("disk write...", file=sys.stderr)
    times, dst = [], workdir / "copy.bin"
    for _ in range(repeat):
        read_through(src)
        with open(src, "rb") as f, open(dst, "wb") as out:
            start = time.perf_counter()
            while chunk := f.read(16 << 20):
                out.write(chunk)
            os.fsync(out.fileno())
            times.append(time.perf_counter() - start)
        dst.unlink()
    return {"setting": "copy + fsync",
            "write_mb_s": round(src.stat().st_size / MB / statistics.median(times), 1)}


def machine_facts() -> dict:
    from importlib.metadata import version
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "gguf": version("gguf"), "zstandard": zstandard.__version__,
            "modelpress": modelpress_cli.__version__, **code_state(),
            "date": time.strftime("%Y-%m-%d")}


def print_table(result: dict) -> None:
    m, model, bound = result["machine"], result["model"], result["memory_bound"]
    print(f"{model['file_bytes'] / 1e9:.2f} GB LLM-shaped {model['dtype']} .safetensors "
          f"(d_model {D_MODEL}, ffn {FFN}, vocab {VOCAB}, {model['layers']} layers, "
          f"{model['tensors']} tensors, {model['params'] / 1e6:.0f}M params; largest "
          f"{model['largest_tensor']} {model['largest_tensor_bytes'] / MB:.0f} MB)")
    print(f"{m['machine']}, {m['cpu_count']} cores, Python {m['python']}, numpy {m['numpy']}, "
          f"gguf {m['gguf']}; median of {result['repeat']}; modelpress at "
          f"{m['commit'][:10] if m['commit'] else 'a folder outside git'}"
          f"{' + uncommitted changes' if m['uncommitted_changes'] else ''}")
    print(f"{'setting':22} {'ratio':>6} {'bits/w':>7} {'comp MB/s':>10} {'warm':>7} "
          f"{'decomp MB/s':>12} {'decode MB/s':>12} {'comp RSS':>9} {'decomp RSS':>10}  bound")
    for r in result["rows"]:
        print(f"{r['setting']:22} {r['ratio']:>6} {r['bits_per_weight']:>7} "
              f"{r['compress_mb_s']:>10} {r['compress_warm_mb_s']:>7} {r['decompress_mb_s']:>12} "
              f"{r.get('decode_mb_s', ''):>12} "
              f"{r['compress_peak_rss_mb']:>7}MB {r['decompress_peak_rss_mb']:>8}MB  "
              f"{'ok' if r['within_bound'] else 'OVER'}")
    for r in result["baselines"]["gguf"]:
        print(f"{r['setting'] + ' (numpy)':22} {r['ratio']:>6} {r['bits_per_weight']:>7} "
              f"{r['quantize_mb_s']:>10} {'':>7} {'':>12} {r['dequantize_mb_s']:>12} "
              f"{r['peak_rss_mb']:>7}MB {'':>10}")
    for r in result["rows"]:
        if "vs_gguf" in r:
            v = r["vs_gguf"]
            print(f"{r['setting']} against gguf {v['gguf_type']}, each run beside one of "
                  f"gguf's: {v['fresh']}x fresh, {v['warm']}x warm (median of the pairs' "
                  f"ratios of weights a second; gguf ran at "
                  f"{', '.join(map(str, v['gguf_runs_mb_s']))} MB/s of float32)")
    z = result["baselines"]["zstd3"]
    print(f"{'zstd -3 alone':22} {z['ratio']:>6} {z['bits_per_weight']:>7} "
          f"{z['compress_mb_s']:>10} {'':>12}")
    print(f"{'copy file + fsync':22} {'':>6} {'':>7} {'':>10} {'':>7} "
          f"{result['baselines']['disk_write']['write_mb_s']:>12}")
    print(f"modelpress: whole compress() call (read, encode on {m['cpu_count']} threads, "
          "error measured, write, fsync) in a fresh process, start-up included (median "
          f"{statistics.median(r['startup_s'] for r in result['rows']):.2f} s: imports, numba "
          "loading its cached kernels); warm = the same call without start-up, as a library "
          "caller sees from its second file; decompress() (decode with big tensors split over "
          "the cores, write, fsync); "
          "decode = every tensor of mp.open() decoded into memory, "
          "nothing written; MB/s of the file read or the float32 tensors produced. Embeddings "
          "and lm_head get at least 8 bits (--embed-bits).")
    print("gguf: the quantize()/dequantize() calls alone, single-threaded numpy, over the 2-D "
          "tensors as float32 (MB/s of float32); norms kept as stored. zstd: one thread, "
          "streaming. copy file + fsync: the model's bytes written to a new file, the "
          "ceiling for decompress to a file.")
    print(f"memory bound: peak RSS <= 400 MB + 4 x {model['largest_tensor_bytes'] / MB:.0f} MB "
          f"= {bound['bound_bytes'] / MB:.0f} MB: "
          f"{'holds' if bound['holds'] else 'DOES NOT HOLD'} (highest: "
          f"{bound['highest_peak_rss_mb']} MB)")


def compare(a_path: Path, b_path: Path) -> int:
    """Peak RSS of two runs (1 GB and 4 GB models) within COMPARE_TOLERANCE: exit status."""
    a, b = (json.loads(p.read_text()) for p in (a_path, b_path))
    ok = True
    print(f"A: {a_path} ({a['model']['file_bytes'] / 1e9:.2f} GB, {a['model']['dtype']}, "
          f"{a['model']['layers']} layers)")
    print(f"B: {b_path} ({b['model']['file_bytes'] / 1e9:.2f} GB, {b['model']['dtype']}, "
          f"{b['model']['layers']} layers)")
    if a["model"]["largest_tensor_bytes"] != b["model"]["largest_tensor_bytes"]:
        print("the largest tensors differ: the two runs do not isolate the model's size")
        ok = False
    b_rows = {r["setting"]: r for r in b["rows"]}
    print(f"{'setting':22} {'peak RSS':>10} {'A':>7} {'B':>7} {'B/A':>7}")
    for ra in a["rows"]:
        rb = b_rows.get(ra["setting"])
        if rb is None:
            print(f"{ra['setting']:22} missing from B")
            ok = False
            continue
        for op in ("compress", "decompress"):
            x, y = ra[f"{op}_peak_rss_mb"], rb[f"{op}_peak_rss_mb"]
            within = max(x, y) <= (1 + COMPARE_TOLERANCE) * min(x, y)
            ok &= within
            print(f"{ra['setting']:22} {op:>10} {x:>5}MB {y:>5}MB {y / x:>7.3f} "
                  f"{'ok' if within else 'DIFFERS'}")
    print(f"peak RSS within {COMPARE_TOLERANCE:.0%} between the two sizes: "
          f"{'yes' if ok else 'NO'}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir(), "modelpress-llm-bench"),
                        help="where the generated model is cached (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("A.json", "B.json"),
                        help="only check that two runs' peak RSS figures are within 10%%")
    opts = parser.parse_args()
    if opts.compare:
        raise SystemExit(compare(*opts.compare))
    if opts.repeat < 1 or opts.size_gb <= 0:
        parser.error("--repeat and --size-gb must be positive")
    facts = machine_facts()
    opts.workdir = opts.workdir.resolve()  # the children run in ROOT
    opts.workdir.mkdir(parents=True, exist_ok=True)
    src, infos = make_model(opts.workdir, opts.size_gb, opts.dtype)
    largest = max(infos, key=lambda i: i.n_bytes)
    params, file_bytes = sum(i.size for i in infos), src.stat().st_size
    bound = BOUND_BASE + BOUND_PER_LARGEST * largest.n_bytes
    try:
        zstd = measure_zstd(src, params, opts.repeat)
        disk = measure_disk_write(src, opts.workdir, opts.repeat)
        rows, gguf_runs = measure_modelpress(src, opts.workdir, opts.repeat, bound, params)
    finally:  # the outputs are as big as the model; only the model is worth keeping
        for p in [opts.workdir / "back.safetensors", opts.workdir / "copy.bin",
                  *opts.workdir.glob("warmup-*.safetensors"),
                  *(opts.workdir / f"out{k}.mpz" for k in range(len(SETTINGS)))]:
            p.unlink(missing_ok=True)
    highest = max(max(r["compress_peak_rss_mb"], r["decompress_peak_rss_mb"]) for r in rows)
    result = {"machine": facts,
              "model": {"size_gb": opts.size_gb, "dtype": opts.dtype, "d_model": D_MODEL,
                        "ffn": FFN, "vocab": VOCAB, "layers": layers_for(
                            opts.size_gb * 1e9, DTYPES[opts.dtype].itemsize),
                        "tensors": len(infos), "params": params, "file_bytes": file_bytes,
                        "largest_tensor": largest.name,
                        "largest_tensor_bytes": largest.n_bytes, "seed": SEED},
              "repeat": opts.repeat,
              "memory_bound": {"rule": "peak RSS <= 400 MB + 4 x largest tensor bytes",
                               "bound_bytes": int(bound), "highest_peak_rss_mb": highest,
                               "holds": all(r["within_bound"] for r in rows)},
              "rows": rows,
              "baselines": {"zstd3": zstd, "gguf": gguf_rows(gguf_runs, file_bytes, params),
                            "disk_write": disk,
                            "note": "gguf: numpy quantizers, single-threaded, quantize and "
                                    "dequantize calls only, float32 input"}}
    print_table(result)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
