"""The Python API: compress, decompress, inspect, load. It returns results and never prints."""

from __future__ import annotations

import contextvars
import dataclasses
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .allocate import EMBEDDING_WEIGHT, allocate, measure_curve
from .atomic import atomic_folder, atomic_output, check_output
from .container import MpzReader, MpzWriter
from .errors import ConfigError, MetricDropError, ModelpressError
from .evaluate import TaskMetric, check_command, metric_of_mpz, run_metric
from .formats import FORMAT_NAMES, TensorInfo, TensorReader, open_reader, writer_for
from .formats.base import DTYPES
from .formats.sharded import ShardedReader, write_sharded
from .parallel import THREADS
from .pipeline import (
    EMBEDDING,
    ErrorStats,
    Options,
    encode,
    encode_measured,
    plan,
    scan,
)
from .recipe import Recipe, load_recipe
from .report import Report, TensorRow
from .stages import StepQuantize, UniformQuantize
from .stages.base import describe_chain

#: A progress callback: (tensor name, bytes done, bytes in all).
Progress = Callable[[str, int, int], None]


def compress(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False,
             recipe: str | os.PathLike | Recipe | None = None, eval_command: str | None = None,
             eval_key: str | None = None, lower_is_better: bool = False,
             max_drop: float | None = None, progress: Progress | None = None,
             threads: int | None = None, **options: Any) -> Report:
    """Compress a weights file into an .mpz file, one tensor at a time.

    Parameters
    ----------
    src : path of a .npz, .h5 or .safetensors file, or of a sharded checkpoint (its folder or
        its *.safetensors.index.json).
    dst : path of the .mpz file to write (atomically; an existing one only with `force`).
    recipe : a recipe file (or loaded Recipe): defaults, and rules per tensor name.
    eval_command : a shell command with a ``{weights}`` placeholder that prints the model's
        metric (the last number, or `eval_key` in a JSON line). It runs on `src`, then on a
        temporary decompressed copy; the report's `task_metric` holds both values.
    lower_is_better, max_drop : how to read the metric, and the largest drop allowed: a
        larger one raises MetricDropError (exit status 3) after `dst` is written.
    progress : called after each tensor with (its name, bytes done, bytes in all).
    threads : encoding threads (default: every core); the output is the same bytes for any.
    **options : fields of `Options` (bits, group_size, symmetric, prune, nm, half, ...);
        they override the recipe's defaults, never its rules.

    Returns
    -------
    Report : per-tensor sizes and errors of what a reader will decode: the stored bytes
        decoded back, or, for 32- and 16-bit floats under --bits, computed by the
        quantizing kernel with the decoder's arithmetic as it writes the codes.
    """
    src, dst = Path(src), Path(dst)
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    merged = {**(recipe.defaults if recipe else {}), **options}
    if options.get("prune"):  # a fraction given here replaces the recipe's pattern, and back
        merged["nm"] = options.get("nm")
    if options.get("nm"):
        merged["prune"] = options.get("prune", 0.0)
    opts = Options(**merged)
    if src.suffix.lower() == ".mpz":
        raise ConfigError("is already an .mpz file; decompress it first", path=src)
    if dst.suffix.lower() != ".mpz":
        raise ConfigError("the compressed output must be named *.mpz", path=dst)
    if eval_command is None and (max_drop is not None or eval_key or lower_is_better):
        raise ConfigError("--max-drop, --eval-key and --lower-is-better need --eval (the "
                          "command that measures the model)")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"--threads must be a positive integer, got {threads!r}")
    if max_drop is not None and not math.isfinite(max_drop):
        raise ConfigError(f"--max-drop must be a finite number, got {max_drop}")
    check_output(dst, force=force, inputs=(src,))  # fail before the (maybe slow) evaluation
    if eval_command is not None:
        check_command(eval_command)
    reader = _open(src)  # before the evaluation: a bad input is our error, not the command's
    sharded = isinstance(reader, ShardedReader)
    input_bytes = reader.n_bytes if sharded else src.stat().st_size
    suffix = ".safetensors" if sharded else src.suffix  # the gate's copy: one file
    threads = threads or os.cpu_count() or 1
    limit = THREADS.set(threads)  # big tensors split their kernels over as many (parallel.py)
    try:
        original = None if eval_command is None else run_metric(
            eval_command, src, eval_key, which="original")
        started = time.perf_counter()
        with atomic_output(dst, force=force, inputs=(src,)) as tmp:
            if opts.target_bpw is None:
                rows = _compress_into(reader, src, input_bytes, tmp, opts, recipe, progress,
                                      threads)
            else:
                rows = _compress_to_budget(reader, src, input_bytes, tmp, opts, recipe,
                                           progress, threads)
            out_bytes = tmp.stat().st_size
    finally:
        THREADS.reset(limit)
        reader.close()
    report = Report(str(src), str(dst), input_bytes, out_bytes,
                    time.perf_counter() - started, rows, _warnings(rows, opts, recipe))
    if eval_command is not None:
        report.task_metric = TaskMetric(
            eval_command, original, metric_of_mpz(eval_command, dst, suffix, eval_key),
            lower_is_better, max_drop)
        if not report.task_metric.passed:
            m = report.task_metric
            raise MetricDropError(
                f"task metric dropped by {m.drop:.6g} ({m.original:.6g} → {m.compressed:.6g}), "
                f"more than --max-drop {m.max_drop:g}; the .mpz was still written so that it "
                "can be inspected", path=dst, report=report)
    return report


