"""The .mpz container: honest sizes, independent tensors, damage detected and named."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import model, write_npz, write_safetensors

import modelpress_cli as mp
from modelpress_cli import entropy
from modelpress_cli.container import FOOTER, MpzReader, MpzWriter, crc32, encode_block
from modelpress_cli.entropy import SPLIT_BYTES
from modelpress_cli.errors import FormatError, IntegrityError
from modelpress_cli.formats.base import DTYPES, TensorInfo
from modelpress_cli.parallel import RANGE_VALUES, THREADS
from modelpress_cli.pipeline import scan

DATA = Path(__file__).parent / "data"


def one_tensor(tmp_path, x, **options) -> tuple[Path, mp.report.Report]:
    src = write_npz(tmp_path / "one.npz", {"w": x})
    report = mp.compress(src, tmp_path / "one.mpz", **options)
    return tmp_path / "one.mpz", report


@pytest.mark.parametrize(("bits", "limit"), [(4, 0.52e6), (3, 0.39e6)])
def test_a_million_weights_take_their_bits_plus_scales(tmp_path, bits, limit):
    x = np.random.default_rng(0).normal(0, 0.02, (1000, 1000)).astype(np.float32)
    path, report = one_tensor(tmp_path, x, bits=bits)
    with MpzReader(path) as reader:
        scales = reader.entries["w"].blocks["scales"].length
    assert path.stat().st_size == report.output_bytes == report.to_json()["totals"][
        "compressed_bytes"]
    assert path.stat().st_size - scales <= limit
    assert scales <= 1000 * 16 * 2  # 16 groups of 64 per row, float16 each, maybe zstd'd


def test_identical_tensors_are_stored_once(tmp_path):
    src = write_npz(tmp_path / "m.npz", model())
    report = mp.compress(src, tmp_path / "m.mpz", bits=4)
    rows = {r.name: r for r in report.rows}
    assert rows["lm_head.weight"].compressed_bytes == 0
    assert rows["lm_head.weight"].method == "tied to embed.weight"
    loaded = mp.load(tmp_path / "m.mpz")
    assert np.array_equal(loaded["lm_head.weight"], loaded["embed.weight"])


def test_a_damaged_block_names_its_tensor_and_spares_the_others(tmp_path):
    src = write_npz(tmp_path / "m.npz", model())
    mp.compress(src, tmp_path / "m.mpz", bits=8)
    with MpzReader(tmp_path / "m.mpz") as reader:
        victim = reader.entries["layer0.kernel"].blocks["codes"]
    data = bytearray((tmp_path / "m.mpz").read_bytes())
    data[victim.offset + 10] ^= 0xFF
    (tmp_path / "m.mpz").write_bytes(bytes(data))
    with MpzReader(tmp_path / "m.mpz") as reader:
        with pytest.raises(IntegrityError, match="checksum") as err:
            reader.read("layer0.kernel")
        assert "tensor 'layer0.kernel': block 'codes'" in str(err.value)
        expected = model()["layer0.bias"]
        assert np.array_equal(reader.read("layer0.bias"), expected)  # lossless, untouched


def damaged(tmp_path: Path, change) -> Path:
    src = write_npz(tmp_path / "m.npz", model())
    mp.compress(src, tmp_path / "m.mpz")
    path = tmp_path / "m.mpz"
    path.write_bytes(change(path.read_bytes()))
    return path


@pytest.mark.parametrize("size", [0, 1, 63, 4097, (1 << 20) + 3])
def test_block_checksums_are_zlibs_crc32(size):
    """docs/format.md promises zlib's CRC-32, whichever library computes it (isal or zlib)."""
    data = np.random.default_rng(size).integers(0, 256, size + 1, dtype=np.uint8).tobytes()
    view = memoryview(data)[1:]  # an unaligned view, as blocks are sliced from buffers
    assert crc32(view) == zlib.crc32(view)
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32/ISO-HDLC check value


def test_without_isal_the_same_file_is_written_and_read(tmp_path):
    """Where isal is not installed, zlib computes the checksums: the same bytes, both ways."""
    src = write_npz(tmp_path / "m.npz", model())
    mp.compress(src, tmp_path / "isal.mpz", bits=4)
    script = ("import sys; sys.modules['isal'] = None; import modelpress_cli as mp; "
              "from modelpress_cli import container; assert container.crc32.__module__ == "
              "'zlib', container.crc32.__module__; mp.compress(sys.argv[1], sys.argv[2], "
              "bits=4); mp.verify(sys.argv[3])")
    done = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / "zlib.mpz"),
                           str(tmp_path / "isal.mpz")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "zlib.mpz").read_bytes() == (tmp_path / "isal.mpz").read_bytes()


