"""A reader for `.mpz` files written from `docs/format.md` alone.

It exists to prove that the specification is enough to decode every tensor: it deliberately
imports nothing from `modelpress_cli`, only the standard library, numpy, zstandard and ml_dtypes
(for bfloat16 and float8). Every check the specification lists raises `ValueError`.

Public functions: `read_index`, `tensor_names`, `read_tensor`, and `read_blocks` (a tensor's
stored parts before any stage is undone, e.g. to look at its quantization scales).

The rANS decoder (`pack.rans`) follows the spec's pseudo-code symbol by symbol with Python
integers: plain, and fast enough for test tensors (about 0.5 us a symbol).
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import ml_dtypes
import numpy as np
import zstandard

MAGIC = b"\x89MPZ\r\n\x1a\n"
KNOWN_VERSION = 1
HEADER = struct.Struct("<8sII")  # magic, version, flags
FOOTER = struct.Struct("<QQII8s")  # index_offset, index_length, crc32, version, magic
MAX_INDEX_LENGTH = 2**28
BLOCK_ALIGN = 64

# Spec "Tensor entries": every dtype name, all little-endian.
DTYPES = {
    "bool": np.dtype(bool),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "uint32": np.dtype("<u4"),
    "int32": np.dtype("<i4"),
    "uint64": np.dtype("<u8"),
    "int64": np.dtype("<i8"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}


def _dtype(name: object, what: str) -> np.dtype:
    """Map a spec dtype name to numpy; an unknown one refuses the tensor (spec: Compatibility)."""
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"{what}: unknown dtype {name!r}")
    return DTYPES[name]


def _shape(shape: object, what: str) -> tuple[int, ...]:
    """Validate a JSON shape: a list of non-negative integers."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"{what}: bad shape {shape!r}")
    return tuple(shape)


# --------------------------------------------------------------------------- container


def _read_container(path) -> tuple[bytes, int, dict]:
    """Read the file; check header and footer; return (file bytes, index_offset, index)."""
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    if size < HEADER.size + FOOTER.size:
        raise ValueError(f"{path}: {size} bytes is too short for an .mpz file")
    magic, version, _flags = HEADER.unpack_from(data, 0)  # flags: readers ignore it
    if magic != MAGIC:
        raise ValueError(f"{path}: not an .mpz file (bad header magic {magic!r})")
    if version > KNOWN_VERSION:
        raise ValueError(
            f"{path}: format version {version} is newer than this reader "
            f"(knows up to {KNOWN_VERSION}); a reader for version {version} is needed"
        )
    if version < 1:
        raise ValueError(f"{path}: invalid format version {version}")
    index_offset, index_length, crc, f_version, f_magic = FOOTER.unpack_from(data, size - 32)
    if f_magic != MAGIC:
        raise ValueError(f"{path}: footer magic missing: the file is truncated")
    if f_version != version:
        raise ValueError(f"{path}: footer version {f_version} != header version {version}")
    if index_length > MAX_INDEX_LENGTH:
        raise ValueError(f"{path}: index_length {index_length} exceeds 2^28")
    if index_offset < HEADER.size:
        raise ValueError(f"{path}: index_offset {index_offset} < 16")
    if index_offset + index_length > size - FOOTER.size:
        raise ValueError(
            f"{path}: index [{index_offset}, +{index_length}) runs past the footer "
            f"(file size {size})"
        )
    raw_index = data[index_offset : index_offset + index_length]
    if zlib.crc32(raw_index) != crc:
        raise ValueError(f"{path}: index CRC-32 mismatch")
    try:
        index = json.loads(raw_index.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: index is not UTF-8 JSON: {exc}") from exc
    _check_index(index, version, index_offset, path)
    return data, index_offset, index


def _check_index(index: object, version: int, index_offset: int, path) -> None:
    """Structural checks on the index: format, version, unique names, same_as, block extents."""
    if not isinstance(index, dict) or index.get("format") != "modelpress.mpz":
        raise ValueError(f"{path}: index 'format' is not 'modelpress.mpz'")
    if index.get("version") != version:
        raise ValueError(f"{path}: index version {index.get('version')!r} != {version}")
    tensors = index.get("tensors")
    if not isinstance(tensors, list):
        raise ValueError(f"{path}: index has no 'tensors' list")
    seen: set[str] = set()
    for entry in tensors:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"{path}: tensor entry without a string name: {entry!r}")
        if name in seen:
            raise ValueError(f"{path}: duplicate tensor name {name!r}")
        if "same_as" in entry:
            if entry["same_as"] not in seen:
                raise ValueError(f"{name}: same_as {entry['same_as']!r} is not an earlier tensor")
            if "stages" in entry or "blocks" in entry:
                raise ValueError(f"{name}: same_as entry must not have stages or blocks")
        else:
            blocks = entry.get("blocks")
            if not isinstance(blocks, dict) or not isinstance(entry.get("stages"), list):
                raise ValueError(f"{name}: entry needs 'stages' (list) and 'blocks' (object)")
            for bname, b in blocks.items():
                off, length = b.get("offset"), b.get("length")
                if not (isinstance(off, int) and isinstance(length, int)) or length < 0:
                    raise ValueError(f"{name}/{bname}: bad offset/length")
                if off % BLOCK_ALIGN:
                    raise ValueError(f"{name}/{bname}: offset {off} is not a multiple of 64")
                if off < HEADER.size or off + length > index_offset:
                    raise ValueError(
                        f"{name}/{bname}: block [{off}, +{length}) outside [16, {index_offset})"
                    )
        seen.add(name)


