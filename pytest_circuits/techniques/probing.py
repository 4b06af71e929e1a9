"""Sparse probing of MLP neurons (Gurnee et al. 2023, "Finding Neurons in a Haystack",
arXiv:2305.01610).

**Question.** Is a binary feature of the input (French or not, code or prose) linearly
readable from a *few* MLP neurons of one layer, and from which ones? ``k = 1`` asks
whether a single neuron localises the feature.

**Features.** The post-activation neurons of layer ``l``, ``hooks.mlp_post(l)``
(``[batch, pos, d_mlp]``), from the activation store, pooled per text:

* ``"mean"``: mean over the text's real tokens (padding masked with ``prompts.lengths``;
  the BOS position is left out, its activation is the same for every text);
* ``"last"``: the last real token; ``"max"``: the maximum over real tokens (BOS left out);
* ``"token"``: every real token is an example (labels per token, see
  :func:`pytest_circuits.tasks.probing_data.token_labels`); all tokens of one text share
  a group, so a text is never split across train and test.

**Recipe** (one seeded split, everything fitted on the train part only):

1. Split 70/30, stratified by class; with ``groups`` whole groups are held out (translations
   of one sentence, the tokens of one text). The split is TransformerLens's own
   (``fit_sparse_probe``'s), obtained from a call on a constant dummy feature: it depends
   only on the labels, groups, ``test_fraction`` and ``seed``.
2. Scale each neuron with the train rows' mean and standard deviation,
   ``z = (x - mu_train) / max(sd_train, std_floor)`` (``scale=False`` skips this).
3. Score every neuron on the train rows and keep the top ``k`` as the support ``S``:

   * ``"mean_diff"`` (default, the paper's): ``|mean(z | y=1) - mean(z | y=0)|``. This one
     is TransformerLens's selection: the whole fit is one call of
     ``transformer_lens.tools.analysis.fit_sparse_probe`` on the scaled features.
   * ``"f_stat"``: the one-way ANOVA F statistic,
     ``F = [sum_c n_c (mu_c - mu)^2 / 1] / [sum_c sum_{i in c} (z_i - mu_c)^2 / (n - 2)]``
     (scale-free; it divides the class gap by the *within-class* spread).
   * ``"mutual_info"``: plug-in mutual information ``I(bin(z); y)`` in nats, with ``bins``
     equal-frequency bins whose edges are train quantiles.
   * ``"l1"``: the order in which neurons enter the path of a class-balanced L1-penalised
     logistic regression (FISTA, lambda from ``lambda_max`` down by 0.85 per step, warm
     started), ties broken by ``|coefficient|``.

4. Fit a class-balanced L2 logistic regression on ``z[:, S]`` (TransformerLens,
   ``l2_strength=1e-2``, ``k = |S|`` so its own selection keeps every column) and classify
   the held-out rows at logit 0.

**Metric.** Held-out F1 of the positive class, ``F1 = 2TP / (2TP + FP + FN)``. F1 is not a
mean of per-example values, so its interval is computed here, on F1 itself, and is *not*
the BCa interval of :meth:`Measurement.from_values`: a **Bayesian bootstrap** (Rubin 1981)
over the held-out examples (each draw weights example ``i`` by ``w_i ~ Gamma(1)``, i.e.
Dirichlet(1, ..., 1) weights) with **Jeffreys pseudo-counts** (one pseudo TP, FP and FN with
weights ``~ Gamma(1/2)``, after Goutte & Gaussier 2005's Bayesian F-score), ``F1* =
2(TP_w + p_TP) / (2(TP_w + p_TP) + FP_w + p_FP + FN_w + p_FN)``, and the central
``level`` quantiles of ``F1*`` over ``resamples`` seeded draws. Why not the plain
percentile bootstrap: with no held-out error every resample has F1 = 1 and the interval
collapses to [1, 1], which claims certainty that 50 examples cannot give; the pseudo-counts
keep it honest (no errors in 22 positives and 66 negatives: lower bound about 0.92;
:func:`pytest_circuits.stats.f1_perfect_lower` gives the best lower bound any probe can reach
on a held-out set, and ``ProbeResult.best_possible_lower`` the one of the probe's own split).
The Measurement's ``values`` are per-example contributions ``2TP_i / mean(2TP + FP + FN)``,
whose mean is exactly F1 (so ``mean`` is the observed F1). The interval covers test-sample
noise for *this* split and support; it does not cover the choice of split (try other seeds)
or of the layer and neuron when they were picked by looking at held-out F1.

**Controls** (same split, same held-out rows):

* :func:`shuffled_labels_f1`: train features are permuted among the train rows (equivalent
  to permuting train labels, while keeping TransformerLens's split), selection and fit are
  redone, and F1 is read on the true held-out labels: chance level for this class balance.
* :func:`random_neurons_f1`: ``k`` neurons drawn at random instead of selected.

  Both report the mean F1 over ``n_repeats``; their interval is two-level (held-out
  examples weighted as below, repeats resampled with replacement).
* **Input identity.** Random neurons are not a control for what the input tokens alone
  give away: when the classes use different words (French vs English), the best of ``d_mlp``
  neurons of an *untrained* model beats random neurons (tiny model: margin 0.19 [0.08, 0.29]).

  - :func:`random_weights_control`: the same probe (layer, k, method, split) on ``n_models``
    copies of the model with each weight tensor's entries shuffled
    (:func:`shuffled_weights_copy`, own cache fingerprint): same architecture, tokens still
    distinct, nothing learned. On untrained tiny models the apparent win over random
    neurons is no win over this control (tests/unit/test_probing.py).
  - :func:`embedding_control`: the same probe at the same ``k`` on the pooled token
    embeddings (``hook_embed``, or ``resid_pre 0``). Cheap (no forward past the embedding),
    but weaker: a k-sparse probe on embedding *dimensions* is not the best token-identity
    readout, and on some untrained draws a selected neuron beats it.

  A neuron claim should assert a margin over an input-identity control.
* :func:`margin`: probe F1 minus a control's F1 (or any two of these F1 measurements).
  When both were read on the same held-out rows it is **paired**: each draw gives both sides
  the same example weights and pseudo-counts (repeats resampled on each side); otherwise
  the sides are drawn independently (unpaired).

**Assumptions and limits.** Decodability is not use: a neuron that predicts "French" need not
be what the model uses to process French (test that with ablations). Mean pooling makes
"a French neuron" a statement about its average activation over a sentence. With few
held-out examples (tens) F1 moves in steps of a few hundredths; keep thresholds well below
the measured lower bound.

Usage::

    from pytest_circuits.tasks import probing_data
    from pytest_circuits.techniques import probing

    fr = probing_data.language().binary("fr")
    r = probing.probe(model, fr, layer=5, k=1, activations=activations)
    r.neurons, r.f1                       # (Neuron(5, 123),), "probe F1 ..." = 0.95 [0.9, 1]
    rnd = probing.random_neurons_f1(model, fr, layer=5, k=1, n_repeats=20)
    probing.margin(r, rnd).assert_above(0.3)
    ctl = probing.random_weights_control(model, fr, layer=5, k=1, n_models=3)
    probing.margin(r, ctl).assert_above(0.2)      # more than token identity + architecture
    probing.sweep(model, fr, layer=5, ks=[1, 2, 4, 8, 16])
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import hooks as H
from .. import measurement as _measurement
from .. import stats
from ..components import MLP, Neuron
from ..errors import CircuitsError, ComponentError, MeasurementError, ProbingError, bad
from ..measurement import _RECORDERS, DEFAULT_LEVEL, DEFAULT_RESAMPLES, Measurement

METHODS = ("mean_diff", "f_stat", "mutual_info", "l1")
POOLINGS = ("mean", "last", "max", "token")
DEFAULT_KS = (1, 2, 4, 8, 16)
SOURCE = "arXiv:2305.01610"


CONTROL_SITES = ("embed", "resid_pre0")


def _level(level: float) -> float:
    """The level to build at: a family-wise override of the default level applies here too
    (``measurement.resolve_level`` where the measurement module has it)."""
    resolve = getattr(_measurement, "resolve_level", None)
    return float(resolve(level)) if resolve is not None else float(level)


@dataclass(frozen=True, repr=False)
class F1Measurement(Measurement):
    """An F1 :class:`Measurement` (interval computed in this module) that also keeps what
    :func:`margin` needs, typed: the held-out labels, the predictions (one row per repeat)
    and the held-out row indices. The same data is in ``provenance`` as text, for reports."""

    y_test: tuple[int, ...] = field(default=(), compare=False)
    predictions: tuple[tuple[int, ...], ...] = field(default=(), compare=False)
    test_rows: tuple[int, ...] = field(default=(), compare=False)


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ProbeConfig:
    """The settings a probe and its controls share, in one object: pass ``config=`` to any
    public function here (``probe``, ``sweep``, ``scan_layers``, ``probe_features``, the
    controls); a keyword given in the same call wins over the config's value.

    ``probing.probe(model, fr, layer=5, k=1, config=ProbeConfig(seed=3, test_fraction=0.5))``

    The defaults are the functions' own. With the default ``test_fraction=0.3`` a probe that
    classifies every held-out text right has an F1 lower bound of 0.907 (digits/words),
    0.921 (French) and 0.926 (code/prose) on the shipped datasets; the best bound on any held-out
    set is :func:`pytest_circuits.stats.f1_perfect_lower` (``ProbeResult.best_possible_lower``).
    """

    method: str = "mean_diff"
    seed: int = 0
    pooling: str = "mean"
    test_fraction: float = 0.3
    scale: bool = True
    std_floor: float = 1e-3
    l2_strength: float = 1e-2
    bins: int = 10
    resamples: int = DEFAULT_RESAMPLES
    level: float = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        _check_method(self.method)
        if self.pooling not in POOLINGS:
            raise ProbingError(bad("pooling", self.pooling, f"one of {list(POOLINGS)}"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ProbingError(bad("seed", self.seed, "a non-negative int"))
        if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction, (int, float)) \
                or not 0.0 < self.test_fraction < 1.0:
            raise ProbingError(bad("test_fraction", self.test_fraction, "a fraction in (0, 1), e.g. 0.3"))
        if isinstance(self.bins, bool) or not isinstance(self.bins, (int, np.integer)) or self.bins < 2:
            raise ProbingError(bad("bins", self.bins, "an int >= 2"))
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, (int, np.integer)) \
                or self.resamples < 10:
            raise ProbingError(bad("resamples", self.resamples, "an int >= 10"))
        if not 0.0 < float(self.level) < 1.0:
            raise ProbingError(bad("level", self.level, "a confidence level in (0, 1)"))

    def replace(self, **changes: Any) -> "ProbeConfig":
        return dataclasses.replace(self, **changes)


_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ProbeConfig))
# the controls without a selection step (random neurons) take no method or bins
_NO_SELECTION = tuple(f for f in _CONFIG_FIELDS if f not in ("method", "bins"))


def _configurable(fields: Sequence[str] | None = None) -> Any:
    """Let ``fn`` take ``config=ProbeConfig(...)``: each of ``fields`` (default: the config's
    fields that ``fn`` names as parameters) not passed as a keyword is taken from it."""
    def wrap(fn: Any) -> Any:
        params = inspect.signature(fn).parameters
        names = tuple(fields) if fields is not None else tuple(f for f in _CONFIG_FIELDS if f in params)

        @functools.wraps(fn)
        def call(*args: Any, config: ProbeConfig | None = None, **kw: Any) -> Any:
            if config is not None:
                if not isinstance(config, ProbeConfig):
                    raise ProbingError(bad("config", config, "a probing.ProbeConfig"))
                for name in names:
                    kw.setdefault(name, getattr(config, name))
            return fn(*args, **kw)

        call.__doc__ = (fn.__doc__ or "") + "\n\n    ``config``: a :class:`ProbeConfig` for the settings not passed as keywords."
        return call
    return wrap


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class Features:
    """Pooled MLP neurons of one layer: one row per example (text or token)."""

    X: Any                    # torch float32 [rows, d_mlp]
    labels: np.ndarray        # int64 [rows], 0/1
    groups: np.ndarray | None  # int64 [rows], or None (every row its own group)
    text_index: np.ndarray    # int64 [rows]: which text each row comes from
    layer: int
    pooling: str
    model: str = ""

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """A k-sparse probe: its neurons (best first), held-out F1 and TransformerLens's fit."""

    neurons: tuple[Neuron, ...]      # the support, ranked by the selection score
    f1: Measurement                  # held-out F1, bootstrap interval over held-out examples
    method: str
    k: int
    layer: int
    pooling: str
    scores: tuple[float, ...]        # selection score of each neuron in ``neurons``
    directions: tuple[int, ...]      # +1: higher (scaled) activation on the positive class
    coefficients: tuple[float, ...]  # logistic coefficients on the scaled neurons
    intercept: float
    tl: Any                          # transformer_lens SparseProbeResult (indices into its columns)
    train_indices: Any               # np.ndarray of rows
    test_indices: Any
    all_scores: Any = None           # np.ndarray [d_mlp]: every neuron's train score

    def __repr__(self) -> str:
        ns = ", ".join(str(n) for n in self.neurons[:8]) + (", ..." if self.k > 8 else "")
        return f"ProbeResult({self.method}, k={self.k}, [{ns}], {self.f1!r})"

    @property
    def neuron(self) -> Neuron:
        """The best neuron (the only one when k=1)."""
        return self.neurons[0]

    @property
    def best_possible_lower(self) -> float:
        """The F1 lower bound a probe classifying every held-out example right would get on
        this split (same level): no threshold above it can be asserted on ``f1``."""
        y = np.asarray(getattr(self.f1, "y_test", ()) or ())
        if y.size == 0:
            raise ProbingError("best_possible_lower needs the held-out labels of an F1Measurement")
        return stats.f1_perfect_lower(int(y.sum()), int(y.size - y.sum()), self.f1.level)


