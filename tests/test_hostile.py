"""Hostile and broken input: refused in one line, nothing written, nothing lost."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import model, write_h5, write_npz, write_safetensors

import modelpress_cli as mp
from modelpress_cli.cli import cli
from modelpress_cli.container import FOOTER

# ---- builders of bad files: each takes a folder and returns the path of a bad file ----------


def safetensors_with(header: dict, data: bytes = b"", *, n_header: int | None = None):
    def build(folder: Path) -> Path:
        text = json.dumps(header).encode() if isinstance(header, dict) else header
        path = folder / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", len(text) if n_header is None else n_header)
                         + text + data)
        return path
    return build


def npz_with(members: dict[str, bytes], *, patch=None):
    def build(folder: Path) -> Path:
        path = folder / "bad.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we want
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, payload in members.items():
                    zf.writestr(name.rstrip("#"), payload)
        if patch:
            path.write_bytes(patch(path.read_bytes()))
        return path
    return build


def npy(array: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def claim_huge_size(data: bytes) -> bytes:
    """Rewrite the uncompressed size in both zip headers: a zip bomb's claim."""
    out = bytearray(data)
    local = out.find(b"PK\x03\x04")
    central = out.find(b"PK\x01\x02")
    struct.pack_into("<I", out, local + 22, 0xFFFFFFF0)
    struct.pack_into("<I", out, central + 24, 0xFFFFFFF0)
    return bytes(out)


def h5_with(change):
    def build(folder: Path) -> Path:
        path = write_h5(folder / "bad.h5", {"w": np.ones((4, 4), np.float32)})
        other = write_h5(folder / "other.h5", {"v": np.ones(3, np.float32)})
        with h5py.File(path, "a") as f:
            change(f, other)
        return path
    return build


def mpz_with(edit):
    def build(folder: Path) -> Path:
        src = write_npz(folder / "src.npz", model())
        path = folder / "bad.mpz"
        mp.compress(src, path, bits=4, prune=0.9)
        data = path.read_bytes()
        offset, length, _, version, magic = FOOTER.unpack(data[-FOOTER.size:])
        index = json.loads(data[offset:offset + length])
        edit(index)
        import zlib
        blob = json.dumps(index).encode()
        path.write_bytes(data[:offset] + blob + FOOTER.pack(offset, len(blob), zlib.crc32(blob),
                                                              version, magic))
        src.unlink()
        return path
    return build


def raw(name: str, payload: bytes):
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(payload)
        return path
    return build


def first_tensor(index: dict) -> dict:
    """The first lossless tensor: its one block is `planes`."""
    return next(t for t in index["tensors"] if "planes" in t.get("blocks", {}))