def read_index(path) -> dict:
    """Return the checked index (JSON object) of an .mpz file."""
    return _read_container(path)[2]


def tensor_names(path) -> list[str]:
    """Names of all tensors, in the source file's order."""
    return [t["name"] for t in read_index(path)["tensors"]]


# --------------------------------------------------------------------------- blocks


def _unpack_bits(raw: bytes, n: int, bits: int) -> np.ndarray:
    """LSB-first bit stream -> n uint8 values of `bits` bits each (spec "Blocks", step 3)."""
    stream = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[: n * bits]
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (stream.reshape(n, bits).astype(np.uint16) @ weights).astype(np.uint8)


def _read_block(data: bytes, b: dict, what: str) -> np.ndarray:
    """Read one block: CRC, codec, then unpack bits or reinterpret raw bytes."""
    dtype = _dtype(b.get("dtype"), what)
    shape = _shape(b.get("shape"), what)
    n = math.prod(shape)
    bits = b.get("bits")
    if bits is None:
        n_bytes = n * dtype.itemsize
    else:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 7:
            raise ValueError(f"{what}: bits must be 1..7, got {bits!r}")
        if dtype not in (DTYPES["uint8"], DTYPES["bool"]):
            raise ValueError(f"{what}: bit-packed block must be uint8 or bool, not {dtype}")
        n_bytes = (n * bits + 7) // 8
    stored = data[b["offset"] : b["offset"] + b["length"]]
    if zlib.crc32(stored) != b.get("crc32"):
        raise ValueError(f"{what}: block CRC-32 mismatch")
    codec = b.get("codec")
    if codec == "none":
        if len(stored) != n_bytes:
            raise ValueError(f"{what}: 'none' block is {len(stored)} bytes, expected {n_bytes}")
        raw = stored
    elif codec == "zstd":
        if len(stored) >= n_bytes:
            raise ValueError(f"{what}: zstd block ({len(stored)} B) not shorter than {n_bytes} B")
        declared = zstandard.frame_content_size(stored)  # -1 if not set; raises if not zstd
        if declared != n_bytes:
            raise ValueError(f"{what}: zstd content size {declared}, expected {n_bytes}")
        raw = zstandard.ZstdDecompressor().decompress(stored, allow_extra_data=False)
        if len(raw) != n_bytes:
            raise ValueError(f"{what}: zstd frame gave {len(raw)} bytes, expected {n_bytes}")
    else:
        raise ValueError(f"{what}: unknown codec {codec!r}")
    if bits is None:
        return np.frombuffer(raw, dtype).reshape(shape)
    return _unpack_bits(raw, n, bits).astype(dtype).reshape(shape)


