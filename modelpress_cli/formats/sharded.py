"""Sharded .safetensors checkpoints, as the Hugging Face hub lays them out.

A folder holds `model-00001-of-00003.safetensors` … and `model.safetensors.index.json`:
``{"metadata": {...}, "weight_map": {"tensor name": "shard file name", ...}}``. The reader
presents the shards as one model, in shard order; every name in the index must be in the
shard it names, and every tensor of every shard in the index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import FormatError
from .base import ClosingReader, TensorInfo, strict_json
from .safetensors import SafetensorsReader, write_safetensors

INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20


def find_index(path: Path) -> Path | None:
    """The index file a path names: itself, or the one index inside a folder; else None."""
    if path.name.endswith(INDEX_SUFFIX):
        return path
    if path.is_dir():
        found = sorted(path.glob(f"*{INDEX_SUFFIX}"))
        if len(found) != 1:
            raise FormatError(f"holds {len(found)} files named *{INDEX_SUFFIX}; a sharded "
                              "checkpoint folder needs exactly one", path=path)
        return found[0]
    return None


class ShardedReader(ClosingReader):
    """All shards of a checkpoint, read one tensor at a time."""

    format = "safetensors"

    def __init__(self, index_path: str | os.PathLike) -> None:
        self.path = Path(index_path)
        if self.path.stat().st_size > MAX_INDEX_BYTES:
            raise FormatError("index is over 64 MiB", path=self.path)
        index = strict_json(self.path.read_bytes(), what="index", path=self.path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise FormatError("index needs a weight_map of tensor name → shard file",
                              path=self.path)
        for shard in set(weight_map.values()):
            if Path(shard).name != shard or shard in (".", ".."):
                raise FormatError(f"shard {shard!r} is not a plain file name beside the index",
                                  path=self.path)
        self._shards: dict[str, SafetensorsReader] = {}
        try:
            for shard in sorted(set(weight_map.values())):
                if not (self.path.parent / shard).is_file():
                    raise FormatError(f"shard {shard!r} named in the index is missing",
                                      path=self.path)
                self._shards[shard] = SafetensorsReader(self.path.parent / shard)
            self._where = self._check(weight_map)
        except BaseException:
            self.close()
            raise
        self.n_bytes = self.path.stat().st_size + sum(
            (self.path.parent / shard).stat().st_size for shard in self._shards)
        first = next(iter(self._shards.values()), None)
        self.metadata = {**(first.metadata if first else {}),
                         "index_metadata": index.get("metadata") or {}}

    def _check(self, weight_map: dict[str, str]) -> dict[str, tuple[str, TensorInfo]]:
        where: dict[str, tuple[str, TensorInfo]] = {}
        for shard, reader in self._shards.items():
            for info in reader.infos():
                if weight_map.get(info.name) != shard:
                    raise FormatError(f"is in shard {shard!r}, but the index says "
                                      f"{weight_map.get(info.name)!r}", path=self.path,
                                      tensor=info.name)
                where[info.name] = (shard, info)
        missing = sorted(set(weight_map) - set(where))
        if missing:
            raise FormatError(f"is in the index but in no shard ({len(missing)} such)",
                              path=self.path, tensor=missing[0])
        return where

    def infos(self) -> Iterator[TensorInfo]:
        return (info for _, info in self._where.values())

    def read(self, name: str) -> np.ndarray:
        return self._shards[self._where[name][0]].read(name)

    def view(self, name: str) -> np.ndarray:
        return self._shards[self._where[name][0]].view(name)

    def release(self, name: str) -> None:
        self._shards[self._where[name][0]].release(name)

    def close(self) -> None:
        for reader in self._shards.values():
            reader.close()


class _Subset(ClosingReader):
    """Some tensors of a reader, as a reader of their own (one shard's worth)."""

    def __init__(self, reader, names: list[str]) -> None:
        self._reader, self._names = reader, set(names)
        self.format, self.metadata = reader.format, reader.metadata

    def infos(self) -> Iterator[TensorInfo]:
        return (i for i in self._reader.infos() if i.name in self._names)

    def read(self, name: str) -> np.ndarray:
        return self._reader.read(name)

    def close(self) -> None:
        pass  # the whole reader is closed by its owner


def plan_shards(infos: list[TensorInfo], shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order, each shard filled up to `shard_bytes` (a larger
    tensor gets a shard of its own), as the Hugging Face hub's writers do."""
    shards: list[list[str]] = [[]]
    size = 0
    for info in infos:
        if shards[-1] and size + info.n_bytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(info.name)
        size += info.n_bytes
    return shards


def write_sharded(folder: Path, reader, warn, shard_bytes: int) -> int:
    """Write `reader` as model-0000k-of-0000n.safetensors files plus the index; file count."""
    infos = list(reader.infos())
    shards = plan_shards(infos, shard_bytes)
    weight_map = {}
    for k, names in enumerate(shards, 1):
        shard = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / shard, _Subset(reader, names), warn if k == 1 else _quiet)
        weight_map.update({name: shard for name in names})
    metadata = dict(reader.metadata.get("index_metadata") or {})
    metadata["total_size"] = sum(i.n_bytes for i in infos)
    index = {"metadata": metadata, "weight_map": weight_map}
    (folder / f"model{INDEX_SUFFIX}").write_text(json.dumps(index, indent=2) + "\n")
    return len(shards) + 1


def _quiet(message: str) -> None:
    """Warnings about the source are given once, with the first shard."""
