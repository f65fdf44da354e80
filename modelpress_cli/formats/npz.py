"""`.npz`: a zip of `.npy` members, as numpy's savez writes it; never unpickled."""

from __future__ import annotations

import lzma
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from ..errors import FormatError
from .base import (
    ClosingReader,
    TensorInfo,
    TensorReader,
    check_shape,
    checked,
    dtype_name,
    widen_for_numpy,
)

#: What zipfile, its decompressors and numpy's .npy header parser raise on damaged input
#: (NotImplementedError: an unknown compression method; RuntimeError: encryption; TokenError
#: and SyntaxError: a mangled header dictionary).
ZIP_DAMAGE = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
              NotImplementedError, RuntimeError, SyntaxError, tokenize.TokenError)
MAX_DEFLATE_RATIO = 1032  # deflate's own limit: a larger claim is a crafted archive


class NpzReader(ClosingReader):
    """Reads each member's .npy header up front (shape, dtype); data only on `read`."""

    format = "npz"
    metadata: dict = {}

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except ZIP_DAMAGE as e:
            raise FormatError(f"not a readable .npz (zip) file: {e}", path=self.path) from None
        try:
            self._infos: dict[str, TensorInfo] = {}
            for member in self._zip.infolist():
                info = self._describe(member)
                if info.name in self._infos:
                    raise FormatError("appears twice in the zip; which one is meant is unclear",
                                      path=self.path, tensor=info.name)
                self._infos[info.name] = info
        except BaseException:
            self._zip.close()
            raise

    def _describe(self, member: zipfile.ZipInfo) -> TensorInfo:
        if not member.filename.endswith(".npy"):
            raise FormatError(f"member {member.filename!r} is not a .npy array", path=self.path)
        name = member.filename[:-4]
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or any(c in name for c in "\\\0"):
            raise FormatError(f"member {member.filename!r} is not a plain tensor name "
                              "(empty, '.', '..' or '\\' parts, or NUL)", path=self.path)
        if member.compress_size * MAX_DEFLATE_RATIO < member.file_size:  # a zip bomb
            raise FormatError(f"member claims {member.file_size} bytes from "
                              f"{member.compress_size}: more than deflate can produce",
                              path=self.path, tensor=name)
        try:
            with self._zip.open(member) as f:
                version = npy.read_magic(f)
                read_header = (npy.read_array_header_1_0 if version == (1, 0)
                               else npy.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                header_bytes = f.tell()
        except ZIP_DAMAGE as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__  # numpy's run on
            raise FormatError(f"bad .npy header: {first}", path=self.path, tensor=name) from None
        if dtype.hasobject:
            raise FormatError("holds Python objects (pickle); modelpress never unpickles",
                              path=self.path, tensor=name)
        info = TensorInfo(name, check_shape(shape, path=self.path, tensor=name),
                          dtype_name(dtype, path=self.path, tensor=name))
        if member.file_size != header_bytes + info.n_bytes:  # truncated, padded or a zip bomb
            raise FormatError(f"member holds {member.file_size - header_bytes} data bytes, its "
                              f"shape and dtype need {info.n_bytes}", path=self.path, tensor=name)
        return info

    def infos(self) -> Iterator[TensorInfo]:
        return iter(self._infos.values())

    def read(self, name: str) -> np.ndarray:
        info = self._infos[name]
        try:
            with self._zip.open(name + ".npy") as f:
                array = npy.read_array(f, allow_pickle=False)
        except ZIP_DAMAGE as e:
            raise FormatError(f"cannot read data: {e}", path=self.path, tensor=name) from None
        return checked(array, info, path=self.path)

    def close(self) -> None:
        self._zip.close()


def write_npz(path: str | os.PathLike, reader: TensorReader,
              warn: Callable[[str], None]) -> None:
    """Write an uncompressed .npz (as np.savez does), one member at a time."""
    widened = widen_for_numpy(reader, ".npz", warn)
    if reader.metadata or any(i.attrs for i in reader.infos()):
        warn(f".npz has no place for metadata: the {reader.format} file's metadata and "
             "attributes are not written (decompress to the source's format to keep them)")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for info in reader.infos():
            array = reader.read(info.name)
            if info.name in widened:
                array = array.astype(np.float32)
            with zf.open(info.name + ".npy", "w", force_zip64=True) as f:
                npy.write_array(f, array, allow_pickle=False)
