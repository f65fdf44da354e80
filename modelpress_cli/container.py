"""The .mpz container (docs/format.md): header, aligned data blocks, JSON index, footer.

Written in one streaming pass: each tensor's blocks go out as soon as they are encoded, the
index that locates them goes last, behind a fixed-size footer, as in Parquet. Read lazily: the
footer and index first, then only the blocks of the tensor asked for, each checksummed.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import __version__
from .bitpack import pack_bits, packed_size, unpack_bits
from .entropy import CODECS, compress, decompress
from .errors import FormatError, IntegrityError, ModelpressError
from .formats.base import (
    DTYPES,
    ClosingReader,
    TensorInfo,
    check_kind,
    check_shape,
    drop_pages,
    strict_json,
)
from .outfile import OutputFile
from .stages.base import Stage, decode_chain, describe_chain, stage_from_config

try:  # ISA-L's CRC-32, by carry-less multiplication: the same checksum at 4x zlib's speed
    from isal.isal_zlib import crc32
except ImportError:  # isal not installed (other CPUs: see pyproject.toml): zlib's own
    from zlib import crc32

MAGIC = b"\x89MPZ\r\n\x1a\n"
VERSION = 1
HEADER = struct.Struct("<8sII")    # magic, version, flags (0)
FOOTER = struct.Struct("<QQII8s")  # index offset, index length, index CRC-32, version, magic
ALIGN = 64                         # every block starts at a multiple of 64 bytes
COMPARE_BYTES = 16 << 20           # tied-weight check: read back this much at a time
MAX_INDEX_BYTES = 1 << 28          # 256 MiB of JSON: millions of tensors
MAX_ZSTD_RATIO = 1 << 15           # zstd's limit (4-byte RLE blocks of 128 KiB): beyond is crafted
ELEMENTS_PER_BYTE = 1 << 18        # a tensor must store at least a byte per 2**18 elements


@dataclass(frozen=True)
class Block:
    """One stored array: how to turn `length` bytes at `offset` back into it."""

    dtype: str
    shape: tuple[int, ...]
    bits: int | None  # bit-packed width, or None for the dtype's own bytes
    codec: str
    offset: int
    length: int
    crc32: int

    @property
    def n_bytes(self) -> int:
        """Size before entropy coding, as the shape, dtype and bits say."""
        count = prod(self.shape)
        return packed_size(count, self.bits) if self.bits else count * DTYPES[self.dtype].itemsize

    def to_json(self) -> dict[str, Any]:
        out = {"dtype": self.dtype, "shape": list(self.shape), "codec": self.codec,
               "offset": self.offset, "length": self.length, "crc32": self.crc32}
        if self.bits:
            out["bits"] = self.bits
        return out


def encode_block(array: np.ndarray, bits: int | None) -> tuple[Block, bytes | memoryview]:
    """Bit-pack (if `bits`) and entropy-code one array; the Block's offset is filled later."""
    if bits is None and array.dtype == np.bool_:
        bits = 1
    raw = pack_bits(array, bits) if bits and bits < 8 else np.ascontiguousarray(array).view(
        np.uint8).reshape(-1)
    codec, payload = compress(memoryview(raw), codes=bits is not None and bits > 1)
    block = Block(_dtype_key(array.dtype), tuple(array.shape), bits if bits and bits < 8 else None,
                  codec, 0, len(payload), crc32(payload))
    return block, payload


def decode_block(block: Block, payload: bytes | memoryview) -> np.ndarray:
    """The array a block stores; IntegrityError if the bytes do not match the index."""
    if crc32(payload) != block.crc32:
        raise IntegrityError("block checksum mismatch: the file is damaged")
    raw = decompress(block.codec, payload, block.n_bytes)
    count = prod(block.shape)
    if block.bits:
        array = unpack_bits(np.frombuffer(raw, dtype=np.uint8), block.bits, count)
        array = array.astype(DTYPES[block.dtype], copy=False)
    else:
        array = np.frombuffer(raw, dtype=DTYPES[block.dtype])  # read-only: stages never write
    return array.reshape(block.shape)