# ----------------------------------------------------------------------------- features
def _model_label(model: Any) -> str:
    from ..models import info as model_info

    try:
        return model_info(model).label
    except Exception:  # a model without ModelInfo (built by hand)
        return ""


def _unpack(texts: Any, labels: Any, groups: Any) -> tuple[Any, Any, Any, str]:
    """Accept a BinaryTask (texts, labels, groups, name) in place of texts."""
    if hasattr(texts, "texts") and hasattr(texts, "labels") and not isinstance(texts, (str, list, tuple)):
        task = texts
        if labels is not None:
            raise ProbingError("labels= given together with a task that has its own labels: pass one")
        return (task.texts, task.labels, groups if groups is not None else getattr(task, "groups", None),
                getattr(task, "name", "probing"))
    if labels is None:
        raise ProbingError("labels are missing: pass texts and labels, or a probing_data.BinaryTask")
    return texts, labels, groups, "probing"


def _check_layer(model: Any, layer: Any) -> int:
    MLP(layer).validate(model)   # ComponentError naming the valid range
    from ..moe import n_experts

    # a deferred shuffled copy has its model's structure: ask the model, so that the copy is not built
    # (its activations may be cached)
    model = model._base if isinstance(model, _DeferredCopy) else model
    if n_experts(model, int(layer)):
        # hooks.mlp_post of a mixture-of-experts block is its output (a residual-stream vector):
        # its dimensions are not neurons, and probing them as Neuron(l, i) would name what is not there
        raise ComponentError(bad("layer", layer, f"a layer with a dense MLP: layer {layer} is a mixture of "
                                 f"{n_experts(model, int(layer))} experts, whose block has no single post-activation "
                                 "neuron hook to probe"))
    return int(layer)


