"""OutputFile: what is written is what the file holds, in order, whatever the chunking."""

import errno
import os

import numpy as np
import pytest

from modelpress_cli.outfile import ALIGN, OutputFile


def test_bytes_land_in_order_across_chunks(tmp_path):
    """Writes of every size, some spanning several chunks; with two-page chunks, the full ones
    go through O_DIRECT where the file system takes it, the last part through the cache."""
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 256, n, dtype=np.uint8).tobytes()
              for n in (1, 0, 4095, 4097, 3 * ALIGN + 5, 17, 8 * ALIGN, 2)]
    path = tmp_path / "out.bin"
    with OutputFile(path, chunk_bytes=2 * ALIGN) as f:
        for piece in pieces:
            assert f.write(piece) == len(piece)
        assert f.tell() == sum(map(len, pieces))
    assert path.read_bytes() == b"".join(pieces)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_a_file_system_without_o_direct_gets_the_same_bytes():
    """tmpfs refuses O_DIRECT: the chunks then go through the page cache."""
    data = np.random.default_rng(2).integers(0, 256, 7 * ALIGN + 9, dtype=np.uint8).tobytes()
    path = f"/dev/shm/modelpress-test-{os.getpid()}.bin"
    try:
        with OutputFile(path, chunk_bytes=2 * ALIGN) as f:
            f.write(data)
            assert f.read_at(3 * ALIGN, 2 * ALIGN) == data[3 * ALIGN:5 * ALIGN]
        with open(path, "rb") as written:
            assert written.read() == data
    finally:
        os.unlink(path)


def test_numpy_arrays_are_written_as_their_bytes(tmp_path):
    x = np.arange(12000, dtype=np.float32).reshape(40, 300)
    path = tmp_path / "out.bin"
    with OutputFile(path, chunk_bytes=ALIGN) as f:
        f.write(x)
    assert np.array_equal(np.fromfile(path, np.float32).reshape(40, 300), x)


def test_read_at_sees_written_and_pending_bytes(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 5 * ALIGN + 123, dtype=np.uint8).tobytes()
    with OutputFile(tmp_path / "out.bin", chunk_bytes=2 * ALIGN) as f:
        f.write(data)  # two chunks handed over, one being filled
        for offset, n in [(0, 10), (ALIGN - 3, 9), (4 * ALIGN - 5, 300), (4 * ALIGN + 7, 100),
                          (0, len(data)), (len(data), 0)]:
            assert f.read_at(offset, n) == data[offset:offset + n]
        with pytest.raises(ValueError, match="were not written"):
            f.read_at(len(data) - 1, 2)


def test_a_write_error_reaches_the_caller():
    """/dev/full refuses every write with ENOSPC, as a full disk does: the writer thread's
    error is raised by the next call that waits for it (a write or close), not lost."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    f = OutputFile("/dev/full", chunk_bytes=ALIGN)
    with pytest.raises(OSError) as caught:
        f.write(b"x" * (3 * ALIGN))
        f.close()
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as again:  # every later call says so: no silent hole
        f.close()
    assert again.value.errno == errno.ENOSPC
    f.abort()  # the caller's clean-up still works after the error, and twice
    f.abort()


def test_a_closed_file_refuses_writes_and_reads(tmp_path):
    f = OutputFile(tmp_path / "out.bin", chunk_bytes=ALIGN)
    f.write(b"z" * 10)
    f.close()
    f.close()  # closing again does nothing, as for a built-in file
    for call in (lambda: f.write(b"more"), lambda: f.read_at(0, 1), f.tell):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert (tmp_path / "out.bin").read_bytes() == b"z" * 10


def test_abort_stops_without_raising(tmp_path):
    path = tmp_path / "out.bin"
    f = OutputFile(path, chunk_bytes=ALIGN)
    f.write(b"y" * (5 * ALIGN))
    f.abort()
    assert path.stat().st_size <= 5 * ALIGN


def test_chunks_must_be_whole_pages(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4096"):
        OutputFile(tmp_path / "out.bin", chunk_bytes=1000)
