"""What every weights format shares: tensor descriptions, dtype names and the reader protocol."""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any, Protocol

import ml_dtypes
import numpy as np

from ..errors import FormatError

#: Canonical dtype names, as stored in .mpz indexes; numpy lacks bfloat16 and float8, ml_dtypes
#: (the JAX project's numpy extension) adds them so they travel as ordinary arrays.
DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype(np.bool_),
    "uint8": np.dtype("<u1"), "int8": np.dtype("<i1"),
    "uint16": np.dtype("<u2"), "int16": np.dtype("<i2"),
    "uint32": np.dtype("<u4"), "int32": np.dtype("<i4"),
    "uint64": np.dtype("<u8"), "int64": np.dtype("<i8"),
    "float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "float64": np.dtype("<f8"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}
FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16",
                          "float8_e4m3fn", "float8_e5m2"})
#: Dtypes that plain numpy files and HDF5 can hold; others are widened to float32 there.
NUMPY_NATIVE = frozenset(DTYPES) - {"bfloat16", "float8_e4m3fn", "float8_e5m2"}

#: Refuse to describe a tensor of more elements than this (2**40: 4 TiB of float32).
MAX_ELEMENTS = 1 << 40


def dtype_name(dtype: np.dtype, *, path=None, tensor: str | None = None) -> str:
    """The canonical name of a numpy dtype, or a FormatError for kinds we do not store."""
    dtype = np.dtype(dtype)
    for name, known in DTYPES.items():
        if dtype == known or (dtype.kind in "biuf" and dtype.newbyteorder("<") == known):
            return name
    raise FormatError(f"unsupported dtype {dtype.str!r} (numeric and bool tensors only)",
                      path=path, tensor=tensor)


def check_shape(shape: Any, *, path=None, tensor: str | None = None) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints whose element count stays under MAX_ELEMENTS."""
    if not isinstance(shape, (list, tuple)) or len(shape) > 64 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise FormatError(f"invalid shape {shape!r}", path=path, tensor=tensor)
    if prod(shape) > MAX_ELEMENTS:
        raise FormatError(f"shape {list(shape)} declares more than 2**40 elements",
                          path=path, tensor=tensor)
    return tuple(shape)


MAGICS = {b"\x89HDF\r\n\x1a\n": "an HDF5 (.h5)", b"PK\x03\x04": "a zip (.npz)",
          b"PK\x05\x06": "a zip (.npz)", b"\x89MPZ\r\n\x1a\n": "an .mpz"}


def sniff(path: os.PathLike) -> str | None:
    """What the first bytes say the file is ("an HDF5 (.h5)"...), "empty", or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    for magic, kind in MAGICS.items():
        if head.startswith(magic):
            return kind
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27:
        return "a .safetensors"
    return None


def check_kind(path: os.PathLike, expected: str) -> None:
    """FormatError if the file is empty or its bytes say it is another format than `expected`."""
    kind = sniff(path)
    if kind == "empty":
        raise FormatError("the file is empty", path=path)
    if kind is not None and kind != expected:
        raise FormatError(f"is {kind} file, not {expected} file: check the name or the "
                          "command", path=path)


def strict_json(blob: bytes, *, what: str, path=None) -> Any:
    """Parse JSON, refusing duplicate keys (a second value would silently win)."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise FormatError(f"{what} repeats the key "
                              f"{next(k for k in keys if keys.count(k) > 1)!r}", path=path)
        return dict(pairs)

    try:
        return json.loads(blob, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{what} is not valid JSON ({e})", path=path) from None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's description, known before its data is read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a key of DTYPES
    attrs: dict[str, Any] = field(default_factory=dict)  # JSON-safe, format-specific encoding

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def n_bytes(self) -> int:
        return self.size * DTYPES[self.dtype].itemsize


class TensorReader(Protocol):
    """One weights file, handed over one tensor at a time."""

    format: str                  # "npz", "h5", "safetensors" or "mpz"
    metadata: Mapping[str, Any]  # JSON-safe, format-specific (h5 attributes, __metadata__)

    def infos(self) -> Iterator[TensorInfo]: ...  # in file order; no data read
    def read(self, name: str) -> np.ndarray: ...  # one tensor, checked against its TensorInfo
    def close(self) -> None: ...


def drop_pages(mapping: mmap.mmap, offset: int, length: int) -> None:
    """Unmap `length` bytes at `offset` of a read-only file mapping from this process: they
    stay in the page cache, and fault back in if something still views them, but a reader
    that walks a whole file no longer keeps it all in its resident memory."""
    start = offset - offset % mmap.PAGESIZE
    if length and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED, start, offset + length - start)


class ClosingReader:
    """Mixin: readers close their file (their own `close`) at the end of a `with` block,
    and read without copying where their format allows."""

    def view(self, name: str) -> np.ndarray:
        """read(), read-only and without a copy where the format allows (a memory map): for
        a caller that drops the array before release(name). Here, a plain read()."""
        return self.read(name)

    def release(self, name: str) -> None:
        """Done with view(name): let its pages go from this process's resident memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: A writer takes the output path, a reader of the tensors to write and a callback for warnings
#: about what the target format cannot carry over.
TensorWriter = Callable[[Any, TensorReader, Callable[[str], None]], None]


def widen_for_numpy(reader: TensorReader, target: str, warn: Callable[[str], None]) -> set[str]:
    """Names of tensors whose dtype `target` cannot hold; they are written as float32."""
    widened = {i.name for i in reader.infos() if i.dtype not in NUMPY_NATIVE}
    if widened:
        dtypes = sorted({i.dtype for i in reader.infos() if i.name in widened})
        warn(f"{target} cannot store {', '.join(dtypes)}: {len(widened)} tensor(s) written as "
             f"float32 (values unchanged), e.g. {sorted(widened)[0]!r}")
    return widened


def checked(array: np.ndarray, info: TensorInfo, *, path=None) -> np.ndarray:
    """`array` as a C-contiguous little-endian array matching `info`, or a FormatError."""
    if tuple(array.shape) != info.shape:
        raise FormatError(f"data has shape {list(array.shape)}, header says {list(info.shape)}",
                          path=path, tensor=info.name)
    return np.asarray(array, dtype=DTYPES[info.dtype], order="C")  # keeps 0-d arrays 0-d
