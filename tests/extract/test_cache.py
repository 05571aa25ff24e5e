"""The cache on disk against its one description, docs/cache-format.md: every dataset and attribute a cache holds
is documented there, with the documented shape, dtype and checksum filter, and everything documented is written."""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from finetext.extract import extract_corpus
from finetext.extract.cache import POOLINGS, SCHEMA_VERSION

DOC = Path(__file__).resolve().parents[2] / "docs" / "cache-format.md"


def documented_table(section: str) -> list[list[str]]:
    """The rows of the Markdown table under `## <section>` in the format page, as lists of cell texts."""
    text = DOC.read_text(encoding="utf-8").split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return rows[1:]  # without the header row


def names(cell: str) -> list[str]:
    """The `backticked` names in a table cell."""
    return re.findall(r"`([^`]+)`", cell)


def written(path: Path) -> dict[str, tuple]:
    """Every dataset of an HDF5 file: path -> (shape, dtype, whether fletcher32 checksums it)."""
    found: dict[str, tuple] = {}

    def visit(name: str, obj: object) -> None:  # visititems stops at the first visitor that returns a value
        if isinstance(obj, h5py.Dataset):
            found[name] = (obj.shape, obj.dtype, obj.fletcher32)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def test_every_dataset_is_documented_with_its_shape_dtype_and_checksum(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "c.h5"
    extract_corpus(str(small_csv), out, model=str(tiny_bert), device="cpu", progress=False, poolings=POOLINGS,
                   tokens=True, token_layers=[0, 2])
    datasets = written(out)
    documented = {}
    for path, shape, dtype, _ in documented_table("Datasets"):
        for name in names(path):
            for pooling in POOLINGS if "<pooling>" in name else [None]:
                documented[name.replace("<pooling>", pooling) if pooling else name] = (shape, dtype)
    assert set(datasets) == set(documented), "datasets written and documented differ"
    n_docs, (n_layers, hidden) = 10, (3, 32)
    sizes = {"n_docs": n_docs, "n_layers": n_layers, "hidden": hidden, "n_labels": 5, "n_token_layers": 2,
             "n_docs + 1": n_docs + 1}
    for name, (shape, dtype, fletcher32) in datasets.items():
        doc_shape, doc_dtype = documented[name]
        axes = [a.strip() for a in doc_shape.strip("()").split(",") if a.strip()]
        assert len(axes) == len(shape), f"{name}: {shape} against the documented {doc_shape}"
        for axis, size in zip(axes, shape):
            if axis in sizes:
                assert size == sizes[axis], f"{name}: axis {axis} is {size}"
        kind = "UTF-8 string" if h5py.check_string_dtype(dtype) else str(dtype)
        assert kind in doc_dtype, f"{name}: {kind} is not the documented {doc_dtype}"
        # numeric datasets carry fletcher32; variable-length strings cannot, as the page says
        assert fletcher32 == (kind != "UTF-8 string"), name


def test_every_attribute_is_documented_and_json_ones_parse(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "c.h5"
    extract_corpus(str(small_csv), out, model=str(tiny_bert), device="cpu", progress=False)
    documented, as_json = set(), set()
    for cell, _ in documented_table("Attributes (on the root group)"):
        documented.update(names(cell))
        if "(JSON)" in cell:
            as_json.update(names(cell))
    with h5py.File(out, "r") as f:
        attrs = dict(f.attrs)
    assert set(attrs) == documented, "attributes written and documented differ"
    for name in as_json:
        json.loads(attrs[name])  # a documented JSON attribute parses
    title = DOC.read_text(encoding="utf-8").splitlines()[0]
    assert f"schema version {SCHEMA_VERSION}" in title and attrs["schema_version"] == SCHEMA_VERSION
    assert np.issubdtype(np.asarray(attrs["n_docs"]).dtype, np.integer) and attrs["n_docs"] == 10
