"""End-to-end fine-tuning and the multi-task variant, on tiny random models and real files."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from finetext.extract import CorpusSpec, InputError
from finetext.extract.corpus import Record
from finetext.pipeline.cli import main
from finetext.pipeline.finetune import Task, finetune, read_corpus, save_finetuned, train_finetune
from finetext.pipeline.settings import FinetuneSettings
from finetext.pipeline.multitask import TaskSource, run_multitask
from finetext.pipeline.workflows import evaluate_head, predict_texts
from tests.conftest import write_csv

WORDS = {"sport": ["goal", "match", "cup", "striker", "league"], "money": ["shares", "profit", "bank", "market", "rates"],
         "music": ["album", "song", "band", "concert", "guitar"]}
# the CPU is the reference device of the tests, also on a machine with a GPU (bf16 autocast there)
FAST = dict(objective="classification", device="cpu", lr=2e-3, head_lr=1e-2, epochs=1, min_steps=40, batch_size=8, warmup=0.0, dropout=0.0,
            max_length=32)


def _records(n_per_class: int, seed: int, classes=("sport", "money", "music")) -> list[Record]:
    """Short texts whose class is told by its words: a task a tiny random BERT can learn in a few steps."""
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        for _ in range(n_per_class):
            words = rng.choice(WORDS[c], size=rng.integers(3, 7))
            out.append(Record(len(out) + 1, str(len(out) + 1), "the " + " ".join(words), None, c))
    return out


def test_a_tiny_model_fine_tunes_and_its_loss_falls(tiny_bert):
    trained = train_finetune([Task("topics", _records(12, 0), _records(5, 1))], model=str(tiny_bert),
                             settings=FinetuneSettings(**FAST), progress=False)
    history = trained.metrics["history"]
    assert trained.metrics["total_steps"] >= 40
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert trained.metrics["test_accuracy"] > 0.6  # chance is 1/3


def test_saved_and_reloaded_fine_tuned_models_predict_identically(tiny_bert, tmp_path):
    task = Task("topics", _records(8, 0))
    trained = train_finetune([task], model=str(tiny_bert), settings=FinetuneSettings(**FAST), progress=False)
    save_finetuned(trained, [task], tmp_path / "ft")
    assert (tmp_path / "ft" / "encoder" / "model.safetensors").exists()
    assert not list((tmp_path / "ft").rglob("*.bin")) and not list((tmp_path / "ft").rglob("*.pkl"))
    new = _records(4, 7)
    in_memory = trained.predict_proba("topics", new)  # (n, C)
    rows = predict_texts(str(tmp_path / "ft"), texts=[r.text for r in new], device="cpu")
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    reloaded = np.array([[r[f"p_{c}"] for c in classes] for r in rows])
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-5)
    assert [r["label"] for r in rows] == [classes[i] for i in in_memory.argmax(1)]


@pytest.mark.parametrize("head", ["scalar-mix", "last-layer"])
def test_the_other_heads_fine_tune_and_reload(tiny_bert, tmp_path, head):
    task = Task("two", _records(8, 0, classes=("sport", "money")), _records(4, 1, classes=("sport", "money")))
    settings = FinetuneSettings(**{**FAST, "min_steps": 10}, head=head)
    trained = train_finetune([task], model=str(tiny_bert), settings=settings, progress=False)
    save_finetuned(trained, [task], tmp_path / head)
    rows = predict_texts(str(tmp_path / head), texts=[r.text for r in task.test], device="cpu")
    np.testing.assert_allclose([[r["p_money"], r["p_sport"]] for r in rows],
                               trained.predict_proba("two", task.test), atol=1e-5)


def test_a_gpt2_fine_tunes_with_last_token_pooling(tiny_gpt2, tmp_path):
    task = Task("topics", _records(6, 0), _records(3, 1))
    metrics = finetune([task], tmp_path / "gpt2", model=str(tiny_gpt2),
                       settings=FinetuneSettings(**{**FAST, "min_steps": 6}, pooling="last"), progress=False)
    assert metrics["epochs_run"] >= 1 and 0 <= metrics["test_accuracy"] <= 1


def test_early_stopping_uses_a_validation_split_when_classes_are_large(tiny_bert):
    settings = FinetuneSettings(**{**FAST, "min_steps": 1, "epochs": 3}, min_val_per_class=10, validation=0.2)
    trained = train_finetune([Task("topics", _records(10, 0))], model=str(tiny_bert), settings=settings,
                             progress=False)
    assert trained.metrics["n_val"] == 6 and trained.metrics["n_train"] == 24  # 2 of 10 per class held out
    assert all("val_accuracy" in h for h in trained.metrics["history"])


def test_bad_tasks_are_refused_clearly(tiny_bert):
    with pytest.raises(InputError, match="no labels"):
        Task("t", [Record(1, "1", "text", None, None), Record(2, "2", "more", None, None)])
    with pytest.raises(InputError, match=r"test labels \['music'\] never occur"):
        Task("t", _records(2, 0, classes=("sport", "money")), _records(1, 0, classes=("music",)))
    with pytest.raises(InputError, match="head: expected one of"):
        FinetuneSettings(head="mlp")
    with pytest.raises(InputError, match="task t: .*music"):  # a budget larger than a class names the class
        train_finetune([Task("t", _records(5, 0, ("sport", "money")) + _records(2, 1, ("music",)), budget=4)],
                       model=str(tiny_bert), settings=FinetuneSettings(**FAST), progress=False)


def test_multitask_end_to_end_trains_and_reports_both_tasks(tiny_bert, tmp_path):
    files = {}
    for name, classes in (("topics", ("sport", "money", "music")), ("pairs", ("sport", "music"))):
        for split, n, seed in (("train", 8, 0), ("test", 3, 1)):
            path = write_csv(tmp_path / f"{name}-{split}.csv",
                             [{"text": r.text, "label": r.label} for r in _records(n, seed, classes)])
            files[name, split] = str(path)
    tasks = [TaskSource(name, files[name, "train"], files[name, "test"]) for name in ("topics", "pairs")]
    metrics = run_multitask(tasks, tmp_path / "mt", model=str(tiny_bert),
                            settings=FinetuneSettings(**{**FAST, "min_steps": 10}), progress=False)
    methods = {(r["task"], r["method"]) for r in metrics["comparison"]}
    assert methods == {(t, m) for t in ("topics", "pairs") for m in ("multitask-finetune", "finetune-layer-attention")}
    assert set(metrics["total_train_seconds"]) == {"multitask-finetune", "finetune-layer-attention"}
    # one shared encoder, one head per task; each head works with evaluate like any head
    assert (tmp_path / "mt" / "multitask" / "encoder").is_dir()
    result = evaluate_head(str(tmp_path / "mt" / "multitask" / "pairs"), corpus=CorpusSpec(files["pairs", "test"]))
    row = next(r for r in metrics["comparison"] if r == {**r, "task": "pairs", "method": "multitask-finetune"})
    assert result.accuracy == pytest.approx(row["accuracy"])


def test_multitask_cached_and_compare_from_the_cli(tiny_bert, tmp_path, capsys):
    caches = {}
    for name, classes in (("topics", ("sport", "money", "music")), ("pairs", ("sport", "music"))):
        for split, n, seed in (("train", 10, 0), ("test", 4, 1)):
            csv = write_csv(tmp_path / f"{name}-{split}.csv",
                            [{"text": r.text, "label": r.label} for r in _records(n, seed, classes)])
            caches[name, split] = str(tmp_path / f"{name}-{split}.h5")
            assert main(["extract", str(csv), "--model", str(tiny_bert), "-o", caches[name, split], "-q"]) == 0
    args = [f"{n}={caches[n, 'train']},{caches[n, 'test']}" for n in ("topics", "pairs")]
    assert main(["multitask", *args, "--cached", "--budget", "4", "-o", str(tmp_path / "mtc"), "-q"]) == 0
    metrics = json.loads((tmp_path / "mtc" / "metrics.json").read_text())
    assert {r["method"] for r in metrics["comparison"]} == {"multitask-cached", "layer-attention"}
    assert all(r["n_train"] == (12 if r["task"] == "topics" else 8) for r in metrics["comparison"])
    assert main(["evaluate", "--head", str(tmp_path / "mtc" / "topics"), "--cache", caches["topics", "test"]]) == 0

    csv = tmp_path / "topics-train.csv"
    assert main(["finetune", str(csv), "--model", str(tiny_bert), "--test", str(tmp_path / "topics-test.csv"),
                 "--output", str(tmp_path / "ft"), "--objective", "classification", "--min-steps", "4", "--epochs", "1",
                 "--name", "topics", "-q"]) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["objective"] == "classification"
    assert metrics["total_steps"] == 4 and metrics["settings"]["objective"] == "classification"
    assert main(["evaluate", "--head", str(tmp_path / "ft"), "--input", str(tmp_path / "topics-test.csv")]) == 0
    assert f"accuracy {100 * metrics['test_accuracy']:.2f}%" in capsys.readouterr().out
    # the fine-tuned encoder's own cache is accepted; the original model's is refused
    ft_cache = str(tmp_path / "ft-test.h5")
    assert main(["extract", str(tmp_path / "topics-test.csv"), "--model", str(tmp_path / "ft" / "encoder"),
                 "-o", ft_cache, "-q", "--storage-dtype", "float32"]) == 0
    assert main(["evaluate", "--head", str(tmp_path / "ft"), "--cache", ft_cache]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--head", str(tmp_path / "ft"), "--cache", caches["topics", "test"]]) == 2
    assert "weights_sha256" in capsys.readouterr().err

    assert main(["compare", str(tmp_path / "ft"), str(tmp_path / "mtc"), "--task", "topics",
                 "-o", str(tmp_path / "report")]) == 0
    rows = (tmp_path / "report" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("task,head,budget") and len(rows) == 1 + 3  # finetune, multitask, single head
    for png in ("learning_curves.png", "accuracy_vs_time.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_corpus_names_the_bad_row(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [{"text": "fine", "label": "a"}, {"text": "", "label": "b"}])
    with pytest.raises(InputError, match="row 2"):
        read_corpus(CorpusSpec(str(path)))


def test_multitask_cached_refuses_caches_of_other_settings(tiny_bert, tmp_path, capsys):
    csv = write_csv(tmp_path / "t.csv", [{"text": r.text, "label": r.label} for r in _records(4, 0)])
    paths = {}
    for name, max_length in (("a", 32), ("b", 16)):
        paths[name] = str(tmp_path / f"{name}.h5")
        assert main(["extract", str(csv), "--model", str(tiny_bert), "-o", paths[name], "--max-length",
                     str(max_length), "-q"]) == 0
    args = [f"one={paths['a']},{paths['a']}", f"two={paths['a']},{paths['b']}"]
    assert main(["multitask", *args, "--cached", "-o", str(tmp_path / "mt"), "-q"]) == 2
    assert "task two: its test cache was extracted with other settings" in capsys.readouterr().err


def test_any_task_name_works_even_the_names_of_module_methods(tiny_bert, tmp_path, capsys):
    names = ["train", "eval", "to", "forward"]  # attributes of torch.nn.Module: a ModuleDict refuses them as keys
    tasks = [Task(name, _records(4, i), _records(2, 10 + i)) for i, name in enumerate(names)]
    trained = train_finetune(tasks, model=str(tiny_bert), settings=FinetuneSettings(**{**FAST, "min_steps": 4}),
                             progress=False)
    assert [t["name"] for t in trained.metrics["tasks"]] == names
    for name in names:
        assert trained.predict_proba(name, _records(1, 99)).shape == (3, 3)
    for split, n, seed in (("train", 8, 0), ("test", 3, 1)):  # the most common file name names the task `train`
        write_csv(tmp_path / f"{split}.csv", [{"text": r.text, "label": r.label} for r in _records(n, seed)])
    assert main(["finetune", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "-o",
                 str(tmp_path / "ft"), "--model", str(tiny_bert), "--device", "cpu", "--min-steps", "4",
                 "--max-length", "32", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train: 24 training documents" in out and "(contrastive objective)" in out  # 8 labels per class
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["objective"] == "contrastive"


def test_the_pair_loss_is_setfits_cosine_loss_over_every_pair_with_both_kinds_weighing_alike():
    import torch

    from finetext.pipeline.finetune import pair_loss

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=gen)
    codes = torch.tensor([0, 0, 1, 2, 1, 0, 2])
    cos = torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1)
    same = [(1 - cos[i, j]) ** 2 for i in range(7) for j in range(7) if i != j and codes[i] == codes[j]]
    other = [cos[i, j] ** 2 for i in range(7) for j in range(7) if codes[i] != codes[j]]
    expected = 0.5 * torch.stack(same).mean() + 0.5 * torch.stack(other).mean()
    assert pair_loss(x, codes).item() == pytest.approx(expected.item(), rel=1e-5)
    assert pair_loss(x[:2], codes[:2]).item() == pytest.approx(((1 - cos[0, 1]) ** 2).item(), rel=1e-5)  # one kind


def test_pair_batches_visit_every_row_once_in_groups_of_a_class():
    from finetext.pipeline.finetune import PAIR_BATCH, pair_batches

    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(20), 9)  # 180 rows, 20 classes
    rows = np.arange(180)[::-1].copy()
    batches = pair_batches(codes, rows, rng)
    assert sorted(np.concatenate(batches).tolist()) == list(range(180))
    assert all(len(b) <= PAIR_BATCH for b in batches) and len(batches) == 3
    for b in batches:  # groups of 3 rows of a class (64 // 20 classes), the odd one out per class alone
        counts = np.bincount(codes[b])
        assert counts.max() >= 3 and np.isin(counts, [0, 1, 3, 6, 9]).all()
    assert [b.tolist() for b in pair_batches(codes, rows[:40], rng)] == [rows[:40].tolist()]  # one batch: all rows


def _grads(net) -> list:
    grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    return grads


def _assert_same_grads(a: list, b: list) -> None:
    import torch

    for x, y in zip(a, b):  # the pooler takes none
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("max_length, passes", [(32, 3), (10, 6)])  # 3 chunks: held at once / cached
def test_pair_backward_gives_the_gradients_of_the_whole_batch(tiny_bert, max_length, passes):
    import torch

    from finetext.extract.encoder import describe_model, load_model
    from finetext.pipeline.finetune import PAIR_CHUNK, FinetuneModel, Tokenized, pair_backward, pair_loss

    _, tokenizer = describe_model(str(tiny_bert), None)
    net = FinetuneModel(load_model(str(tiny_bert), None, torch.device("cpu"), "fp32"), {}, "mean").eval()
    records = _records(PAIR_CHUNK, 0)[::-1]  # 3 chunks' worth, lengths 5-9 tokens in no order
    tokens = Tokenized(tokenizer, records, max_length)
    assert tokens.lengths.max() < max_length  # nothing cut: the same tokens either way
    rows = np.random.default_rng(0).permutation(len(records))
    codes = np.array([ord(r.label[1]) for r in records])
    cpu, keep = torch.device("cpu"), lambda loss: loss
    encode, calls = net.features, []
    net.features = lambda batch: calls.append(len(batch["input_ids"])) or encode(batch)

    loss = pair_backward(net, tokens, rows, codes, cpu, contextlib.nullcontext, keep)
    assert len(calls) == passes and max(calls) <= PAIR_CHUNK  # 16 rows at most per forward pass
    cached = _grads(net)
    whole = encode(tokens.batch(rows, cpu))[:, -1]  # one batch padded to the longest
    expected = pair_loss(whole, torch.from_numpy(codes[rows]))
    expected.backward()
    assert abs(loss - expected.item()) < 1e-5
    _assert_same_grads(cached, _grads(net))

    # with dropout: cached chunks are encoded again with the draws of their first pass, and the generator ends
    # where one backward through every chunk's graph leaves it
    net.train()
    order = rows[np.argsort(tokens.lengths[rows], kind="stable")]
    torch.manual_seed(1)
    pair_backward(net, tokens, rows, codes, cpu, contextlib.nullcontext, keep)
    cached, after = _grads(net), torch.get_rng_state()
    torch.manual_seed(1)
    parts = [encode(tokens.batch(order[i:i + PAIR_CHUNK], cpu))[:, -1] for i in range(0, len(order), PAIR_CHUNK)]
    pair_loss(torch.cat(parts), torch.from_numpy(codes[order])).backward()
    assert torch.equal(after, torch.get_rng_state())
    _assert_same_grads(cached, _grads(net))
    torch.manual_seed(2)  # other draws, other gradients: the comparison above could fail
    pair_backward(net, tokens, rows, codes, cpu, contextlib.nullcontext, keep)
    assert any(not torch.allclose(a, b, atol=1e-5, rtol=1e-3) for a, b in zip(_grads(net), cached) if a is not None)


def test_the_objective_auto_picks_contrastive_for_few_labels_per_class():
    from finetext.pipeline.finetune import choose_objective, pair_steps
    from finetext.pipeline.settings import FEW_SHOT_PER_CLASS

    few, many = _records(4, 0), _records(FEW_SHOT_PER_CLASS + 1, 0)
    assert choose_objective([Task("t", few)], "auto") == "contrastive"
    assert choose_objective([Task("t", many)], "auto") == "classification"
    assert choose_objective([Task("t", many, budget=8)], "auto") == "contrastive"
    assert choose_objective([Task("t", few), Task("u", many)], "auto") == "classification"
    assert choose_objective([Task("t", many)], "contrastive") == "contrastive"
    with pytest.raises(InputError, match="objective: expected one of"):
        FinetuneSettings(objective="triplet")
    assert pair_steps(16) == pair_steps(8)  # the floor
    assert pair_steps(48) < pair_steps(640) < pair_steps(6400)


def test_a_tiny_model_tunes_contrastively_and_its_saved_head_predicts_the_same(tiny_bert, tmp_path, monkeypatch):
    from finetext.pipeline import finetune as ft

    monkeypatch.setattr(ft, "PAIR_LR", 2e-3)  # a random tiny model learns in a few steps only this fast
    task = Task("topics", _records(10, 0), _records(5, 1))
    settings = FinetuneSettings(**{**FAST, "objective": "auto"})
    trained = train_finetune([task], model=str(tiny_bert), settings=settings, progress=False)
    metrics = trained.metrics
    assert metrics["objective"] == "contrastive" and metrics["total_steps"] == ft.pair_steps(30)
    assert metrics["tuning_check"] == {"tune": True, "reason": f"at most {ft.PAIR_BATCH} labelled rows"}
    losses = [h["pair_loss"] for h in metrics["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["test_accuracy"] > 0.6  # chance is 1/3
    save_finetuned(trained, [task], tmp_path / "ft")
    new = _records(4, 7)
    rows = predict_texts(str(tmp_path / "ft"), texts=[r.text for r in new], device="cpu")
    np.testing.assert_allclose([[r[f"p_{c}"] for c in trained.heads["topics"].classes_] for r in rows],
                               trained.predict_proba("topics", new), atol=1e-5)
    cell = json.loads((tmp_path / "ft" / "cells.jsonl").read_text())
    assert cell["objective"] == "contrastive" and cell["head"] == "finetune-layer-attention"


def test_the_tuning_check_keeps_the_pretrained_encoder_where_tuning_hurts(tiny_bert, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from finetext.pipeline import finetune as ft

    # a tuning that pulls the classes together: the check, run for real, must see it lose on the held-out halves
    setfits = ft.pair_loss
    monkeypatch.setattr(ft, "pair_loss", lambda embeddings, codes: -setfits(embeddings, codes))
    monkeypatch.setattr(ft, "PAIR_LR", 2e-3)
    monkeypatch.setattr(ft, "PAIR_BATCH", 16)  # the check runs on more rows than a pair batch
    task = Task("topics", _records(10, 0), _records(5, 1))
    forced = train_finetune([task], model=str(tiny_bert), settings=FinetuneSettings(**{**FAST, "objective": "contrastive"}),
                            progress=False)
    trained = train_finetune([task], model=str(tiny_bert), settings=FinetuneSettings(**{**FAST, "objective": "auto"}),
                             progress=False)
    check = trained.metrics["tuning_check"]
    assert not check["tune"] and check["rows_right"]["pretrained"] > check["rows_right"]["tuned"]
    assert trained.metrics["total_steps"] == 0 and trained.metrics["history"] == []
    assert "tuning_check" not in forced.metrics and forced.metrics["total_steps"] == ft.pair_steps(30)
    truth = np.array([r.label for r in task.test])

    def true_class_probability(model) -> float:  # continuous, where both heads may get every test row right
        proba = model.predict_proba("topics", task.test)
        return float(proba[np.arange(len(truth)), np.searchsorted(model.heads["topics"].classes_, truth)].mean())

    assert true_class_probability(trained) > true_class_probability(forced)
    save_finetuned(trained, [task], tmp_path / "ft")
    saved, pretrained = load_file(tmp_path / "ft" / "encoder" / "model.safetensors"), load_file(tiny_bert / "model.safetensors")
    assert all(np.array_equal(saved[k].numpy(), pretrained[k].numpy()) for k in pretrained)  # restored after the halves


def test_the_tuning_check_is_skipped_when_a_class_has_few_rows(tiny_bert):
    from finetext.pipeline.settings import CHECK_MIN_PER_CLASS

    records = _records(10, 0)
    music = [r for r in records if r.label == "music"][:CHECK_MIN_PER_CLASS - 1]
    trained = train_finetune([Task("topics", [r for r in records if r.label != "music"] + music)], model=str(tiny_bert),
                             settings=FinetuneSettings(**{**FAST, "objective": "auto"}), progress=False)
    assert trained.metrics["tuning_check"] == {"tune": True, "reason": f"a class has fewer than {CHECK_MIN_PER_CLASS} labelled rows"}
    assert trained.metrics["total_steps"] > 0