# --------------------------------------------------------------------------- stages


def _pop(parts: dict, name: str, stage: str) -> np.ndarray:
    """Take a required part, with a clear error if the previous stages did not produce it."""
    if name not in parts:
        raise ValueError(f"{stage}: missing part {name!r} (have {sorted(parts)})")
    return parts.pop(name)


def _byteplanes(parts, params, shape, dtype):
    """Byte planes [itemsize, n] -> n little-endian values of params['dtype']."""
    d = _dtype(params.get("dtype"), "pack.byteplanes")
    planes = _pop(parts, "planes", "pack.byteplanes")
    if planes.dtype != np.uint8 or planes.ndim != 2 or planes.shape[0] != d.itemsize:
        raise ValueError(f"pack.byteplanes: planes must be uint8 [{d.itemsize}, n]")
    parts["values"] = np.frombuffer(planes.T.tobytes(), d)


def _sparse(parts, params, shape, dtype):
    """Scatter the kept entries of part p (by `mask` or `gaps`) into a zero array of `shape`."""
    p = params.get("part")
    if p not in ("codes", "values"):
        raise ValueError(f"pack.sparse: part must be 'codes' or 'values', got {p!r}")
    kept = _pop(parts, p, "pack.sparse").reshape(-1)
    n = math.prod(shape)
    out = np.zeros(n, kept.dtype)
    if ("mask" in parts) == ("gaps" in parts):
        raise ValueError("pack.sparse: need exactly one of the parts 'mask' and 'gaps'")
    if "mask" in parts:
        mask = parts.pop("mask")
        if mask.dtype != np.bool_ or mask.shape != shape:
            raise ValueError(f"pack.sparse: mask must be bool of shape {shape}")
        if int(mask.sum()) != kept.size:
            raise ValueError(f"pack.sparse: mask has {int(mask.sum())} true, {p} {kept.size}")
        out[mask.reshape(-1)] = kept
    else:
        gaps = parts.pop("gaps")
        if gaps.dtype.kind != "u" or gaps.ndim != 1 or gaps.size != kept.size:
            raise ValueError(f"pack.sparse: gaps must be 1-D unsigned, one per kept {p}")
        # Kept entry j sits at sum(gaps[0..j]) + j; positions only grow, so check the last one
        # (and each gap first, so that the running sum cannot overflow).
        if gaps.size and int(gaps.max()) >= n:
            raise ValueError(f"pack.sparse: a gap of {int(gaps.max())} exceeds {n} entries")
        pos = np.cumsum(gaps, dtype=np.uint64) + np.arange(gaps.size, dtype=np.uint64)
        if pos.size and int(pos[-1]) >= n:
            raise ValueError(f"pack.sparse: gaps lead past the end of the tensor ({n} entries)")
        out[pos.astype(np.int64)] = kept
    parts[p] = out.reshape(shape)


def _prune(parts, params, shape, dtype):
    """prune.magnitude: zeroing needs no undoing."""
    s = params.get("sparsity")
    if not isinstance(s, (int, float)) or not 0 <= s < 1:
        raise ValueError(f"prune.magnitude: bad sparsity {s!r}")


def _nm_params(params, stage: str) -> tuple[int, int]:
    """The (n, m) of an N:M stage: integers with 1 <= n < m <= 16."""
    n, m = params.get("n"), params.get("m")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)) or not (
        1 <= n < m <= 16
    ):
        raise ValueError(f"{stage}: need integers 1 <= n < m <= 16, got n={n!r}, m={m!r}")
    return n, m


