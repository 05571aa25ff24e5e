"""The CLI driven in-process on real files; its reference (docs/cli.md) is generated from the parser."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetext.pipeline.cli import build_parser, main
from finetext.pipeline.cli_reference import markdown

ROOT = Path(__file__).resolve().parents[2]


def all_options() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
            for name, p in sub.choices.items()}


def test_docs_cli_is_the_parsers_help():
    """docs/cli.md is generated from the parser: regenerate it with `python -m finetext.pipeline.cli_reference >
    docs/cli.md` when this fails."""
    text = (ROOT / "docs" / "cli.md").read_text()
    if f"(Python {sys.version_info.major}.{sys.version_info.minor}'s argparse)" in text:
        assert text == markdown()
    for command, options in all_options().items():  # under any Python: every command, option and help text
        assert f"## `finetext {command}`" in text, f"`finetext {command}` is missing from docs/cli.md"
        for option in options:
            assert re.search(re.escape(option) + r"\b", text), f"{command} {option} is missing from docs/cli.md"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {" ".join(a.help.split()[:4]) for p in sub.choices.values() for a in p._actions if a.help}
    flat = " ".join(text.split())
    assert all(h in flat for h in helps), [h for h in helps if h not in flat]


def test_the_readme_points_every_command_to_its_reference():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200 and "docs/cli.md" in readme
    for command in all_options():
        assert f"finetext {command}" in readme or f"`{command}`" in readme, f"the README never names {command}"


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
    probe = ("import sys; from finetext.pipeline.cli import build_parser, main; build_parser(); "
             f"assert main(['info', {str(cache)!r}]) == 0; print([m for m in {heavy!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=ROOT)
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


@pytest.fixture
def caches(tmp_path, small_csv, tiny_bert):
    """Three caches of one corpus with the tiny model: mean pooling, cls pooling, and a shorter max_length; and a
    last-layer head trained on the first."""
    made = {}
    for name, options in {"mean": [], "cls": ["--pooling", "cls"], "short": ["--max-length", "8"]}.items():
        made[name] = tmp_path / f"{name}.h5"
        assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(made[name]), "--quiet",
                     "--device", "cpu", *options]) == 0
    made["unlabelled"] = tmp_path / "unlabelled.csv"
    made["unlabelled"].write_text("text\nShares fell.\nThe match ended 2-1.\n")
    made["one_class"] = tmp_path / "one.h5"
    one = tmp_path / "one.csv"
    one.write_text("text,label\nShares fell.,business\nShares rose.,business\n")
    assert main(["extract", str(one), "--model", str(tiny_bert), "-o", str(made["one_class"]), "-q"]) == 0
    made["not_a_cache"] = tmp_path / "notes.h5"
    made["not_a_cache"].write_text("my notes, not a cache")
    made["head"] = tmp_path / "head"
    assert main(["train", "--train", str(made["mean"]), "--head", "last-layer", "-o", str(made["head"]),
                 "--quiet"]) == 0
    return made


USER_ERRORS = {  # case -> (arguments, with {name} for a path of the `caches` fixture; what the one line says)
    "a cache given as a head": (["predict", "--head", "{mean}", "--text", "hi"], "is a file, not a head folder"),
    "a model folder given as a head": (["predict", "--head", "{model}", "--text", "hi"], "holds a transformers model"),
    "a test cache without the pooling": (["sweep", "--train", "{mean}", "--test", "{cls}", "-o", "{tmp}/s", "-q"],
                                         "no 'mean' pooling; this cache has cls"),
    "evaluate on a cache without the pooling": (["evaluate", "--head", "{head}", "--cache", "{cls}"],
                                                "no 'mean' pooling"),
    "evaluate on another max_length": (["evaluate", "--head", "{head}", "--cache", "{short}"], "max_length=8"),
    "a folder as the output cache": (["extract", "{csv}", "--model", "{model}", "-o", "{tmp}"], "is a folder"),
    "a budget above a class's rows": (["train", "--train", "{mean}", "--budget", "500", "-o", "{tmp}/h"],
                                      "--budget 500 asks for 500 labels per class"),
    "a total budget below the classes": (["sweep", "--train", "{mean}", "--test", "{mean}", "--budget-mode", "total",
                                          "--budgets", "1", "-o", "{tmp}/s", "-q"], "at least one label per class"),
    "a cache too small to split": (["sweep", "--train", "{mean}", "-o", "{tmp}/s", "-q"],
                                   "cannot be split into a stratified test fraction"),
    "a hidden state the cache lacks": (["train", "--train", "{mean}", "--layers", "99", "-o", "{tmp}/h"],
                                       "this cache has hidden states 0 to"),
    "evaluate on a file without labels": (["evaluate", "--head", "{head}", "--input", "{unlabelled}"],
                                          "no label column 'label'"),
    "a one-class cache in a sweep": (["sweep", "--train", "{one_class}", "-o", "{tmp}/s", "-q"],
                                     "a classifier needs two classes or more"),
    "a one-class cache in train": (["train", "--train", "{one_class}", "-o", "{tmp}/h"],
                                   "a classifier needs two classes or more"),
    "another file at the output": (["extract", "{csv}", "--model", "{model}", "-o", "{not_a_cache}"],
                                   "exists and is not a finetext cache"),
    "an output under a file": (["train", "--train", "{mean}", "-o", "{mean}/h", "--head", "last-layer"],
                               "is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_every_error_a_user_can_cause_is_one_line_and_exit_2(case, caches, tmp_path, small_csv, tiny_bert, capsys):
    args, said = USER_ERRORS[case]
    paths = {**{k: str(v) for k, v in caches.items()}, "model": str(tiny_bert), "csv": str(small_csv),
             "tmp": str(tmp_path)}
    capsys.readouterr()
    assert main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("finetext: error:") and err.count("\n") == 1 and said in err, err
    assert "fallback=" not in err and "Traceback" not in err
    assert "--no-labels" not in err or args[0] == "extract"  # only extract has that option


def test_a_reader_that_goes_away_ends_the_output_quietly(caches):
    run = subprocess.Popen([sys.executable, "-m", "finetext", "info", str(caches["mean"])], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    run.stdout.close()  # `finetext info c.h5 | head -0`
    assert run.wait() == 2 and run.stderr.read() == b""


def test_a_budget_above_a_class_warns_once_and_the_table_says_so(caches, tmp_path, capsys):
    assert main(["sweep", "--train", str(caches["mean"]), "--test", str(caches["mean"]), "--heads", "last-layer",
                 "--budgets", "1,100", "--seeds", "2", "-o", str(tmp_path / "s"), "-q"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "budget 100/class" in warnings[0] and "take all of them" in warnings[0]
    assert "≤100/class" in captured.out and "| 1/class |" in captured.out