def rewrite_index(data: bytes, edit) -> bytes:
    """Change the index JSON and fix up the footer, as a crafted (not damaged) file would."""
    offset, length, _, version, magic = FOOTER.unpack(data[-FOOTER.size:])
    index = json.loads(data[offset:offset + length])
    edit(index)
    blob = json.dumps(index).encode()
    return data[:offset] + blob + FOOTER.pack(offset, len(blob), zlib.crc32(blob), version, magic)


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda d: d[:-5], FormatError, "truncated"),
    (lambda d: d[:20], FormatError, "truncated|too short"),
    (lambda d: b"PK" + d[2:], FormatError, "not an .mpz file"),
    (lambda d: d[:8] + struct.pack("<I", 9) + d[12:], FormatError,
     "version 9; this modelpress reads up to version 1: upgrade"),
    (lambda d: d[:-40] + bytes([d[-40] ^ 1]) + d[-39:], IntegrityError, "index checksum"),
    (lambda d: rewrite_index(d, lambda i: i["tensors"][0]["blocks"]["planes"].update(
        offset=10 ** 12)), FormatError, "outside the data section"),
    (lambda d: rewrite_index(d, lambda i: i["tensors"][0].update(
        stages=[{"id": "quantize.future"}])), FormatError, "unknown stage 'quantize.future'"),
    (lambda d: rewrite_index(d, lambda i: i["tensors"][0].update(shape=[2 ** 41])),
     FormatError, "more than 2\\*\\*40"),
    (lambda d: rewrite_index(d, lambda i: i["tensors"].append(i["tensors"][0])),
     FormatError, "repeated"),
    (lambda d: rewrite_index(d, lambda i: i["tensors"][1]["blocks"]["planes"].update(
        offset=i["tensors"][0]["blocks"]["planes"]["offset"])), FormatError, "overlap"),
])
def test_damaged_or_crafted_files_are_refused_before_decoding(tmp_path, change, error, message):
    path = damaged(tmp_path, change)
    with pytest.raises(error, match=message) as err:
        MpzReader(path).close()
    assert str(err.value).startswith(f"{path}: ")


def test_golden_v1_file_still_decodes_to_its_recorded_values():
    """A file written by modelpress 0.1.0 (format 1): every future release must read it."""
    expected = np.load(DATA / "v1_expected.npz")
    loaded = mp.load(DATA / "v1_golden.mpz")
    assert sorted(loaded) == sorted(expected.files)
    for name in expected.files:
        assert loaded[name].dtype == expected[name].dtype
        assert loaded[name].tobytes() == expected[name].tobytes(), name


