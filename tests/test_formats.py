"""Readers and writers: every tensor, dtype, name and attribute survives; what cannot is named."""

from __future__ import annotations

import json
import struct

import h5py
import ml_dtypes
import numpy as np
import pytest
from conftest import model, read_all, write_h5
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import modelpress_cli as mp
from modelpress_cli.errors import FormatError
from modelpress_cli.formats import open_reader
from modelpress_cli.stages import UniformQuantize


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def test_readers_hand_over_every_tensor_unchanged(tiny_model):
    expected = model()
    got = read_all(tiny_model)
    assert sorted(got) == sorted(expected.keys() if tiny_model.suffix != ".h5"
                                 else [f"model_weights/dense/{n}" for n in expected])
    for name, value in got.items():
        original = expected[name.rsplit("/", 1)[-1]]
        assert value.dtype == original.dtype and value.shape == original.shape
        assert value.tobytes() == original.tobytes()


@pytest.mark.parametrize("target", [".npz", ".h5", ".safetensors"])
def test_lossless_round_trip_through_mpz_to_every_format(tiny_model, tmp_path, target):
    mpz = tmp_path / "m.mpz"
    mp.compress(tiny_model, mpz)
    out = tmp_path / f"back{target}"
    mp.decompress(mpz, out)
    original, back = read_all(tiny_model), read_all(out)
    assert_same(original, back)


def test_h5_groups_and_attributes_are_rebuilt_exactly(tiny_h5, tmp_path):
    mp.compress(tiny_h5, tmp_path / "m.mpz", bits=4)
    mp.decompress(tmp_path / "m.mpz", tmp_path / "back.h5")

    def attrs(path):
        out = {}
        with h5py.File(path) as f:
            def visit(name, obj):
                out[name] = {k: (type(v), np.asarray(v).dtype.str, np.asarray(v).tolist())
                             for k, v in obj.attrs.items()}
            visit("/", f)
            f.visititems(visit)
        return out

    before, after = attrs(tiny_h5), attrs(tmp_path / "back.h5")
    assert before == after
    assert "model_weights/dropout" in after  # the empty Keras layer group is kept
    with h5py.File(tmp_path / "back.h5") as f:
        assert f.attrs["backend"] == b"numpy" and f.attrs["keras_version"] == "2.15.0"
        assert f["model_weights"].attrs["layer_names"].dtype == np.dtype("S7")


def test_safetensors_metadata_survives_and_becomes_h5_attributes(tiny_safetensors, tmp_path):
    mp.compress(tiny_safetensors, tmp_path / "m.mpz")
    mp.decompress(tmp_path / "m.mpz", tmp_path / "back.safetensors")
    with open_reader(tmp_path / "back.safetensors") as reader:
        assert reader.metadata == {"__metadata__": {"format": "np", "note": "tiny"}}
    result = mp.decompress(tmp_path / "m.mpz", tmp_path / "back.h5")
    assert result.warnings == []
    with h5py.File(tmp_path / "back.h5") as f:
        assert dict(f.attrs) == {"format": "np", "note": "tiny"}


def test_what_a_format_cannot_hold_is_named_in_a_warning(tiny_h5, tmp_path):
    mp.compress(tiny_h5, tmp_path / "m.mpz")
    result = mp.decompress(tmp_path / "m.mpz", tmp_path / "out.safetensors")
    assert len(result.warnings) == 1
    assert "HDF5 attributes" in result.warnings[0] and "3 group(s)" in result.warnings[0]
    result = mp.decompress(tmp_path / "m.mpz", tmp_path / "out.npz")
    assert any("metadata" in w for w in result.warnings)


def write_bf16_safetensors(path, tensors):
    """A .safetensors file written by hand: the format is an 8-byte length, JSON, raw bytes."""
    header, blobs, offset = {}, [], 0
    for name, (code, array) in tensors.items():
        raw = array.tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def test_bfloat16_round_trips_exactly_and_is_widened_with_a_warning(tmp_path):
    x = np.random.default_rng(1).normal(0, 1, (64, 80)).astype(ml_dtypes.bfloat16)
    src = write_bf16_safetensors(tmp_path / "bf.safetensors", {"w": ("BF16", x)})
    mp.compress(src, tmp_path / "m.mpz")
    mp.decompress(tmp_path / "m.mpz", tmp_path / "back.safetensors")
    back = read_all(tmp_path / "back.safetensors")["w"]
    assert back.dtype == ml_dtypes.bfloat16 and back.tobytes() == x.tobytes()
    result = mp.decompress(tmp_path / "m.mpz", tmp_path / "back.npz")
    assert "bfloat16" in result.warnings[0] and "float32" in result.warnings[0]
    widened = np.load(tmp_path / "back.npz")["w"]
    assert widened.dtype == np.float32 and np.array_equal(widened, x.astype(np.float32))


