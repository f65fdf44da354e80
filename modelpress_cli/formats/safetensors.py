"""`.safetensors`: an 8-byte header length, a JSON header, then the raw tensor bytes.

Our own reader and writer, not the `safetensors` package's numpy helpers: those hold every tensor
in memory at once and know no bfloat16. Checks follow the package's own `validate`: the header is
bounded, every tensor's byte range matches its shape and dtype, and the ranges tile the data
section exactly. Tests check compatibility with the `safetensors` package in both directions.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..outfile import OutputFile
from .base import (
    DTYPES,
    ClosingReader,
    TensorInfo,
    TensorReader,
    check_shape,
    checked,
    drop_pages,
    strict_json,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors package's own limit
ST_NAMES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
            "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
            "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
            "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
ST_CODES = {v: k for k, v in ST_NAMES.items()}


class SafetensorsReader(ClosingReader):
    """Reads the header once; each `read` seeks to one tensor's bytes and copies them, each
    `view` maps them (no copy: compress reads a model from the page cache this way)."""

    format = "safetensors"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")
        try:
            self._infos, self._ranges, st_metadata = self._parse_header()
        except BaseException:
            self._file.close()
            raise
        self.metadata = {"__metadata__": st_metadata} if st_metadata else {}
        self._by_name = {i.name: i for i in self._infos}
        self._map: mmap.mmap | None = None

    def _parse_header(self):
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) < 8:
            raise FormatError("too short to be a .safetensors file (no 8-byte header length)",
                              path=self.path)
        (n_header,) = struct.unpack("<Q", head)
        if n_header > MAX_HEADER_BYTES or 8 + n_header > size:
            raise FormatError(f"header length {n_header} is beyond the file's {size} bytes "
                              "or the 100 MB limit: truncated or not a .safetensors file",
                              path=self.path)
        header = strict_json(self._file.read(n_header), what="header", path=self.path)
        if not isinstance(header, dict):
            raise FormatError("header is not a JSON object", path=self.path)
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise FormatError("__metadata__ must map strings to strings", path=self.path)
        data_start, data_size = 8 + n_header, size - 8 - n_header
        infos, ranges = [], {}
        for name, entry in header.items():
            if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
                raise FormatError("entry needs exactly dtype, shape and data_offsets",
                                  path=self.path, tensor=name)
            if not isinstance(entry["dtype"], str) or entry["dtype"] not in ST_NAMES:
                raise FormatError(f"unknown dtype {entry['dtype']!r}", path=self.path,
                                  tensor=name)
            info = TensorInfo(name, check_shape(entry["shape"], path=self.path, tensor=name),
                              ST_NAMES[entry["dtype"]])
            offsets = entry["data_offsets"]
            if (not isinstance(offsets, list) or len(offsets) != 2
                    or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                    or not 0 <= offsets[0] <= offsets[1] <= data_size):
                raise FormatError(f"data_offsets {offsets!r} lie outside the {data_size}-byte "
                                  "data section (truncated file?)", path=self.path, tensor=name)
            if offsets[1] - offsets[0] != info.n_bytes:
                raise FormatError(f"holds {offsets[1] - offsets[0]} bytes but shape "
                                  f"{list(info.shape)} of {info.dtype} needs {info.n_bytes}",
                                  path=self.path, tensor=name)
            infos.append(info)
            ranges[name] = (data_start + offsets[0], offsets)
        # The byte ranges must tile the data section: no overlap, no hole, nothing after.
        end = 0
        for begin, stop in sorted(tuple(r[1]) for r in ranges.values()):
            if begin != end:
                raise FormatError("tensor data ranges overlap or leave a gap", path=self.path)
            end = stop
        if end != data_size:
            raise FormatError(f"{data_size - end} bytes after the last tensor", path=self.path)
        infos.sort(key=lambda i: ranges[i.name][1][0])  # file order
        return infos, {k: v[0] for k, v in ranges.items()}, metadata

    def infos(self) -> Iterator[TensorInfo]:
        return iter(self._infos)

    def read(self, name: str) -> np.ndarray:
        info = self._by_name[name]
        out = np.empty(info.shape, dtype=DTYPES[info.dtype])
        self._file.seek(self._ranges[name])
        if self._file.readinto(out.reshape(-1).view(np.uint8)) != info.n_bytes:
            raise FormatError("file ended inside this tensor's data", path=self.path,
                              tensor=name)
        return checked(out, info, path=self.path)

    def view(self, name: str) -> np.ndarray:
        info, start = self._by_name[name], self._ranges[name]
        dtype = DTYPES[info.dtype]
        if info.n_bytes == 0 or start % dtype.itemsize:  # kernels want aligned data
            return self.read(name)
        if os.fstat(self._file.fileno()).st_size < start + info.n_bytes:  # shrunk since open
            raise FormatError("file ended inside this tensor's data (was it changed while "
                              "being read?)", path=self.path, tensor=name)
        if self._map is None:
            try:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError:  # a file that cannot be mapped (a pipe, an odd file system)
                return self.read(name)
        return np.frombuffer(self._map, dtype, info.size, start).reshape(info.shape)

    def release(self, name: str) -> None:
        if self._map is not None:
            drop_pages(self._map, self._ranges[name], self._by_name[name].n_bytes)

    def close(self) -> None:
        self._file.close()
        self._map = None  # unmapped when the last view of it goes, not under a live one


def write_safetensors(path: str | os.PathLike, reader: TensorReader,
                      warn: Callable[[str], None]) -> None:
    """Write every tensor of `reader`, streaming: the header is known from the infos alone."""
    infos = list(reader.infos())
    for info in infos:
        if info.name == "__metadata__":
            raise FormatError("is reserved in .safetensors (it holds the file's metadata); "
                              "write .npz or .h5, or rename the tensor", tensor=info.name)
    header: dict = {}
    metadata = _metadata_for_safetensors(reader, warn)
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for info in infos:
        header[info.name] = {"dtype": ST_CODES[info.dtype], "shape": list(info.shape),
                             "data_offsets": [offset, offset + info.n_bytes]}
        offset += info.n_bytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # pad like the reference writer: data starts 8-aligned
    with OutputFile(path) as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for info in infos:
            f.write(memoryview(np.ascontiguousarray(reader.read(info.name)).reshape(-1)
                               .view(np.uint8)))


def _metadata_for_safetensors(reader: TensorReader, warn: Callable[[str], None]) -> dict:
    """String metadata carries over from a safetensors source; anything else gets a warning."""
    if reader.format == "safetensors":
        metadata = reader.metadata.get("__metadata__", {})
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise FormatError("source __metadata__ must map strings to strings")
        return dict(metadata)
    attributed = [i.name for i in reader.infos() if i.attrs]
    groups = [g for g, a in reader.metadata.get("groups", {}).items() if a]
    if attributed or groups:
        warn(f".safetensors has no place for HDF5 attributes: those of {len(groups)} group(s) "
             f"and {len(attributed)} dataset(s) are not written (decompress to .h5 to keep them)")
    return {}