def _warnings(rows: list[TensorRow], opts: Options, recipe: Recipe | None) -> list[str]:
    """What a user would not expect: tensors kept exact, recipe rules that matched nothing."""
    used = {r.rule for r in rows}
    out = [f"{recipe.path}: {rule.label} matched no tensor" for rule in
           (recipe.rules if recipe else ()) if rule.label not in used]
    kept = [r for r in rows if r.note and ("NaN" in r.note or "|values|" in r.note)]
    if kept:
        out.append(f"{len(kept)} tensor(s) kept exact because of NaN/Inf or huge values, e.g. "
                   f"{kept[0].name!r}: {kept[0].note}")
    if opts.lossy and not recipe and all(r.method == "lossless" or r.method.startswith("tied")
                                         for r in rows):
        out.append("no tensor was quantized or pruned: all are integer, 1-D or under "
                   f"--min-elements ({opts.min_elements}); lower it or pass --quantize-1d")
    return out


INDEX_BYTES_PER_TENSOR = 700  # JSON entry, block alignment: an estimate, corrected below


def _compress_to_budget(reader: TensorReader, src: Path, input_bytes: int, tmp: Path,
                        opts: Options, recipe: Recipe | None, progress: Progress | None,
                        threads: int) -> list[TensorRow]:
    """--target-bpw: measure every tensor's rate-distortion curve (one read of the input),
    share the budget (allocate.py), then compress; if the file misses the target by more than
    1%, correct the budget by the miss and compress again (at most twice more)."""
    curves, fixed_bytes, n_params = [], 32 + 16, 0
    for info in reader.infos():
        tensor_opts = _tensor_options(info, opts, recipe)
        x = reader.view(info.name)
        n_params += info.size
        fixed_bytes += INDEX_BYTES_PER_TENSOR
        found = scan(x)
        probe = dataclasses.replace(tensor_opts, step=found[1] / 1024 if found[1] > 0 else 1.0)
        stages, _ = plan(info, x, probe, found)  # would it be step-coded?
        curve = None
        if any(isinstance(s, StepQuantize) for s in stages):
            weight = 1.0 if tensor_opts.forced or not EMBEDDING.search(info.name) \
                else EMBEDDING_WEIGHT
            curve = measure_curve(info.name, x, weight)
        if curve is None:
            fixed_bytes += sum(b.length for b, _ in encode(x, plan(
                info, x, dataclasses.replace(tensor_opts, step=None, target_bpw=None))[0])
                .values())
        else:
            curves.append(curve)
        del x
        reader.release(info.name)
    target_bits = opts.target_bpw * n_params
    budget = target_bits - 8 * fixed_bytes
    rows = None
    for _ in range(3):
        try:
            steps = allocate(curves, budget)
        except ValueError:
            if rows is not None:
                break  # a correction overshot: keep the file already written
            raise ConfigError(f"--target-bpw {opts.target_bpw:g} is below what this model "
                              f"needs at the coarsest steps plus its exact tensors "
                              f"({8 * fixed_bytes / max(n_params, 1):.3g} bpw of those); "
                              "raise it", path=src) from None
        rows = _compress_into(reader, src, input_bytes, tmp, opts, recipe, progress, threads,
                              steps)
        missed = 8 * tmp.stat().st_size - target_bits
        if not curves or abs(missed) <= 0.01 * target_bits:
            break  # on target, or nothing left to adjust
        budget -= missed
    return rows


