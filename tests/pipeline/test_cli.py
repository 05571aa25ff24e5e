"""The CLI driven in-process on real files; every option it has is in the README."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetext.pipeline.cli import build_parser, main

README = Path(__file__).resolve().parents[2] / "README.md"


def all_options() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
            for name, p in sub.choices.items()}


def test_every_command_and_option_is_in_the_readme():
    text = README.read_text()
    for command, options in all_options().items():
        assert f"finetext {command}" in text, f"`finetext {command}` is missing from the README"
        for option in options:
            assert re.search(re.escape(option) + r"\b", text), f"{command} {option} is missing from the README"


def test_extract_info_verify(tmp_path, small_csv, tiny_bert, capsys):
    out = tmp_path / "c.h5"
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(out), "--quiet",
                 "--pooling", "mean,cls", "--device", "cpu"]) == 0
    assert "created, 10 documents" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "mean, cls pooling: (10, 3, 32)" in info and "business (2)" in info
    assert main(["verify", str(out)]) == 0
    assert "every checksum matches" in capsys.readouterr().out


def test_errors_are_one_clear_line_and_exit_2(tmp_path, small_csv, tiny_bert, capsys):
    code = main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(tmp_path / "x.h5"),
                 "--text-column", "body", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("finetext: error:") and "'body'" in err and "--text-column" in err
    assert main(["extract", str(small_csv), "-o", str(tmp_path / "y.h5"), "--pooling", "median"]) == 2
    assert "pooling" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in all_options():
        assert command in out


def test_the_parser_and_info_load_neither_torch_nor_scikit_learn(tmp_path, small_csv, tiny_bert):
    """`finetext --help` and `finetext info` start in a fraction of a second: the heavy libraries load with the
    commands that use them."""
    cache = tmp_path / "c.h5"
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "--output", str(cache)]) == 0
    heavy = ("torch", "sklearn", "transformers")
    probe = ("import sys; from pipeline.cli import build_parser, main; build_parser(); "
             f"assert main(['info', {str(cache)!r}]) == 0; print([m for m in {heavy!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=README.parent)
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_cached_head_names_are_the_sweeps():
    from finetext.pipeline.settings import CACHED_HEADS
    from finetext.pipeline.sweep import HEADS

    assert tuple(HEADS) == CACHED_HEADS


def test_registered_names_resolve_to_the_verified_mirror(tmp_path, monkeypatch):
    from finetext.pipeline.registry import registry, resolve

    assert {"imdb", "yelp_polarity", "yelp_full", "ag_news", "dbpedia14", "trec", "sst2", "banking77", "bbc"} <= set(registry())
    monkeypatch.setenv("FINETEXT_DATA", str(tmp_path))
    monkeypatch.setenv("FINETEXT_OFFLINE", "1")
    (tmp_path / "trec").mkdir()
    (tmp_path / "trec" / "train.csv").write_text("text,label\nWhat ?,DESC\n")
    with pytest.raises(Exception, match="sha256 differs"):
        resolve("trec", "train")
    with pytest.raises(Exception, match=r"\$FINETEXT_DATA/ag_news/"):
        resolve("ag_news", "train")
    with pytest.raises(Exception, match="one of train, test"):
        resolve("trec", "validation")


def test_extract_a_registered_dataset_by_name(tmp_path, tiny_bert, capsys):
    from tests.conftest import shared_data

    shared_data("trec")
    out = tmp_path / "trec.h5"
    assert main(["extract", "trec", "--split", "test", "--model", str(tiny_bert), "-o", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert "500 documents" in capsys.readouterr().out
