"""Weights formats by file extension: a reader opens one, a writer streams one out."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import (
    DTYPES,
    FLOAT_DTYPES,
    TensorInfo,
    TensorReader,
    TensorWriter,
    check_kind,
    dtype_name,
)
from .npz import NpzReader, write_npz
from .safetensors import SafetensorsReader, write_safetensors
from .sharded import ShardedReader, find_index


def _h5_reader(path: Path) -> TensorReader:
    """H5Reader, imported when an .h5 file comes: importing h5py is 65-75 ms of start-up that
    .safetensors and .npz runs do not need."""
    from .h5 import H5Reader
    return H5Reader(path)


def _write_h5(*args, **kwargs) -> None:
    """write_h5, imported on first use (see _h5_reader)."""
    from .h5 import write_h5
    write_h5(*args, **kwargs)


READERS = {".npz": NpzReader, ".h5": _h5_reader, ".hdf5": _h5_reader,
           ".safetensors": SafetensorsReader}
WRITERS: dict[str, TensorWriter] = {".npz": write_npz, ".h5": _write_h5, ".hdf5": _write_h5,
                                    ".safetensors": write_safetensors}
FORMAT_NAMES = {".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".safetensors": "safetensors"}
KINDS = {"npz": "a zip (.npz)", "h5": "an HDF5 (.h5)", "safetensors": "a .safetensors"}


def _suffix(path: Path, table: dict) -> str:
    suffix = path.suffix.lower()
    if suffix not in table:
        raise ConfigError(f"unknown extension {path.suffix or '(none)'!r}; use one of "
                          f"{', '.join(sorted(table))}", path=path)
    return suffix


def open_reader(path: str | Path) -> TensorReader:
    """A reader for a weights file, chosen by its extension and checked against its bytes;
    or for a sharded checkpoint (its folder, or its *.safetensors.index.json)."""
    path = Path(path)
    index = find_index(path)
    if index is not None:
        return ShardedReader(index)
    suffix = _suffix(path, READERS)
    check_kind(path, KINDS[FORMAT_NAMES[suffix]])
    return READERS[suffix](path)


def writer_for(path: str | Path) -> TensorWriter:
    """The writer for a weights file, chosen by its extension."""
    path = Path(path)
    return WRITERS[_suffix(path, WRITERS)]


__all__ = ["DTYPES", "FLOAT_DTYPES", "FORMAT_NAMES", "TensorInfo", "TensorReader",
           "TensorWriter", "dtype_name", "open_reader", "writer_for"]