def _tensor_options(info: TensorInfo, opts: Options, recipe: Recipe | None,
                    steps: dict[str, float] | None = None) -> Options:
    """The options for one tensor: its recipe rule's, and its step under --target-bpw."""
    rule = recipe.match(info.name) if recipe else None
    tensor_opts = rule.apply(opts) if rule else opts
    if steps is not None:
        tensor_opts = dataclasses.replace(tensor_opts, step=steps.get(info.name))
    return tensor_opts


#: Tensors read but not yet written, in _work_bytes, beyond the largest tensor's: the largest
#: (an embedding, say) need not be encoded alone while the core its last steps leave idle
#: could start on the next tensors (a 4 GB float32 model's 4-bit compress: about 3% faster,
#: nine alternating pairs; the same peak RSS). Peak memory still depends on the largest
#: tensor, not on the model's size.
IN_FLIGHT_BYTES = 256 << 20


def _work_bytes(info: TensorInfo) -> int:
    """What a tensor in flight holds: its values are worked on as float32 (or wider), so a
    bfloat16 tensor weighs twice its file bytes."""
    return info.size * max(4, DTYPES[info.dtype].itemsize)


def _compress_into(reader: TensorReader, src: Path, input_bytes: int, tmp: Path, opts: Options,
                   recipe: Recipe | None, progress: Progress | None,
                   threads: int, steps: dict[str, float] | None = None) -> list[TensorRow]:
    """Encode tensors on `threads` threads (numpy and zstd release the GIL) and write them
    in file order, so the output is the same bytes whatever the thread count. Tensors read
    but not yet written are bounded in bytes."""
    source = {"format": reader.format, "file": src.name, "bytes": input_bytes,
              "metadata": dict(reader.metadata)}
    writer = MpzWriter(tmp, source)
    rows: list[TensorRow] = []
    seen: dict[tuple, list[TensorRow]] = {}
    pending: deque[tuple[TensorInfo, Options, Future]] = deque()
    done, total = 0, sum(i.n_bytes for i in reader.infos())
    budget = IN_FLIGHT_BYTES + max((_work_bytes(i) for i in reader.infos()), default=0)

    def write_oldest() -> None:
        nonlocal done
        info, tensor_opts, future = pending.popleft()
        try:
            rows.append(_write_tensor(info, tensor_opts, future.result(), writer, seen))
        except ModelpressError as e:
            e.at(path=src, tensor=info.name)
            raise
        reader.release(info.name)
        if progress:
            done += info.n_bytes
            progress(info.name, done, total)

    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="modelpress")
    try:
        for info in reader.infos():
            while pending and (len(pending) > 2 * threads or sum(
                    _work_bytes(i) for i, _, _ in pending) + _work_bytes(info) > budget):
                write_oldest()
            tensor_opts = _tensor_options(info, opts, recipe, steps)
            x = reader.view(info.name)
            pending.append((info, tensor_opts, pool.submit(
                contextvars.copy_context().run, _encode_tensor, info, x, tensor_opts)))
        while pending:
            write_oldest()
        writer.close()
    except BaseException:
        for _, _, future in pending:
            future.cancel()
        writer.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    return rows


@dataclass
class _Encoded:
    """One tensor encoded and measured, waiting to be written (or found to be a twin)."""

    key: tuple  # what tied weights share; confirmed on the bytes (_write_tensor)
    stages: list
    blocks: dict
    row: TensorRow


#: What plan() assumes before a tensor is scanned: no NaN/Inf, and no value out of range.
UNSCANNED = (0, 0.0)