@pytest.mark.parametrize("options", [{"bits": 4}, {"bits": 8, "prune": 0.5}, {}])
def test_the_same_input_gives_the_same_bytes_whatever_the_thread_count(tmp_path, options):
    rng = np.random.default_rng(3)
    tensors = {**model(), **{f"extra{i}": rng.normal(size=(64, 96)).astype(np.float32)
                             for i in range(12)}}
    src = write_npz(tmp_path / "m.npz", tensors)
    outputs = []
    for threads in (1, 2, 5):
        mp.compress(src, tmp_path / f"t{threads}.mpz", threads=threads, **options)
        outputs.append((tmp_path / f"t{threads}.mpz").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize(("options", "dtype"), [
    ({"bits": 4}, "float32"), ({"bits": 8, "scale_bits": 6}, "float32"),
    ({"min_sqnr": 30.0}, "float32"), ({"bits": 4, "prune": 0.5}, "float32"),
    ({"bits": 4}, "bfloat16"), ({"bits": 4, "prune": 0.5}, "bfloat16")])
def test_a_big_tensor_split_over_threads_gives_the_same_bytes(tmp_path, options, dtype):
    """Past parallel.RANGE_VALUES one tensor's kernels run on several threads; the report's
    error sums, combined over ranges (pruning's and the quantizer's added), are the same
    too."""
    assert 2048 * 1024 >= 2 * RANGE_VALUES
    x = np.random.default_rng(4).normal(0, 0.02, (2048, 1024)).astype(DTYPES[dtype])
    src = write_safetensors(tmp_path / "m.safetensors", {"w": x})
    one = mp.compress(src, tmp_path / "t1.mpz", threads=1, **options)
    two = mp.compress(src, tmp_path / "t2.mpz", threads=2, **options)
    assert (tmp_path / "t1.mpz").read_bytes() == (tmp_path / "t2.mpz").read_bytes()
    assert one.rows[0].errors == two.rows[0].errors
    y, xf = mp.load(tmp_path / "t1.mpz")["w"].astype(np.float64), x.astype(np.float64)
    sqnr = 10 * np.log10((xf ** 2).sum() / ((y - xf) ** 2).sum())
    assert one.rows[0].errors.sqnr_db == pytest.approx(sqnr, abs=2e-5)  # float32 group sums


@pytest.mark.parametrize("codes", [True, False])
def test_a_big_block_is_zstd_coded_on_threads_to_the_same_bytes(codes):
    """Past entropy.SPLIT_BYTES zstd codes a block in jobs on its own threads: the frame
    must not depend on how many, must read back with a plain decoder, and must cost next to
    nothing over one job."""
    rng = np.random.default_rng(5)
    n = SPLIT_BYTES + 12345
    raw = (np.clip(rng.normal(0, 30, n), -128, 127).astype(np.int8).view(np.uint8) if codes
           else rng.normal(0, 1, n // 4).astype(np.float32).view(np.uint8)).tobytes()
    frames = []
    for threads in (1, 2, 3):
        token = THREADS.set(threads)
        try:
            frames.append(entropy.compress(memoryview(raw), codes=codes))
        finally:
            THREADS.reset(token)
    token = THREADS.set(3)
    try:  # while another tensor's big block holds the threads, this one gets one of its own
        with entropy._WIDE:
            frames.append(entropy.compress(memoryview(raw), codes=codes))
    finally:
        THREADS.reset(token)
    assert frames[0] == frames[1] == frames[2] == frames[3] and frames[0][0] == "zstd"
    assert zstandard.ZstdDecompressor().decompress(frames[0][1]) == raw
    assert bytes(entropy.decompress("zstd", frames[0][1], len(raw))) == raw
    whole = zstandard.ZstdCompressor(level=entropy.ZSTD_LEVEL).compress(raw)
    assert len(frames[0][1]) <= len(whole) * 1.005


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_big_tensor_scanned_in_parts_counts_every_nan_and_finds_its_peak(threads):
    """scan() splits a big tensor's pass like the kernels do: NaN/Inf and the largest finite
    |value| are found whichever range holds them."""
    x = np.zeros(3 * RANGE_VALUES + 5, np.float32)
    x[7], x[RANGE_VALUES + 3], x[2 * RANGE_VALUES + 1] = np.nan, -7.5, np.inf
    x[-1] = -np.inf
    x[-2] = 3.0
    limit = THREADS.set(threads)
    try:
        assert scan(x) == (3, 7.5)
        assert scan(x[RANGE_VALUES:2 * RANGE_VALUES].astype(np.float16)) == (0, 7.5)
    finally:
        THREADS.reset(limit)


def test_tied_weights_need_the_same_bytes_not_only_the_same_checksum(tmp_path):
    """holds() is what confirms a twin found by lengths and CRC-32: it reads the bytes."""
    writer = MpzWriter(tmp_path / "w.mpz", {"format": "npz"})
    info = TensorInfo("a", (4,), "uint8")
    block = encode_block(np.arange(4, dtype=np.uint8), None)
    writer.add(info, [], {"values": block})
    same = encode_block(np.arange(4, dtype=np.uint8), None)
    other = encode_block(np.arange(1, 5, dtype=np.uint8), None)
    assert writer.holds("a", {"values": same})
    assert not writer.holds("a", {"values": (block[0], bytes(other[1]))})  # other bytes
    assert not writer.holds("a", {"values": same, "extra": same})
    writer.close()


def test_open_reads_only_the_tensor_asked_for(tmp_path):
    """mp.open() decodes one tensor from its own blocks: the others may be garbage."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(64, 64)).astype(np.float32), rng.normal(size=(128, 64))
    np.savez(tmp_path / "m.npz", a=a, b=b.astype(np.float32))
    mp.compress(tmp_path / "m.npz", tmp_path / "m.mpz", bits=4)
    data = bytearray((tmp_path / "m.mpz").read_bytes())
    with MpzReader(tmp_path / "m.mpz") as reader:
        blocks = list(reader.entries["b"].blocks.values())
    for block in blocks:
        data[block.offset:block.offset + block.length] = b"\xff" * block.length
    (tmp_path / "bad.mpz").write_bytes(data)
    expected = mp.load(tmp_path / "m.mpz")["a"]
    with mp.open(tmp_path / "bad.mpz") as weights:
        assert np.array_equal(weights["a"], expected)
        with pytest.raises(mp.IntegrityError, match="tensor 'b'"):
            weights["b"]
