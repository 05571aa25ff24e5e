"""Heads over all layers as scikit-learn estimators: ScalarMix and LayerAttention.

Both take X of shape (n_docs, n_layers, hidden) — or (n_docs, hidden), one layer, as plain scikit-learn features
(every scikit-learn estimator check passes: tests/classify/test_heads.py) — and train small PyTorch heads in one
vectorised pass (stack.py). A fit first decides how each row set trains (plan.py: validated ensemble or one
member, the normalisation, kernel features), then trains the plans in stacks. Predictions average the members'
probabilities, and the linear and kernel parts' when both were trained. Why the defaults are what they are, and
what was measured against them: docs/heads.md.

`precision="bf16"` stores the normalised features in bfloat16 and multiplies in it (autocast; parameters,
losses and predictions stay fp32): large fits are bound by reading the features, so on a CPU with native bf16 or
a recent GPU they train faster (docs/benchmarks.md); "fp32" is the default, as hardware without it can be slower.
"""
from __future__ import annotations

import contextlib
from numbers import Integral, Real
from typing import Any, Mapping, Sequence, Self

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from finetext.classify.budget import stratified_folds
from finetext.classify.errors import HeadFormatError
from finetext.classify.features import (NORMALIZATIONS, check_features, check_known_labels, check_labels,
                                        normalization_stats, prepare, unit_length)
from finetext.classify.kernel import MAP_KEYS, apply_map, rbf_map
from finetext.classify.persist import SaveLoadMixin
from finetext.classify.plan import Plan, plan_sets
from finetext.classify.stack import LayerAttentionStack, ScalarMixStack, TrainConfig, layer_major, train_stack

LR = 3e-2  # Adam's learning rate
MAX_EPOCHS = 300  # a validated member's limit; it stops PATIENCE epochs after its best validation loss
PATIENCE = 20
EPOCHS_WITHOUT_VALIDATION = 100  # full-batch epochs of the one member a set of few labels trains
MAX_STACK_BYTES = 16 << 20  # features per stack on a CPU: cache-sized stacks train fastest there
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


