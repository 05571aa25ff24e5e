"""Peak memory of one `finetext extract`, run in this process and counted two ways:

  resident:  peak RSS (VmHWM of this process's memory: getrusage's ru_maxrss would count the parent's if that
             was larger, since Linux carries it over an exec), what the operating system sees;
  live:      the peak over samples (every 0.05 s) of RSS less the bytes glibc's malloc holds as free chunks
             (mallinfo2's fordblks): memory the program still uses, without what the allocator keeps after a
             free() for reuse and has not returned to the system. Linux with glibc >= 2.33 only ("n/a" elsewhere).

    python bench/memory_probe.py CLI_EXTRACT_ARGS...     prints: <resident MiB> <live MiB or n/a>
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import resource
import sys
import threading
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetext.pipeline.cli import main  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def _free_heap_bytes() -> Callable[[], int] | None:
    """A function giving the bytes malloc holds in free chunks, or None without glibc's mallinfo2."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return lambda: libc.mallinfo2().fordblks


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def probe(args: list[str]) -> tuple[float, float | None]:
    """(resident, live) peaks in MiB of `finetext extract ARGS` run here."""
    free = _free_heap_bytes()
    live = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            live[0] = max(live[0], _rss_bytes() - free())

    watcher = threading.Thread(target=sample, daemon=True) if free else None
    if watcher:
        watcher.start()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["extract", *args])
    done.set()
    if code:
        sys.exit(f"finetext extract exited with {code}")
    with open("/proc/self/status") as f:
        resident = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB
    return resident, (live[0] / 2**20 if watcher else None)


if __name__ == "__main__":
    resident, live = probe(sys.argv[1:])
    print(f"{resident:.0f} {'n/a' if live is None else f'{live:.0f}'}")
