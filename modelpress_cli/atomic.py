"""Outputs appear whole or not at all: written beside the target, renamed over it at the end."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import ModelpressError, OutputExistsError


def check_output(target: Path, *, force: bool, inputs: tuple[Path, ...] = (),
                 folder: bool = False) -> None:
    """Refuse an output that exists (without `force`), is an input, or has no parent folder;
    `folder`: the output is a folder of files (sharded checkpoints)."""
    for src in inputs:
        if target.exists() and src.exists() and os.path.samefile(target, src):
            raise OutputExistsError("the output is the input file; choose another path",
                                    path=target)
    if target.exists() and not force:
        raise OutputExistsError("already exists (pass --force to overwrite)", path=target)
    if target.is_dir() and not folder:
        raise OutputExistsError("is a directory; give a file path", path=target)
    if folder and target.exists() and not target.is_dir():
        raise OutputExistsError("is a file; sharded output goes to a folder", path=target)
    if not target.parent.is_dir():
        raise ModelpressError("the output folder does not exist; create it first", path=target)


@contextlib.contextmanager
def atomic_output(target: Path, *, force: bool = False,
                  inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a hidden temporary path beside `target`; rename it over `target` only on success.

    A failed or interrupted block (Ctrl-C included) leaves `target` untouched and no temporary
    file behind.
    """
    target = Path(target)
    check_output(target, force=force, inputs=inputs)
    tmp = _create_beside(target)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_folder(target.parent)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_folder(target: Path, *, force: bool = False,
                  inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Like atomic_output, for a folder of files: the new folder replaces the old in two
    renames, so readers see the old folder or the new one, never a mix."""
    target = Path(target)
    check_output(target, force=force, inputs=inputs, folder=True)
    tmp = _create_beside(target, folder=True)
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb+") as f:
                os.fsync(f.fileno())
        old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_folder(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _create_beside(target: Path, *, folder: bool = False) -> Path:
    """A new hidden file (or folder) next to `target`, with the mode the umask gives
    (mkstemp and mkdtemp would give 0600 and 0700)."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        try:
            if folder:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise ModelpressError("cannot create a temporary file beside it", path=target)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
