"""Mutated inputs for fuzzing: valid seed files of every format, and ways to damage them.

Used by tests/test_fuzz.py (a bounded slice in CI) and benchmarks/fuzz.py (the long run).
The only acceptable outcomes of reading a mutated file are a correct decode or a
ModelpressError: never another exception, a hang or a large allocation.
"""

from __future__ import annotations

import json
import random
import struct
import tempfile
import zlib
from pathlib import Path

import h5py
import numpy as np

import modelpress_cli as mp
from modelpress_cli.container import FOOTER
from modelpress_cli.errors import ModelpressError
from modelpress_cli.formats import h5 as h5_format

# A damaged HDF5 file can send libhdf5 into an endless loop; the reader's child process then
# misses its deadline. Fuzzing meets many such files: shorter deadlines keep the run short.
h5_format.WALK_SECONDS = h5_format.READ_SECONDS = 5.0

EXTREMES = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2 ** 63 - 1, 2 ** 64 - 1]


def seed_files(folder: Path) -> dict[str, bytes]:
    """Small valid files: name → bytes, the suffix telling the format."""
    rng = np.random.default_rng(7)
    tensors = {"dense/kernel": rng.normal(0, 0.1, (64, 72)).astype(np.float32),
               "dense/bias": rng.normal(0, 0.1, 72).astype(np.float16),
               "ids": np.arange(10, dtype=np.int64), "flag": np.array(True)}
    np.savez(folder / "plain.npz", **tensors)
    np.savez_compressed(folder / "deflated.npz", **tensors)
    with h5py.File(folder / "keras.h5", "w") as f:
        f.attrs["backend"] = "numpy"
        f.create_group("model_weights").attrs["layer_names"] = np.array([b"dense"])
        for name, value in tensors.items():
            f.create_dataset(f"model_weights/{name}", data=value).attrs["n"] = np.int32(1)
    from safetensors.numpy import save_file
    save_file(tensors, str(folder / "st.safetensors"), metadata={"a": "b"})
    mp.compress(folder / "plain.npz", folder / "lossless.mpz", min_elements=0)
    mp.compress(folder / "plain.npz", folder / "q4.mpz", bits=4, min_elements=0,
                quantize_1d=True, symmetric=False)
    mp.compress(folder / "plain.npz", folder / "sparse.mpz", bits=3, prune=0.95,
                min_elements=0)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


JSON_EXTREMES = [0, -1, 1, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64, 1e308, -0.5, "", "x" * 300,
                 None, True, [], {}, [2 ** 62, 2 ** 62], "quantize.uniform", "float64"]


def _leaves(node, path=()):
    """Every (path, value) in a JSON tree, containers included."""
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, child in items:
        yield from _leaves(child, (*path, key))


def rewrite_json(data: bytes, rng: random.Random) -> bytes:
    """Replace one value of an .mpz index or a .safetensors header, keeping the file well
    framed (lengths and the index checksum fixed up): a crafted file, not a damaged one."""
    if data[:4] == b"\x89MPZ":
        offset, length, _, version, magic = FOOTER.unpack(data[-FOOTER.size:])
        tree = json.loads(data[offset:offset + length])
    else:
        (length,) = struct.unpack("<Q", data[:8])
        tree = json.loads(data[8:8 + length])
    path, _ = rng.choice(list(_leaves(tree))[1:])
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = rng.choice(JSON_EXTREMES)
    blob = json.dumps(tree).encode()
    if data[:4] == b"\x89MPZ":
        return data[:offset] + blob + FOOTER.pack(offset, len(blob), zlib.crc32(blob), version,
                                                  magic)
    return struct.pack("<Q", len(blob)) + blob + data[8 + length:]


def mutate(data: bytes, rng: random.Random, name: str = "") -> bytes:
    """One to three random damages: truncation, bit flips, splices, extreme integers; for
    .mpz and .safetensors, half the time a crafted header value instead."""
    if name.endswith((".mpz", ".safetensors")) and rng.random() < 0.5:
        return rewrite_json(data, rng)
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["truncate", "flip", "splice", "extreme", "zero"])
        if not out:
            break
        at = rng.randrange(len(out))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif kind == "splice":
            start = rng.randrange(len(out))
            chunk = out[start:start + rng.randint(1, 64)]
            out[at:at + len(chunk)] = chunk
        elif kind == "extreme":
            width = rng.choice([1, 2, 4, 8])
            value = rng.choice(EXTREMES) & ((1 << (8 * width)) - 1)
            out[at:at + width] = value.to_bytes(width, rng.choice(["little", "big"]))
        else:
            out[at:at + rng.randint(1, 16)] = bytes(rng.randint(1, 16))
    return bytes(out)


def outcome(data: bytes, name: str, folder: Path) -> str:
    """'ok' or 'refused' for one mutated file; any other exception propagates (a bug)."""
    path = folder / name
    path.write_bytes(data)
    try:
        if path.suffix == ".mpz":
            mp.verify(path)
            mp.load(path)
        else:
            mp.compress(path, folder / "out.mpz", bits=4, force=True, min_elements=0)
        return "ok"
    except ModelpressError as e:
        assert "\n" not in str(e), f"multi-line message: {e!r}"
        return "refused"
    finally:
        path.unlink()


def run(count: int, seed: int) -> dict[str, int]:
    """Fuzz `count` mutated inputs across every seed file; counts of each outcome."""
    rng = random.Random(seed)
    counts = {"ok": 0, "refused": 0}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seeds = seed_files(folder)
        work = folder / "work"
        work.mkdir()
        names = sorted(seeds)
        for i in range(count):
            name = names[i % len(names)]
            counts[outcome(mutate(seeds[name], rng, name), name, work)] += 1
    return counts
