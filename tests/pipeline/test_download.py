"""Registered datasets downloaded once: real files through urllib (file:// URLs), sha256, conversion, refusal."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

import finetext.pipeline.registry as reg
from finetext.extract import InputError
from finetext.pipeline.download import FORMATS, fetch, sha256_of
from tests.conftest import shared_data


def _entry(name: str, **sources) -> dict:
    """The registered entry of `name`, with each split's source URL pointing at a local file."""
    entry = json.loads(json.dumps(reg.registry()[name]))
    for split, path in sources.items():
        entry["splits"][split]["source"]["url"] = Path(path).as_uri()
    return entry


@pytest.fixture
def local_registry(tmp_path, monkeypatch):
    """A registry file of our own (real JSON, read by the real code) and an empty download folder."""
    def install(entries: dict) -> Path:
        path = tmp_path / "registry" / "data" / "registry.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(entries))
        monkeypatch.setattr(reg, "REGISTRY", path)
        reg.registry.cache_clear()
        return path
    monkeypatch.setenv("FINETEXT_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("FINETEXT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield install
    reg.registry.cache_clear()


def test_trec_is_downloaded_once_converted_and_matches_the_registered_sha256(tmp_path, local_registry):
    original = shared_data("trec") / "original"
    sources = tmp_path / "published"
    sources.mkdir()
    for name in ("train_5500.label", "TREC_10.label"):  # published copies we can delete afterwards
        (sources / name).write_bytes((original / name).read_bytes())
    local_registry({"trec": _entry("trec", train=sources / "train_5500.label", test=sources / "TREC_10.label")})
    path, options = reg.resolve("trec", "train", progress=False)
    assert sha256_of(Path(path)) == reg.registry()["trec"]["splits"]["train"]["sha256"]
    assert options == {"text_column": "text", "label_column": "label"}
    assert Path(path).parent == tmp_path / "data" / "trec"
    for f in sources.iterdir():
        f.unlink()  # the network is gone: the local copy is used, nothing is fetched again
    assert reg.resolve("trec", "train", progress=False)[0] == path
    with pytest.raises(InputError, match=r"downloading file://.*TREC_10.label failed .*\$FINETEXT_DATA/trec/"):
        reg.resolve("trec", "test", progress=False)


def test_sst2_test_and_banking77_convert_to_their_registered_files(tmp_path):
    sst2, banking = shared_data("sst2"), shared_data("banking77")
    entry = _entry("sst2", test=sst2 / "original" / "stsa.binary.test")
    assert sha256_of(fetch("sst2", "test", entry, tmp_path, progress=False)) == entry["splits"]["test"]["sha256"]
    entry = _entry("banking77", test=banking / "test.csv")
    assert sha256_of(fetch("banking77", "test", entry, tmp_path, progress=False)) == entry["splits"]["test"]["sha256"]


def test_trec50_keeps_the_fine_labels_of_the_same_questions(tmp_path):
    original, trec = shared_data("trec") / "original", shared_data("trec")
    for split, name in (("train", "train_5500.label"), ("test", "TREC_10.label")):
        entry = _entry("trec50", **{split: original / name})
        path = fetch("trec50", split, entry, tmp_path, progress=False)
        assert sha256_of(path) == entry["splits"][split]["sha256"]
        fine, coarse = ([*csv.DictReader(p.open(newline="", encoding="utf-8"))]
                        for p in (path, trec / f"{split}.csv"))
        assert [r["text"] for r in fine] == [r["text"] for r in coarse]
        assert all(f["label"].split(":")[0] == c["label"] for f, c in zip(fine, coarse))
        assert {r["label"] for r in fine} <= set(entry["label_names"])
    assert len({r["label"] for r in fine}) == 42 and len(entry["label_names"]) == 50


def test_a_download_with_another_sha256_is_refused_and_nothing_is_kept(tmp_path, local_registry):
    fake = tmp_path / "TREC.test"
    fake.write_bytes(b"DESC:def What is a fake ?\n")
    local_registry({"trec": _entry("trec", test=fake)})
    with pytest.raises(InputError, match="the download's sha256 is .* the registry's 033f22c0"):
        reg.resolve("trec", "test", progress=False)
    folder = tmp_path / "data" / "trec"
    assert not (folder / "test.csv").exists() and not [p for p in folder.rglob("*") if p.is_file()]


def test_offline_says_what_to_put_where_and_following_it_works(tmp_path, local_registry, monkeypatch):
    local_registry({"trec": reg.registry()["trec"]})
    monkeypatch.setenv("FINETEXT_OFFLINE", "1")
    raw = tmp_path / "data" / "trec" / "downloads" / "TREC.test"
    with pytest.raises(InputError, match=rf"downloads are off .* Put the published file https://\S+/TREC.test "
                                         rf"\(sha256 033f22c0\w+\) at {re.escape(str(raw))} .* into \$FINETEXT_DATA/trec/"):
        reg.resolve("trec", "test", progress=False)
    raw.parent.mkdir(parents=True)
    raw.write_bytes((shared_data("trec") / "original" / "TREC_10.label").read_bytes())
    path, _ = reg.resolve("trec", "test", progress=False)  # checked and converted, no network
    assert sha256_of(Path(path)) == reg.registry()["trec"]["splits"]["test"]["sha256"]


def _tgz(path: Path, files: dict[str, str]) -> tuple[str, int]:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_zhang_csv_archives_map_class_indices_to_names(tmp_path):
    archive = tmp_path / "ag_news_csv.tgz"
    sha, size = _tgz(archive, {"ag_news_csv/test.csv": '"3","Stocks rise","Markets gained\\nall day."\n'
                                                        '"2","Cup final","A late goal, then ""joy""."\n'})
    entry = {"label_names": ["World", "Sports", "Business", "Sci/Tech"], "splits": {"test": {
        "file": "test.csv", "sha256": None, "rows": 2, "source": {
            "url": archive.as_uri(), "sha256": sha, "bytes": size, "format": "zhang-csv", "member": "ag_news_csv/test.csv"}}}}
    rows = _rows(fetch("ag_news", "test", entry, tmp_path / "data", progress=False))
    assert rows == [{"text": "Stocks rise Markets gained\nall day.", "label": "Business"},
                    {"text": 'Cup final A late goal, then "joy".', "label": "Sports"}]
    entry["splits"]["test"]["rows"] = 3  # the registry's count disagrees: nothing is published
    (tmp_path / "data" / "ag_news" / "test.csv").unlink()
    with pytest.raises(InputError, match="gave 2 rows, the registry says 3"):
        fetch("ag_news", "test", entry, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "ag_news" / "test.csv").exists()


def test_the_imdb_archive_becomes_one_row_per_review_file(tmp_path):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    sha, size = _tgz(archive, {"aclImdb/train/pos/1_9.txt": "Loved it.", "aclImdb/train/neg/0_2.txt": "Dull.<br />",
                               "aclImdb/train/unsup/5_0.txt": "no label", "aclImdb/test/pos/3_8.txt": "Fine."})
    entry = {"label_names": ["neg", "pos"], "splits": {"train": {"file": "train.csv", "sha256": None, "rows": 2, "source": {
        "url": archive.as_uri(), "sha256": sha, "bytes": size, "format": "aclimdb", "member": "aclImdb/train"}}}}
    assert _rows(fetch("imdb", "train", entry, tmp_path / "data", progress=False)) == [
        {"text": "Dull.<br />", "label": "neg"}, {"text": "Loved it.", "label": "pos"}]


def test_every_registered_source_is_complete():
    for name, entry in reg.registry().items():
        for split, info in entry["splits"].items():
            source = info.get("source")
            if source is None:
                assert entry.get("builtin"), f"{name} {split} has no source"
                continue
            assert len(source["sha256"]) == 64 and source["bytes"] > 0 and source["url"].startswith("https://")
            assert source["format"] == "copy" or source["format"] in FORMATS


def test_the_datasets_command_lists_every_split_and_fetches_by_name(tmp_path, monkeypatch, capsys):
    from finetext.pipeline.cli import main

    monkeypatch.setenv("FINETEXT_DATA", str(tmp_path))
    monkeypatch.setenv("FINETEXT_OFFLINE", "1")
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "bbc            all       2,225 rows  built in" in out
    assert "imdb           test     25,000 rows  downloads from https://ai.stanford.edu/" in out
    assert f"downloads go to {tmp_path}" in out
    assert main(["datasets", "--fetch", "imbd"]) == 2
    assert "imbd: not a registered dataset" in capsys.readouterr().err
