"""`.h5`: HDF5 files as Keras writes them; every group and attribute is kept.

Tensor names are dataset paths without the leading slash (``model_weights/dense/dense/kernel:0``).
Attributes travel in a JSON-safe tagged form (see `encode_attr`) so that an .h5 decompressed
from .mpz gets them back with their HDF5 types: fixed-length byte strings stay fixed-length, which
is what Keras' `layer_names` and `weight_names` are.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import FormatError, ModelpressError
from .base import (
    DTYPES,
    ClosingReader,
    TensorInfo,
    TensorReader,
    check_shape,
    checked,
    dtype_name,
    widen_for_numpy,
)

#: A dataset may hold less than it declares (unwritten chunks read as the fill value, or a
#: compression filter); beyond 1 GiB, more than deflate's 1032:1 is refused as a memory bomb.
MAX_UNBACKED_BYTES = 1 << 30
#: Deadlines for the HDF5 child: the walk of groups and attributes, and each dataset's read
#: (a base plus a rate far below any disk's, so only a stuck library misses them).
WALK_SECONDS = 60.0
READ_SECONDS = 60.0
READ_BYTES_PER_SECOND = 20e6
#: What h5py raises on a damaged file: the HDF5 library's errors surface as any of these.
H5_DAMAGE = (OSError, KeyError, RuntimeError, ValueError, TypeError)
MAX_FILTER_RATIO = 1032


def encode_attr(value: Any) -> dict | None:
    """A JSON-safe, exact form of an HDF5 attribute value; None for kinds we cannot carry."""
    if isinstance(value, h5py.Empty):
        return {"empty": value.dtype.str}
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    array = np.asarray(value)
    scalar = not isinstance(value, np.ndarray)
    if array.dtype.kind == "S":
        data = [b.decode("latin-1") for b in array.reshape(-1).tolist()]
        return {"dtype": array.dtype.str, "shape": list(array.shape), "strings": data}
    if array.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in array.flat):
        data = [v.decode() if isinstance(v, bytes) else v for v in array.flat]
        return {"dtype": "vlen-str", "shape": list(array.shape), "strings": data}
    if array.dtype.kind in "biuf" and array.dtype.fields is None:
        return {"dtype": array.dtype.str, "shape": list(array.shape), "hex": array.tobytes().hex(),
                "scalar": scalar}
    return None


def decode_attr(encoded: Any) -> Any:
    """The value to hand h5py for an attribute stored by `encode_attr`; FormatError if bad."""
    try:
        return _decode_attr(encoded)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise FormatError(f"attribute record {str(encoded)[:80]!r} is malformed ({e})") from None


def _decode_attr(encoded: dict) -> Any:
    if "empty" in encoded:
        return h5py.Empty(np.dtype(encoded["empty"]))
    if "str" in encoded:
        return encoded["str"]
    if "bytes" in encoded:
        return np.bytes_(encoded["bytes"].encode("latin-1"))
    shape = tuple(encoded["shape"])
    if encoded["dtype"] == "vlen-str":
        return np.array(encoded["strings"], dtype=h5py.string_dtype()).reshape(shape)
    if "strings" in encoded:
        data = [s.encode("latin-1") for s in encoded["strings"]]
        return np.array(data, dtype=encoded["dtype"]).reshape(shape)
    array = np.frombuffer(bytes.fromhex(encoded["hex"]), dtype=encoded["dtype"]).reshape(shape)
    return array[()] if encoded.get("scalar") else array


class H5Reader(ClosingReader):
    """Reads an HDF5 file through a child process that runs the HDF5 library.

    Why: libhdf5 parses damaged files in C, where a Python signal cannot stop it, and some
    damage makes it loop forever (a fuzzed variable-length string attribute did) or crash.
    Behind a pipe, each answer has a deadline; a hang or a crash becomes a one-line
    FormatError, and the parent never runs the library on the file at all. The child is a
    fresh interpreter (no inherited open files or locks) and dies with us.
    """

    format = "h5"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        context = _child_context()
        self._conn, child_end = context.Pipe()
        self._child = context.Process(target=_serve, args=(self.path, child_end), daemon=True)
        self._child.start()
        child_end.close()
        try:
            self.metadata, infos = self._ask(("walk",), WALK_SECONDS)
        except BaseException:
            self.close()
            raise
        self._infos = {info.name: info for info in infos}

    def _ask(self, request: tuple, seconds: float, into: np.ndarray | None = None):
        """Send a request; the answer within `seconds`, or FormatError (child killed)."""
        try:
            self._conn.send(request)
            kind, payload = self._receive(seconds)
            if kind == "ok" and into is not None:  # the array's bytes follow, straight in
                if not self._conn.poll(seconds):
                    raise TimeoutError
                self._conn.recv_bytes_into(into.reshape(-1).view(np.uint8))
        except TimeoutError:
            self.close()
            raise FormatError(f"the HDF5 library did not finish within {seconds:.0f} s; "
                              "the file is probably damaged", path=self.path) from None
        except (EOFError, OSError):
            self._child.join(1)
            status = self._child.exitcode  # > 0: Python exited on an error, not a crash
            self.close()
            if status is not None and status > 0:
                raise ModelpressError(
                    f"the HDF5 reader process stopped (exit status {status}) before it "
                    "answered; most often because it is a fresh Python that imports your main "
                    "module again: from a script, call modelpress under "
                    "`if __name__ == \"__main__\":`",
                    path=self.path) from None
            raise FormatError("the HDF5 library crashed reading it; the file is damaged",
                              path=self.path) from None
        if kind == "error":
            message, tensor = payload
            raise FormatError(message, path=self.path, tensor=tensor)
        return payload

    def _receive(self, seconds: float):
        if not self._conn.poll(seconds):
            raise TimeoutError
        return self._conn.recv()

    def infos(self) -> Iterator[TensorInfo]:
        return iter(self._infos.values())

    def read(self, name: str) -> np.ndarray:
        info = self._infos[name]
        out = np.empty(info.shape, dtype=DTYPES[info.dtype])  # one copy: no pickling
        self._ask(("read", name), READ_SECONDS + info.n_bytes / READ_BYTES_PER_SECOND, out)
        return out

    def close(self) -> None:
        if self._conn.closed:
            return
        if self._child.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("close",))
            self._child.join(1)
            if self._child.is_alive():
                self._child.kill()
                self._child.join()
        self._conn.close()
        self._child.close()


def _child_context():
    """Spawn: a fresh interpreter (~0.3 s), holding none of our open files or locks, whose
    parent is us, so the kernel can kill it when we die (a fork server would outlive us)."""
    return multiprocessing.get_context("spawn")


def _serve(path: Path, conn) -> None:
    """The child: answer walk/read requests on one file until told to close."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    source = None
    try:
        while True:
            request = conn.recv()
            try:
                if request[0] == "walk":
                    source = _H5File(path)
                    conn.send(("ok", (source.metadata, list(source.infos()))))
                elif request[0] == "read":
                    array = source.read(request[1])
                    conn.send(("ok", None))
                    conn.send_bytes(memoryview(array.reshape(-1).view(np.uint8)))
                else:
                    break
            except FormatError as e:
                conn.send(("error", (e.message, e.tensor)))
            except H5_DAMAGE as e:
                conn.send(("error", (f"damaged HDF5 file ({e})", None)))
            except Exception as e:  # a bug here, not damage: say which, do not hide it
                conn.send(("error", (f"internal error ({type(e).__name__}: {e}); please "
                                     "report it", None)))
    except (EOFError, OSError):  # the parent went away, or stopped listening
        pass
    finally:
        if source is not None:
            source.close()
        conn.close()


