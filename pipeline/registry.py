"""Registered benchmark names (data/registry.json) resolved to local files, checked by sha256."""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from extract import InputError

REGISTRY = Path(__file__).resolve().parents[1] / "data" / "registry.json"


@lru_cache(maxsize=1)
def registry() -> dict[str, Any]:
    return {k: v for k, v in json.loads(REGISTRY.read_text()).items() if not k.startswith("_")}


def mirrors() -> list[Path]:
    """Where registered datasets are looked for: $FINETEXT_DATA, then ../shared/data beside the checkout."""
    found = [Path(os.environ["FINETEXT_DATA"])] if os.environ.get("FINETEXT_DATA") else []
    return found + [REGISTRY.parents[2] / "shared" / "data"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def resolve(name: str, split: str | None) -> tuple[str, dict[str, Any]]:
    """(input path or builtin name, reading options) for a registered dataset and split."""
    entry = registry()[name]
    if entry.get("builtin"):
        return name, {}
    splits = entry["splits"]
    if split not in splits:
        raise InputError(f"{name}: give --split, one of {', '.join(splits)} (got {split!r}).")
    info = splits[split]
    options = {"text_column": info.get("text_column", entry["text_column"]), "label_column": entry["label_column"]}
    tried = []
    for root in mirrors():
        path = root / name / info["file"]
        tried.append(str(path))
        if path.exists():
            if info.get("sha256") and _sha256(path) != info["sha256"]:
                raise InputError(f"{path}: sha256 differs from the registry's {info['sha256']}; the file is not "
                                 f"the published {name} {split} split. Replace it with the original.")
            return str(path), options
    raise InputError(
        f"{name} ({split}) is not on this machine and finetext does not download datasets. Put "
        f"{info['file']} (sha256 {info.get('sha256') or 'not recorded'}) from {entry['published']} into "
        f"$FINETEXT_DATA/{name}/ (tried: {', '.join(tried)})."
    )