def _encode_tensor(info: TensorInfo, x: np.ndarray, opts: Options) -> _Encoded:
    """Plan, encode and measure one tensor (on a worker thread). With --method auto, each
    method is tried and the one with the least error at no more bytes than uniform kept.

    A tensor bound for the fused quantizer is not scanned first: the kernel reports its
    largest |value| as it goes, and only a tensor that turns out to hold an Inf or NaN, or
    values out of range, is scanned and planned again (one wasted pass, for rare files).
    """
    if opts.method != "auto" and not opts.entropy_coded:  # step coding reads the peak first
        stages, note = plan(info, x, opts, UNSCANNED)
        if _sees_every_value(stages, x.dtype):
            blocks, errors, zeros, seen = encode_measured(info, x, stages)
            if seen < min(s.max_magnitude() for s in stages):  # NaN compares false
                return _encoded(info, x, opts, (0, seen), stages, note, blocks, errors, zeros)
    found = scan(x)
    tries = [opts] if opts.method != "auto" else [
        dataclasses.replace(opts, method=m) for m in ("uniform", "kmeans", "nf")]
    candidates = []
    for tried in tries:
        stages, note = plan(info, x, tried, found)
        blocks, errors, zeros, _ = encode_measured(info, x, stages)
        size = sum(block.length for block, _ in blocks.values())
        candidates.append((stages, note, blocks, errors, zeros, size))
        if tried is tries[0] and not any(isinstance(s, UniformQuantize) for s in stages):
            break  # uniform was not used (kept lossless): the other methods would not be
    limit = candidates[0][5] * 1.01  # "the same size": no more than uniform's bytes
    stages, note, blocks, errors, zeros, _ = min(
        (c for c in candidates if c[5] <= limit), key=lambda c: c[3].sum_sq_err)
    return _encoded(info, x, opts, found, stages, note, blocks, errors, zeros)


def _sees_every_value(stages: list, dtype: np.dtype) -> bool:
    """Whether encoding goes through the fused quantizer, which reports the tensor's
    largest |value| (UniformQuantize.measures_itself) before any other lossy stage."""
    return bool(stages) and isinstance(stages[0], UniformQuantize) and \
        stages[0].measures_itself(dtype) and not any(s.lossy for s in stages[1:])


def _encoded(info: TensorInfo, x: np.ndarray, opts: Options, found: tuple[int, float],
             stages: list, note: str | None, blocks: dict, errors: ErrorStats,
             zeros: float) -> _Encoded:
    """The tensor's _Encoded: its tie key and report row."""
    size = sum(block.length for block, _ in blocks.values())
    key = (info.dtype, info.shape, tuple(repr(s.get_config()) for s in stages),
           tuple((name, b.dtype, b.shape, b.bits, b.codec, b.length, b.crc32)
                 for name, (b, _) in blocks.items()))
    row = TensorRow(info.name, info.shape, info.dtype, describe_chain(stages), _bits(stages, x),
                    zeros, info.n_bytes, size, info.size, errors, note, found[0], opts.rule)
    return _Encoded(key, stages, blocks, row)


def _write_tensor(info: TensorInfo, opts: Options, encoded: _Encoded, writer: MpzWriter,
                  seen: dict[tuple, list[TensorRow]]) -> TensorRow:
    """Write one encoded tensor; one whose stored form equals an earlier one's — tied
    weights — is stored once, as an alias of the first. Candidates share stages, block
    lengths and checksums; the bytes already written confirm them. Its own errors are
    reported: two different tensors may quantize to the same codes."""
    earlier = seen.setdefault(encoded.key, [])
    twin = next((r for r in earlier if writer.holds(r.name, encoded.blocks)), None)
    if twin is not None:
        writer.add_alias(info, twin.name, opts.rule)
        own = encoded.row
        return TensorRow(info.name, info.shape, info.dtype, f"tied to {twin.name}", own.bits,
                         own.sparsity, info.n_bytes, 0, info.size, own.errors, None,
                         own.non_finite, opts.rule)
    writer.add(info, encoded.stages, encoded.blocks, opts.rule)
    earlier.append(encoded.row)
    return encoded.row


def _bits(stages, x: np.ndarray) -> int | None:
    """Bits per stored value before packing overheads: the code width or the dtype's; None
    for step codes, whose entropy coding gives them no fixed width (see bits_per_weight)."""
    if any(isinstance(s, StepQuantize) for s in stages):
        return None
    widths = [s.code_bits() for s in stages if s.code_bits()]
    return widths[-1] if widths else x.dtype.itemsize * 8