def _binary(values: Any, what: str = "labels") -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ProbingError(bad(what, f"shape {arr.shape}", "one label per example"))
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isin(arr, (0.0, 1.0))):
            arr = arr.astype(np.int64)
        else:
            raise ProbingError(bad(what, f"values {sorted(set(arr.tolist()))[:5]}", "0/1 or bool labels"))
    present = sorted(set(arr.tolist()))
    if not set(present) <= {0, 1}:
        raise ProbingError(bad(what, f"values {present[:5]}", "0/1 or bool labels (1 = the positive class)"))
    if len(present) < 2:
        only = present[0] if present else "none"
        raise ProbingError(f"{what} contain only one class ({only}; n={arr.size}): a probe needs "
                           "examples of both classes, at least 2 of each")
    counts = np.bincount(arr, minlength=2)
    if counts.min() < 2:
        raise ProbingError(f"{what} have {counts[0]} negatives and {counts[1]} positives: a probe "
                           "needs at least 2 examples of each class")
    return arr.astype(np.int64)


def collect(model: Any, texts: Any, labels: Any = None, *, layer: int, pooling: str = "mean",
            groups: Sequence[int] | None = None, activations: Any = None,
            name: str | None = None) -> Features:
    """Pooled ``mlp_post(layer)`` neurons of every text (or token) with its label and group."""
    layer = _check_layer(model, layer)
    return _collect(model, texts, labels, hook=H.mlp_post(layer), layer=layer, pooling=pooling,
                    groups=groups, activations=activations, name=name)


