"""Saving and loading fitted heads: JSON config + safetensors weights. Loading never executes code."""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Mapping, Self

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.utils.validation import check_is_fitted

from finetext.classify.errors import HeadFormatError

FORMAT = "finetext-head"
MAX_CONFIG_BYTES = 64 << 20  # config.json: the class names dominate
MAX_ARRAY_BYTES = 16 << 30  # weights.safetensors and the arrays saved beside it
MAX_CLASSES = 100_000
MAX_LAYERS, MAX_HIDDEN = 4096, 1 << 20
ENCODER_DIRS = ("encoder", "../encoder")  # where finetext writes a fine-tuned encoder: in the head, or shared beside
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
    return Path(tempfile.mkdtemp(prefix=f".{directory.name}.staging-", dir=directory.parent))


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
    if not path.exists() and not path.is_symlink():
        raise HeadFormatError(f"{directory} has no config.json, so it is not a saved head; {wrote}.")
    check_regular_file(path, directory, MAX_CONFIG_BYTES)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HeadFormatError(f"{path}: not valid JSON ({exc}); {wrote}.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        if isinstance(config, dict) and ("model_type" in config or "architectures" in config):
            raise HeadFormatError(f"{directory} holds a transformers model, not a finetext head: extract features "
                                  f"with `finetext extract --model {directory}` and train a head on them, or "
                                  f"fine-tune it with `finetext finetune --model {directory}`.")
        raise HeadFormatError(f"{path}: not a finetext head (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r}); {wrote}.")
    if not isinstance(config.get("version", 0), int) or config.get("version", 0) > VERSION:
        raise HeadFormatError(f"{path}: head format version {config.get('version')!r} is not one this finetext "
                              f"reads (up to {VERSION}); upgrade finetext, or train the head again.")
    _check_config(path, config)
    return config


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """The fields every head's config.json has, with types and bounds; a fine-tuned encoder only where finetext
    writes one."""
    def bad(field: str, expected: str) -> HeadFormatError:
        shown = repr(config.get(field))
        return HeadFormatError(f"{path}: {field} should be {expected}, got {shown[:80]}"
                               f"{'...' if len(shown) > 80 else ''}. The file was changed after finetext wrote "
                               "it: train the head again.")

    for field, limit in (("n_layers", MAX_LAYERS), ("hidden_size", MAX_HIDDEN)):
        value = config.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            raise bad(field, f"a whole number from 1 to {limit}")
    classes = config.get("classes")
    if (not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES
            or not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in classes)
            or len(set(classes)) != len(classes)):
        raise bad("classes", f"a list of 2 to {MAX_CLASSES} distinct class names")
    for field in ("params", "feature_info"):
        if not isinstance(config.get(field, {}), dict):
            raise bad(field, "an object")
    encoder = (config.get("feature_info") or {}).get("encoder_dir")
    if encoder is not None and encoder not in ENCODER_DIRS:
        raise bad("feature_info", f"an object whose encoder_dir is one of {ENCODER_DIRS}")


def check_regular_file(path: Path, directory: Path, limit: int) -> None:
    """Refuse before opening: anything but a regular file (a FIFO would hang a reader, a device would never end),
    a link that leaves `directory`, or a file over `limit` bytes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise HeadFormatError(f"{path}: no such file; the head folder is incomplete: train the head again.") from None
    if stat.S_ISLNK(st.st_mode):
        target = path.resolve()
        if not target.is_relative_to(directory.resolve()):
            raise HeadFormatError(f"{path} links to {target}, outside the head folder; a head folder holds its own "
                                  "files: copy them in, or train the head again.")
        st = os.stat(target)
    if not stat.S_ISREG(st.st_mode):
        raise HeadFormatError(f"{path} is not a regular file (a FIFO, device or folder); a head folder holds "
                              "regular files only: train the head again.")
    if st.st_size > limit:
        raise HeadFormatError(f"{path} is {st.st_size:,} bytes, more than a head's {limit:,}; it is not a file "
                              "finetext wrote: train the head again.")


def read_arrays(path: Path, directory: Path) -> dict[str, np.ndarray]:
    """A safetensors file of a head folder, checked first (check_regular_file) and after: finite numbers only."""
    check_regular_file(path, directory, MAX_ARRAY_BYTES)
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own errors for a damaged header or truncated data
        raise HeadFormatError(f"{path}: not a readable safetensors file ({exc}); train the head again.") from None
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise HeadFormatError(f"{path}: {key} holds NaN or infinite values; train the head again.")
    return arrays


def rebuild(cls: type, directory: str | os.PathLike, config: dict[str, Any]) -> Any:
    """A `cls` head from a folder whose config.json (read_config) names that class. Parameters this finetext no
    longer has are left out: what a fitted head computes is in its arrays and config, not in them."""
    directory = Path(directory)
    known = set(cls._get_param_names())
    arrays = read_arrays(directory / "weights.safetensors", directory)
    L, H = config["n_layers"], config["hidden_size"]
    try:
        head = cls(**{k: _unparam(v) for k, v in config.get("params", {}).items() if k in known})
        head.import_state(np.array(config["classes"]), L, H, arrays, config)
        head.predict_proba(np.zeros((1, L, H), np.float32))  # every array's shape against the classes and layers
    except HeadFormatError as exc:  # import_state names the file ("config.json: ..."): put the folder before it
        raise HeadFormatError(f"{directory}/{exc}") from None
    except Exception as exc:  # a wrong shape, a missing array or a bad parameter, in whichever form it surfaces
        raise HeadFormatError(f"{directory}: weights.safetensors and config.json do not describe one "
                              f"{cls.__name__} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); train the head "
                              "again.") from None
    head.feature_info_ = config.get("feature_info", {})
    return head


def load_arrays(directory: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    """Arrays saved beside a head with save_head(..., extra_arrays={name: ...})."""
    path = Path(directory) / f"{name}.safetensors"
    if not path.exists() and not path.is_symlink():
        raise HeadFormatError(f"{path}: no such file, but the head's config.json says its features need it. The "
                              "folder is incomplete: train the head again (finetext train).")
    return read_arrays(path, Path(directory))


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
