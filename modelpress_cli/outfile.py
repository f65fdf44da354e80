"""Big outputs written in the background, past the page cache where the system allows.

Writing a file through the page cache costs the kernel a fault and a copy per 4 KiB page: on
the 2-core machine in docs/performance.md, 4 GB took 4–7 s of kernel CPU, more than decoding
those 4 GB did, and the disk then sat idle until the final fsync. `OutputFile` copies what it
is given into aligned 8 MiB chunks and a background thread writes them with O_DIRECT (1 s of
kernel CPU for the same 4 GB), while the caller goes on encoding or decoding. Where O_DIRECT is
missing or refused (macOS, tmpfs, some network file systems) the same thread writes the chunks
through the page cache, and so does a last chunk that is not a whole number of 4 KiB pages
(O_DIRECT cannot write it).
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor

#: O_DIRECT needs offsets, lengths and memory aligned to the device's logical block: 4 KiB
#: covers the usual 512-byte and 4 KiB ones (a device needing more falls back, see _put).
ALIGN = 4096
CHUNK_BYTES = 8 << 20
#: chunks handed to the writer thread and not yet written; one more is being filled
IN_FLIGHT = 2


class OutputFile:
    """A new binary file written front to back: write(), tell(), read_at() and close().

    An error of the writer thread (a full disk) is raised by the next call that waits for it,
    and by every call after; abort() then cleans up. A closed file refuses writes and reads.
    """

    def __init__(self, path: str | os.PathLike, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes <= 0 or chunk_bytes % ALIGN:
            raise ValueError(f"chunk_bytes must be a positive multiple of {ALIGN}")
        self._chunk_bytes = chunk_bytes
        self._fds: list[int] = []
        self._pool: ThreadPoolExecutor | None = None
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)  # read_at too
            self._fds.append(self._fd)
            self._direct_fd = _open_direct(path)
            if self._direct_fd is not None:
                self._fds.append(self._direct_fd)
            self._chunk = mmap.mmap(-1, chunk_bytes)  # anonymous maps are page-aligned
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="modelpress-write")
        except BaseException:
            self._release()
            raise
        self._pending: collections.deque[Future] = collections.deque()
        self._spare: list[mmap.mmap] = []
        self._error: BaseException | None = None  # the writer's first, raised from then on
        self._direct_refused = False  # set by the writer thread only
        self._chunk_offset = 0  # where self._chunk goes in the file
        self._used = 0  # bytes of self._chunk filled

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, data) -> int:
        self._check()
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = min(self._chunk_bytes - self._used, len(view) - done)
            self._chunk[self._used:self._used + n] = view[done:done + n]
            self._used += n
            done += n
            if self._used == self._chunk_bytes:
                self._hand_over()
        return done

    def tell(self) -> int:
        self._check()
        return self._chunk_offset + self._used

    def read_at(self, offset: int, n: int) -> bytes:
        """n bytes from `offset`, all of which were written: from the file or the chunk not
        yet handed over."""
        if offset < 0 or n < 0 or offset + n > self.tell():
            raise ValueError(f"bytes {offset}..{offset + n} were not written")
        self._wait(0)
        start = self._chunk_offset
        on_disk = max(0, min(n, start - offset))
        head = b""
        while len(head) < on_disk:  # pread returns at most about 2 GiB a call
            piece = os.pread(self._fd, on_disk - len(head), offset + len(head))
            if not piece:  # the file was cut short under us
                raise OSError(errno.EIO, f"read {len(head)} of {on_disk} bytes at {offset}")
            head += piece
        if len(head) == n:
            return head
        at = offset + len(head) - start
        return head + self._chunk[at:at + n - len(head)]

    def close(self) -> None:
        """Write what is left, wait for the writer thread and close the file (once: a
        closed file stays closed)."""
        if not self._fds:
            return
        try:
            self._check()
            if self._used:
                self._hand_over()
            self._wait(0)
        finally:
            self._release()

    def abort(self) -> None:
        """Stop writing (the caller deletes the file); errors of the writer are ignored.
        Safe to call at any time, more than once."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._release()

    def _check(self) -> None:
        if not self._fds:
            raise ValueError("I/O operation on a closed OutputFile")
        if self._error is not None:
            raise self._error

    def _hand_over(self) -> None:
        """Give the filled chunk to the writer thread and start another."""
        self._wait(IN_FLIGHT - 1)
        self._pending.append(self._pool.submit(self._put, self._chunk, self._used,
                                               self._chunk_offset))
        self._chunk = self._spare.pop() if self._spare else mmap.mmap(-1, self._chunk_bytes)
        self._chunk_offset += self._used
        self._used = 0

    def _put(self, chunk: mmap.mmap, n: int, offset: int) -> mmap.mmap:
        """In the writer thread: n bytes of `chunk` at `offset`, directly if allowed."""
        with memoryview(chunk) as whole:
            view = whole[:n]
            done = 0
            if self._direct_fd is not None and not self._direct_refused and n % ALIGN == 0:
                try:
                    done = os.pwrite(self._direct_fd, view, offset)
                except OSError as e:  # a full disk, an I/O error: the caller's
                    if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    self._direct_refused = True  # alignment or direct I/O not taken here
                done -= done % ALIGN  # a short direct write: the rest goes the other way
            while done < n:
                written = os.pwrite(self._fd, view[done:], offset + done)
                if written == 0:
                    raise OSError(errno.ENOSPC, "no byte could be written")
                done += written
            view.release()
        return chunk

    def _wait(self, at_most: int) -> None:
        """Until at most `at_most` chunks are with the writer thread; its error, if any."""
        self._check()
        while len(self._pending) > at_most:
            try:
                chunk = self._pending[0].result()
            except Exception as e:  # not a Ctrl-C here: abort() waits for that chunk
                self._error = e
                raise
            self._spare.append(chunk)
            self._pending.popleft()

    def _release(self) -> None:
        """Stop the thread and close the descriptors, once."""
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        finally:
            fds, self._fds = self._fds, []
            for fd in fds:
                os.close(fd)


def _open_direct(path) -> int | None:
    """A second descriptor on `path` with O_DIRECT, or None where there is none."""
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError:  # EINVAL on tmpfs and others
        return None
