"""Heads over all layers as scikit-learn estimators: ScalarMix and LayerAttention.

Both take X of shape (n_docs, n_layers, hidden) — or (n_docs, hidden), one layer, as plain scikit-learn features
(every scikit-learn estimator check passes: tests/classify/test_heads.py) — and train an ensemble of `n_members`
small PyTorch heads in one vectorised pass (see stack.py). `class_weight`: None, "balanced" (from each row set's
own class counts) or a dict label -> weight (1 for a class it leaves out). `verbose`: a tqdm bar over each stack's
epochs. With enough labels (min_val_per_class per class on average) each member early-stops on its own stratified
fold of the training rows, so together they use every row; with fewer they train a fixed number of epochs as one
member. Predictions average the members' probabilities.

Features are normalised per layer on the training rows (`normalize`). "layer" (see features.normalization_stats)
scales every document's vector to unit length, centres it, and weights each layer by its isotropy, a label-free
measure of how spread out the layer's documents are, which leans on the last layer (the most isotropic in MiniLM);
"standard" standardises every dimension, every layer alike. "auto" takes "standard" when the ensemble validates and
"layer" with fewer labels. "cv" (the default) is "auto", except that with few labels it standardises when another
layer predicts the labelled rows better than the last one (cross-validated logistic regression per layer,
priors.last_layer_loses; every row set's, layer's and fold's regression of a fit trains at once on the fit's
device, logreg.py). Measured (docs/experiments.md): with 4-64 labels per class "layer" beat "standard" where the
last layer is the best single layer (BBC News, banking77: "standard" lost up to 2 and 9 points) and lost to it
where it is not (TREC-50: 43.5 against 50.1 at 4/class, 61.4 against 71.9 at 16; TREC-6 by 0.4-1.8); "cv" follows
the better of the two on every dataset but BBC News at 4/class (89.1, "layer" 89.9). With all the labels "standard"
was better (TREC-6 94.1 against 93.0).

The per-layer classifiers are linear in the layers' vectors (`kernel="linear"`) or in RBF kernel features of
them (`"rbf"`: a Nyström map per layer on `n_landmarks` of the training rows, see kernel.py). "both" trains
one ensemble of each and averages their probabilities; "auto" (the default) does so when the ensemble
validates on at least n_landmarks rows, and stays linear with fewer labels. Measured with all the labels:
TREC-6 94.8 against 94.2 for the linear ensemble alone (10 seeds), banking77 93.7 against 93.5, BBC News
98.2 against 98.4 (one seed); at 4-64 labels per class the kernel lost 1-6 points on TREC-6 (too few
landmarks to learn a kernel classifier from), hence "auto".

The selector starts from, and is held near, a prior over layers (`layer_prior`): "uniform" (the default)
treats every layer alike; "probe" scores each layer by how well it alone separates the labelled rows
(leave-one-out nearest centroid, no training); "cv" by each layer's cross-validated logistic-regression
log-likelihood on the labelled rows (see priors.py: closer to the best single layer on TREC-6, worse where mixing
layers wins, as on BBC News; docs/experiments.md); "last" favours the last layer; "auto" picks uniform or last by k-fold
cross-validation.

`precision="bf16"` stores the normalised features in bfloat16 and multiplies in it (autocast; parameters,
losses and predictions stay fp32): large fits are bound by reading the features, so on a CPU with AMX (or a
recent GPU) they train faster — 1.7x on all of TREC-6, with the same accuracies (README). "fp32" is the
default: without native bf16 it can be slower.
"""
from __future__ import annotations

import contextlib
from numbers import Integral, Real
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from finetext.classify.budget import stratified_folds
from finetext.classify.features import (NORMALIZATIONS, check_features, check_known_labels, check_labels,
                               normalization_stats, prepare, unit_length)
