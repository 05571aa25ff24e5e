"""Tampered head folders: each is refused in one line with exit status 2, fast, before any model runs; none hangs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from finetext.pipeline.cli import main


@pytest.fixture(scope="module")
def good_head(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("heads")
    rows = [{"text": f"{w} story number {i}", "label": w} for i in range(8) for w in ("markets", "football", "films")]
    from tests.conftest import write_csv

    corpus = write_csv(root / "c.csv", rows)
    assert main(["extract", str(corpus), "--model", str(tiny_bert), "-o", str(root / "c.h5"), "-q"]) == 0
    assert main(["train", "--train", str(root / "c.h5"), "-o", str(root / "head"), "--quiet"]) == 0
    return root / "head"


def _config(head):
    return json.loads((head / "config.json").read_text())


def _set_config(head, **changes):
    config = _config(head)
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            config[outer][inner] = value
        else:
            config[key] = value
    (head / "config.json").write_text(json.dumps(config))


def _set_array(head, key, change):
    arrays = load_file(str(head / "weights.safetensors"))
    if change is None:
        del arrays[key]
    else:
        arrays[key] = change(arrays[key])
    save_file(arrays, str(head / "weights.safetensors"))


def _nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


TAMPERINGS = {  # case -> (how, what the one line says)
    "NaN weights": (lambda h: _set_array(h, "W", _nan), "NaN or infinite"),
    "a class name more than weights": (lambda h: _set_config(h, classes=_config(h)["classes"] + ["extra"]),
                                      "do not describe one LayerAttention"),
    "three million class names": (lambda h: _set_config(h, classes=[f"c{i}" for i in range(3_000_000)]),
                                  "a list of 2 to 100000 distinct class names"),
    "duplicate class names": (lambda h: _set_config(h, classes=["a", "a", "b"]), "distinct class names"),
    "another number of layers": (lambda h: _set_config(h, n_layers=7), "do not describe one LayerAttention"),
    "a hidden size that is text": (lambda h: _set_config(h, hidden_size="32"), "hidden_size should be"),
    "an encoder outside the folder": (lambda h: _set_config(h, **{"feature_info.encoder_dir": "../../../../etc"}),
                                      "encoder_dir is one of"),
    "weights linked outside": (lambda h: ((h / "weights.safetensors").unlink(),
                                          os.symlink("/etc/hostname", h / "weights.safetensors")),
                               "outside the head folder"),
    "config.json not JSON": (lambda h: (h / "config.json").write_text("{not json"), "not valid JSON"),
    "config.json a folder": (lambda h: ((h / "config.json").unlink(), (h / "config.json").mkdir()),
                             "not a regular file"),
    "truncated weights": (lambda h: (h / "weights.safetensors").write_bytes(
        (h / "weights.safetensors").read_bytes()[:200]), "not a readable safetensors file"),
    "no weights": (lambda h: (h / "weights.safetensors").unlink(), "no such file"),
    "an array missing": (lambda h: _set_array(h, "b", None), "no linear part"),
    "another array missing": (lambda h: _set_array(h, "u", None), "do not describe one LayerAttention"),
    "a newer format": (lambda h: _set_config(h, version=99), "not one this finetext reads"),
    "an unknown normalisation": (lambda h: _set_config(h, normalization={"linear": "cubic"}),
                                 "normalization {'linear': 'cubic'} is not one this finetext knows"),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_a_tampered_head_is_one_line_and_exit_2_before_any_model_runs(case, good_head, tmp_path, capsys):
    head = tmp_path / "head"
    shutil.copytree(good_head, head)
    how, said = TAMPERINGS[case]
    how(head)
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["predict", "--head", str(head), "--text", "Shares fell."]) == 2
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err, err
    assert took < 2.0, f"{case}: {took:.1f} s"


def test_a_fifo_as_weights_is_refused_without_hanging(good_head, tmp_path):
    head = tmp_path / "head"
    shutil.copytree(good_head, head)
    (head / "weights.safetensors").unlink()
    os.mkfifo(head / "weights.safetensors")  # opening it for reading would wait for a writer forever
    run = subprocess.run([sys.executable, "-m", "finetext", "predict", "--head", str(head), "--text", "hi"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "not a regular file" in run.stderr and run.stderr.count("\n") == 1


def test_the_untouched_head_still_predicts(good_head, capsys):
    assert main(["predict", "--head", str(good_head), "--text", "Shares fell.", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in {"markets", "football", "films"}