def test_safetensors_views_are_the_read_tensors_before_and_after_release(tmp_path):
    """compress maps .safetensors input (view) and drops each tensor's pages (release)."""
    tensors = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3),  # leaves "b" unaligned
               "b": np.linspace(-1, 1, 5000, dtype=np.float32).reshape(50, 100),
               "c": np.ones((0, 4), np.float32)}
    header, offset = {}, 0
    for name, x in tensors.items():
        header[name] = {"dtype": {"uint8": "U8", "float32": "F32"}[x.dtype.name],
                        "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(
        x.tobytes() for x in tensors.values()))
    with open_reader(tmp_path / "m.safetensors") as reader:
        for name, want in tensors.items():
            view = reader.view(name)
            assert view.dtype == want.dtype and np.array_equal(view, want)
            reader.release(name)
            assert np.array_equal(view, want), "a released view must still read right"
            assert np.array_equal(reader.read(name), want)


def test_our_safetensors_output_reads_with_the_safetensors_package(tiny_npz, tmp_path):
    from safetensors.numpy import load_file
    mp.compress(tiny_npz, tmp_path / "m.mpz", bits=8)
    mp.decompress(tmp_path / "m.mpz", tmp_path / "out.safetensors")
    theirs = load_file(str(tmp_path / "out.safetensors"))
    ours = read_all(tmp_path / "out.safetensors")
    assert_same(dict(sorted(ours.items())), dict(sorted(theirs.items())))


def test_npz_with_pickled_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError, match="pickle") as err, open_reader(path):
        pass
    assert str(err.value).startswith(f"{path}: tensor 'obj': ")


def test_h5_string_dataset_is_refused_with_its_name(tmp_path):
    path = write_h5(tmp_path / "m.h5", {"w": np.ones((2, 2), np.float32)})
    with h5py.File(path, "a") as f:
        f["notes"] = "hello"
    with pytest.raises(FormatError, match="non-numeric") as err, open_reader(path):
        pass
    assert "tensor 'notes'" in str(err.value)


@pytest.mark.parametrize("cut", [3, 8, 30, -1])
def test_truncated_safetensors_is_refused(tiny_safetensors, tmp_path, cut):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(tiny_safetensors.read_bytes()[:cut])
    with pytest.raises(FormatError) as err, open_reader(path):
        pass
    assert str(err.value).startswith(f"{path}: ")


DTYPES = st.sampled_from(["<f4", "<f2", "<f8", "<i1", "<i8", "<u2", "?"])


@given(arrays=st.lists(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=9)),
                       min_size=1, max_size=4),
       target=st.sampled_from([".npz", ".h5", ".safetensors"]))
def test_any_numeric_tensors_round_trip_bit_exactly(tmp_path_factory, arrays, target):
    tmp = tmp_path_factory.mktemp("prop")
    tensors = {f"t{i}": a for i, a in enumerate(arrays)}
    src = tmp / "src.npz"
    np.savez(src, **tensors)
    mp.compress(src, tmp / "m.mpz", bits=4, min_elements=0)  # floats >= 2-D get quantized
    mp.decompress(tmp / "m.mpz", tmp / f"out{target}")
    back = read_all(tmp / f"out{target}")
    for name, a in tensors.items():
        b = back[name]
        assert b.shape == a.shape and b.dtype == a.dtype
        if a.dtype.kind != "f" or a.ndim < 2 or not np.isfinite(a).all() \
                or float(np.abs(a).max(initial=0)) >= UniformQuantize(4).max_magnitude():
            assert b.tobytes() == a.tobytes()  # lossless path: bit-exact, NaN and -0.0 too


def test_h5_chunking_and_compression_are_rebuilt(tmp_path):
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a/w", data=np.zeros((256, 256), np.float32), chunks=(64, 64),
                         compression="gzip", compression_opts=6, shuffle=True)
        f.create_dataset("plain", data=np.arange(10))
    mp.compress(path, tmp_path / "m.mpz")
    mp.decompress(tmp_path / "m.mpz", tmp_path / "back.h5")
    with h5py.File(tmp_path / "back.h5") as f:
        w = f["a/w"]
        assert (w.chunks, w.compression, w.compression_opts, w.shuffle) == (
            (64, 64), "gzip", 6, True)
        assert f["plain"].chunks is None and f["plain"].compression is None
    assert (tmp_path / "back.h5").stat().st_size < 2 * path.stat().st_size