def _pack_nm(parts, params, shape, dtype):
    """Scatter n kept entries per run of m (at `positions`) into a zero array of `shape`."""
    p = params.get("part")
    if p not in ("codes", "values"):
        raise ValueError(f"pack.nm: part must be 'codes' or 'values', got {p!r}")
    n, m = _nm_params(params, "pack.nm")
    size = math.prod(shape)
    if size % m:
        raise ValueError(f"pack.nm: {size} entries of shape {shape} are not a multiple of m={m}")
    runs = size // m
    positions = _pop(parts, "positions", "pack.nm")
    kept = _pop(parts, p, "pack.nm")
    if positions.dtype != np.uint8 or positions.shape != (runs, n):
        raise ValueError(f"pack.nm: positions must be uint8 [{runs}, {n}], got {positions.shape}")
    if kept.shape not in ((runs, n), (runs * n,)):
        raise ValueError(f"pack.nm: {p} must be [{runs}, {n}] or flat, got {kept.shape}")
    if positions.size and int(positions.max()) >= m:
        raise ValueError(f"pack.nm: position {int(positions.max())} out of range 0..{m - 1}")
    if n > 1 and np.any(np.diff(positions.astype(np.int16), axis=1) <= 0):
        raise ValueError("pack.nm: positions within a run must be strictly ascending")
    out = np.zeros((runs, m), kept.dtype)
    out[np.arange(runs)[:, None], positions] = kept.reshape(runs, n)
    parts[p] = out.reshape(shape)


def _prune_nm(parts, params, shape, dtype):
    """prune.nm: zeroing needs no undoing."""
    _nm_params(params, "prune.nm")


def _half(parts, params, shape, dtype):
    """quantize.half: values (float16/bfloat16) converted to the tensor's dtype."""
    to = params.get("to")
    if to not in ("float16", "bfloat16"):
        raise ValueError(f"quantize.half: 'to' must be float16 or bfloat16, got {to!r}")
    values = _pop(parts, "values", "quantize.half")
    if values.dtype != DTYPES[to]:
        raise ValueError(f"quantize.half: values are {values.dtype}, stage says {to}")
    parts["values"] = values.astype(dtype)


def _layout(shape: tuple[int, ...], g) -> tuple[int, int, int]:
    """(rows, cols, group width) of the 2-D view used by quantize.uniform."""
    n = math.prod(shape)
    if not shape:  # 0-d: one row of one value
        return 1, 1, 1
    if g == "channel":
        rows = shape[0]
        cols = math.prod(shape[1:])
        return rows, cols, max(cols, 1)
    if g == "tensor":
        return 1, n, max(n, 1)
    if isinstance(g, int) and not isinstance(g, bool) and g >= 1:
        return math.prod(shape[:-1]), shape[-1], g
    raise ValueError(f"quantize.uniform: bad group_size {g!r}")


def _int_param(params: dict, key: str, lo: int, hi: int, stage: str) -> int:
    """An integer parameter within [lo, hi] (JSON booleans are not integers)."""
    v = params.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{stage}: {key} must be an integer {lo}..{hi}, got {v!r}")
    return v