class StackHead(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """What ScalarMix and LayerAttention share; they differ in their stack module (`_stack`).

    C: inverse L2 strength of the per-layer classifiers (scikit-learn's convention, scaled by the training rows).
    n_members: the ensemble of a set with enough labels to validate (see plan.py). class_weight: None,
    "balanced" (from each row set's own class counts) or a dict label -> weight (1 for a class it leaves out).
    device: where the stacks train (training_device); fitted heads predict on the CPU. precision: "fp32" or
    "bf16" (see the module's docstring). verbose: a tqdm bar over each stack's epochs.
    """

    _stack: type[torch.nn.Module] = ScalarMixStack

    def __init__(self, *, C: float = 0.5, n_members: int = 5, class_weight: str | Mapping | None = None,
                 device: str = "cpu", precision: str = "fp32", random_state: int | None = 0,
                 verbose: bool = False) -> None:
        self.C = C
        self.n_members = n_members
        self.class_weight = class_weight
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose

    # --- checking ---------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        name = type(self).__name__
        if not isinstance(self.C, Real) or isinstance(self.C, bool) or not self.C > 0:
            raise ValueError(f"{name}: C must be a positive number, got {self.C!r}.")
        if not isinstance(self.n_members, Integral) or isinstance(self.n_members, bool) or self.n_members < 1:
            raise ValueError(f"{name}: n_members must be a positive integer, got {self.n_members!r}.")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"{name}: precision must be one of ('fp32', 'bf16'), got {self.precision!r}.")
        if not (self.class_weight in (None, "balanced") or isinstance(self.class_weight, Mapping)):
            raise ValueError(f"{name}: class_weight must be None, 'balanced' or a dict of label -> weight, got "
                             f"{self.class_weight!r}.")
        if isinstance(self.class_weight, Mapping) and not all(
                isinstance(w, Real) and not isinstance(w, bool) and w >= 0 for w in self.class_weight.values()):
            raise ValueError(f"{name}: class_weight weights must be numbers >= 0, got {self.class_weight!r}.")
        if self.precision == "bf16" and self._torch_device().type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: precision='bf16' trains on the CPU or a CUDA GPU, not on {self.device!r}; "
                             "use precision='fp32' there.")

    def _class_weights(self, classes: np.ndarray) -> np.ndarray | None:
        """(n_classes,) training weight of each class for a dict `class_weight` (1 for a class it leaves out, as
        scikit-learn), or None: no weights, or "balanced", which each row set computes from its own counts."""
        if not isinstance(self.class_weight, Mapping):
            return None
        return np.array([self.class_weight.get(c, 1.0) for c in classes.tolist()], dtype=np.float32)

    def _torch_device(self) -> torch.device:
        return training_device(self.device, type(self).__name__)

    # --- fitting ----------------------------------------------------------------------------------------

    def fit(self, X: object, y: object) -> Self:
        """Fit on X (n_docs, n_layers, hidden) and labels y of any type. Returns self."""
        self._check_params()
        X = check_features(X)
        classes, codes = check_labels(y, len(X), type(self).__name__)
        seed = 0 if self.random_state is None else int(self.random_state)
        state = self._fit_sets(X, codes, len(classes), [np.arange(len(X))], [seed],
                               class_weights=self._class_weights(classes))[0]
        self._set_fitted(classes, X.shape, state)
        return self

    def fit_sets(self, X: np.ndarray, y: np.ndarray, row_sets: Sequence[np.ndarray],
                 seeds: Sequence[int]) -> list[Self]:
        """One fitted copy of this head per row set, each equal to `clone(self).set_params(random_state=seed)
        .fit(X[rows], y[rows])`, trained together in shared stacks (see classify.fit_many)."""
        self._check_params()
        X, y = check_features(X), np.asarray(y)
        groups: dict[tuple, list[int]] = {}  # every set gets the label coding of its own classes, as fit() would
        for i, rows in enumerate(row_sets):
            groups.setdefault(tuple(np.unique(y[rows]).tolist()), []).append(i)
        out: list[Self | None] = [None] * len(row_sets)
        for classes_key, members in groups.items():
            if len(classes_key) < 2:
                raise ValueError(f"row set {members[0]} holds one class only ({classes_key[0]!r}); "
                                 "draw budgets that cover every class (sample_budget).")
            classes = np.unique(y[row_sets[members[0]]])
            codes = np.where(np.isin(y, classes), np.searchsorted(classes, y), 0)
            states = self._fit_sets(X, codes, len(classes), [np.asarray(row_sets[i]) for i in members],
                                    [seeds[i] for i in members], class_weights=self._class_weights(classes))
            for i, state in zip(members, states):
                out[i] = clone(self).set_params(random_state=seeds[i])
                out[i]._set_fitted(classes, X.shape, state)
        return out

    def _fit_sets(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                  seeds: Sequence[int], pad: bool | None = None,
                  class_weights: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
        """Plan every row set, then train the plans in as few stacks as memory allows. One state per set.
        pad: whether sets of different sizes share a stack (see _stack_groups); by default on a GPU only.
        class_weights: (n_classes,) each class's training weight, for a dict `class_weight` (_class_weights)."""
        device = self._torch_device()
        plans = plan_sets(X, codes, n_classes, row_sets, seeds, self.n_members, device)
        L, H = X.shape[1:]
        limit = MAX_STACK_BYTES if device.type == "cpu" else MAX_STACK_BYTES_GPU
        states: list[dict[str, np.ndarray] | None] = [None] * len(row_sets)
        for plan, members in _stack_groups(plans, row_sets, pad=device.type != "cpu" if pad is None else pad):
            size = max(len(row_sets[i]) for i in members)
            width = max(H, plan.landmarks)  # features per layer, the wider part's
            step = max(1, limit // (size * L * width * 4))
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                sets, chunk_seeds = [row_sets[i] for i in chunk], [seeds[i] for i in chunk]
                fitted: list[dict[str, np.ndarray]] = [{} for _ in chunk]
                for part in plan.parts:  # one ensemble per part
                    trained = self._train(X, codes, n_classes, sets, chunk_seeds, plan, part, class_weights)
                    for state, part_state in zip(fitted, trained):
                        state.update({KERNELS[part] + k: v for k, v in part_state.items()})
                for i, state in zip(chunk, fitted):
                    states[i] = state
        return states

    def _train(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
               seeds: Sequence[int], plan: Plan, part: str,
               class_weights: np.ndarray | None) -> list[dict[str, np.ndarray]]:
        """One stack of row sets that share `plan`, training its `part` ("linear", or "rbf": each set's own RBF
        map of its rows, kept in its state). Returns each set's state."""
        mode = plan.normalization if part == "linear" else "layer"
        # without validation folds every member would see the same rows and reach the same optimum
        S, M = len(row_sets), self.n_members if plan.validated else 1
        idx, w_train, w_val = _row_weights(codes, n_classes, row_sets, seeds, M, plan.validated,
                                           self.class_weight == "balanced", class_weights)
        gathered, maps, mean, std = _features(X, idx, row_sets, seeds, plan.landmarks if part == "rbf" else 0, mode)
        L, H = gathered.shape[2:]
        device = self._torch_device()
        x = layer_major(torch.from_numpy(gathered).to(device))  # (S, n_max, L, H)
        del gathered
        if self.precision == "bf16":  # features stored and multiplied in bfloat16, parameters and losses in fp32
            x = x.bfloat16()
        y = torch.from_numpy(codes[idx]).to(device)  # (S, n_max)
        gen = torch.Generator().manual_seed(int(seeds[0]) * 7919 + S)  # module init, then minibatch order
        module = self._stack(S, M, L, H, n_classes, gen)
        with torch.no_grad():  # each set's initial weights from its own seed: batched == one at a time
            for s, seed in enumerate(seeds):
                own = torch.Generator().manual_seed(int(seed))
                module.W[s] = torch.randn(module.W.shape[1:], generator=own) * 0.01
            module.w.copy_(module.p0)
        module.to(device)
        if device.type != "cpu":  # random draws during training come from a generator on the device
            gen = torch.Generator(device).manual_seed(int(seeds[0]) * 7919 + S)
        config = TrainConfig(lr=LR, C=self.C, max_epochs=MAX_EPOCHS if plan.validated else EPOCHS_WITHOUT_VALIDATION,
                             patience=PATIENCE)
        w_train_t = torch.from_numpy(w_train).to(device)
        w_val_t = torch.from_numpy(w_val).to(device) if plan.validated else None
        bf16 = self.precision == "bf16"  # autocast only then: older torch refuses some devices even disabled
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            best_epoch = train_stack(module, x, y, w_train_t, w_val_t, config, gen, progress=bool(self.verbose))
            with torch.no_grad():
                # (S, n_max, L): the fitted weights over layers of every training row, averaged over members
                weights = module.eval().layer_weights(x).float().mean(1).cpu().numpy()
        params = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        return [{**{k: v[s:s + 1].copy() for k, v in params.items()}, **maps[s],
                 "mean": mean[s], "std": std[s], "best_epoch": best_epoch[s].astype(np.int64), "normalization": mode,
                 "layer_weights": weights[s, :len(rows)].mean(0)}
                for s, rows in enumerate(row_sets)]

    def _set_fitted(self, classes: np.ndarray, shape: tuple[int, ...], state: dict[str, np.ndarray]) -> None:
        """shape: the training features' (n_docs, n_layers, hidden); state: one set's from _fit_sets."""
        self.classes_ = classes
        self.n_features_in_ = int(shape[1] * shape[2])
        self.n_layers_, self.hidden_size_ = int(shape[1]), int(shape[2])
        state = dict(state)
        self.normalization_ = {part: str(state.pop(prefix + "normalization")) for part, prefix in KERNELS.items()
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
        Z = prepare(X, self.normalization_[part], inplace=part == "rbf")  # rbf: X is our own
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

    def export_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The fitted arrays, and what config.json keeps beside them."""
        return dict(self.state_), {"layer_weights": self.layer_weights_.tolist(), "normalization": self.normalization_}

    def import_state(self, classes: np.ndarray, n_layers: int, hidden: int, arrays: dict[str, np.ndarray],
                     config: dict[str, Any]) -> None:
        """Become the head export_state described: arrays from weights.safetensors, config from config.json
        ("normalization": one string for the linear part, or a part -> normalisation mapping)."""
        normalization = config["normalization"]
        self.classes_ = classes
        self.n_layers_, self.hidden_size_ = n_layers, hidden
        self.n_features_in_ = n_layers * hidden
        self.state_ = arrays
        if "linear" not in self._parts():
            raise HeadFormatError("weights.safetensors: no linear part (its 'b' array is missing).")
        self.normalization_ = {"linear": normalization} if isinstance(normalization, str) else dict(normalization)
        unknown = {v for v in self.normalization_.values() if v not in NORMALIZATIONS}
        if unknown or not set(self.normalization_) <= set(KERNELS):
            raise HeadFormatError(f"config.json: normalization {normalization!r} is not one this finetext knows "
                                  f"(parts {list(KERNELS)}, each one of {list(NORMALIZATIONS)}).")
        self.layer_weights_ = np.asarray(config["layer_weights"], dtype=np.float32)

    def _more_tags(self) -> dict[str, Any]:  # older scikit-learn
        return {"X_types": ["3darray", "2darray"]}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True  # (n_docs, hidden): one layer
        tags.input_tags.three_d_array = True
        return tags


def _stack_groups(plans: Sequence[Plan], row_sets: Sequence[np.ndarray], pad: bool) -> list[tuple[Plan, list[int]]]:
    """Which row sets share stacks: sets of one plan and one size (a CPU is bound by the rows it reads: no padding
    wasted on small budgets), or with `pad` (a GPU, bound by kernel launches) every set of one plan, padded to the
    largest, largest first, except sets that train on minibatches, which keep to their size."""
    full_batch = TrainConfig().batch_rows
    groups: dict[tuple, list[int]] = {}
    for i, rows in enumerate(row_sets):
        key = (plans[i],) if pad and len(rows) <= full_batch else (plans[i], len(rows))
        groups.setdefault(key, []).append(i)
    return [(key[0], sorted(members, key=lambda i: -len(row_sets[i]))) for key, members in groups.items()]


def _row_weights(codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray], seeds: Sequence[int], M: int,
                 validated: bool, balanced: bool,
                 class_weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """idx (S, n_max): each set's rows, padded with row 0; w_train and w_val (S, M, n_max): each member's training
    weights (`balanced` per set's own counts, or `class_weights` per class) and, when `validated`, member m's
    validation rows (its own stratified fold; it trains on the rest), 0 on padding."""
    S, n_max = len(row_sets), max(len(r) for r in row_sets)
    idx = np.zeros((S, n_max), dtype=np.int64)  # padding points at row 0 with weight 0
    w_train = np.zeros((S, M, n_max), dtype=np.float32)
    w_val = np.zeros((S, M, n_max), dtype=np.float32)
    for s, (rows, seed) in enumerate(zip(row_sets, seeds)):
        n = len(rows)
        idx[s, :n] = rows
        if class_weights is not None:
            balance = class_weights[codes[rows]].astype(np.float32)
        elif balanced:
            counts = np.bincount(codes[rows], minlength=n_classes).astype(np.float32)
            balance = (n / (n_classes * np.maximum(counts, 1)))[codes[rows]]
        else:
            balance = np.ones(n, np.float32)
        if validated:  # member m validates on fold m and trains on the rest
            fold = stratified_folds(codes[rows], M, seed)
            w_val[s, :, :n] = fold[None, :] == np.arange(M)[:, None]
            w_train[s, :, :n] = balance[None, :] * (1 - w_val[s, :, :n])
        else:
            w_train[s, :, :n] = balance[None, :]
    return idx, w_train, w_val


def _features(X: np.ndarray, idx: np.ndarray, row_sets: Sequence[np.ndarray], seeds: Sequence[int], landmarks: int,
              mode: str) -> tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """The stack's features (S, n_max, L, H) — with `landmarks`, each set's own RBF map of its rows onto that many
    landmarks, H their number — normalised by each set's own rows; each set's map (empty without landmarks) and the
    statistics (S, L, H) mean and std it was normalised with."""
    S = len(row_sets)
    raw = X[idx]  # (S, n_max, L, H)
    maps: list[dict[str, np.ndarray]] = [{} for _ in row_sets]
    if landmarks:  # each set's map from its own rows: (S, n_max, L, m)
        raw = unit_length(raw, inplace=True)
        maps = [rbf_map(raw[s, :len(rows)], landmarks, seed) for s, (rows, seed) in enumerate(zip(row_sets, seeds))]
        mapped = np.empty((*raw.shape[:3], maps[0]["map_projection"].shape[-1]), np.float32)
        for s in range(S):  # sets of one stack have one number of landmarks (that many rows or more each)
            apply_map(raw[s], maps[s], out=mapped[s])
        raw = mapped
    gathered = prepare(raw, mode, inplace=True)  # (S, n_max, L, H), H the kernel features' width for rbf
    del raw  # gathered is raw (this fit's own copy of its rows), normalised in place from here on
    stats = [normalization_stats(gathered[s, :len(rows)], mode) for s, rows in enumerate(row_sets)]
    mean, std = np.stack([m for m, _ in stats]), np.stack([d for _, d in stats])  # (S, L, H) each
    gathered -= mean[:, None]  # in place: one copy of the features fewer at the peak
    gathered /= std[:, None]
    return gathered, maps, mean, std


class ScalarMix(StackHead):
    """ELMo's scalar mix γ·Σ softmax(w)ₗ·hₗ over all layers (w starts uniform and is held near it), then a linear
    classifier. X: (n_docs, n_layers, hidden). `layer_weights_` holds the learned softmax(w), averaged over members.
    """

    _stack = ScalarMixStack


class LayerAttention(StackHead):
    """The FineText selector: per-document attention over layers, computed from the layers' own vectors.

    X: (n_docs, n_layers, hidden). For document d, s_l = x_l·u_l/√H + p_l, α = softmax_l(s), and the logits
    are Σ_l α_l (x_l W_l) + b: attention mixes per-layer linear classifiers (one classifier on the mixed vector
    Σ_l α_l x_l measured 1.2–3.4 points lower on TREC-6 at 4–64 labels per class, and no better on BBC News).
    It starts as a uniform mix (u = 0, p = 0), the selector held 100× more tightly than the classifiers, and learns
    which layers matter, per document. `layer_weights(X)` gives (n_docs, n_layers); `layer_weights_` their mean on
    the training rows.
    """

    _stack = LayerAttentionStack
