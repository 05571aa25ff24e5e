"""Writing an output safely: its path checked before any work, one writer at a time, and the leftovers of dead
runs removed.

One writer per output: an exclusive lock held while a command writes a cache, a sweep or a head.
The lock is `fcntl.flock` on a small file beside the output (`.NAME.lock`, holding the writer's pid and command),
so the kernel releases it when the process ends, however it ends (SIGKILL included): a dead run never blocks the
next. A second writer to the same output is refused at once (OutputBusyError), naming the output and the process
that holds it. While it holds the lock, a writer may remove what dead runs left beside the output
(remove_leftovers): no live process can own it.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from finetext.extract.errors import InputError, OutputBusyError


def check_output(output: Path, folder: bool) -> None:
    """Refuse, before any work, an output that cannot be made: a folder where a file goes, a file where a folder goes
    (`folder`), or a path under a file."""
    output = Path(output)
    if output.is_dir() and not folder:
        raise InputError(f"{output} is a folder; --output names the cache file to write, e.g. {output / 'cache.h5'}.")
    blocking = next((p for p in (output, *output.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir() and (blocking != output or folder):
        raise InputError(f"{output}: {blocking} is a file, not a folder; choose another --output.")


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


@contextmanager
def exclusive(output: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of `output` (a file or folder, which need not exist yet) for the `with` block."""
    output = Path(output)
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise OutputBusyError(f"{output} is being written by another run ({holder}); wait for it to finish, "
                                  "or choose another output.") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the current one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:2]) or 'python'}".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a later writer then locks a new file, never this one
        os.close(fd)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def remove_leftovers(output: Path) -> None:
    """Remove what interrupted runs left beside `output`, and nothing else: its temporary files (`.NAME.PID.tmp`),
    staging folders (`.NAME.staging-*`) and replaced folders (`.NAME.old-PID`). Another output's files never match
    (`.NAME.v2.lock` of an output NAME.v2 is not NAME's). Call only while holding its lock."""
    own = re.compile(re.escape(f".{output.name}.") + r"(\d+\.tmp|staging-[A-Za-z0-9_]+|old-\d+)")
    for path in output.parent.iterdir():
        if not own.fullmatch(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