from finetext.classify.kernel import MAP_KEYS, apply_map, rbf_map
from finetext.classify.persist import SaveLoadMixin
from finetext.classify.priors import LAST_LAYER_PRIOR, cv_folds, cv_logliks, cv_prior, last_layer_loses, probe_prior
from finetext.classify.stack import (LayerAttentionStack, ScalarMixStack, TrainConfig, layer_major, train_stack,
                            validation_loss)

MAX_STACK_BYTES = 16 << 20  # features per stack: measured fastest on CPU (cache-sized; 1 GiB stacks ran 1.8x slower)
MAX_STACK_BYTES_GPU = 2 << 30  # a GPU runs best on as many heads per step as fit
KERNELS = {"linear": "", "rbf": "rbf."}  # the parts a head can train, and the prefix of each part's state keys


def training_device(device: str, owner: str = "head") -> torch.device:
    """Where a head's stacks train: "cpu" (the default), "cuda", "cuda:1", "mps", or "auto" (a GPU when there is
    one). Fitted heads always predict on the CPU; a GPU gives the same heads up to float rounding."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{owner}: device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', "
                         f"got {device!r}.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{owner}: device {device!r} asked for, but torch sees no CUDA GPU (torch "
                         f"{torch.__version__}); use device='cpu' or 'auto'.")
    return resolved


class _StackHead(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Shared machinery of the vectorised heads. Subclasses set `_stack` and their defaults."""

    _stack: type[torch.nn.Module] = ScalarMixStack
    _parameter_constraints: dict[str, Any] = {}

    def __init__(self, *, n_members: int = 5, normalize: str = "cv", lr: float = 3e-2,
                 C: float = 0.5, dropout: float = 0.0, max_epochs: int = 300, patience: int = 20,
                 validation: str = "auto", min_val_per_class: int = 100, epochs_without_validation: int = 100,
                 class_weight: str | Mapping | None = None, layer_prior: str = "uniform", kernel: str = "auto",
                 n_landmarks: int = 512, device: str = "cpu", precision: str = "fp32",
                 random_state: int | None = 0, verbose: bool = False) -> None:
        self.n_members = n_members
        self.layer_prior = layer_prior
        self.kernel = kernel
        self.n_landmarks = n_landmarks
        self.normalize = normalize
        self.lr = lr
        self.C = C
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation = validation
        self.min_val_per_class = min_val_per_class
        self.epochs_without_validation = epochs_without_validation
        self.class_weight = class_weight
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose

    # --- checking ---------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        choices = {"normalize": ("auto", "cv", *NORMALIZATIONS), "validation": ("auto", "none"),
                   "layer_prior": ("auto", "uniform", "last", "probe", "cv"),
                   "precision": ("fp32", "bf16"), "kernel": ("auto", "linear", "rbf", "both")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{type(self).__name__}: {name} must be one of {allowed}, got {getattr(self, name)!r}.")
        positive = {"n_members": Integral, "max_epochs": Integral, "patience": Integral, "min_val_per_class": Integral,
                    "epochs_without_validation": Integral, "n_landmarks": Integral, "lr": Real, "C": Real}
        for name, kind in positive.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive number, got {value!r}.")
        if not (self.class_weight in (None, "balanced") or isinstance(self.class_weight, Mapping)):
            raise ValueError(f"{type(self).__name__}: class_weight must be None, 'balanced' or a dict of label -> "
                             f"weight, got {self.class_weight!r}.")
        if isinstance(self.class_weight, Mapping) and not all(
                isinstance(w, Real) and not isinstance(w, bool) and w >= 0 for w in self.class_weight.values()):
            raise ValueError(f"{type(self).__name__}: class_weight weights must be numbers >= 0, got "
                             f"{self.class_weight!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}: dropout must lie in [0, 1), got {self.dropout!r}.")
        device = self._torch_device()
        if self.precision == "bf16" and device.type not in ("cpu", "cuda"):
            raise ValueError(f"{type(self).__name__}: precision='bf16' trains on the CPU or a CUDA GPU, not on "
                             f"{self.device!r}; use precision='fp32' there.")

    def _class_weights(self, classes: np.ndarray) -> np.ndarray | None:
        """(n_classes,) training weight of each class for a dict `class_weight` (1 for a class it leaves out, as
        scikit-learn), or None: no weights, or "balanced", which each row set computes from its own counts."""
        if not isinstance(self.class_weight, Mapping):
            return None
        return np.array([self.class_weight.get(c, 1.0) for c in classes.tolist()], dtype=np.float32)

    def _torch_device(self) -> torch.device:
        return training_device(self.device, type(self).__name__)

    # --- training ---------------------------------------------------------------------------------------

    def _config(self, epochs: int) -> TrainConfig:
        return TrainConfig(lr=self.lr, C=self.C, dropout=self.dropout,
                           max_epochs=epochs, patience=self.patience)

    def _fit_sets(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                  seeds: Sequence[int], pad: bool | None = None,
                  class_weights: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
        """Train n_members heads for each row set, in as few stacks as memory allows. One state per set.
        pad: whether sets of different sizes share a stack (see _stack_groups); by default on a GPU only.
        class_weights: (n_classes,) each class's training weight, for a dict `class_weight` (_class_weights)."""
        L, H = X.shape[1:]
        on_cpu = self._torch_device().type == "cpu"
        limit = MAX_STACK_BYTES if on_cpu else MAX_STACK_BYTES_GPU
        states: list[dict[str, np.ndarray] | None] = [None] * len(row_sets)
        modes = self._set_modes(X, codes, n_classes, row_sets, seeds)
        for members in self._stack_groups(codes, n_classes, row_sets, pad=not on_cpu if pad is None else pad,
                                          modes=modes):
            size = max(len(row_sets[i]) for i in members)
            rbf = "rbf" in self._kernels(self._rich(codes, n_classes, [row_sets[i] for i in members]))
            width = max(H, self.n_landmarks) if rbf else H  # features per layer, the wider part's
            step = max(1, limit // (size * L * width * 4))
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                fitted = self._fit_stack(X, codes, n_classes, [row_sets[i] for i in chunk], [seeds[i] for i in chunk],
                                         mode=modes[chunk[0]], class_weights=class_weights)
                for i, state in zip(chunk, fitted):
                    states[i] = state
        return states

    def _set_modes(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                   seeds: Sequence[int]) -> list[str | None]:
        """Per row set, the linear part's normalisation when `normalize="cv"` decides it: for a set that does not
        validate, "standard" when another layer predicts its labelled rows better than the last one
        (priors.last_layer_loses, on the "layer" features), else "layer". None: `_normalization` decides."""
        modes: list[str | None] = [None] * len(row_sets)
        if self.normalize != "cv":
            return modes
        open_sets = [i for i, rows in enumerate(row_sets) if not self._validates(codes, n_classes, [rows])]
        logliks = cv_logliks(X, codes, [row_sets[i] for i in open_sets], [seeds[i] for i in open_sets], "layer",
                             self._torch_device())
        for i, loglik in zip(open_sets, logliks):
            modes[i] = "standard" if last_layer_loses(loglik, len(row_sets[i])) else "layer"
        return modes

    def _stack_groups(self, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                      pad: bool, modes: Sequence[str | None] | None = None) -> list[list[int]]:
        """Which row sets share stacks: sets of one size (no padding wasted on small budgets: a CPU is bound by
        the rows it reads), or with `pad` (a GPU, bound by kernel launches) every set that trains the same way,
        padded to the largest, largest first: validated or not, the same kernel parts and number of landmarks,
        the same number of folds for layer_prior="auto", and full batches (a set that would train on minibatches
        keeps to its size). Either way a stack holds one normalisation (`modes`, see _set_modes)."""
        full_batch = self._config(1).batch_rows
        groups: dict[object, list[int]] = {}
        modes = modes or [None] * len(row_sets)
        for i, rows in enumerate(row_sets):
            key: object = (len(rows), modes[i])
            if pad and len(rows) <= full_batch:
                parts = self._kernels(self._rich(codes, n_classes, [rows]))
                landmarks = min(self.n_landmarks, len(rows)) if "rbf" in parts else 0  # the kernel features' width
                folds = cv_folds(codes[rows]) if self.layer_prior == "auto" else 0
                key = (self._validates(codes, n_classes, [rows]), parts, landmarks, folds, modes[i])
            groups.setdefault(key, []).append(i)
        return [sorted(members, key=lambda i: -len(row_sets[i])) for members in groups.values()]

    def _candidate_priors(self, L: int) -> np.ndarray:
        """(n_candidates, L) selector priors a fit chooses between by cross-validation.

        Uniform (every layer alike) and last-layer-heavy (α_last ≈ 0.9): measured, the first wins on TREC-6,
        where middle layers are best, the second on BBC News and banking77, where the last layer is.
        """
        last = np.zeros(L, np.float32)
        last[-1] = LAST_LAYER_PRIOR
        return np.stack([np.zeros(L, np.float32), last])

    def _select_priors(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                       seeds: Sequence[int], mode: str | None = None,
                       class_weights: np.ndarray | None = None) -> np.ndarray:
        """(S, L): per row set, the candidate prior with the lowest k-fold validation loss."""
        L = X.shape[1]
        candidates = self._candidate_priors(L)
        k = min(cv_folds(codes[r]) for r in row_sets)
        if k < 2 or len(candidates) == 1:
            return np.repeat(candidates[:1], len(row_sets), axis=0)
        priors = np.repeat(candidates, k, axis=0)  # member m = candidate m // k, fold m % k
        folds = [np.tile(np.arange(k), len(candidates)) for _ in row_sets]
        _, losses = self._train(X, codes, n_classes, row_sets, seeds, priors=priors, folds=folds, n_folds=k, mode=mode,
                                class_weights=class_weights)
        per_candidate = losses.reshape(len(row_sets), len(candidates), k).mean(-1)  # (S, n_candidates)
        return candidates[per_candidate.argmin(-1)]

    def _fit_stack(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                   seeds: Sequence[int], mode: str | None = None,
                   class_weights: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
        priors = None
        if self.layer_prior == "auto":
            priors = self._select_priors(X, codes, n_classes, row_sets, seeds, mode, class_weights)  # (S, L)
        elif self.layer_prior == "probe":
            priors = np.stack([probe_prior(X[r], codes[r], n_classes) for r in row_sets])
        elif self.layer_prior == "last":
            priors = np.repeat(self._candidate_priors(X.shape[1])[1:2], len(row_sets), axis=0)
        elif self.layer_prior == "cv":  # on the features as the linear part will see them
            seen = mode or self._normalization(self._validates(codes, n_classes, row_sets))
            logliks = cv_logliks(X, codes, row_sets, seeds, seen, self._torch_device())
            priors = np.stack([cv_prior(loglik, X.shape[1]) for loglik in logliks])
        states: list[dict[str, np.ndarray]] = [{} for _ in row_sets]
        for kernel in self._kernels(self._rich(codes, n_classes, row_sets)):  # one ensemble per part
            part, _ = self._train(X, codes, n_classes, row_sets, seeds, set_priors=priors, kernel=kernel,
                                  mode=mode if kernel == "linear" else None, class_weights=class_weights)
            for state, fitted in zip(states, part):
                state.update({KERNELS[kernel] + k: v for k, v in fitted.items()})
        return states

    def _rich(self, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray]) -> bool:
        """Whether kernel="auto" adds the RBF ensemble: the ensemble validates, on n_landmarks rows or more."""
        return self._validates(codes, n_classes, row_sets) and min(map(len, row_sets)) >= self.n_landmarks

    def _kernels(self, rich: bool) -> tuple[str, ...]:
        """The parts a fit trains: `kernel`, where "both", and "auto" when labels are `rich` (the ensemble validates
        and there are n_landmarks rows or more), mean a linear and an RBF ensemble whose probabilities are averaged."""
        if self.kernel == "both" or (self.kernel == "auto" and rich):
            return ("linear", "rbf")
        return ("rbf",) if self.kernel == "rbf" else ("linear",)

    def _train(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
               seeds: Sequence[int], *, priors: np.ndarray | None = None, set_priors: np.ndarray | None = None,
               folds: list[np.ndarray] | None = None, n_folds: int = 0, kernel: str = "linear",
               mode: str | None = None,
               class_weights: np.ndarray | None = None) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """One stack. priors (M, L): one per member (selection); set_priors (S, L): one per set; mode: the
        normalisation, if not _normalization's.

        With `folds` (one member → fold map per set), member m trains without fold folds[s][m] and its
        validation loss is returned (S, M); otherwise members are the ensemble (validated when labels allow).
        kernel "rbf": the heads train on each set's own RBF map of its rows (kernel.py), kept in its state.
        """
        use_val = folds is None and self._validates(codes, n_classes, row_sets)
        mode = mode or self._normalization(use_val, kernel)
        # without validation folds every member would see the same rows and reach the same optimum
        S, M = len(row_sets), (len(folds[0]) if folds is not None else self.n_members if use_val else 1)
        idx, w_train, w_val = self._row_weights(codes, n_classes, row_sets, seeds, M, folds, n_folds, use_val,
                                                class_weights)
        gathered, maps, mean, std = self._features(X, idx, row_sets, seeds, kernel, mode)
        L, H = gathered.shape[2:]
        device = self._torch_device()
        x = layer_major(torch.from_numpy(gathered).to(device))  # (S, n_max, L, H)
        del gathered
        if self.precision == "bf16":  # features stored and multiplied in bfloat16, parameters and losses in fp32
            x = x.bfloat16()
        y = torch.from_numpy(codes[idx]).to(device)  # (S, n_max)
        gen = torch.Generator().manual_seed(int(seeds[0]) * 7919 + S)  # module init, then dropout and minibatch order
        module = self._stack(S, M, L, H, n_classes, gen)
        with torch.no_grad():  # each set's initial weights from its own seed: batched == one at a time
            for s, seed in enumerate(seeds):
                own = torch.Generator().manual_seed(int(seed))
                module.W[s] = torch.randn(module.W.shape[1:], generator=own) * 0.01
            if priors is not None:
                module.p0[:] = torch.from_numpy(priors)[None]
            if set_priors is not None:
                module.p0[:] = torch.from_numpy(set_priors)[:, None]
            module.w.copy_(module.p0)
        module.to(device)
        if device.type != "cpu":  # random draws during training come from a generator on the device
            gen = torch.Generator(device).manual_seed(int(seeds[0]) * 7919 + S)
        epochs = self.max_epochs if use_val else self.epochs_without_validation
        w_train_t, w_val_t = torch.from_numpy(w_train).to(device), torch.from_numpy(w_val).to(device)
        bf16 = self.precision == "bf16"  # autocast only then: older torch refuses some devices even disabled
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            best_epoch = train_stack(module, x, y, w_train_t, w_val_t if use_val else None, self._config(epochs), gen,
                                     progress=bool(self.verbose))
            losses = np.zeros((S, M), np.float32)
            with torch.no_grad():
                if folds is not None:
                    losses = validation_loss(module, x, y, w_val_t, self._config(epochs).batch_rows).cpu().numpy()
                # (S, n_max, L): the fitted weights over layers of every training row, averaged over members
                weights = module.eval().layer_weights(x).float().mean(1).cpu().numpy()
        params = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        return [{**{k: v[s:s + 1].copy() for k, v in params.items()}, **maps[s],
                 "mean": mean[s], "std": std[s], "best_epoch": best_epoch[s].astype(np.int64), "normalization": mode,
                 "layer_weights": weights[s, :len(rows)].mean(0)}
                for s, rows in enumerate(row_sets)], losses

    def _row_weights(self, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray], seeds: Sequence[int],
                     M: int, folds: list[np.ndarray] | None, n_folds: int, use_val: bool,
                     class_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """idx (S, n_max): each set's rows, padded with row 0; w_train and w_val (S, M, n_max): each member's
        training weights (by `class_weight`: "balanced" per set, or `class_weights` per class) and validation
        rows, 0 on padding. See _train for `folds`."""
        S, n_max = len(row_sets), max(len(r) for r in row_sets)
        idx = np.zeros((S, n_max), dtype=np.int64)  # padding points at row 0 with weight 0
        w_train = np.zeros((S, M, n_max), dtype=np.float32)
        w_val = np.zeros((S, M, n_max), dtype=np.float32)
        for s, (rows, seed) in enumerate(zip(row_sets, seeds)):
            n = len(rows)
            idx[s, :n] = rows
            if class_weights is not None:
                balance = class_weights[codes[rows]].astype(np.float32)
            elif self.class_weight == "balanced":
                counts = np.bincount(codes[rows], minlength=n_classes).astype(np.float32)
                balance = (n / (n_classes * np.maximum(counts, 1)))[codes[rows]]
            else:
                balance = np.ones(n, np.float32)
            if folds is not None:  # member m validates on fold folds[s][m]
                fold = stratified_folds(codes[rows], n_folds, seed)
                w_val[s, :, :n] = fold[None, :] == folds[s][:, None]
                w_train[s, :, :n] = balance[None, :] * (1 - w_val[s, :, :n])
            elif use_val:  # member m validates on fold m and trains on the rest
                fold = stratified_folds(codes[rows], M, seed)
                w_val[s, :, :n] = fold[None, :] == np.arange(M)[:, None]
                w_train[s, :, :n] = balance[None, :] * (1 - w_val[s, :, :n])
            else:
                w_train[s, :, :n] = balance[None, :]
        return idx, w_train, w_val

    def _features(self, X: np.ndarray, idx: np.ndarray, row_sets: Sequence[np.ndarray], seeds: Sequence[int],
                  kernel: str, mode: str) -> tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
        """The stack's features (S, n_max, L, H) — for kernel "rbf" each set's own RBF map of its rows, H its
        width — normalised by each set's own rows; each set's map (empty for "linear") and the statistics
        (S, L, H) mean and std it was normalised with."""
        S = len(row_sets)
        raw = X[idx]  # (S, n_max, L, H)
        maps: list[dict[str, np.ndarray]] = [{} for _ in row_sets]
        if kernel == "rbf":  # each set's map from its own rows: (S, n_max, L, m)
            raw = unit_length(raw, inplace=True)
            maps = [rbf_map(raw[s, :len(rows)], self.n_landmarks, seed)
                    for s, (rows, seed) in enumerate(zip(row_sets, seeds))]
            mapped = np.empty((*raw.shape[:3], maps[0]["map_projection"].shape[-1]), np.float32)
            for s in range(S):  # sets of one stack have one number of landmarks (_stack_groups)
                apply_map(raw[s], maps[s], out=mapped[s])
            raw = mapped
        gathered = prepare(raw, mode, inplace=True)  # (S, n_max, L, H), H the kernel features' width for rbf
        del raw  # gathered is raw (this fit's own copy of its rows), normalised in place from here on
        stats = [normalization_stats(gathered[s, :len(rows)], mode) for s, rows in enumerate(row_sets)]
        mean, std = np.stack([m for m, _ in stats]), np.stack([d for _, d in stats])  # (S, L, H) each
        gathered -= mean[:, None]  # in place: one copy of the features fewer at the peak (SST-2, all: ~1 GB)
        gathered /= std[:, None]
        return gathered, maps, mean, std

    def _normalization(self, validated: bool, kernel: str = "linear") -> str:
        """`normalize`, or for "auto" and "cv": "standard" when the ensemble validates on the layers as they are,
        "layer" with few labels and on kernel features (there, on all of TREC-6: 95.0 against 94.0 standardised,
        seed 0). With few labels "cv" may choose "standard" per row set instead (_set_modes)."""
        if self.normalize not in ("auto", "cv"):
            return self.normalize
        return "standard" if validated and kernel == "linear" else "layer"

    def _validates(self, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray]) -> bool:
        """Whether the ensemble early-stops on folds: on average min_val_per_class labels per class or more, and
        every class in every member's training rows (2 or more rows: the folds deal each class's rows round-robin
        and a member leaves out one fold). A class with fewer rows than members is missing from some validation
        folds, which is fine: TREC-50 has classes of 4 among 5,452 questions, and requiring every class in every
        fold made its fit on all the labels a single unvalidated member (81.4% against 87.0% validated)."""
        if self.validation != "auto" or self.n_members < 2:
            return False
        counts = [np.bincount(codes[r], minlength=n_classes)[np.unique(codes[r])] for r in row_sets]
        return all(c.mean() >= self.min_val_per_class and c.min() >= 2 for c in counts)

    def fit(self, X: object, y: object) -> "_StackHead":
        """Fit on X (n_docs, n_layers, hidden) and labels y of any type. Returns self."""
        self._check_params()
        X = check_features(X)
        classes, codes = check_labels(y, len(X), type(self).__name__)
        seed = 0 if self.random_state is None else int(self.random_state)
        state = self._fit_sets(X, codes, len(classes), [np.arange(len(X))], [seed],
                               class_weights=self._class_weights(classes))[0]
        self._set_fitted(classes, X.shape, state)
        return self

    def _set_fitted(self, classes: np.ndarray, shape: tuple[int, ...], state: dict[str, np.ndarray]) -> None:
        """shape: the training features' (n_docs, n_layers, hidden); state: one set's from _fit_sets."""
        self.classes_ = classes
        self.n_features_in_ = int(shape[1] * shape[2])
        self.n_layers_, self.hidden_size_ = int(shape[1]), int(shape[2])
        state = dict(state)
        self.normalization_ = {part: state.pop(prefix + "normalization") for part, prefix in KERNELS.items()
                               if prefix + "normalization" in state}
        # (n_layers,) mean over training rows, members and parts: the fit computed each part's on its own features
        weights = [state.pop(key) for key in [p + "layer_weights" for p in KERNELS.values()] if key in state]
        self.state_ = state
        self.layer_weights_ = np.mean(weights, axis=0)

    # --- prediction -------------------------------------------------------------------------------------

    def _parts(self) -> list[str]:
        """The kernels this head trained ("linear", "rbf" or both), from its state."""
        return [part for part, prefix in KERNELS.items() if prefix + "b" in self.state_]

    def _module(self, part: str) -> torch.nn.Module:
        prefix = KERNELS[part]
        M, width = self.state_[prefix + "b"].shape[1], self.state_[prefix + "mean"].shape[-1]
        module = self._stack(1, M, self.n_layers_, width, len(self.classes_), torch.Generator())
        module.load_state_dict({k: torch.from_numpy(self.state_[prefix + k]) for k in module.state_dict()})
        return module.eval()

    def _normalised(self, X: np.ndarray, part: str) -> torch.Tensor:
        """(1, n, L, H) features of one part (rbf: its kernel features) normalised by the training rows' statistics."""
        prefix = KERNELS[part]
        if part == "rbf":
            X = apply_map(unit_length(X), {k: self.state_[prefix + k] for k in MAP_KEYS})
        Z = prepare(X, self.normalization_.get(part, self.normalize), inplace=part == "rbf")  # rbf: X is our own
        return torch.from_numpy((Z - self.state_[prefix + "mean"]) / self.state_[prefix + "std"])[None]

    def _checked(self, X: object) -> np.ndarray:
        check_is_fitted(self, "state_")
        return check_features(X, expected=(self.n_layers_, self.hidden_size_), owner=type(self).__name__)

    @torch.no_grad()
    def _mean_over_parts(self, X: object, per_member) -> np.ndarray:
        """per_member(module, x (1, n, L, H)) -> (1, M, n, k), averaged over members and parts (linear and rbf,
        when both were trained), in chunks of 4,096 rows: (n_docs, k)."""
        X = self._checked(X)
        modules = {part: self._module(part) for part in self._parts()}
        return np.concatenate([
            np.mean([per_member(module, self._normalised(X[s:s + 4096], part)).mean(1)[0].numpy()
                     for part, module in modules.items()], axis=0)
            for s in range(0, len(X), 4096)])

    def predict_proba(self, X: object) -> np.ndarray:
        """(n_docs, n_classes) probabilities, the mean over ensemble members (and over the parts, linear and
        rbf, when both were trained); columns follow classes_."""
        return self._mean_over_parts(X, lambda module, x: module(x).softmax(-1))

    def predict(self, X: object) -> np.ndarray:
        proba = self.predict_proba(X)  # checks that the head is fitted first
        return self.classes_[proba.argmax(axis=1)]

    def predict_log_proba(self, X: object) -> np.ndarray:
        """log of predict_proba (the members' mean probabilities), as scikit-learn's classifiers give it."""
        with np.errstate(divide="ignore"):  # a probability of exactly 0 is -inf, as scikit-learn gives it
            return np.log(self.predict_proba(X))

    def score(self, X: object, y: object, sample_weight: object = None) -> float:
        """Accuracy; labels never seen in training are refused rather than silently counted wrong."""
        check_is_fitted(self)
        return super().score(X, check_known_labels(self.classes_, y), sample_weight)

    def layer_weights(self, X: object) -> np.ndarray:
        """(n_docs, n_layers) weight each document puts on each layer, averaged over members (and parts)."""
        return self._mean_over_parts(X, lambda module, x: module.layer_weights(x))

    # --- persistence (see persist.py) --------------------------------------------------------------------

    def _export(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return dict(self.state_), {"layer_weights": self.layer_weights_.tolist(), "normalization": self.normalization_}

    def _import(self, classes: np.ndarray, n_layers: int, hidden: int, arrays: dict[str, np.ndarray],
                config: dict[str, Any]) -> None:
        self.classes_ = classes
        self.n_layers_, self.hidden_size_ = n_layers, hidden
        self.n_features_in_ = n_layers * hidden
        self.state_ = arrays
        normalization = config.get("normalization", self.normalize)  # one string before kernels (and in finetune)
        self.normalization_ = {"linear": normalization} if isinstance(normalization, str) else dict(normalization)
        self.layer_weights_ = np.asarray(config["layer_weights"], dtype=np.float32)

    def _more_tags(self) -> dict[str, Any]:  # older scikit-learn
        return {"X_types": ["3darray", "2darray"]}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True  # (n_docs, hidden): one layer
        tags.input_tags.three_d_array = True
        return tags


class ScalarMix(_StackHead):
    """ELMo's scalar mix γ·Σ softmax(w)ₗ·hₗ over all layers (w starts at the layer prior), then a linear classifier.

    X: (n_docs, n_layers, hidden). Each layer is standardised per dimension on the training rows
    (normalize="standard"). `layer_weights_` holds the learned softmax(w), averaged over members.
    """

    _stack = ScalarMixStack


class LayerAttention(_StackHead):
    """The FineText selector: per-document attention over layers, computed from the layers' own vectors.

    X: (n_docs, n_layers, hidden). For document d, s_l = x_l·u_l/√H + p_l, α = softmax_l(s), and the logits
    are Σ_l α_l (x_l W_l) + b: attention mixes per-layer linear classifiers (one classifier on the mixed vector
    Σ_l α_l x_l measured 1.2–3.4 points lower on TREC-6 at 4–64 labels per class, and no better on BBC News).
    It starts from the layer prior (u = 0, p = the prior) and learns which layers matter, per document.
    `layer_weights(X)` gives (n_docs, n_layers); `layer_weights_` their mean on the training rows.
    """

    _stack = LayerAttentionStack