def _die_with_parent() -> None:
    """Linux: have the kernel kill this child when its parent dies, even if libhdf5 loops."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _H5File(ClosingReader):
    """Walks the file once for groups, datasets and attributes; reads data on `read`.

    Runs inside H5Reader's child process.
    """

    format = "h5"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise FormatError(f"not a readable HDF5 file ({e})", path=self.path) from None
        try:
            self.metadata, self._infos = self._walk()
        except H5_DAMAGE as e:
            self._file.close()
            raise FormatError(f"damaged HDF5 structure ({e})", path=self.path) from None
        except BaseException:
            self._file.close()
            raise

    def _attrs(self, obj, where: str) -> dict:
        out = {}
        for key in obj.attrs:
            encoded = encode_attr(obj.attrs[key])
            if encoded is None:
                raise FormatError(f"attribute {key!r} of {where!r} has a type modelpress cannot "
                                  f"carry ({type(obj.attrs[key]).__name__})", path=self.path)
            out[key] = encoded
        return out

    def _walk(self) -> tuple[dict, dict[str, TensorInfo]]:
        groups: dict[str, dict] = {"/": self._attrs(self._file, "/")}
        infos: dict[str, TensorInfo] = {}

        def walk(group: h5py.Group, prefix: str) -> None:
            for key in group:  # creation order where the file tracks it, else by name
                name, link = prefix + key, group.get(key, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    raise FormatError(f"{name!r} is an external link to {link.filename!r}; "
                                      "modelpress reads only data inside the file",
                                      path=self.path)
                if isinstance(link, h5py.SoftLink):
                    raise FormatError(f"{name!r} is a soft link to {link.path!r}; modelpress "
                                      "copies datasets, not links: replace it with the data",
                                      path=self.path)
                obj = group[key]
                if isinstance(obj, h5py.Group):
                    groups[name] = self._attrs(obj, name)
                    walk(obj, name + "/")
                elif isinstance(obj, h5py.Dataset):
                    infos[name] = self._describe(name, obj)
                else:
                    raise FormatError(f"{name!r} is a {type(obj).__name__}, not a group or "
                                      "dataset; modelpress reads weights only", path=self.path)

        walk(self._file, "")
        storage = {name: layout for name in infos
                   if (layout := _storage(self._file[name]))}
        return {"groups": groups, **({"storage": storage} if storage else {})}, infos

    def _describe(self, name: str, ds: h5py.Dataset) -> TensorInfo:
        if ds.is_virtual or ds.external:
            raise FormatError("is a virtual or externally stored dataset; modelpress reads only "
                              "data inside the file", path=self.path, tensor=name)
        if ds.dtype.kind not in "biuf" or ds.dtype.fields is not None:
            raise FormatError(f"has non-numeric type {ds.dtype}; only numeric and bool "
                              "datasets are weights", path=self.path, tensor=name)
        shape = check_shape(list(ds.shape) if ds.shape is not None else None,
                            path=self.path, tensor=name)
        info = TensorInfo(name, shape, dtype_name(ds.dtype, path=self.path, tensor=name),
                          self._attrs(ds, name))
        stored = ds.id.get_storage_size()
        if info.n_bytes > MAX_UNBACKED_BYTES and info.n_bytes > MAX_FILTER_RATIO * stored:
            raise FormatError(f"declares {info.n_bytes} bytes of data but stores {stored}: "
                              "refused rather than filled in memory", path=self.path,
                              tensor=name)
        return info

    def infos(self) -> Iterator[TensorInfo]:
        return iter(self._infos.values())

    def read(self, name: str) -> np.ndarray:
        info = self._infos[name]
        try:
            array = np.asarray(self._file[name][()])
        except H5_DAMAGE as e:
            raise FormatError(f"cannot read data ({e})", tensor=name) from None
        return checked(array, info)

    def close(self) -> None:
        self._file.close()


def write_h5(path: str | os.PathLike, reader: TensorReader,
             warn: Callable[[str], None]) -> None:
    """Write groups (with attributes) first, then each dataset as it is read."""
    widened = widen_for_numpy(reader, ".h5", warn)
    with h5py.File(path, "w", track_order=True) as f:
        groups = reader.metadata.get("groups", {}) if reader.format == "h5" else {}
        storage = reader.metadata.get("storage", {}) if reader.format == "h5" else {}
        if not isinstance(storage, dict):
            raise FormatError("source storage must map dataset names to layouts")
        if not isinstance(groups, dict) or not all(isinstance(a, dict) for a in groups.values()):
            raise FormatError("source groups must map group paths to attribute records")
        for name, attrs in groups.items():
            group = f if name == "/" else _ordered_group(f, name)
            for key, encoded in attrs.items():
                group.attrs[key] = decode_attr(encoded)
        if reader.format == "safetensors":  # string metadata fits as root attributes
            for key, value in reader.metadata.get("__metadata__", {}).items():
                f.attrs[key] = value
        for info in reader.infos():
            array = reader.read(info.name)
            if info.name in widened:
                array = array.astype(np.float32)
            try:
                parent, _, leaf = info.name.rpartition("/")
                ds = (_ordered_group(f, parent) if parent else f).create_dataset(
                    leaf, data=array, **_storage_options(storage.get(info.name), array))
            except (ValueError, TypeError) as e:
                raise FormatError(f"cannot be an HDF5 dataset name ({e})",
                                  tensor=info.name) from None
            for key, encoded in (info.attrs if reader.format == "h5" else {}).items():
                ds.attrs[key] = decode_attr(encoded)


def _ordered_group(f: h5py.File, path: str) -> h5py.Group:
    """The group at `path`, created (with its parents) to list members in creation order.

    HDF5 lists members alphabetically unless told otherwise; this keeps the source's order.
    """
    group = f
    for part in path.split("/"):
        if not part:
            continue
        group = group[part] if part in group else group.create_group(part, track_order=True)
        if not isinstance(group, h5py.Group):
            raise FormatError(f"{group.name!r} is a dataset, so it cannot also be a group "
                              f"holding {path!r}: write .npz or .safetensors instead")
    return group


def _storage(ds: h5py.Dataset) -> dict[str, Any]:
    """How a dataset is stored (chunks, filters), so a rebuilt file is stored the same way."""
    layout: dict[str, Any] = {}
    if ds.chunks:
        layout["chunks"] = list(ds.chunks)
    if ds.compression in ("gzip", "lzf"):
        layout["compression"] = ds.compression
        if ds.compression_opts is not None:
            layout["compression_opts"] = ds.compression_opts
    if ds.shuffle:
        layout["shuffle"] = True
    return layout


def _storage_options(layout: Any, array: np.ndarray) -> dict[str, Any]:
    """create_dataset keywords for a recorded layout; FormatError if the record is bad."""
    if not layout:
        return {}
    ok = isinstance(layout, dict) and set(layout) <= {"chunks", "compression",
                                                       "compression_opts", "shuffle"}
    chunks = layout.get("chunks") if ok else None
    if chunks is not None and not (isinstance(chunks, list) and len(chunks) == array.ndim
                                   and all(isinstance(c, int) and c > 0 for c in chunks)):
        ok = False
    if ok and layout.get("compression") not in (None, "gzip", "lzf"):
        ok = False
    opts = layout.get("compression_opts") if ok else None
    if opts is not None and not (isinstance(opts, int) and 0 <= opts <= 9):
        ok = False
    if not ok:
        raise FormatError(f"storage record {str(layout)[:80]!r} is malformed")
    return {"chunks": tuple(chunks) if chunks else None,
            "compression": layout.get("compression"), "compression_opts": opts,
            "shuffle": bool(layout.get("shuffle"))}