def _groups(shape: tuple[int, ...], g, stage: str) -> tuple[int, int, np.ndarray]:
    """(rows, n_groups, group of each column) of the 2-D view (spec "quantize.uniform");
    `quantize.codebook` with method "nf" groups the same way."""
    if g not in ("channel", "tensor") and not (
        isinstance(g, int) and not isinstance(g, bool) and g >= 1
    ):
        raise ValueError(f"{stage}: bad group_size {g!r}")
    rows, cols, width = _layout(shape, g)
    n_groups = 1 if g in ("channel", "tensor") or not shape else -(-cols // width)
    return rows, n_groups, np.arange(cols) // width


def _codes(parts: dict, b: int, shape: tuple[int, ...], stage: str) -> np.ndarray:
    """The part `codes`: uint8 of the tensor's shape, every value < 2^b."""
    codes = _pop(parts, "codes", stage)
    if codes.dtype != np.uint8 or codes.shape != shape:
        raise ValueError(f"{stage}: codes must be uint8 of shape {shape}, got {codes.shape}")
    if codes.size and int(codes.max()) >= 1 << b:
        raise ValueError(f"{stage}: code {int(codes.max())} >= 2^{b}")
    return codes


def _group_scales(parts: dict, params: dict, rows: int, n_groups: int) -> np.ndarray:
    """float32 [rows, n_groups]: the scale of every group, plain or double-quantized."""
    stage = "quantize.uniform"
    if "scale_bits" not in params:  # spec: without scale_bits the key is absent
        if "super_group" in params:
            raise ValueError(f"{stage}: super_group without scale_bits")
        if "scale_codes" in parts:
            raise ValueError(f"{stage}: a 'scale_codes' part without scale_bits")
        scales = _pop(parts, "scales", stage)
        if scales.dtype != np.float16 or scales.shape != (rows, n_groups):
            raise ValueError(f"{stage}: scales must be float16 [{rows}, {n_groups}]")
        return scales.astype(np.float32)
    k = _int_param(params, "scale_bits", 3, 8, stage)
    m = _int_param(params, "super_group", 1, 65536, stage)
    q = _pop(parts, "scale_codes", stage)
    units = _pop(parts, "scales", stage)
    if q.dtype != np.uint8 or q.shape != (rows, n_groups):
        raise ValueError(f"{stage}: scale_codes must be uint8 [{rows}, {n_groups}]")
    if q.size and int(q.max()) >= 1 << k:
        raise ValueError(f"{stage}: scale code {int(q.max())} >= 2^{k}")
    n_units = -(-(rows * n_groups) // m)
    if units.dtype != np.float16 or units.shape != (n_units,):
        raise ValueError(f"{stage}: scales must be float16 [{n_units}] (one per {m} groups)")
    q = q.reshape(-1).astype(np.int32)
    q = np.where(q >= 1 << (k - 1), q - (1 << k), q)  # k-bit two's complement
    d = units.astype(np.float32)[np.arange(rows * n_groups) // m]
    return (q.astype(np.float32) * d).reshape(rows, n_groups)


def _uniform(parts, params, shape, dtype):
    """Codes u, scale s, zero z -> x = (((u + z) mod 2^b) - z) * s in float32, cast to dtype."""
    stage = "quantize.uniform"
    b, g, sym = params.get("bits"), params.get("group_size"), params.get("symmetric")
    if not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8:
        raise ValueError(f"{stage}: bits must be 2..8, got {b!r}")
    if not isinstance(sym, bool):
        raise ValueError(f"{stage}: symmetric must be true/false, got {sym!r}")
    rows, n_groups, group_of_col = _groups(shape, g, stage)
    codes = _codes(parts, b, shape, stage)
    scales = _group_scales(parts, params, rows, n_groups)
    if sym:
        if "zeros" in parts:
            raise ValueError(f"{stage}: symmetric stage with a 'zeros' part")
        z = np.full((rows, n_groups), 1 << (b - 1), np.int32)
    else:
        zeros = _pop(parts, "zeros", stage)
        if zeros.dtype != np.uint8 or zeros.shape != (rows, n_groups):
            raise ValueError(f"{stage}: zeros must be uint8 [{rows}, {n_groups}]")
        if zeros.size and int(zeros.max()) >= 1 << b:
            raise ValueError(f"{stage}: zero point >= 2^{b}")
        z = zeros.astype(np.int32)
    u = codes.reshape(rows, group_of_col.size).astype(np.int32)
    zc = z[:, group_of_col]
    v = (u + zc) % (1 << b) - zc
    x = v.astype(np.float32) * scales[:, group_of_col]
    parts["values"] = x.astype(dtype)


def _codebook(parts, params, shape, dtype):
    """x = codebook[u] (kmeans), or codebook[u] * the group's scale (nf); float32, cast."""
    stage = "quantize.codebook"
    b = _int_param(params, "bits", 1, 8, stage)
    method = params.get("method")
    if method not in ("kmeans", "nf"):
        raise ValueError(f"{stage}: method must be 'kmeans' or 'nf', got {method!r}")
    codes = _codes(parts, b, shape, stage)
    book = _pop(parts, "codebook", stage)
    if book.dtype != np.float32 or book.shape != (1 << b,):
        raise ValueError(f"{stage}: codebook must be float32 [{1 << b}], got {book.shape}")
    x = book[codes]
    if method == "nf":
        rows, n_groups, group_of_col = _groups(shape, params.get("group_size"), stage)
        scales = _pop(parts, "scales", stage)
        if scales.dtype != np.float16 or scales.shape != (rows, n_groups):
            raise ValueError(f"{stage}: scales must be float16 [{rows}, {n_groups}]")
        x = x.reshape(rows, group_of_col.size) * scales.astype(np.float32)[:, group_of_col]
    elif "scales" in parts:
        raise ValueError(f"{stage}: method 'kmeans' with a 'scales' part")
    parts["values"] = x.astype(dtype)


def _step(parts, params, shape, dtype):
    """x = code * step, in float64, cast to dtype."""
    step = params.get("step")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step):
        raise ValueError(f"quantize.step: step must be a finite number, got {step!r}")
    codes = _pop(parts, "codes", "quantize.step")
    if codes.dtype.kind not in "iu" or codes.size != math.prod(shape):
        raise ValueError(f"quantize.step: codes must be {math.prod(shape)} integers")
    parts["values"] = (codes.astype(np.float64) * np.float64(step)).astype(dtype).reshape(shape)


RANS_L = 1 << 31


def _rans_chunk(
    words: list[int],
    count: int,
    prec: int,
    symbol_of_slot: list[int],
    freqs: list[int],
    cum: list[int],
    what: str,
) -> list[int]:
    """Decode `count` symbols from one chunk's words (spec "pack.rans"), checking the end."""
    if len(words) < 2:
        raise ValueError(f"{what}: a chunk needs at least 2 words, has {len(words)}")
    x = words[0] | words[1] << 32
    i, n_words, mask = 2, len(words), (1 << prec) - 1
    out = [0] * count
    for k in range(count):
        slot = x & mask
        s = symbol_of_slot[slot]
        out[k] = s
        x = freqs[s] * (x >> prec) + slot - cum[s]
        if x < RANS_L:
            if i >= n_words:
                raise ValueError(f"{what}: stream runs past its {n_words} words")
            x = (x << 32) | words[i]
            i += 1
    if x != RANS_L or i != n_words:
        raise ValueError(f"{what}: damaged stream (ends with x={x}, {i} of {n_words} words read)")
    return out


def _rans(parts, params, shape, dtype):
    """rANS-decode part p (int64 codes = symbol + offset) from freqs, lengths and words."""
    stage = "pack.rans"
    p = params.get("part")
    if p != "codes":
        raise ValueError(f"{stage}: part must be 'codes', got {p!r}")
    offset = params.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise ValueError(f"{stage}: offset must be an integer, got {offset!r}")
    prec = _int_param(params, "prec", 1, 20, stage)
    chunk = _int_param(params, "chunk", 1, 2**63, stage)
    if p in parts:
        raise ValueError(f"{stage}: part {p!r} exists before it is decoded")
    freqs = _pop(parts, "freqs", stage)
    lengths = _pop(parts, "lengths", stage)
    words = _pop(parts, "words", stage)
    n = math.prod(shape)
    n_chunks = -(-n // chunk)
    if freqs.dtype != np.uint32 or freqs.ndim != 1 or not 1 <= freqs.size <= 2**20:
        raise ValueError(f"{stage}: freqs must be uint32 [A], 1 <= A <= 2^20")
    if int(freqs.sum(dtype=np.uint64)) != 1 << prec:
        raise ValueError(f"{stage}: freqs sum to {int(freqs.sum(dtype=np.uint64))}, not 2^{prec}")
    if lengths.dtype != np.uint32 or lengths.shape != (n_chunks,):
        raise ValueError(f"{stage}: lengths must be uint32 [{n_chunks}]")
    total = int(lengths.sum(dtype=np.uint64))
    if words.dtype != np.uint32 or words.shape != (total,):
        raise ValueError(f"{stage}: words must be uint32 [{total}] (the sum of lengths)")
    if not (-(2**63) <= offset and offset + freqs.size - 1 < 2**63):
        raise ValueError(f"{stage}: offset {offset} puts codes outside int64")
    f = freqs.astype(np.int64)
    symbol_of_slot = np.repeat(np.arange(f.size), f).tolist()
    freq_list, cum_list = f.tolist(), (np.cumsum(f) - f).tolist()
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
    symbols = []
    for c in range(n_chunks):
        count = min(n, (c + 1) * chunk) - c * chunk
        chunk_words = words[starts[c] : starts[c + 1]].tolist()
        symbols += _rans_chunk(
            chunk_words, count, prec, symbol_of_slot, freq_list, cum_list, f"{stage} chunk {c}"
        )
    parts[p] = (np.array(symbols, np.int64) + offset).reshape(shape)


STAGES = {
    "pack.byteplanes": _byteplanes,
    "pack.nm": _pack_nm,
    "pack.rans": _rans,
    "pack.sparse": _sparse,
    "prune.magnitude": _prune,
    "prune.nm": _prune_nm,
    "quantize.codebook": _codebook,
    "quantize.half": _half,
    "quantize.step": _step,
    "quantize.uniform": _uniform,
}


# --------------------------------------------------------------------------- tensors


def _check_positions_bits(entry: dict) -> None:
    """pack.nm: the `positions` block is stored with `bits: ceil(log2 m)` (spec "pack.nm")."""
    for stage in entry["stages"]:
        if isinstance(stage, dict) and stage.get("id") == "pack.nm":
            _, m = _nm_params(stage, "pack.nm")
            block = entry["blocks"].get("positions")
            bits = block.get("bits") if isinstance(block, dict) else None
            if block is not None and bits != (m - 1).bit_length():
                raise ValueError(
                    f"{entry['name']}/positions: stored with bits {bits!r}, "
                    f"pack.nm with m={m} needs {(m - 1).bit_length()}"
                )


def _decode(data: bytes, entry: dict) -> np.ndarray:
    """Read all blocks into parts, undo the stages last to first, check and reshape `values`.

    Keys of the entry that decoding does not need (`attrs`, the informational `rule`) are
    ignored."""
    name = entry["name"]
    shape = _shape(entry.get("shape"), name)
    dtype = _dtype(entry.get("dtype"), name)
    _check_positions_bits(entry)
    parts = {k: _read_block(data, b, f"{name}/{k}") for k, b in entry["blocks"].items()}
    for stage in reversed(entry["stages"]):
        sid = stage.get("id") if isinstance(stage, dict) else None
        if sid not in STAGES:
            raise ValueError(f"{name}: unknown stage id {sid!r}")
        STAGES[sid](parts, stage, shape, dtype)
    if set(parts) != {"values"}:
        raise ValueError(f"{name}: after decoding, parts are {sorted(parts)}, expected ['values']")
    values = parts["values"]
    if values.dtype != dtype or values.size != math.prod(shape):
        raise ValueError(f"{name}: decoded {values.size} x {values.dtype}, expected {dtype}")
    return values.reshape(shape)


def _entry(index: dict, name: str) -> dict:
    """The entry that holds `name`'s data: its own, or the one its `same_as` chain ends at."""
    by_name = {t["name"]: t for t in index["tensors"]}
    if name not in by_name:
        raise KeyError(name)
    entry = by_name[name]
    while "same_as" in entry:  # _check_index guarantees it points earlier, so this ends
        target = by_name[entry["same_as"]]
        for key in ("shape", "dtype"):
            if key in entry and entry[key] != target.get(key):
                raise ValueError(f"{name}: same_as {target['name']!r} but its {key} differs")
        entry = target
    return entry


def read_blocks(path, name: str) -> dict[str, np.ndarray]:
    """The named blocks of a tensor (after CRC, codec and bit-unpacking), stages not undone."""
    data, _, index = _read_container(path)
    entry = _entry(index, name)
    return {k: _read_block(data, b, f"{name}/{k}").copy() for k, b in entry["blocks"].items()}


def read_tensor(path, name: str) -> np.ndarray:
    """Decode one tensor by name, following `same_as` to the earlier identical tensor."""
    data, _, index = _read_container(path)
    return _decode(data, _entry(index, name)).copy()
