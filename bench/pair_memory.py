"""Memory of one contrastive step of `finetext finetune`: the pair batch's graph held whole, against gradient
caching (`pair_backward`), side by side.

    python bench/pair_memory.py [--rows 64] [--max-length 256] [--steps 3]

One pair batch of the --rows longest BBC News articles (cut at --max-length tokens, as `finetune` cuts them) and
the packaged MiniLM in train mode (dropout on), from the same seed. Each way runs in a process of its own, so
that each peak is its own:

  held:    the batch encoded in chunks of PAIR_CHUNK rows with gradients, and the loss back-propagated once
           through all of them (the contrastive step before gradient caching);
  cached:  `pair_backward`, which for a batch of more tokens than PAIR_CHUNK full-length rows (as 64 long
           articles are) keeps only each chunk's vectors and encodes each chunk again, with the same dropout
           draws, in the backward (torch.utils.checkpoint).

Prints, per way, the peak resident memory above the process's resident memory before the first step (MiB; the
peak is reset there through /proc/self/clear_refs, Linux), the median seconds of a step and the first step's
loss; then the ratios and the largest difference between the two ways' first-step gradients.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import cpu_name

WAYS = ("held", "cached")


def _status(field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one_way(way: str, rows: int, max_length: int, steps: int, grads_to: Path) -> dict:
    import torch

    from finetext.extract import CorpusSpec
    from finetext.extract.encoder import describe_model, load_model, resolve_model
    from finetext.pipeline.finetune import (PAIR_CHUNK, FinetuneModel, Tokenized, pair_backward, pair_loss,
                                            read_corpus)

    cpu = torch.device("cpu")
    records = read_corpus(CorpusSpec("bbc"))
    _, tokenizer = describe_model(None, None)
    tokens = Tokenized(tokenizer, records, max_length)
    batch = np.argsort(-tokens.lengths, kind="stable")[:rows]
    classes = sorted({r.label for r in records})
    codes = np.array([classes.index(r.label) for r in records])
    net = FinetuneModel(load_model(resolve_model(None), None, cpu, "fp32"), {}, "mean").train()
    torch.manual_seed(0)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    base = _status("VmRSS")
    seconds, losses = [], []
    for step in range(steps):
        start = time.perf_counter()
        if way == "cached":
            losses.append(pair_backward(net, tokens, batch, codes, cpu, contextlib.nullcontext, lambda x: x))
        else:
            order = batch[np.argsort(tokens.lengths[batch], kind="stable")]
            parts = [net.features(tokens.batch(order[i:i + PAIR_CHUNK], cpu))[:, -1]
                     for i in range(0, len(order), PAIR_CHUNK)]
            loss = pair_loss(torch.cat(parts), torch.from_numpy(codes[order]))
            loss.backward()
            losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
        if step == 0:
            np.save(grads_to, torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]).numpy())
        net.zero_grad(set_to_none=True)
    return {"peak_mib": (_status("VmHWM") - base) / 2**20, "seconds": float(np.median(seconds)),
            "loss": losses[0], "tokens": int(tokens.lengths[batch].sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one way, in a child process
    ap.add_argument("--grads", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.way:
        print(json.dumps(one_way(args.way, args.rows, args.max_length, args.steps, args.grads)))
        return
    print(f"machine: {cpu_name()}; one pair batch of {args.rows} BBC News articles, {args.max_length} tokens at most")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, "--way", way, "--rows", str(args.rows), "--max-length",
                                  str(args.max_length), "--steps", str(args.steps), "--grads", f"{tmp}/{way}.npy"],
                                 check=True, capture_output=True, text=True).stdout
            results[way] = json.loads(out.splitlines()[-1])
            r = results[way]
            print(f"{way:>6}: peak +{r['peak_mib']:,.0f} MiB, {r['seconds']:.2f} s a step, first loss {r['loss']:.6f} "
                  f"({r['tokens']:,} tokens)", flush=True)
        held, cached = (np.load(f"{tmp}/{w}.npy") for w in WAYS)
    print(f"cached / held: memory {results['cached']['peak_mib'] / results['held']['peak_mib']:.2f}x, "
          f"time {results['cached']['seconds'] / results['held']['seconds']:.2f}x; first-step gradients differ by "
          f"at most {np.abs(cached - held).max():.2e} (largest {np.abs(held).max():.2e})")


if __name__ == "__main__":
    main()