def _collect(model: Any, texts: Any, labels: Any, *, hook: str, layer: int, pooling: str,
             groups: Sequence[int] | None, activations: Any, name: str | None) -> Features:
    """Pooled ``[batch, pos, d]`` activations of ``hook`` (see :func:`collect`)."""
    import torch

    from ..store import resolve
    from ..prompts import PromptSet

    texts, labels, groups, task_name = _unpack(texts, labels, groups)
    if pooling not in POOLINGS:
        raise ProbingError(bad("pooling", pooling, f"one of {list(POOLINGS)}"))
    ps = PromptSet.build(model, texts, name=name or task_name)
    n = len(ps)
    if groups is not None:
        groups = np.asarray(list(groups))
        if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
            raise ProbingError(bad("groups", f"{groups.dtype} of shape {groups.shape}",
                                   f"one int per text ({n})"))
    store = resolve(activations)
    if pooling == "last":
        X = store(model, ps, [H.last(hook)])[H.last(hook)].float()
        y = _labels_per_text(labels, n)
        return Features(X=X, labels=y, groups=None if groups is None else groups.astype(np.int64),
                        text_index=np.arange(n), layer=layer, pooling=pooling, model=_model_label(model))
    acts = store(model, ps, [hook])[hook].float()           # [n, pos, d], padding already zero
    lengths = torch.tensor(ps.lengths)
    bos = model.tokenizer.bos_token_id
    start = torch.zeros(n, dtype=torch.long)
    if bos is not None:
        start = (ps.tokens[:, 0] == bos).long()              # leave out BOS when prepended
    pos = torch.arange(acts.shape[1])
    real = (pos[None] >= start[:, None]) & (pos[None] < lengths[:, None])   # [n, pos]
    if (real.sum(1) == 0).any():
        bad_i = int(torch.nonzero(real.sum(1) == 0)[0, 0])
        raise ProbingError(bad(f"texts[{bad_i}]", ps.prompts[bad_i], "a text with at least one token"))
    if pooling in ("mean", "max"):
        y = _labels_per_text(labels, n)
        if pooling == "mean":
            X = (acts * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        else:
            X = acts.masked_fill(~real[..., None], float("-inf")).amax(1)
        return Features(X=X, labels=y, groups=None if groups is None else groups.astype(np.int64),
                        text_index=np.arange(n), layer=layer, pooling=pooling, model=_model_label(model))
    # pooling == "token": labels are per token, aligned with PromptSet tokens (BOS included).
    rows, ys, gs, ti = [], [], [], []
    if isinstance(labels, (str, bytes)) or len(labels) != n:
        raise ProbingError(bad("labels", f"{len(labels)} items", f"one list of per-token labels per text ({n}) "
                               "with pooling='token' (see probing_data.token_labels)"))
    for i in range(n):
        lab = list(labels[i]) if not isinstance(labels[i], (int, bool, np.integer)) else None
        if lab is None or len(lab) != ps.lengths[i]:
            raise ProbingError(bad(f"labels[{i}]", labels[i], f"{ps.lengths[i]} per-token labels (BOS "
                                   "included, None to leave a token out) for pooling='token'"))
        for p, v in enumerate(lab):
            if v is None or v == -1 or not bool(real[i, p]):
                continue
            rows.append((i, p))
            ys.append(int(v))
            gs.append(int(groups[i]) if groups is not None else i)
            ti.append(i)
    if not rows:
        raise ProbingError("no labelled tokens: every per-token label is None")
    idx = torch.tensor(rows)
    X = acts[idx[:, 0], idx[:, 1]]
    return Features(X=X, labels=_binary(ys), groups=np.asarray(gs, dtype=np.int64),
                    text_index=np.asarray(ti, dtype=np.int64), layer=layer, pooling=pooling,
                    model=_model_label(model))


def _prefetch(model: Any, texts: Any, labels: Any, *, hooks: Sequence[str], pooling: Any,
              activations: Any) -> None:
    """Put ``hooks`` of the texts into the store in one request (one forward for all those it
    lacks), so the :func:`_collect` calls that follow, one per hook, read them from it. The
    prompt set is built as :func:`_collect` builds it (same tokens, so the same entries)."""
    from ..prompts import PromptSet
    from ..store import resolve

    texts, _, _, task_name = _unpack(texts, labels, None)
    if pooling not in POOLINGS:
        return          # _collect raises the error
    ps = PromptSet.build(model, texts, name=task_name)
    resolve(activations).get(model, ps, [H.last(h) if pooling == "last" else h for h in hooks])


def _labels_per_text(labels: Any, n: int) -> np.ndarray:
    try:
        m = len(labels)
    except TypeError:
        raise ProbingError(bad("labels", labels, f"a sequence of {n} 0/1 labels")) from None
    if m != n:
        raise ProbingError(bad("labels", f"{m} labels", f"one per text ({n})"))
    return _binary(list(labels))


# ----------------------------------------------------------------------------- selection
def _split(y: np.ndarray, groups: np.ndarray | None, seed: int,
           test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """TransformerLens's train/test split for these labels (a fit on a constant dummy feature)."""
    import torch
    from transformer_lens.tools.analysis import fit_sparse_probe

    dummy = torch.zeros((y.shape[0], 1), dtype=torch.float64)
    g = None if groups is None else torch.as_tensor(groups, dtype=torch.int64)
    try:
        r = fit_sparse_probe(dummy, torch.as_tensor(y), k=1, groups=g, seed=seed,
                             test_fraction=test_fraction)
    except ValueError as e:
        raise ProbingError(f"cannot split the examples: {e}") from None
    return r.train_indices.numpy(), r.test_indices.numpy()


def _standardize(X: Any, train: np.ndarray, std_floor: float) -> Any:
    import torch

    Xd = torch.as_tensor(X).to(torch.float64)
    tr = Xd[torch.as_tensor(train)]
    mu = tr.mean(0)
    sd = tr.std(0, correction=0)
    sd = torch.where(sd == 0, torch.ones_like(sd), sd.clamp(min=std_floor))
    return (Xd - mu) / sd


def scores(Z: np.ndarray, y: np.ndarray, method: str, *, bins: int = 10) -> np.ndarray:
    """Selection score of every column of ``Z`` (train rows only!), higher = better."""
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    if Z.ndim != 2 or y.shape != (Z.shape[0],):
        raise ProbingError(bad("Z", f"shape {Z.shape} with {y.shape} labels", "a [row, column] matrix, one label per row"))
    if not np.all(np.isfinite(Z)):
        raise MeasurementError(bad("Z", "non-finite values", "finite features"))
    if method == "mean_diff":
        return np.abs(Z[y].mean(0) - Z[~y].mean(0))
    if method == "f_stat":
        n = Z.shape[0]
        mu = Z.mean(0)
        ssb = np.zeros(Z.shape[1])
        ssw = np.zeros(Z.shape[1])
        for c in (True, False):
            Zc = Z[y == c]
            mc = Zc.mean(0)
            ssb += Zc.shape[0] * (mc - mu) ** 2
            ssw += ((Zc - mc) ** 2).sum(0)
        f = ssb / np.maximum(ssw / max(n - 2, 1), 1e-300)
        return np.where(ssb > 0, f, 0.0)
    if method == "mutual_info":
        return _mutual_info(Z, y, bins)
    if method == "l1":
        return _l1_entry_scores(Z, y)
    raise ProbingError(bad("method", method, f"one of {list(METHODS)}"))


def _mutual_info(Z: np.ndarray, y: np.ndarray, bins: int) -> np.ndarray:
    n, d = Z.shape
    b = max(2, min(bins, n // 5))
    qs = np.linspace(0, 1, b + 1)[1:-1]
    edges = np.quantile(Z, qs, axis=0)                       # [b-1, d]
    idx = np.zeros((n, d), dtype=np.int64)
    for e in edges:                                          # bin index = number of edges below
        idx += Z > e[None, :]
    mi = np.zeros(d)
    py = np.array([np.mean(~y), np.mean(y)])
    for k in range(b):
        inb = idx == k
        pb = inb.mean(0)
        for c, mask in ((0, ~y), (1, y)):
            pbc = (inb & mask[:, None]).mean(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                term = pbc * np.log(pbc / (pb * py[c]))
            mi += np.where(pbc > 0, term, 0.0)
    return mi


def _l1_entry_scores(Z: np.ndarray, y: np.ndarray, *, shrink: float = 0.85, steps: int = 80,
                     iters: int = 300) -> np.ndarray:
    """Score = path position at which a neuron enters a balanced L1-logistic fit (earlier =
    higher), plus a tie-break by |coefficient| at the final lambda."""
    n, d = Z.shape
    yf = y.astype(np.float64)
    w = np.where(y, n / (2 * max(y.sum(), 1)), n / (2 * max((~y).sum(), 1)))
    # Balanced weights put the optimal intercept at 0 when beta = 0.
    g0 = Z.T @ (w * (0.5 - yf)) / n
    lam = float(np.abs(g0).max())
    if lam == 0:
        return np.zeros(d)
    A = np.hstack([Z, np.ones((n, 1))])
    lip = 0.25 * float(w.max()) * float(np.linalg.norm(A, 2) ** 2) / n
    step = 1.0 / lip
    beta = np.zeros(d)
    b0 = 0.0
    entered = np.full(d, np.inf)
    for s in range(steps):
        lam *= shrink
        # FISTA on mean(w * BCE) + lam * |beta|_1, intercept unpenalised, warm start.
        xb, xb0 = beta.copy(), b0
        yb, yb0 = beta.copy(), b0
        t = 1.0
        for _ in range(iters):
            z = Z @ yb + yb0
            r = w * (1.0 / (1.0 + np.exp(-z)) - yf) / n
            gb, gb0 = Z.T @ r, r.sum()
            nb = yb - step * gb
            nb = np.sign(nb) * np.maximum(np.abs(nb) - step * lam, 0.0)
            nb0 = yb0 - step * gb0
            t2 = (1 + math.sqrt(1 + 4 * t * t)) / 2
            yb = nb + ((t - 1) / t2) * (nb - xb)
            yb0 = nb0 + ((t - 1) / t2) * (nb0 - xb0)
            done = np.max(np.abs(nb - xb)) < 1e-7
            xb, xb0, t = nb, nb0, t2
            if done:
                break
        beta, b0 = xb, xb0
        newly = (beta != 0) & ~np.isfinite(entered)
        entered[newly] = s
        if np.isfinite(entered).sum() >= min(d, 64):
            break
    mag = np.abs(beta)
    mag = mag / (mag.max() + 1e-300)
    # Earlier entry dominates; |beta| in [0, 1) breaks ties; never-entered columns rank last
    # (by |gradient| at the last lambda, scaled into (-1, 0)).
    out = np.where(np.isfinite(entered), (steps - entered) + 0.5 * mag, 0.0)
    never = ~np.isfinite(entered)
    if never.any():
        z = Z @ beta + b0
        r = w * (1.0 / (1.0 + np.exp(-z)) - yf) / n
        g = np.abs(Z.T @ r)
        out[never] = -1.0 + 0.5 * g[never] / (g.max() + 1e-300)
    return out


# ----------------------------------------------------------------------------- fitting
def _check_k(k: Any, d: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ProbingError(bad("k", k, f"a positive int, at most the number of neurons ({d})"))
    if k > d:
        raise ProbingError(bad("k", k, f"at most the number of neurons d_mlp={d}"))
    return int(k)


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise ProbingError(bad("method", method, f"one of {list(METHODS)}"))
    return method


def _tl_fit(Z: Any, y: np.ndarray, cols: np.ndarray | None, k: int, groups: np.ndarray | None,
            seed: int, test_fraction: float, l2_strength: float) -> Any:
    import torch
    from transformer_lens.tools.analysis import fit_sparse_probe

    F = Z if cols is None else Z[:, torch.as_tensor(cols)]
    g = None if groups is None else torch.as_tensor(groups, dtype=torch.int64)
    try:
        return fit_sparse_probe(F, torch.as_tensor(y), k=k, groups=g, seed=seed,
                                test_fraction=test_fraction, preprocess="none",
                                class_weight="balanced", l2_strength=l2_strength)
    except ValueError as e:
        raise ProbingError(f"TransformerLens fit_sparse_probe refused the input: {e}") from None


def _support(Z: Any, y: np.ndarray, train: np.ndarray, method: str, k: int, groups: Any,
             seed: int, test_fraction: float, l2_strength: float, bins: int,
             ) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray]:
    """(support ranked best first, its scores, TL result, all scores) on the train rows."""
    if method == "mean_diff":
        tl = _tl_fit(Z, y, None, k, groups, seed, test_fraction, l2_strength)
        allsc = tl.feature_scores.abs().numpy()
        S = tl.selected_features.numpy()
        return S, allsc[S], tl, allsc
    Ztr = Z[train].numpy()
    allsc = scores(Ztr, y[train], method, bins=bins)
    S = np.argsort(-allsc, kind="stable")[:k]
    tl = _tl_fit(Z, y, S, k, groups, seed, test_fraction, l2_strength)
    return S, allsc[S], tl, allsc


def _predict(Z: Any, rows: np.ndarray, S: np.ndarray, tl: Any, cols_of_tl: np.ndarray) -> np.ndarray:
    """Held-out predictions (logit >= 0) from a TL fit whose columns are ``cols_of_tl``."""
    import torch

    sel = cols_of_tl[tl.selected_features.numpy()]
    F = Z[torch.as_tensor(rows)][:, torch.as_tensor(sel)]
    F = (F - tl.preprocess_mean) / tl.preprocess_scale
    logits = F @ tl.coefficients + tl.intercept
    return (logits >= 0).numpy().astype(np.int8)


@dataclass(frozen=True, eq=False)
class Prepared:
    """Checked inputs of a probe, its split and the train-standardized features (what the
    probe and each control share)."""

    y: np.ndarray              # 0/1 labels [rows]
    d: int                     # number of features (neurons)
    k: int                     # support size, checked against d
    groups: np.ndarray | None
    train: np.ndarray          # row indices
    test: np.ndarray
    Z: Any                     # float64 torch [rows, d]

    def __iter__(self) -> Any:
        # unpacks as the tuple it replaces: y, d, k, groups, train, test, Z
        return iter((self.y, self.d, self.k, self.groups, self.train, self.test, self.Z))


def _prepare(X: Any, labels: Any, k: int, groups: Any, seed: int, test_fraction: float, scale: bool,
             std_floor: float) -> Prepared:
    """Checked inputs, the split and the train-standardized features, shared by the probe and
    its controls."""
    import torch

    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if X.ndim != 2 or not torch.is_floating_point(X):
        raise ProbingError(bad("features", f"{X.dtype} of shape {tuple(X.shape)}",
                               "a float [example, neuron] matrix"))
    if not bool(torch.isfinite(X).all()):
        rows = torch.nonzero(~torch.isfinite(X).all(1)).flatten()[:5].tolist()
        raise MeasurementError(bad("features", f"non-finite values in rows {rows}",
                                   "finite activations (check the model's weights and dtype)"))
    y = _binary(labels)
    if y.shape[0] != X.shape[0]:
        raise ProbingError(bad("labels", f"{y.shape[0]} labels", f"one per example ({X.shape[0]})"))
    d = int(X.shape[1])
    k = _check_k(k, d)
    g = None if groups is None else np.asarray(list(groups), dtype=np.int64)
    if g is not None and g.shape != y.shape:
        raise ProbingError(bad("groups", f"{g.shape[0]} groups", f"one per example ({y.shape[0]})"))
    train, test = _split(y, g, seed, test_fraction)
    Z = _standardize(X, train, std_floor) if scale else X.to(torch.float64)
    return Prepared(y, d, k, g, train, test, Z)


@_configurable()
def probe_features(X: Any, labels: Any, *, k: int, method: str = "mean_diff",
                   groups: Sequence[int] | None = None, seed: int = 0, test_fraction: float = 0.3,
                   scale: bool = True, std_floor: float = 1e-3, l2_strength: float = 1e-2,
                   bins: int = 10, layer: int = 0, pooling: str = "mean", model: str = "",
                   name: str | None = None, resamples: int = DEFAULT_RESAMPLES,
                   level: float = DEFAULT_LEVEL, record: bool = True) -> ProbeResult:
    """The probe on a ready ``[example, neuron]`` matrix (what :func:`probe` runs after
    collecting). Neurons are reported as ``Neuron(layer, column)``. ``record=False`` keeps
    the F1 out of the claim's summary (and baselines), e.g. for a side check."""
    import torch

    method = _check_method(method)
    pr = _prepare(X, labels, k, groups, seed, test_fraction, scale, std_floor)
    y, d, k, g, train, test, Z = pr.y, pr.d, pr.k, pr.groups, pr.train, pr.test, pr.Z
    S, sc, tl, allsc = _support(Z, y, train, method, k, g, seed, test_fraction, l2_strength, bins)
    if not (np.array_equal(tl.train_indices.numpy(), train) and np.array_equal(tl.test_indices.numpy(), test)):
        raise ProbingError("internal: TransformerLens split differs from the probe's split")  # pragma: no cover
    cols = np.arange(d) if method == "mean_diff" else S
    preds = _predict(Z, test, S, tl, cols)
    ytest = y[test]
    # Coefficients in the order of ``S`` (TL orders its columns by its own mean difference).
    tl_cols = cols[tl.selected_features.numpy()]
    pos = {int(c): j for j, c in enumerate(tl_cols)}
    coef = tuple(float(tl.coefficients[pos[int(c)]]) for c in S)
    Ztr = Z[torch.as_tensor(train)][:, torch.as_tensor(S)].numpy()
    ytr = y[train].astype(bool)
    dirs = tuple(int(np.sign(Ztr[ytr, j].mean() - Ztr[~ytr, j].mean()) or 1) for j in range(len(S)))
    neurons = tuple(Neuron(layer, int(c)) for c in S)
    label = name or f"probe F1 L{layer} k={k} {method}"
    prov = {"method": method, "k": k, "layer": layer, "pooling": pooling, "seed": seed,
            "neurons": [str(n) for n in neurons], "n_train": int(train.size),
            "n_test": int(test.size), "source": SOURCE}
    f1 = _f1_measurement(label, ytest, preds[None, :], test, model=model, seed=seed,
                         resamples=resamples, level=level, provenance=prov, record=record)
    if abs(f1.mean - tl.metrics.f1) > 1e-9:
        raise ProbingError(f"internal: F1 {f1.mean} differs from TransformerLens's {tl.metrics.f1}")  # pragma: no cover
    return ProbeResult(neurons=neurons, f1=f1, method=method, k=k, layer=layer, pooling=pooling,
                       scores=tuple(float(s) for s in sc), directions=dirs, coefficients=coef,
                       intercept=float(tl.intercept), tl=tl, train_indices=train, test_indices=test,
                       all_scores=allsc)


@_configurable(_CONFIG_FIELDS)
def probe(model: Any, texts: Any, labels: Any = None, *, layer: int, k: int, method: str = "mean_diff",
          seed: int = 0, pooling: str = "mean", groups: Sequence[int] | None = None,
          activations: Any = None, test_fraction: float = 0.3, scale: bool = True,
          l2_strength: float = 1e-2, name: str | None = None, **kw: Any) -> ProbeResult:
    """Fit a k-sparse probe on layer ``layer``'s MLP neurons; held-out F1 as a Measurement.

    ``texts`` with ``labels`` (0/1 per text, or per token with ``pooling="token"``), or a
    :class:`~pytest_circuits.tasks.probing_data.BinaryTask` (its groups are used)."""
    _check_method(method)
    feats = collect(model, texts, labels, layer=layer, pooling=pooling, groups=groups,
                    activations=activations)
    _check_k(k, int(feats.X.shape[1]))
    return probe_features(feats.X, feats.labels, k=k, method=method, groups=feats.groups, seed=seed,
                          test_fraction=test_fraction, scale=scale, l2_strength=l2_strength,
                          layer=feats.layer, pooling=pooling, model=feats.model, name=name, **kw)


@_configurable(_CONFIG_FIELDS)
def sweep(model: Any, texts: Any, labels: Any = None, *, layer: int, ks: Sequence[int] = DEFAULT_KS,
          method: str = "mean_diff", **kw: Any) -> list[ProbeResult]:
    """:func:`probe` at each ``k`` (same split; supports are nested for a fixed method)."""
    ks = list(ks)
    if not ks:
        raise ProbingError(bad("ks", ks, "a non-empty list of positive ints"))
    _check_method(method)
    pooling = kw.pop("pooling", "mean")
    feats = collect(model, texts, labels, layer=layer, pooling=pooling, groups=kw.pop("groups", None),
                    activations=kw.pop("activations", None))
    for k in ks:
        _check_k(k, int(feats.X.shape[1]))
    return [probe_features(feats.X, feats.labels, k=k, method=method, groups=feats.groups,
                           layer=feats.layer, pooling=pooling, model=feats.model, **kw) for k in ks]


@_configurable(_CONFIG_FIELDS)
def scan_layers(model: Any, texts: Any, labels: Any = None, *, layers: Sequence[int], k: int = 1,
                method: str = "mean_diff", **kw: Any) -> list[ProbeResult]:
    """:func:`probe` at each layer, best held-out F1 first (ties: earlier layer first).

    Every layer's activations come from one forward of the texts (the store computes all the
    layers it lacks at once; each probe then reads its layer from the store).

    Picking the best of several layers on the *held-out* F1 is a selection step: state a
    claim found this way on a fresh seed or dataset, or keep a margin."""
    layers = list(layers)
    _check_method(method)
    for l in layers:
        _check_layer(model, l)
    if len(set(layers)) > 1:
        _prefetch(model, texts, labels, hooks=[H.mlp_post(int(l)) for l in dict.fromkeys(layers)],
                  pooling=kw.get("pooling", "mean"), activations=kw.get("activations"))
    out = [probe(model, texts, labels, layer=l, k=k, method=method, **kw) for l in layers]
    return sorted(out, key=lambda r: (-r.f1.mean, r.layer))


# ----------------------------------------------------------------------------- controls
@_configurable()
def shuffled_f1_features(X: Any, labels: Any, *, k: int, method: str = "mean_diff",
                         groups: Sequence[int] | None = None, n_repeats: int = 10, seed: int = 0,
                         test_fraction: float = 0.3, scale: bool = True, std_floor: float = 1e-3,
                         l2_strength: float = 1e-2, bins: int = 10, model: str = "",
                         name: str | None = None, layer: int = 0,
                         resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL) -> Measurement:
    """Null control: train features permuted among train rows, selection + fit redone,
    F1 on the true held-out labels (mean over ``n_repeats``)."""
    import torch
    from transformer_lens.tools.analysis.sparse_probing import SparseProbeConvergenceError

    method = _check_method(method)
    n_repeats = _check_repeats(n_repeats)
    pr = _prepare(X, labels, k, groups, seed, test_fraction, scale, std_floor)
    y, d, k, g, train, test, Z = pr.y, pr.d, pr.k, pr.groups, pr.train, pr.test, pr.Z
    rng = np.random.default_rng([seed, 1])
    preds, failed = [], 0
    for _ in range(n_repeats):
        Zp = Z.clone()
        perm = rng.permutation(train.size)
        Zp[torch.as_tensor(train)] = Z[torch.as_tensor(train[perm])]
        try:
            S, _, tl, _ = _support(Zp, y, train, method, k, g, seed, test_fraction, l2_strength, bins)
        except SparseProbeConvergenceError:
            failed += 1
            continue
        cols = np.arange(d) if method == "mean_diff" else S
        preds.append(_predict(Zp, test, S, tl, cols))
    label = name or f"shuffled-labels F1 L{layer} k={k} {method}"
    return _control_measurement(label, y[test], preds, test, failed, model=model, seed=seed,
                                resamples=resamples, level=level,
                                provenance={"control": "label shuffle (train rows)", "method": method,
                                            "k": k, "layer": layer, "n_repeats": n_repeats,
                                            "source": SOURCE})


@_configurable()
def random_f1_features(X: Any, labels: Any, *, k: int, groups: Sequence[int] | None = None,
                       n_repeats: int = 20, seed: int = 0, test_fraction: float = 0.3,
                       scale: bool = True, std_floor: float = 1e-3, l2_strength: float = 1e-2,
                       model: str = "", name: str | None = None, layer: int = 0,
                       resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL) -> Measurement:
    """Control: the probe on ``k`` random columns (no selection), mean F1 over ``n_repeats``."""
    from transformer_lens.tools.analysis.sparse_probing import SparseProbeConvergenceError

    n_repeats = _check_repeats(n_repeats)
    pr = _prepare(X, labels, k, groups, seed, test_fraction, scale, std_floor)
    y, d, k, g, train, test, Z = pr.y, pr.d, pr.k, pr.groups, pr.train, pr.test, pr.Z
    rng = np.random.default_rng([seed, 2])
    preds, failed = [], 0
    for _ in range(n_repeats):
        S = np.sort(rng.choice(d, size=k, replace=False))
        try:
            tl = _tl_fit(Z, y, S, k, g, seed, test_fraction, l2_strength)
        except SparseProbeConvergenceError:
            failed += 1
            continue
        preds.append(_predict(Z, test, S, tl, S))
    label = name or f"random-neurons F1 L{layer} k={k}"
    return _control_measurement(label, y[test], preds, test, failed, model=model, seed=seed,
                                resamples=resamples, level=level,
                                provenance={"control": "random neurons", "k": k, "layer": layer,
                                            "n_repeats": n_repeats, "source": SOURCE})


@_configurable(_CONFIG_FIELDS)
def shuffled_labels_f1(model: Any, texts: Any, labels: Any = None, *, layer: int, k: int,
                       method: str = "mean_diff", n_repeats: int = 10, seed: int = 0,
                       pooling: str = "mean", groups: Sequence[int] | None = None,
                       activations: Any = None, **kw: Any) -> Measurement:
    """Null control on the model: see :func:`shuffled_f1_features`."""
    _check_method(method)
    feats = collect(model, texts, labels, layer=layer, pooling=pooling, groups=groups,
                    activations=activations)
    return shuffled_f1_features(feats.X, feats.labels, k=k, method=method, groups=feats.groups,
                                n_repeats=n_repeats, seed=seed, model=feats.model, layer=feats.layer, **kw)


@_configurable(_NO_SELECTION)
def random_neurons_f1(model: Any, texts: Any, labels: Any = None, *, layer: int, k: int,
                      n_repeats: int = 20, seed: int = 0, pooling: str = "mean",
                      groups: Sequence[int] | None = None, activations: Any = None,
                      **kw: Any) -> Measurement:
    """Control on the model: ``k`` random neurons of the layer, see :func:`random_f1_features`."""
    feats = collect(model, texts, labels, layer=layer, pooling=pooling, groups=groups,
                    activations=activations)
    return random_f1_features(feats.X, feats.labels, k=k, groups=feats.groups, n_repeats=n_repeats,
                              seed=seed, model=feats.model, layer=feats.layer, **kw)


@_configurable(_CONFIG_FIELDS)
def embedding_control(model: Any, texts: Any, labels: Any = None, *, k: int, method: str = "mean_diff",
                      seed: int = 0, pooling: str = "mean", groups: Sequence[int] | None = None,
                      activations: Any = None, site: str = "embed", name: str | None = None,
                      **kw: Any) -> Measurement:
    """Control for **input identity**: the same probe (``k``, ``method``, ``seed``, split,
    pooling, scaling) on the token embeddings instead of the MLP neurons; held-out F1.

    Random neurons are not a control for what the input tokens alone give away: when the
    classes use different words (French vs English), a neuron of an *untrained* model, a
    random function of the tokens, can beat random neurons. A neuron that carries more than
    token identity should beat this control; ``margin(probe_result, embedding_control(...))``
    is paired (same held-out rows). ``site``: ``"embed"`` (``hook_embed``, the token
    embeddings only) or ``"resid_pre0"`` (the residual stream entering block 0: plus
    learned positions where the model has them). ``k`` must not exceed ``d_model``.

    Limits: a k-sparse probe on embedding *dimensions* is a control at equal probe size, not
    an upper bound on what token identity gives (a nonlinear function of the tokens can do
    more); see also the same architecture with random weights (``make_tiny_checkpoint`` for
    tiny models)."""
    _check_method(method)
    if site not in CONTROL_SITES:
        raise ProbingError(bad("site", site, f"one of {list(CONTROL_SITES)}"))
    hook = H.EMBED if site == "embed" else H.resid_pre(0)
    feats = _collect(model, texts, labels, hook=hook, layer=-1, pooling=pooling, groups=groups,
                     activations=activations, name=None)
    d = int(feats.X.shape[1])
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > d:
        raise ProbingError(bad("k", k, f"at most the embedding width d_model={d} for the embedding control"))
    label = name or f"embedding-control F1 k={k} {method}"
    record = kw.pop("record", True)
    r = probe_features(feats.X, feats.labels, k=k, method=method, groups=feats.groups, seed=seed,
                       layer=-1, pooling=pooling, model=feats.model, name=label, record=False, **kw)
    prov = dict(r.f1.provenance)
    prov.pop("neurons", None)
    prov.update(control=f"input identity: the same probe on {hook} (pooling {pooling!r})",
                dimensions=[int(n.index) for n in r.neurons], site=site, layer=None)
    m = dataclasses.replace(r.f1, provenance=prov)
    if record:
        _record(m)
    return m


def shuffled_weights_copy(model: Any, *, seed: int = 0) -> Any:
    """A copy of ``model`` whose every parameter tensor has its entries permuted (seeded):
    the same architecture, tokenizer and weight scales, none of the learned structure. Tokens
    stay distinct (each keeps an embedding), so its neurons are random functions of the input.
    The copy gets its own fingerprint (``<weights>+shuffled-weights:<seed>``), so its
    activations are never cached as the model's; ``model`` itself is not changed.

    Built where the model's weights are: each permutation is drawn by a generator on the
    parameter's own device (``torch.randperm(..., device=...)``), never moved through the
    CPU. On the CPU the draws are those of one CPU generator, in parameter order (the copies
    of earlier versions, bit for bit); on another device they are that device's generator's,
    a different draw, so the fingerprint names the device (``...:<seed>:cuda``). Built once
    per process per (fingerprint, seed): a later call returns the same copy, shared (use it
    as a model, never change it); at most :data:`KEEP_SHUFFLED_COPIES` (and
    :data:`KEEP_SHUFFLED_BYTES` of weights) are kept."""
    import copy

    import torch

    from ..models import attach_info, info as model_info

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ProbingError(bad("seed", seed, "an int"))
    mi = model_info(model)     # ModelUnavailable for a model not loaded by pytest-circuits
    fingerprint = _shuffled_fingerprint(model, mi, int(seed))
    with _SHUFFLED_LOCK:
        got = _SHUFFLED.get(fingerprint)
        if got is not None:
            _SHUFFLED.move_to_end(fingerprint)
            return got
    state = int(np.random.SeedSequence([int(seed), 5]).generate_state(1)[0])
    source = list(model.parameters())
    generators = {dev: torch.Generator(device=dev).manual_seed(state) for dev in {p.device for p in source}}

    def draw(p: Any) -> Any:
        return torch.randperm(p.numel(), generator=generators[p.device], device=p.device)

    # One thread draws the permutations, in parameter order (so each generator's draws are those
    # of a loop), ahead by at most SHUFFLE_AHEAD entries (or two parameters); meanwhile this one
    # copies the model, then gathers each parameter's entries straight into the copy. The draws
    # were 60% of the time to build a copy, and no longer wait for the rest.
    with ThreadPoolExecutor(1, thread_name_prefix="shuffled-weights") as pool:
        ahead = iter(source)
        jobs: deque = deque()

        def refill() -> None:
            while len(jobs) < 2 or sum(n for _, n in jobs) < SHUFFLE_AHEAD:
                p = next(ahead, None)
                if p is None:
                    return
                jobs.append((pool.submit(draw, p), p.numel()))

        refill()
        dup = copy.deepcopy(model)
        targets = list(dup.parameters())
        if [t.shape for t in targets] != [p.shape for p in source]:
            raise ProbingError(f"the copy of {mi.label} does not have the model's parameters, in order")
        with torch.no_grad():
            for src, dst in zip(source, targets):
                perm = jobs.popleft()[0].result()
                refill()
                flat = src.detach().reshape(-1)
                if dst.data.is_contiguous():
                    torch.index_select(flat, 0, perm, out=dst.data.view(-1))
                else:
                    dst.data.copy_(flat[perm].reshape(dst.shape))
    attach_info(dup, dataclasses.replace(mi, fingerprint=fingerprint))
    with _SHUFFLED_LOCK:
        _SHUFFLED[fingerprint] = dup
        held = lambda: sum(sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
                           for m in _SHUFFLED.values())
        while len(_SHUFFLED) > 1 and (len(_SHUFFLED) > KEEP_SHUFFLED_COPIES or held() > KEEP_SHUFFLED_BYTES):
            _SHUFFLED.popitem(last=False)
    return dup


# permutation entries drawn ahead of the copy being filled (int64: 512 MB)
SHUFFLE_AHEAD = 1 << 26

# shuffled copies built in this process, by fingerprint (the control of two claims on one
# model uses the same copies): at most this many and this many bytes of weights (the newest
# is always kept), the least recently used dropped first
KEEP_SHUFFLED_COPIES = 4
KEEP_SHUFFLED_BYTES = 3 << 30
_SHUFFLED: "OrderedDict[str, Any]" = OrderedDict()
_SHUFFLED_LOCK = threading.Lock()


def _shuffled_fingerprint(model: Any, mi: Any, seed: int) -> str:
    """The fingerprint of ``model``'s shuffled copy with ``seed``: the model's, the seed, and
    the devices whose generators draw the permutations when any is not the CPU."""
    devices = sorted({p.device.type for p in model.parameters()} - {"cpu"})
    return f"{mi.fingerprint}+shuffled-weights:{seed}" + "".join(f":{d}" for d in devices)


class _DeferredCopy:
    """Stands for ``shuffled_weights_copy(model, seed=seed)`` and makes it on first use of
    anything but the configuration, tokenizer and hook names (the copy's are the model's):
    its cache key needs only its fingerprint, so a run whose activations of the copy are
    cached never builds it (about 5 s and a copy of the weights for SmolLM2)."""

    _SHARED = ("cfg", "tokenizer", "hook_dict")

    def __init__(self, model: Any, seed: int) -> None:
        from ..models import attach_info, info as model_info

        mi = model_info(model)
        self._base, self._seed, self._made = model, seed, None
        attach_info(self, dataclasses.replace(mi, fingerprint=_shuffled_fingerprint(model, mi, int(seed))))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_base", "_seed", "_made", "_copy"):
            raise AttributeError(name)
        if name in self._SHARED:
            return getattr(self._base, name)
        return getattr(self._copy(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._copy()(*args, **kwargs)

    def _copy(self) -> Any:
        if self._made is None:
            self._made = shuffled_weights_copy(self._base, seed=self._seed)
        return self._made


@_configurable()
def random_weights_control(model: Any, texts: Any, labels: Any = None, *, layer: int, k: int,
                           method: str = "mean_diff", n_models: int = 3, seed: int = 0, pooling: str = "mean",
                           groups: Sequence[int] | None = None, activations: Any = None,
                           name: str | None = None, test_fraction: float = 0.3, scale: bool = True,
                           std_floor: float = 1e-3, l2_strength: float = 1e-2, bins: int = 10,
                           resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL) -> Measurement:
    """Control for **input identity**: the same probe (layer, ``k``, ``method``, ``seed`` and
    so split, pooling, selection) on ``n_models`` copies of the model with shuffled weights
    (:func:`shuffled_weights_copy`); mean held-out F1 over the copies.

    A neuron found by selecting the best of ``d_mlp`` on a model that has learned nothing
    shows what token identity and the architecture give by themselves: when the classes use
    different words, that is well above random neurons. ``margin(probe_result, control)`` is
    paired (same held-out rows); its interval covers the held-out examples and the copies.
    Cost: one forward of the texts per copy (a copy of the weights in memory at a time)."""
    _check_method(method)
    n_models = _check_repeats(n_models)
    layer = _check_layer(model, layer)
    preds, y_test, test_rows, mlabel = [], None, None, ""
    for j in range(n_models):
        dup = _DeferredCopy(model, int(np.random.SeedSequence([int(seed), 6, j]).generate_state(1)[0]))
        feats = collect(dup, texts, labels, layer=layer, pooling=pooling, groups=groups, activations=activations)
        r = probe_features(feats.X, feats.labels, k=k, method=method, groups=feats.groups, seed=seed,
                           test_fraction=test_fraction, scale=scale, std_floor=std_floor,
                           l2_strength=l2_strength, bins=bins, layer=layer, pooling=pooling,
                           model=feats.model, resamples=16, record=False)
        del dup
        f1 = r.f1
        y_test, test_rows, mlabel = np.asarray(f1.y_test), np.asarray(f1.test_rows), feats.model
        preds.append(np.asarray(f1.predictions[0], dtype=np.int8))
    label = name or f"shuffled-weights F1 L{layer} k={k} {method}"
    return _control_measurement(label, y_test, preds, test_rows, 0, model=mlabel, seed=seed,
                                resamples=resamples, level=level,
                                provenance={"control": "input identity: the same probe on copies of the model "
                                                       "with each weight tensor's entries shuffled",
                                            "method": method, "k": k, "layer": layer, "n_models": n_models,
                                            "source": SOURCE})


def _check_repeats(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ProbingError(bad("n_repeats", n, "a positive int"))
    return int(n)


# ----------------------------------------------------------------------------- F1 intervals
# The Bayesian bootstrap of F1 lives in the statistics module; these names are kept for callers.
_f1_counts = stats.f1_counts
_f1_stats = stats.f1_stats
_draw_weights = stats.f1_weights
_contributions = stats.f1_contributions
_stat_draws = stats.f1_draws


def _encode(preds: np.ndarray) -> tuple[str, ...]:
    return tuple("".join("1" if v else "0" for v in row) for row in preds)


def _build(name: str, values: np.ndarray, lo: float, hi: float, level: float, model: str,
           prov: dict[str, Any], record: bool = True, **typed: Any) -> Measurement:
    """A Measurement whose interval was computed here (F1 is not a mean of its values), recorded
    for the claim's summary as :meth:`Measurement.from_values` records its own; with ``typed``
    (y_test, predictions, test_rows) an :class:`F1Measurement`."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise MeasurementError(bad("values", f"non-finite F1 values for {name!r}", "finite numbers"))
    mean = float(values.mean())
    # The interval can (rarely) sit beside the observed F1; widen it to hold it.
    cls = F1Measurement if typed else Measurement
    lower, upper = float(min(lo, mean)), float(max(hi, mean))
    # A zero-width interval says "no uncertainty"; say why instead (as from_values does).
    flags = (("zero-width: every resample gave the same value",) if upper - lower <= 1e-12 * max(1.0, abs(mean))
             else ())
    m = cls(name=name, values=tuple(float(v) for v in values), mean=mean, lower=lower, upper=upper,
            level=level, n=int(values.shape[0]), model=model, provenance=prov, flags=flags,
            ratio=True, **typed)
    if record:
        _record(m)
    return m


def _record(m: Measurement) -> None:
    for rec in _RECORDERS:
        rec.append(m)


def _f1_measurement(name: str, y: np.ndarray, preds: np.ndarray, test_rows: np.ndarray, *,
                    model: str, seed: int, resamples: int, level: float,
                    provenance: dict[str, Any], record: bool = True) -> Measurement:
    preds = np.asarray(preds, dtype=np.int8).reshape(-1, y.shape[0])
    level = _level(level)
    values = stats.f1_contributions(y, preds)
    lo, hi = stats.f1_interval(y, preds, level, resamples, seed)
    prov = dict(provenance)
    prov["interval"] = (f"{level:.0%} Bayesian bootstrap of F1 over held-out examples"
                        + (" and repeats" if preds.shape[0] > 1 else "")
                        + f", Jeffreys pseudo-counts on TP/FP/FN, {resamples} draws, seed {seed}")
    prov["metric"] = "F1 = 2TP/(2TP+FP+FN), positive class, logit >= 0"
    prov["test_rows"] = tuple(int(i) for i in test_rows)
    prov["y_test"] = "".join("1" if v else "0" for v in y)
    prov["predictions"] = _encode(preds)
    return _build(name, values, lo, hi, level, model, prov, record,
                  y_test=tuple(int(v) for v in y), predictions=tuple(tuple(int(v) for v in row) for row in preds),
                  test_rows=tuple(int(i) for i in test_rows))


def _control_measurement(name: str, y: np.ndarray, preds: list[np.ndarray], test_rows: np.ndarray,
                         failed: int, *, model: str, seed: int, resamples: int, level: float,
                         provenance: dict[str, Any]) -> Measurement:
    if not preds:
        raise ProbingError(f"{name}: every control fit failed to converge ({failed} repeats)")
    prov = dict(provenance)
    prov["failed_repeats"] = failed
    return _f1_measurement(name, y, np.stack(preds), test_rows, model=model, seed=seed,
                           resamples=resamples, level=level, provenance=prov)


def _f1_data(x: Any) -> tuple[Measurement, np.ndarray, np.ndarray, tuple[int, ...]]:
    m = x.f1 if isinstance(x, ProbeResult) else x
    if isinstance(m, F1Measurement) and m.predictions:
        return (m, np.asarray(m.y_test, dtype=np.int8), np.asarray(m.predictions, dtype=np.int8),
                tuple(m.test_rows))
    # A plain Measurement carrying the same data as text (e.g. rebuilt from a report).
    p = m.provenance if isinstance(m, Measurement) else {}
    if not all(key in p for key in ("predictions", "y_test", "test_rows")):
        raise ProbingError(bad("margin operand", type(x).__name__, "a ProbeResult or an F1 Measurement "
                               "from pytest_circuits.techniques.probing"))
    try:
        y = np.array([{"0": 0, "1": 1}[c] for c in p["y_test"]], dtype=np.int8)
        preds = np.array([[{"0": 0, "1": 1}[c] for c in row] for row in p["predictions"]], dtype=np.int8)
        rows = tuple(int(i) for i in p["test_rows"])
    except (KeyError, TypeError, ValueError):
        raise ProbingError(bad("margin operand", m.name, "an F1 Measurement whose provenance holds 0/1 "
                               "strings for y_test and predictions")) from None
    if preds.ndim != 2 or preds.shape[1] != y.shape[0] or len(rows) != y.shape[0] or y.shape[0] == 0:
        raise ProbingError(bad("margin operand", m.name, "an F1 Measurement with one prediction per held-out "
                               "example"))
    return m, y, preds, rows


def margin(a: Any, b: Any, *, name: str | None = None, seed: int = 0,
           resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL) -> Measurement:
    """F1(a) - F1(b) with a bootstrap interval: paired over held-out examples when both were
    read on the same held-out rows, unpaired otherwise (see the module docstring)."""
    ma, ya, pa, ta = _f1_data(a)
    mb, yb, pb, tb = _f1_data(b)
    level = _level(level)
    paired = ta == tb and np.array_equal(ya, yb)
    lo, hi = stats.f1_difference_interval(ya, pa, yb, pb, paired=paired, level=level, resamples=resamples,
                                          seed=seed)
    label = name or f"{ma.name} - {mb.name}"
    if paired:
        values = _contributions(ya, pa) - _contributions(yb, pb)
    else:
        # Unpaired: values are the difference of means spread over a's examples.
        values = _contributions(ya, pa) - ma.mean + (ma.mean - mb.mean)
    prov = {"minuend": repr(ma), "subtrahend": repr(mb), "paired": paired,
            "interval": f"{level:.0%} Bayesian bootstrap of the F1 difference, "
                        f"{'paired over the same held-out examples' if paired else 'sides resampled independently'}"
                        f", repeats resampled, {resamples} resamples, seed {seed}"}
    return _build(label, values, lo, hi, level, ma.model, prov)