@dataclass
class DecompressResult:
    """What `decompress` wrote."""

    output: str
    format: str
    tensors: int
    bytes_written: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def decompress(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False,
               shard_bytes: int | None = None) -> DecompressResult:
    """Rebuild a weights file from an .mpz; the format follows `dst`'s extension.

    With `shard_bytes`, `dst` is a folder that receives a sharded .safetensors checkpoint
    (the Hugging Face layout: shards of at most that size and an index), written atomically.
    What the target format cannot hold (HDF5 attributes in .npz, bfloat16 in .h5) is named in
    the result's warnings, never dropped silently.
    """
    src, dst = Path(src), Path(dst)
    started = time.perf_counter()
    warnings: list[str] = []
    if shard_bytes is not None:
        if not isinstance(shard_bytes, int) or shard_bytes < 1:
            raise ConfigError(f"--shard-size must be a positive size, got {shard_bytes!r}")
        with MpzReader(src) as reader, atomic_folder(dst, force=force, inputs=(src,)) as tmp:
            try:
                write_sharded(tmp, reader, warnings.append, shard_bytes)
            except ModelpressError as e:
                e.at(path=dst)
                raise
            n_bytes = sum(p.stat().st_size for p in tmp.iterdir())
        return DecompressResult(str(dst), "sharded safetensors", len(reader.entries), n_bytes,
                                time.perf_counter() - started, warnings)
    write = writer_for(dst)
    with MpzReader(src) as reader, atomic_output(dst, force=force, inputs=(src,)) as tmp:
        try:
            write(tmp, reader, warnings.append)
        except ModelpressError as e:  # what the target format cannot hold: name the target
            e.at(path=dst)
            raise
        n_bytes = tmp.stat().st_size
    return DecompressResult(str(dst), FORMAT_NAMES[dst.suffix.lower()], len(reader.entries),
                            n_bytes, time.perf_counter() - started, warnings)


@dataclass
class VerifyResult:
    """What `verify` checked."""

    file: str
    tensors: int
    blocks: int
    bytes: int
    seconds: float


def verify(path: str | os.PathLike) -> VerifyResult:
    """Check a whole .mpz without writing anything; raise the first problem found.

    The footer, index checksum and structure are checked on open; then every block's checksum
    and declared size, and every tensor's decode to its declared shape and dtype.
    """
    path = Path(path)
    started = time.perf_counter()
    blocks = 0
    with MpzReader(path) as reader:
        for name, entry in reader.entries.items():
            if entry.same_as is None:
                reader.read(name)
                blocks += len(entry.blocks)
    return VerifyResult(str(path), len(reader.entries), blocks, path.stat().st_size,
                        time.perf_counter() - started)


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """The index of an .mpz file: file facts and, per tensor, its stages and stored bytes."""
    path = Path(path)
    with MpzReader(path) as reader:
        index = reader.index
        tensors = []
        for entry in reader.entries.values():
            info = entry.info
            stored = 0 if entry.same_as else entry.stored_bytes
            tensors.append({"name": info.name, "shape": list(info.shape), "dtype": info.dtype,
                            "method": entry.describe(),
                            "stages": [s.get_config() for s in entry.stages],
                            "same_as": entry.same_as, "rule": entry.rule, "stored_bytes": stored,
                            "bits_per_weight": round(8 * stored / info.size, 4)
                            if info.size else 0.0})
        size = path.stat().st_size
        params = sum(e.info.size for e in reader.entries.values())
        return {"file": str(path), "bytes": size, "format_version": index.get("version"),
                "tool": index.get("tool"),
                "source": {k: v for k, v in index["source"].items() if k != "metadata"},
                "metadata_keys": sorted(reader.metadata), "tensors": tensors,
                "params": params, "bits_per_weight": round(8 * size / params, 4)
                if params else 0.0}


class Weights(Mapping[str, np.ndarray]):
    """A read-only mapping of tensor name → array over an .mpz file.

    Nothing is decoded up front: each lookup reads, checks and decodes that one tensor, so a
    model larger than memory can be used a tensor at a time.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._reader = MpzReader(path)
        self.metadata = self._reader.metadata  # the source file's own metadata

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._reader.entries:
            raise KeyError(name)
        return self._reader.read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._reader.entries)

    def __len__(self) -> int:
        return len(self._reader.entries)

    def info(self, name: str) -> TensorInfo:
        """Name, shape, dtype and attributes of a tensor, without decoding it."""
        return self._reader.entries[name].info

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Weights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_mpz(path: str | os.PathLike) -> Weights:
    """Open an .mpz lazily (exported as `modelpress_cli.open`)."""
    return Weights(path)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a weights file (.mpz, .npz, .h5, .safetensors) as a dict of arrays."""
    path = Path(path)
    reader = MpzReader(path) if path.suffix.lower() == ".mpz" else _open(path)
    try:
        return {info.name: reader.read(info.name) for info in reader.infos()}
    finally:
        reader.close()


def _open(path: Path) -> TensorReader:
    if not path.exists():
        raise ModelpressError("no such file", path=path)
    return open_reader(path)


__all__ = ["DecompressResult", "ErrorStats", "VerifyResult", "Weights", "compress",
           "decompress", "inspect", "load", "open_mpz", "verify"]