def _dtype_key(dtype: np.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


class MpzWriter:
    """Streams blocks into `path`; `close()` appends the index and footer."""

    def __init__(self, path: str | os.PathLike, source: dict[str, Any]) -> None:
        self.path = Path(path)
        self._file = OutputFile(self.path)
        self._file.write(HEADER.pack(MAGIC, VERSION, 0))
        self._entries: list[dict[str, Any]] = []
        self._placed: dict[str, dict[str, dict[str, Any]]] = {}
        self._source = source

    def _write_aligned(self, payload: bytes | memoryview) -> int:
        pad = -self._file.tell() % ALIGN
        self._file.write(b"\0" * pad)
        offset = self._file.tell()
        self._file.write(payload)
        return offset

    def add(self, info: TensorInfo, stages: list[Stage],
            blocks: dict[str, tuple[Block, bytes | memoryview]], rule: str | None = None) -> None:
        """Write one tensor's encoded blocks and remember where they went."""
        placed = {}
        for part, (block, payload) in blocks.items():
            offset = self._write_aligned(payload)
            placed[part] = {**block.to_json(), "offset": offset}
        self._entries.append({**_tensor_json(info, rule), "blocks": placed,
                              "stages": [s.get_config() for s in stages]})
        self._placed[info.name] = placed

    def holds(self, name: str, blocks: dict[str, tuple[Block, bytes | memoryview]]) -> bool:
        """Whether `blocks` are byte for byte those written for tensor `name` (read back,
        16 MB at a time): the proof that two tensors are tied weights."""
        placed = self._placed[name]
        if placed.keys() != blocks.keys():
            return False
        for part, (_, payload) in blocks.items():
            where, data = placed[part], memoryview(payload).cast("B")
            if where["length"] != len(data):
                return False
            for start in range(0, len(data), COMPARE_BYTES):
                piece = data[start:start + COMPARE_BYTES]
                if self._file.read_at(where["offset"] + start, len(piece)) != piece:
                    return False
        return True

    def add_alias(self, info: TensorInfo, same_as: str, rule: str | None = None) -> None:
        """Record a tensor identical to one already written (tied weights): no data."""
        self._entries.append({**_tensor_json(info, rule), "same_as": same_as})

    def close(self) -> int:
        """Write the index and footer; the file's final size."""
        index = {"format": "modelpress.mpz", "version": VERSION,
                 "tool": {"name": "modelpress", "version": __version__},
                 "source": self._source, "tensors": self._entries}
        blob = json.dumps(index, separators=(",", ":"), allow_nan=False).encode()
        offset = self._write_aligned(blob)
        self._file.write(FOOTER.pack(offset, len(blob), crc32(blob), VERSION, MAGIC))
        size = self._file.tell()
        self._file.close()
        return size

    def abort(self) -> None:
        self._file.abort()


def _check_no_overlap(entries: dict[str, Entry]) -> None:
    """Blocks are laid end to end: two that share bytes mean a crafted or damaged index."""
    spans = sorted((b.offset, b.offset + b.length, name) for name, e in entries.items()
                   if e.same_as is None for b in e.blocks.values() if b.length)
    for (_, end, first), (start, _, second) in pairwise(spans):
        if start < end:
            raise FormatError(f"blocks of tensors {first!r} and {second!r} overlap")


def _rule(raw: dict) -> str | None:
    rule = raw.get("rule")
    if rule is not None and not isinstance(rule, str):
        raise FormatError(f"rule {rule!r} must be a string")
    return rule


def _is_key(value: Any, table) -> bool:
    """`value in table` for JSON values: a list or object is no key (and is unhashable)."""
    return isinstance(value, str) and value in table


def _tensor_json(info: TensorInfo, rule: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": info.name, "shape": list(info.shape), "dtype": info.dtype}
    if info.attrs:
        out["attrs"] = info.attrs
    if rule is not None:
        out["rule"] = rule
    return out


@dataclass(frozen=True)
class Entry:
    """One tensor of an .mpz index, validated."""

    info: TensorInfo
    stages: list[Stage]
    blocks: dict[str, Block]
    same_as: str | None
    rule: str | None = None  # the recipe rule that chose its options (informational)

    @property
    def stored_bytes(self) -> int:
        return sum(b.length for b in self.blocks.values())

    def describe(self) -> str:
        return f"tied to {self.same_as}" if self.same_as is not None else describe_chain(
            self.stages)


class MpzReader(ClosingReader):
    """A checked, lazy view of an .mpz file; `read` decodes one tensor.

    `format` and `metadata` are those of the file the .mpz was made from, so that writers
    rebuild it faithfully.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")
        except OSError as e:
            raise ModelpressError(f"cannot open: {e.strerror}", path=self.path) from None
        try:
            check_kind(self.path, "an .mpz")
        except ModelpressError:
            self._file.close()
            raise
        try:
            self.index = self._read_index()
            self.entries = self._parse_entries()
            # Blocks are read through a memory map: a tensor's bytes are paged in when it is
            # decoded, never copied into a buffer first, and threads read without seeking.
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except ModelpressError as e:
            self._file.close()
            e.at(path=self.path)
            raise
        except BaseException:
            self._file.close()
            raise
        source = self.index["source"]
        self.format = source.get("format", "")
        self.metadata = source.get("metadata", {})

    def _read_index(self) -> dict[str, Any]:
        size = os.fstat(self._file.fileno()).st_size
        if size < HEADER.size + FOOTER.size:
            raise FormatError(f"{size} bytes is too short to be an .mpz file")
        magic, version, _ = HEADER.unpack(self._file.read(HEADER.size))
        if magic != MAGIC:
            raise FormatError("not an .mpz file (bad magic bytes)")
        if version > VERSION:
            raise FormatError(f"written in .mpz version {version}; this modelpress reads up to "
                              f"version {VERSION}: upgrade modelpress")
        self._file.seek(size - FOOTER.size)
        offset, length, crc, end_version, end_magic = FOOTER.unpack(
            self._file.read(FOOTER.size))
        if end_magic != MAGIC:
            raise FormatError("footer magic missing: the file is truncated")
        if end_version != version:
            raise FormatError(f"header says version {version}, footer {end_version}: the file "
                              "is damaged")
        if not (HEADER.size <= offset and length <= MAX_INDEX_BYTES
                and offset + length <= size - FOOTER.size):
            raise FormatError(f"index at {offset}+{length} lies outside the file")
        self._data_end = offset
        self._file.seek(offset)
        blob = self._file.read(length)
        if crc32(blob) != crc:
            raise IntegrityError("index checksum mismatch: the file is damaged")
        index = strict_json(blob, what="index")
        if not isinstance(index, dict) or not isinstance(index.get("tensors"), list) \
                or not isinstance(index.get("source"), dict) or index.get("version") != version:
            raise FormatError("index lacks its version, tensors list or source record")
        return index

    def _parse_entries(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for raw in self.index["tensors"]:
            name = raw.get("name") if isinstance(raw, dict) else None
            if not isinstance(name, str) or name in entries:
                raise FormatError(f"tensor name {name!r} is missing or repeated")
            try:
                entries[name] = self._parse_entry(raw, entries)
            except ModelpressError as e:
                e.at(tensor=name)
                raise
        _check_no_overlap(entries)
        return entries

    def _parse_entry(self, raw: dict, seen: dict[str, Entry]) -> Entry:
        if not _is_key(raw.get("dtype"), DTYPES) or not isinstance(raw.get("attrs", {}), dict):
            raise FormatError(f"unknown dtype {raw.get('dtype')!r} or bad attrs")
        info = TensorInfo(raw["name"], check_shape(raw.get("shape")), raw["dtype"],
                          raw.get("attrs", {}))
        if "same_as" in raw:
            target = seen.get(raw["same_as"]) if isinstance(raw["same_as"], str) else None
            if target is None or (target.info.shape, target.info.dtype) != (info.shape,
                                                                            info.dtype):
                raise FormatError(f"same_as {raw['same_as']!r} names no earlier tensor of the "
                                  "same shape and dtype")
            return Entry(info, target.stages, target.blocks, raw["same_as"], _rule(raw))
        stages = raw.get("stages")
        blocks = raw.get("blocks")
        if not isinstance(stages, list) or not isinstance(blocks, dict):
            raise FormatError("entry needs a stages list and a blocks object")
        entry = Entry(info, [stage_from_config(s) for s in stages],
                      {part: self._parse_block(part, b) for part, b in blocks.items()}, None,
                      _rule(raw))
        if info.size > ELEMENTS_PER_BYTE * (entry.stored_bytes + 64):  # decode would allocate it
            raise FormatError(f"declares {info.size} elements from {entry.stored_bytes} stored "
                              "bytes: refused as a memory bomb")
        return entry

    def _parse_block(self, part: str, raw: Any) -> Block:
        keys = {"dtype", "shape", "codec", "offset", "length", "crc32"}
        if not isinstance(raw, dict) or not keys <= set(raw) or set(raw) - keys - {"bits"}:
            raise FormatError(f"block {part!r} needs exactly {sorted(keys)} (and maybe bits)")
        ints = [raw["offset"], raw["length"], raw["crc32"], raw.get("bits", 1)]
        if not _is_key(raw["dtype"], DTYPES) or not _is_key(raw["codec"], CODECS) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ints):
            raise FormatError(f"block {part!r} has a bad dtype, codec or number")
        block = Block(raw["dtype"], check_shape(raw["shape"]), raw.get("bits"), raw["codec"],
                      raw["offset"], raw["length"], raw["crc32"])
        if block.bits is not None and (not 1 <= block.bits <= 7
                                       or block.dtype not in ("uint8", "bool")):
            raise FormatError(f"block {part!r}: bits must be 1-7 on uint8 or bool data")
        if not (HEADER.size <= block.offset and block.offset + block.length <= self._data_end):
            raise FormatError(f"block {part!r} at {block.offset}+{block.length} lies outside "
                              "the data section")
        if (block.codec == "none" and block.length != block.n_bytes) or (
                block.codec == "zstd" and not block.n_bytes / MAX_ZSTD_RATIO <= block.length
                < block.n_bytes):
            raise FormatError(f"block {part!r}: {block.length} stored bytes cannot hold "
                              f"{block.n_bytes} ({block.codec})")
        return block

    def infos(self) -> Iterator[TensorInfo]:
        return (e.info for e in self.entries.values())

    def read_parts(self, name: str) -> dict[str, np.ndarray]:
        """The stored arrays of one tensor, checksummed and entropy-decoded."""
        entry = self.entries[name]
        parts = {}
        view = memoryview(self._map)
        for part, block in entry.blocks.items():
            try:
                parts[part] = decode_block(block, view[block.offset:block.offset + block.length])
            except IntegrityError as e:
                e.message = f"block {part!r}: {e.message}"
                e.at(path=self.path, tensor=name)
                raise
            finally:
                self._release(block)
        return parts

    def _release(self, block: Block) -> None:
        """Let a block's pages go once read (formats.base.drop_pages)."""
        drop_pages(self._map, block.offset, block.length)

    def read(self, name: str) -> np.ndarray:
        """One tensor, decoded and checked against its declared shape and dtype."""
        entry = self.entries[name]
        try:
            return decode_chain(entry.stages, self.read_parts(name), entry.info.shape,
                                DTYPES[entry.info.dtype])
        except ModelpressError as e:
            e.at(path=self.path, tensor=name)
            raise

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # an array still views a stored block: the map closes with it
            pass
        self._file.close()
