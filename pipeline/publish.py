"""Atomic publishing of result files: written under a temporary name beside the target, then os.replace."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


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
