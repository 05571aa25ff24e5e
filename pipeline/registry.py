"""Registered benchmark names (pipeline/registry.json) resolved to local files, checked by sha256, downloaded once
(pipeline/download.py) when no local copy exists and the machine has network."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from finetext.extract import InputError
from finetext.pipeline.download import download_name, fetch, sha256_of

REGISTRY = Path(__file__).resolve().parent / "registry.json"


@lru_cache(maxsize=1)
def registry() -> dict[str, Any]:
    return {k: v for k, v in json.loads(REGISTRY.read_text()).items() if not k.startswith("_")}


def data_dir() -> Path:
    """Where downloads go: $FINETEXT_DATA, else $XDG_CACHE_HOME/finetext/data (~/.cache/finetext/data)."""
    if os.environ.get("FINETEXT_DATA"):
        return Path(os.environ["FINETEXT_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetext" / "data"


def mirrors() -> list[Path]:
    """Where registered datasets are looked for: $FINETEXT_DATA, ../shared/data beside the checkout, the
    download folder."""
    found = [Path(os.environ["FINETEXT_DATA"])] if os.environ.get("FINETEXT_DATA") else []
    return list(dict.fromkeys(found + [REGISTRY.parents[2] / "shared" / "data", data_dir()]))


def offline() -> bool:
    """FINETEXT_OFFLINE=1 (or Hugging Face's HF_HUB_OFFLINE=1) forbids downloads."""
    return any(os.environ.get(k, "") not in ("", "0") for k in ("FINETEXT_OFFLINE", "HF_HUB_OFFLINE"))


def resolve(name: str, split: str | None, progress: bool = True) -> tuple[str, dict[str, Any]]:
    """(input path or builtin name, reading options) for a registered dataset and split: a local copy, checked
    by sha256 when the registry records one, else a download (once) into data_dir()."""
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
            if info.get("sha256") and sha256_of(path) != info["sha256"]:
                raise InputError(f"{path}: sha256 differs from the registry's {info['sha256']}; the file is not "
                                 f"the published {name} {split} split. Replace it with the original.")
            return str(path), options
    source = info.get("source")
    if source is None:
        raise InputError(f"{name} ({split}) is not on this machine and no source is registered for it. Put "
                         f"{info['file']} from {entry['published']} into $FINETEXT_DATA/{name}/ (tried: "
                         f"{', '.join(tried)}).")
    raw = data_dir() / name / "downloads" / download_name(source["url"])
    if offline() and not raw.exists():
        why = "downloads are off (FINETEXT_OFFLINE / HF_HUB_OFFLINE)"
    else:
        try:  # a published file already in downloads/ is checked and converted without the network
            return str(fetch(name, split, entry, data_dir(), progress)), options
        except OSError as err:  # no network, a refused connection, a full disk
            why = f"downloading {source['url']} failed ({err})"
    raise InputError(
        f"{name} ({split}) is not on this machine and {why}. Put the published file {source['url']} (sha256 "
        f"{source['sha256']}) at {raw} and finetext checks and converts it, or a converted {info['file']} "
        f"(columns text,label; sha256 {info.get('sha256') or 'not recorded'}) into $FINETEXT_DATA/{name}/ (tried: "
        f"{', '.join(tried)})."
    )


def locate(name: str, split: str) -> Path | None:
    """The local copy of a registered split, if one exists (unchecked); None otherwise."""
    file = registry()[name]["splits"][split].get("file")
    return next((root / name / file for root in mirrors() if file and (root / name / file).exists()), None)


def describe() -> list[str]:
    """One line per registered split: rows, and where it is, or where it would come from."""
    lines = []
    for name, entry in registry().items():
        if entry.get("builtin"):
            lines.append(f"{name:<14} {'all':<6} {entry['splits']['all']['rows']:>8,} rows  built in")
            continue
        for split, info in entry["splits"].items():
            path = locate(name, split)
            where = str(path) if path else f"downloads from {info['source']['url']}" if info.get("source") else "missing"
            lines.append(f"{name:<14} {split:<6} {info['rows']:>8,} rows  {where}")
    return lines
