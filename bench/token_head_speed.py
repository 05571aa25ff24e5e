"""TokenLayerAttention on the ragged token layout (finetext) against padding every batch (before), TREC-6.

    python bench/token_head_speed.py [--per-class 32] [--epochs 100] [--repeats 3]

Builds (or reuses) a token-level cache of TREC-6's training questions (`--tokens`, runs/caches/), fits the head
on a seeded budget both ways, alternating, best of `repeats` each, and prints the times, their ratio and the
largest difference between the two heads' probabilities on the rest of the training set.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from common import CACHES, SHARED  # noqa: E402  (sets sys.path)
from finetext.classify import TokenLayerAttention, sample_budget  # noqa: E402
from finetext.extract import extract_corpus, open_cache  # noqa: E402


class PaddedTokenLayerAttention(TokenLayerAttention):
    """The previous implementation: each batch padded to its longest document, masked softmax over positions."""

    def _forward(self, x: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
        lengths = torch.bincount(segment, minlength=n)
        position = torch.arange(len(segment)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        padded = x.new_zeros(n, int(lengths.max()), *x.shape[1:])  # (n, T, L, H)
        mask = torch.zeros(padded.shape[:2], dtype=torch.bool)
        padded[segment, position] = x
        mask[segment, position] = True
        scores = torch.einsum("ntlh,lh->ntl", padded, self.query_) / math.sqrt(x.shape[-1])
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        pooled = torch.einsum("ntlh,ntl->nlh", padded, scores.softmax(1))  # (n, L, H)
        return self.selector_(pooled[None])[0, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cache = CACHES / "trec-train-tokens.h5"
    extract_corpus(str(SHARED / "trec" / "train.csv"), cache, max_length=256, tokens=True)
    with open_cache(cache) as c:
        docs, y = c.token_states(), c.label_strings()
    rows = sample_budget(y, per_class=args.per_class, random_state=0)
    rest = np.setdiff1d(np.arange(len(y)), rows)[:2000]
    train = [docs[i] for i in rows]
    times: dict[str, list[float]] = {"ragged": [], "padded": []}
    heads = {}
    for _ in range(args.repeats):
        for name, Head in (("ragged", TokenLayerAttention), ("padded", PaddedTokenLayerAttention)):
            start = time.perf_counter()
            heads[name] = Head(epochs=args.epochs, random_state=0).fit(train, y[rows])
            times[name].append(time.perf_counter() - start)
    test = [docs[i] for i in rest]
    gap = np.abs(heads["ragged"].predict_proba(test) - heads["padded"].predict_proba(test)).max()
    print(f"TREC-6, {len(rows)} training questions ({args.per_class}/class), {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads; best of {args.repeats}:")
    for name, t in times.items():
        print(f"  {name:<7} {min(t):6.2f} s")
    print(f"padded / ragged = {min(times['padded']) / min(times['ragged']):.2f}; largest probability difference "
          f"{gap:.1e} over {len(rest)} other questions")


if __name__ == "__main__":
    main()