GOOD = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
CASES = {
    # every format: empty, another format's bytes, garbage
    "empty .safetensors": (raw("e.safetensors", b""), "the file is empty"),
    "empty .npz": (raw("e.npz", b""), "the file is empty"),
    "empty .h5": (raw("e.h5", b""), "the file is empty"),
    "empty .mpz": (raw("e.mpz", b""), "the file is empty"),
    "h5 named .safetensors": (raw("x.safetensors", b"\x89HDF\r\n\x1a\n" + bytes(100)),
                              r"is an HDF5 \(.h5\) file, not a .safetensors file"),
    "zip named .h5": (raw("x.h5", b"PK\x03\x04" + bytes(100)), r"is a zip \(.npz\) file"),
    "mpz named .npz": (raw("x.npz", b"\x89MPZ\r\n\x1a\n" + bytes(100)), "is an .mpz file"),
    "text named .npz": (raw("x.npz", b"hello, world\n" * 10), "not a readable .npz"),
    # safetensors headers
    "st huge header length": (safetensors_with({}, n_header=2 ** 63), "header length"),
    "st header not json": (safetensors_with(b"{not json"), "not valid JSON"),
    "st duplicate names": (safetensors_with(
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', bytes(8)),
        "repeats the key 'a'"),
    "st unknown dtype": (safetensors_with({"w": {**GOOD, "dtype": "F128"}}, bytes(16)),
                         "unknown dtype 'F128'"),
    "st offsets beyond file": (safetensors_with({"w": {**GOOD, "data_offsets": [0, 2 ** 62]}},
                                                bytes(16)), "outside the 16-byte data"),
    "st size mismatch": (safetensors_with({"w": {**GOOD, "shape": [2 ** 40, 2 ** 20]}},
                                          bytes(16)), "2\\*\\*40 elements"),
    "st negative dim": (safetensors_with({"w": {**GOOD, "shape": [-1, 4]}}, bytes(16)),
                        "invalid shape"),
    "st overlap": (safetensors_with({"a": GOOD, "b": GOOD}, bytes(16)), "overlap"),
    "st truncated data": (safetensors_with({"w": GOOD}, bytes(10)), "outside"),
    # npz members
    "npz pickle": (npz_with({"o.npy": npy(np.array([{}], dtype=object))}), "pickle"),
    "npz zip bomb": (npz_with({"w.npy": npy(np.zeros(1000, np.float32))},
                              patch=claim_huge_size), "more than deflate"),
    "npz path name": (npz_with({"../evil.npy": npy(np.zeros(3))}), "not a plain tensor name"),
    "npz duplicate": (npz_with({"w.npy": npy(np.zeros(3)), "w.npy#": npy(np.ones(3))}),
                      "appears twice"),
    "npz not npy": (npz_with({"w.txt": b"hi"}), "is not a .npy array"),
    "npz string array": (npz_with({"s.npy": npy(np.array(["a", "b"]))}), "unsupported dtype"),
    "npz huge npy header": (npz_with({"w.npy": b"\x93NUMPY\x01\x00" + struct.pack(
        "<H", 65000) + b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }".ljust(
        64999) + b"\n"}), "bad .npy header: Header info length"),
    # HDF5 structures
    "h5 external link": (h5_with(lambda f, o: f.__setitem__(
        "ext", h5py.ExternalLink(str(o), "/model_weights"))), "external link"),
    "h5 soft link": (h5_with(lambda f, o: f.__setitem__("alias", h5py.SoftLink(
        "/model_weights/dense/w"))), "soft link"),
    "h5 external storage": (h5_with(lambda f, o: f.create_dataset(
        "x", shape=(4,), dtype="f4", external=[(str(o), 0, 16)])), "externally stored"),
    "h5 virtual dataset": (h5_with(lambda f, o: f.create_virtual_dataset(
        "v", h5py.VirtualLayout(shape=(3,), dtype="f4"))), "virtual"),
    "h5 giant shape": (h5_with(lambda f, o: f.create_dataset(
        "huge", shape=(2 ** 20, 2 ** 20), dtype="f4", chunks=(64, 64))), "memory bomb|refused"),
    "h5 compound": (h5_with(lambda f, o: f.create_dataset(
        "rec", data=np.zeros(3, dtype=[("a", "i4"), ("b", "f4")]))), "non-numeric"),
    # .mpz indexes crafted with a valid checksum
    "mpz zstd bomb": (mpz_with(lambda i: first_tensor(i)["blocks"]["planes"].update(
        codec="zstd", length=1, shape=[4, 2 ** 36])), "cannot hold"),
    "mpz tensor bomb": (mpz_with(lambda i: first_tensor(i).update(shape=[2 ** 39])),
                        "memory bomb"),
    "mpz unknown codec": (mpz_with(lambda i: first_tensor(i)["blocks"]["planes"].update(
        codec="lz4")), "bad dtype, codec"),
    "mpz same_as loop": (mpz_with(lambda i: i["tensors"][0].update(same_as=i["tensors"][0][
        "name"])), "same_as"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_is_refused_in_one_line_and_changes_nothing(case, tmp_path, runner):
    build, message = CASES[case]
    (tmp_path / "in").mkdir()
    bad = build(tmp_path / "in")
    dst = tmp_path / ("out.npz" if bad.suffix == ".mpz" else "out.mpz")
    dst.write_bytes(b"keep me")
    command = "decompress" if bad.suffix == ".mpz" else "compress"
    result = runner.invoke(cli, [command, str(bad), str(dst), "--force"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {bad}: ") and result.stderr.count("\n") == 1
    assert re.search(message, result.stderr), result.stderr
    assert dst.read_bytes() == b"keep me" and set(tmp_path.iterdir()) == {tmp_path / "in", dst}


def test_verify_names_the_damaged_tensor_and_writes_nothing(tmp_path, runner):
    src = write_npz(tmp_path / "m.npz", model())
    mp.compress(src, tmp_path / "m.mpz", bits=8)
    ok = runner.invoke(cli, ["verify", str(tmp_path / "m.mpz")])
    assert ok.exit_code == 0 and ok.stdout.startswith(f"ok: {tmp_path / 'm.mpz'}: 10 tensors")
    data = bytearray((tmp_path / "m.mpz").read_bytes())
    with mp.api.MpzReader(tmp_path / "m.mpz") as reader:
        block = reader.entries["conv.kernel"].blocks["scales"]
    data[block.offset] ^= 0x40
    (tmp_path / "m.mpz").write_bytes(bytes(data))
    before = sorted(tmp_path.iterdir())
    bad = runner.invoke(cli, ["verify", str(tmp_path / "m.mpz")])
    assert bad.exit_code == 1 and bad.stdout == ""
    assert bad.stderr == (f"Error: {tmp_path / 'm.mpz'}: tensor 'conv.kernel': block 'scales': "
                          "block checksum mismatch: the file is damaged\n")
    assert sorted(tmp_path.iterdir()) == before


def test_output_may_not_be_the_input_even_with_force(tmp_path, runner):
    src = write_npz(tmp_path / "m.npz", model())
    mp.compress(src, tmp_path / "m.mpz")
    before = (tmp_path / "m.mpz").read_bytes()
    os.link(tmp_path / "m.mpz", tmp_path / "alias.npz")  # another name for the same file
    result = runner.invoke(cli, ["decompress", str(tmp_path / "m.mpz"),
                                 str(tmp_path / "alias.npz"), "--force"])
    assert result.exit_code == 1 and "the output is the input" in result.stderr
    assert (tmp_path / "m.mpz").read_bytes() == before


def test_nan_and_inf_are_kept_exactly_and_counted(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 128)).astype(np.float32)
    x[3, :3] = [np.nan, np.inf, -np.inf]
    src = write_npz(tmp_path / "m.npz", {"w": x, "v": np.ones((64, 64), np.float32)})
    report = mp.compress(src, tmp_path / "m.mpz", bits=4).to_json()
    rows = {r["name"]: r for r in report["tensors"]}
    assert rows["w"]["non_finite"] == 3 and report["totals"]["non_finite"] == 3
    assert rows["w"]["method"] == "lossless" and rows["w"]["note"] == "3 NaN/Inf kept exact"
    assert rows["v"]["method"] == "q4 g64 sym"
    assert mp.load(tmp_path / "m.mpz")["w"].tobytes() == x.tobytes()


@pytest.mark.parametrize(("dtype", "bits", "odd", "note"), [
    ("float32", 4, 1e30, "|values| ≥"), ("float16", 4, np.nan, "1 NaN/Inf kept exact"),
    ("float16", 2, 65504.0, "|values| ≥"), ("float32", 8, -np.inf, "1 NaN/Inf kept exact")])
def test_tensors_the_quantizer_finds_odd_are_scanned_and_kept_exact(tmp_path, dtype, bits, odd,
                                                                    note):
    """The fused quantizer stands in for the scan; a value it cannot take (found only as it
    quantizes, here in the last of several ranges) still sends the tensor to the exact path."""
    x = np.random.default_rng(1).normal(size=(2048, 1100)).astype(dtype)
    x[-1, -1] = odd
    src = write_npz(tmp_path / "m.npz", {"w": x})
    row = mp.compress(src, tmp_path / "m.mpz", bits=bits).rows[0]
    assert row.method == "lossless" and row.note.startswith(note)
    assert row.non_finite == (0 if np.isfinite(odd) else 1)
    assert mp.load(tmp_path / "m.mpz")["w"].tobytes() == x.tobytes()


@pytest.mark.parametrize("options", [{"step": 0.01}, {"min_sqnr": 30.0}])
def test_step_coded_tensors_with_nan_are_kept_exact(tmp_path, options):
    """Step coding reads the tensor's peak before it plans: it is never planned blind."""
    x = np.random.default_rng(2).normal(size=(64, 128)).astype(np.float32)
    x[5, 7] = np.nan
    src = write_npz(tmp_path / "m.npz", {"w": x})
    row = mp.compress(src, tmp_path / "m.mpz", **options).rows[0]
    assert row.method == "lossless" and row.note == "1 NaN/Inf kept exact"
    assert mp.load(tmp_path / "m.mpz")["w"].tobytes() == x.tobytes()


def big_model(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    return write_npz(folder / "big.npz", {f"w{i}": rng.normal(size=(512, 1024)).astype(
        np.float32) for i in range(48)})  # 100 MB: a few seconds to compress


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_leaves_no_partial_output(tmp_path, sig):
    src = big_model(tmp_path)
    dst = tmp_path / "out.mpz"
    dst.write_bytes(b"keep me")
    # k-means codebooks: seconds of work after the first tensor is written, where uniform
    # codes now finish 100 MB within the 0.3 s below (CI saw such a run exit 0)
    child = subprocess.Popen([sys.executable, "-m", "modelpress_cli", "compress", str(src),
                              str(dst), "--bits", "4", "--method", "kmeans", "--force"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".part") for p in tmp_path.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, "run ended too early"
        time.sleep(0.01)
    time.sleep(0.3)  # mid-run: some tensors written
    child.send_signal(sig)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode != 0 and "Traceback" not in stderr
    assert dst.read_bytes() == b"keep me" and set(tmp_path.iterdir()) == {src, dst}


def test_a_full_disk_fails_cleanly(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 200 kB (EFBIG), as a full disk would."""
    src = write_npz(tmp_path / "m.npz", model())
    dst = tmp_path / "out.safetensors"
    mp.compress(src, tmp_path / "m.mpz")
    dst.write_bytes(b"keep me")
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
            "from modelpress_cli.cli import main; main(sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, "decompress", str(tmp_path / "m.mpz"),
                           str(dst), "--force"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("Error: ") and "File too large" in done.stderr
    assert dst.read_bytes() == b"keep me"
    assert set(tmp_path.iterdir()) == {src, dst, tmp_path / "m.mpz"}


def test_output_folder_must_exist(tmp_path, runner):
    src = write_safetensors(tmp_path / "m.safetensors", {"w": np.ones((2, 2), np.float32)})
    result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "nope" / "m.mpz")])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {tmp_path / 'nope' / 'm.mpz'}: the output folder does not "
                             "exist; create it first\n")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(("options", "peak", "method"), [
    ({"bits": 16, "half": "bfloat16"}, 3.4e38, "lossless"),  # would round to inf
    ({"bits": 16}, 7e4, "lossless"),                          # beyond float16
    ({"bits": 16}, 6e4, "float16"),
    ({"bits": 8}, 1e6, "q8 g64 sym"),                         # scale 7874 fits float16
    ({"bits": 2}, 1e6, "lossless"),                           # scale 1e6 would not
    ({"prune": 0.5}, 1e30, "prune 50% + sparse"),             # pruning has no range limit
])
def test_values_a_stage_cannot_hold_keep_the_tensor_exact(tmp_path, options, peak, method):
    x = np.random.default_rng(0).uniform(-1, 1, (64, 128)).astype(np.float32)
    x[5, 7] = peak
    src = write_npz(tmp_path / "m.npz", {"w": x})
    row = mp.compress(src, tmp_path / "m.mpz", **options).rows[0]
    y = mp.load(tmp_path / "m.mpz")["w"]
    assert row.method == method and np.isfinite(y).all()
    if method == "lossless":
        assert row.note.startswith("|values| ≥ ") and y.tobytes() == x.tobytes()
    assert y[5, 7] == pytest.approx(peak, rel=0.01)


def test_names_a_target_format_cannot_hold_are_refused_naming_the_target(tmp_path, runner):
    src = write_npz(tmp_path / "m.npz", {"__metadata__": np.ones(3), "a": np.ones(2),
                                         "a/b": np.ones(2)})
    mp.compress(src, tmp_path / "m.mpz")
    for target, message in [("o.safetensors", "tensor '__metadata__': is reserved"),
                            ("o.h5", "'/a' is a dataset, so it cannot also be a group")]:
        result = runner.invoke(cli, ["decompress", str(tmp_path / "m.mpz"),
                                     str(tmp_path / target)])
        assert result.exit_code == 1 and message in result.stderr
        assert result.stderr.startswith(f"Error: {tmp_path / target}: ")
        assert not (tmp_path / target).exists()
    assert mp.decompress(tmp_path / "m.mpz", tmp_path / "o.npz").tensors == 3


def test_names_with_markup_or_control_characters_print_safely(tmp_path, runner):
    names = ["[/x]", "[bold red]B[/]", "ctl\x1b[31mred", "nl\nx"]
    src = write_npz(tmp_path / "m.npz", {n: np.ones((3, 3), np.float32) for n in names})
    result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz")])
    assert result.exit_code == 0
    assert "[bold red]B[/]" in result.stdout and "\\x1b[31mred" in result.stdout
    assert "\x1b" not in result.stdout and "nl\\nx" in result.stdout
    shown = runner.invoke(cli, ["inspect", str(tmp_path / "m.mpz")])
    assert shown.exit_code == 0 and "[/x]" in shown.stdout and "\x1b" not in shown.stdout


def test_an_h5_file_that_sends_libhdf5_into_a_loop_is_refused_in_time(tmp_path, monkeypatch,
                                                                      runner):
    """Found by fuzzing: reading one of its attributes never returns inside libhdf5."""
    from modelpress_cli.formats import h5 as h5_format
    monkeypatch.setattr(h5_format, "WALK_SECONDS", 3.0)
    src = Path(__file__).parent / "data" / "loops_libhdf5.h5"
    started = time.monotonic()
    result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: {src}: ") and "damaged" in result.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "m.mpz").exists()


def test_crafted_rans_parts_are_refused_before_the_compiled_decoder_runs():
    """Lengths that sum right but point past the words (or in the wrong dtype) must never
    reach the decoder, which does not bounds-check."""
    from modelpress_cli.errors import FormatError, IntegrityError
    from modelpress_cli.stages import RansPack, stage_from_config
    stage = RansPack("codes", 0, 20, 1 << 22)
    parts = {"freqs": np.ones(1 << 20, np.uint32), "words": np.zeros(1024, np.uint32),
             "lengths": np.array([1 << 30, 1024 - (1 << 30)], np.int64)}
    with pytest.raises(FormatError, match="'lengths' must be uint32"):
        stage.decode(parts, (1 << 23,), np.float32)
    parts["lengths"] = np.array([1024, 0], np.uint32)
    with pytest.raises(IntegrityError, match="lengths do not cover"):
        stage.decode(parts, (1 << 23,), np.float32)
    with pytest.raises(FormatError, match="positive finite"):
        stage_from_config({"id": "quantize.step", "step": 10 ** 400})


def test_a_script_without_a_main_guard_is_told_why_its_h5_cannot_be_read(tiny_h5, tmp_path):
    """The .h5 reader is a spawned Python, which imports the caller's main module again; an
    unguarded script makes it fail at start-up. The error must say so, not blame the file."""
    script = tmp_path / "unguarded.py"
    script.write_text("import modelpress_cli as mp\n"
                      f"mp.compress({str(tiny_h5)!r}, {str(tmp_path / 'm.mpz')!r})\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0 and not (tmp_path / "m.mpz").exists()
    assert last.startswith("modelpress_cli.errors.ModelpressError: ") and str(tiny_h5) in last
    assert 'if __name__ == "__main__":' in last and "damaged" not in last
