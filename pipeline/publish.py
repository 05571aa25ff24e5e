"""Atomic publishing of result files: written under a temporary name beside the target, then os.replace."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from finetext.extract.errors import InputError


def check_output_folder(folder: Path) -> None:
    """Refuse, before any work, an output folder that cannot be made: a file stands at it or above it."""
    blocking = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InputError(f"{folder}: {blocking} is a file, not a folder; choose another --output.")


def publish(path: Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) for a temporary path beside `path`, then replace `path` with it in one step: a reader
    sees the old file or the new one, never half of one. The temporary file is removed if write fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def publish_text(path: Path, text: str) -> Path:
    return publish(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
