"""Saving and loading fitted heads: JSON config + safetensors weights. Loading never executes code."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Self

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.utils.validation import check_is_fitted

from finetext.classify.errors import HeadFormatError

FORMAT = "finetext-head"
DISPLAY_PARAMS = ("verbose",)  # how a fit shows its progress, not what it learned: never saved
VERSION = 1


class SaveLoadMixin:
    """`save(dir)` and `Head.load(dir)` for every head, also under Hugging Face's names `save_pretrained` and
    `from_pretrained`."""

    def save(self, directory: str | os.PathLike, feature_info: dict[str, Any] | None = None) -> Path:
        """Write config.json + weights.safetensors into `directory` (replaced atomically); returns its path."""
        check_is_fitted(self)
        return save_head(self, directory, feature_info)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Self:
        """Read a head written by save(); nothing in the folder can execute code."""
        config = read_config(directory)
        if config.get("class") != cls.__name__:
            raise HeadFormatError(f"{directory} holds a {config.get('class')}, not a {cls.__name__}: load it with "
                                  f"{config.get('class')}.load or finetext.classify.load_head.")
        return rebuild(cls, directory, config)

    save_pretrained = save
    from_pretrained = load


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _param(value: Any) -> Any:
    """A parameter as JSON keeps it: a dict (class_weight) as [key, value] pairs, since JSON's keys are strings
    only and labels may be numbers (read back by _unparam)."""
    if isinstance(value, Mapping):
        return {"items": [[_plain(k), _plain(v)] for k, v in value.items()]}
    return _plain(value)


def _unparam(value: Any) -> Any:
    if isinstance(value, dict) and list(value) == ["items"]:
        return {k: v for k, v in value["items"]}
    return value


def write_head_files(head: Any, directory: str | os.PathLike, feature_info: dict[str, Any] | None = None) -> None:
    """Write `config.json` and `weights.safetensors` into an existing folder (not atomic: see save_head)."""
    directory = Path(directory)
    arrays, extra = head.export_state()
    classes = [_plain(c) for c in head.classes_]
    if not all(isinstance(c, (str, int, float, bool)) for c in classes):
        raise TypeError(f"classes_ must be strings or numbers to be saved as JSON, got {classes[:3]}.")
    config = {
        "format": FORMAT, "version": VERSION, "class": type(head).__name__,
        "params": {k: _param(v) for k, v in head.get_params().items() if k not in DISPLAY_PARAMS},
        "classes": classes, "n_layers": head.n_layers_, "hidden_size": head.hidden_size_,
        "feature_info": feature_info or {}, **extra,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(directory / "weights.safetensors"))


def staging_dir(directory: str | os.PathLike) -> Path:
    """A fresh empty folder beside `directory`, to be published with replace_dir."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))


def replace_dir(staged: Path, directory: str | os.PathLike) -> Path:
    """Publish a finished staging folder as `directory`, replacing an older one only once the new is complete."""
    directory = Path(directory)
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(staged, directory)
        shutil.rmtree(old)
    else:
        os.replace(staged, directory)
    return directory


def save_head(head: Any, directory: str | os.PathLike, feature_info: dict[str, Any] | None = None,
              extra_arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> Path:
    """Write `config.json` and `weights.safetensors` into `directory`, atomically (a new folder replaces it).

    feature_info: what the features came from (model id, weights hash, pooling, cache fingerprint), checked
    again when the head is used on another cache. extra_arrays: name -> arrays the features need before the
    head sees them (a PoolPrior's map), each written as `name.safetensors` and read with load_arrays.
    """
    tmp = staging_dir(directory)
    try:
        write_head_files(head, tmp, feature_info)
        for name, arrays in (extra_arrays or {}).items():
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / f"{name}.safetensors"))
        return replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """A saved head's config.json, checked to be one; every other folder or file is a HeadFormatError."""
    directory = Path(directory)
    wrote = ("pass the folder that `finetext train`, `finetune` or head.save(dir) wrote "
             "(config.json + weights.safetensors)")
    if not directory.is_dir():
        what = "is a file, not a head folder" if directory.exists() else "does not exist"
        raise HeadFormatError(f"{directory} {what}; {wrote}.")
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadFormatError(f"{directory} has no config.json, so it is not a saved head; {wrote}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadFormatError(f"{path}: not valid JSON ({exc}); {wrote}.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        if isinstance(config, dict) and ("model_type" in config or "architectures" in config):
            raise HeadFormatError(f"{directory} holds a transformers model, not a finetext head: extract features "
                                  f"with `finetext extract --model {directory}` and train a head on them, or "
                                  f"fine-tune it with `finetext finetune --model {directory}`.")
        raise HeadFormatError(f"{path}: not a finetext head (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r}); {wrote}.")
    if config.get("version", 0) > VERSION:
        raise HeadFormatError(f"{path}: head format version {config['version']} is newer than this finetext "
                              f"reads ({VERSION}); upgrade finetext.")
    return config


def rebuild(cls: type, directory: str | os.PathLike, config: dict[str, Any]) -> Any:
    """A `cls` head from a folder whose config.json (read_config) names that class. Parameters this finetext no
    longer has are left out: what a fitted head computes is in its arrays and config, not in them."""
    known = set(cls._get_param_names())
    head = cls(**{k: _unparam(v) for k, v in config["params"].items() if k in known})
    arrays = load_file(str(Path(directory) / "weights.safetensors"))
    head.import_state(np.array(config["classes"]), config["n_layers"], config["hidden_size"], arrays, config)
    head.feature_info_ = config.get("feature_info", {})
    return head


def load_arrays(directory: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    """Arrays saved beside a head with save_head(..., extra_arrays={name: ...})."""
    path = Path(directory) / f"{name}.safetensors"
    if not path.exists():
        raise HeadFormatError(f"{path}: no such file, but the head's config.json says its features need it. The "
                                "folder is incomplete: train the head again (finetext train).")
    return load_file(str(path))


def check_feature_source(feature_info: dict[str, Any], cache_meta: dict[str, Any], cache_name: str = "the cache") -> None:
    """Refuse features from another model than the head was trained on, naming both."""
    keys = ["weights_sha256", "model_id", "n_layers", "hidden_size", "max_length", "compute_dtype"]
    if feature_info.get("weights_sha256") and feature_info.get("weights_sha256") == cache_meta.get("weights_sha256"):
        keys.remove("model_id")  # the same weights under another path (a fine-tuned encoder/ folder, say)
    for key in keys:
        mine, theirs = feature_info.get(key), cache_meta.get(key)
        if mine and theirs and mine != theirs:
            raise HeadFormatError(
                f"this head was trained on features with {key}={mine!r}; {cache_name} has {key}={theirs!r}. "
                "Extract the texts with the head's model and settings (finetext extract --model, --max-length, "
                "--dtype), or train a head on this cache."
            )
