"""A reader for `.mpz` files written from `docs/format.md` alone.

It exists to prove that the specification is enough to decode every tensor: it deliberately
imports nothing from `modelpress_cli`, only the standard library, numpy, zstandard and ml_dtypes
(for bfloat16 and float8). Every check the specification lists raises `ValueError`.

Public functions: `read_index`, `tensor_names`, `read_tensor`, and `read_blocks` (a tensor's
stored parts before any stage is undone, e.g. to look at its quantization scales).
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


def _uniform(parts, params, shape, dtype):
    """Codes u, scale s, zero z -> x = (((u + z) mod 2^b) - z) * s in float32, cast to dtype."""
    b, g, sym = params.get("bits"), params.get("group_size"), params.get("symmetric")
    if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 8:
        raise ValueError(f"quantize.uniform: bits must be 1..8, got {b!r}")
    if not isinstance(sym, bool):
        raise ValueError(f"quantize.uniform: symmetric must be true/false, got {sym!r}")
    rows, cols, width = _layout(shape, g)
    n_groups = 1 if g in ("channel", "tensor") or not shape else -(-cols // width)
    codes = _pop(parts, "codes", "quantize.uniform")
    scales = _pop(parts, "scales", "quantize.uniform")
    if codes.dtype != np.uint8 or codes.shape != shape:
        raise ValueError(f"quantize.uniform: codes must be uint8 of shape {shape}")
    if scales.dtype != np.float16 or scales.shape != (rows, n_groups):
        raise ValueError(f"quantize.uniform: scales must be float16 [{rows}, {n_groups}]")
    if codes.size and int(codes.max()) >= 1 << b:
        raise ValueError(f"quantize.uniform: code >= 2^{b}")
    if sym:
        if "zeros" in parts:
            raise ValueError("quantize.uniform: symmetric stage with a 'zeros' part")
        z = np.full((rows, n_groups), 1 << (b - 1), np.int32)
    else:
        zeros = _pop(parts, "zeros", "quantize.uniform")
        if zeros.dtype != np.uint8 or zeros.shape != (rows, n_groups):
            raise ValueError(f"quantize.uniform: zeros must be uint8 [{rows}, {n_groups}]")
        z = zeros.astype(np.int32)
    group_of_col = np.arange(cols) // width
    u = codes.reshape(rows, cols).astype(np.int32)
    zc = z[:, group_of_col]
    v = (u + zc) % (1 << b) - zc
    x = v.astype(np.float32) * scales.astype(np.float32)[:, group_of_col]
    parts["values"] = x.astype(dtype)


STAGES = {
    "pack.byteplanes": _byteplanes,
    "pack.nm": _pack_nm,
    "pack.sparse": _sparse,
    "prune.magnitude": _prune,
    "prune.nm": _prune_nm,
    "quantize.half": _half,
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
