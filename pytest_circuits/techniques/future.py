"""Future-token probes: is the token at ``t + tau`` decodable from the residual stream at ``t``?

After Wu, Morris & Levine 2024 (arXiv:2404.00859), "a probe from the residual at t for the
token at t+τ". A linear probe that beats every predictor which does not look at the hidden
state shows information about a later token is present at ``t`` (whether it was put there
for later use is what myopic training, :mod:`.planning`, asks).

Method, per (layer, tau):

* positions ``t`` of each text with ``t + tau`` inside it (BOS excluded as a position);
  features ``x_t`` = ``hook_resid_post`` of ``layer`` at ``t``; target = the token at ``t + tau``;
* ``folds``-fold cross-validation by **text** (seeded): no text has positions on both sides
  of a split, and every text is held out once;
* classes: the ``n_classes`` most frequent targets in each train split; positions whose target
  is another token are left out (``coverage`` says how many are kept);
* probe: multinomial logistic regression with L2 on train-standardized features, float64:
  on a CPU each fold by a truncated Newton method (:func:`_newton`: conjugate-gradient steps on
  Hessian-vector products, the gradient and line search in float64) to the gradient tolerance
  L-BFGS was given, with L-BFGS as the fallback; on a GPU the folds' fits are solved together
  by full-batch L-BFGS as one batched objective, each fold's parameters in its own term;
* baselines that see no hidden state, fitted on the same train positions: **unigram** (the most
  frequent class) and **bigram** (the most frequent target after the current token, backing off
  to unigram for unseen tokens); the better of the two on the test split is "the baseline";
* measurements over held-out **texts** (the independent units): per-text accuracy of the probe
  and of the baseline, and the paired per-text margin (probe - baseline).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from .. import hooks as H
from ..store import ActivationStore, resolve
from ..errors import CircuitsError, bad
from ..measurement import Measurement
from ..models import info as model_info
from ..prompts import PromptSet

SOURCE = "arXiv:2404.00859"


@dataclass(frozen=True, eq=False)
class FutureProbe:
    layer: int
    tau: int
    accuracy: Measurement       # probe, per held-out text
    baseline: Measurement       # best no-hidden-state baseline, per held-out text
    margin: Measurement         # paired probe - baseline
    baseline_kind: str          # "bigram" or "unigram"
    n_classes: int
    n_train_positions: int      # per fold, on average
    n_test_positions: int       # over all folds
    coverage: float             # fraction of positions whose target is one of the classes

    def __repr__(self) -> str:
        return (f"FutureProbe(layer {self.layer}, tau {self.tau}: accuracy {self.accuracy.mean:.3f} vs "
                f"{self.baseline_kind} {self.baseline.mean:.3f}, margin {self.margin.mean:+.3f} "
                f"[{self.margin.lower:+.3f}, {self.margin.upper:+.3f}], {self.n_classes} classes, "
                f"{self.n_test_positions} test positions, coverage {self.coverage:.2f})")


def collect(model: Any, texts: Sequence[str], *, layer: int, tau: int,
            activations: ActivationStore | None = None) -> tuple[Any, Any, Any, Any]:
    """``(X [N, d], current [N], future [N], text index [N])`` for every usable position."""
    return _collect_layers(model, texts, layers=[layer], tau=tau, activations=activations)[0]


def _collect_layers(model: Any, texts: Sequence[str], *, layers: Sequence[int], tau: int,
                    activations: ActivationStore | None = None) -> list[tuple[Any, Any, Any, Any]]:
    """:func:`collect` for each of ``layers``, their residual streams read in one request
    (one forward for all the layers the store lacks)."""
    import torch

    if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
        raise CircuitsError(bad("tau", tau, "an int >= 1 (tokens ahead)"))
    for layer in layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise CircuitsError(bad("layer", layer, f"0..{model.cfg.n_layers - 1}"))
    store = resolve(activations)
    ps = PromptSet.build(model, list(texts), name=f"future-probe:{len(texts)}")
    names = [H.resid_post(layer) for layer in layers]
    acts = store.get(model, ps, names)
    rows, cur, fut, grp = [], [], [], []
    for i, n in enumerate(ps.lengths):
        for t in range(1, n - tau):      # position 0 is BOS
            rows.append((i, t))
            cur.append(int(ps.tokens[i, t]))
            fut.append(int(ps.tokens[i, t + tau]))
            grp.append(i)
    if not rows:
        raise CircuitsError(f"no text is longer than tau={tau} tokens")
    idx = torch.tensor(rows)
    cur_t, fut_t, grp_t = torch.tensor(cur), torch.tensor(fut), torch.tensor(grp)
    return [(acts[name][idx[:, 0], idx[:, 1]].double(), cur_t, fut_t, grp_t) for name in names]


def _folds(X: Any, current: Any, future: Any, groups: Any, tests: Sequence[Any], n_classes: int, l2: float,
           store: ActivationStore | None = None, device: Any = None) -> list[dict]:
    """:func:`_fold` for each of ``tests``: each cached by the store (an L-BFGS fit is most of
    a warm run's work), those missing fitted together at the first miss (:func:`_fit_folds`)."""
    solved: list[list[dict]] = []

    def compute(k: int) -> dict:
        if not solved:
            solved.append(_fit_folds(X, current, future, groups, tests, n_classes, l2, device))
        return _packed(solved[0][k])

    return [_fold(X, current, future, groups, is_test, n_classes, l2, store, lambda k=k: compute(k))
            for k, is_test in enumerate(tests)]


def _fold(X: Any, current: Any, future: Any, groups: Any, is_test: Any, n_classes: int, l2: float,
          store: ActivationStore | None = None, compute: Any = None) -> dict:
    """:func:`_fit_fold`, cached by the store (an L-BFGS fit is most of a warm run's work)."""
    got = resolve(store).derived(
        "future_probe.fold", [X, current, future, groups, is_test], {"n_classes": n_classes, "l2": l2},
        ("probe", "bigram", "unigram", "sizes"),
        compute or (lambda: _packed(_fit_fold(X, current, future, groups, is_test, n_classes, l2))))
    train, test, classes, coverage = got["sizes"].tolist()
    return {"probe": got["probe"], "bigram": got["bigram"], "unigram": got["unigram"], "train": int(train),
            "test": int(test), "classes": int(classes), "coverage": float(coverage)}


def _packed(fold: dict) -> dict:
    import torch

    sizes = torch.tensor([fold["train"], fold["test"], fold["classes"], fold["coverage"]], dtype=torch.float64)
    return {"probe": fold["probe"], "bigram": fold["bigram"], "unigram": fold["unigram"], "sizes": sizes}


def _prepare(X: Any, future: Any, is_test: Any, n_classes: int) -> dict:
    """One fold's classes (the ``n_classes`` most frequent train targets), labels, train/test
    rows and train-standardized features."""
    import torch

    counts = Counter(future[~is_test].tolist())
    classes = [tok for tok, _ in counts.most_common(n_classes)]
    if len(classes) < 2:
        raise CircuitsError("fewer than 2 distinct future tokens in a train split")
    index = {tok: k for k, tok in enumerate(classes)}
    keep = torch.tensor([int(f) in index for f in future])
    y = torch.tensor([index.get(int(f), -1) for f in future])
    tr, te = keep & ~is_test, keep & is_test
    mu, sd = X[tr].mean(0), X[tr].std(0).clamp_min(1e-6)
    return {"classes": classes, "keep": keep, "y": y, "tr": tr, "te": te, "Z": (X - mu) / sd}


# torch's L-BFGS defaults (today's per-fold criteria), on the sum of the folds' objectives
_MAX_ITER, _TOL = 2000, (1e-7, 1e-9)


def _solve(folds: Sequence[dict], l2: float, device: Any = None) -> list[tuple[Any, Any]]:
    """``(W [d, C_f], b [C_f])`` of each fold's L2-penalized multinomial logistic regression,
    all folds solved together: one objective, the sum of the folds' own (each fold's
    parameters enter only its term, so the minimum of the sum is each fold's minimum), with
    every fold's train rows and classes padded into one ``[folds, rows, classes]`` batch.
    Full-batch L-BFGS (float64, strong Wolfe) to a tight gradient tolerance: a few hundred
    batched steps instead of a few hundred per fold, each of them a handful of kernels. On
    ``device`` (the CPU by default); the parameters come back on the CPU."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    F_, d = len(folds), folds[0]["Z"].shape[1]
    C = max(len(f["classes"]) for f in folds)
    rows = [int(f["tr"].sum()) for f in folds]
    n = max(rows)
    Z = torch.zeros(F_, n, d, dtype=torch.float64)
    y = torch.zeros(F_, n, dtype=torch.long)
    weight = torch.zeros(F_, n, dtype=torch.float64)
    absent = torch.zeros(F_, 1, C, dtype=torch.float64)
    for k, f in enumerate(folds):
        Z[k, :rows[k]] = f["Z"][f["tr"]]
        y[k, :rows[k]] = f["y"][f["tr"]]
        weight[k, :rows[k]] = 1.0 / rows[k]          # each fold's mean cross-entropy
        absent[k, 0, len(f["classes"]):] = float("-inf")
    Z, y, weight, absent = Z.to(dev), y.to(dev), weight.to(dev), absent.to(dev)
    W = torch.zeros(F_, d, C, dtype=torch.float64, device=dev, requires_grad=True)
    b = torch.zeros(F_, 1, C, dtype=torch.float64, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=_MAX_ITER, history_size=100, tolerance_grad=_TOL[0],
                            tolerance_change=_TOL[1], line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        logp = (torch.baddbmm(b, Z, W) + absent).log_softmax(-1)
        nll = -logp.gather(2, y.unsqueeze(-1)).squeeze(-1)
        loss = (nll * weight).sum() + l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return [(W[k, :, :len(f["classes"])].detach().cpu(), b[k, 0, :len(f["classes"])].detach().cpu())
            for k, f in enumerate(folds)]


# the truncated Newton solver: at most this many Newton steps, conjugate-gradient steps per
# Newton step, and halvings of a step in its line search
_NEWTON_STEPS, _CG_STEPS, _HALVINGS = 60, 250, 40


def _newton(fold: dict, l2: float) -> tuple[Any, Any] | None:
    """``(W [d, C], b [C])`` of one fold's objective (:func:`_solve`'s, alone) by a truncated
    Newton method, or None where it does not reach the gradient tolerance (the caller then
    runs L-BFGS). Each Newton step solves ``H x = -g`` approximately by conjugate gradients
    on Hessian-vector products (two ``[rows, d] x [d, C]`` products each; float32, since only
    the step's direction depends on them), to a relative residual ``min(0.5, sqrt(|g|))``
    (superlinear near the optimum); the objective, its gradient, the Armijo line search and
    the stopping test ``max |g| <= 1e-7`` (L-BFGS's ``tolerance_grad``) are float64. No
    history of past steps is kept: on a CPU L-BFGS's 100 stored pairs of 28,800 parameters
    cost more per step than the products themselves."""
    import torch

    Z, y = fold["Z"][fold["tr"]], fold["y"][fold["tr"]]
    n, d = Z.shape
    C = len(fold["classes"])
    Y = torch.zeros(n, C, dtype=torch.float64)
    Y[torch.arange(n), y] = 1.0
    Z32 = Z.float()
    W = torch.zeros(d, C, dtype=torch.float64)
    b = torch.zeros(C, dtype=torch.float64)

    def objective(W: Any, b: Any) -> float:
        logp = torch.addmm(b, Z, W).log_softmax(-1)
        return float(-(logp * Y).sum() / n + l2 * (W * W).sum())

    value = objective(W, b)
    for _ in range(_NEWTON_STEPS):
        P = torch.addmm(b, Z, W).softmax(-1)
        R = (P - Y) / n
        gW, gb = Z.T @ R + 2 * l2 * W, R.sum(0)
        if max(float(gW.abs().max()), float(gb.abs().max())) <= _TOL[0]:
            return W, b
        P32 = P.float()

        def hv(V: Any, vb: Any) -> tuple[Any, Any]:
            A = torch.addmm(vb, Z32, V)
            D = P32 * (A - (P32 * A).sum(1, keepdim=True)) / n
            return Z32.T @ D + 2 * l2 * V, D.sum(0)

        rW, rb = -gW.float(), -gb.float()
        xW, xb = torch.zeros_like(rW), torch.zeros_like(rb)
        pW, pb = rW.clone(), rb.clone()
        rr = float((rW * rW).sum() + (rb * rb).sum())
        stop = min(0.5, rr ** 0.25) * rr ** 0.5
        for _ in range(_CG_STEPS):
            hW, hb = hv(pW, pb)
            curvature = float((pW * hW).sum() + (pb * hb).sum())
            if not curvature > 0:
                break
            a = rr / curvature
            xW.add_(pW, alpha=a)
            xb.add_(pb, alpha=a)
            rW.sub_(hW, alpha=a)
            rb.sub_(hb, alpha=a)
            new = float((rW * rW).sum() + (rb * rb).sum())
            if new ** 0.5 <= stop:
                break
            pW, pb = rW + (new / rr) * pW, rb + (new / rr) * pb
            rr = new
        sW, sb = xW.double(), xb.double()
        slope = float((gW * sW).sum() + (gb * sb).sum())
        if not slope < 0:
            return None
        t = 1.0
        for _ in range(_HALVINGS):
            trial = objective(W + t * sW, b + t * sb)
            if trial <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            return None
        W, b, value = W + t * sW, b + t * sb, trial
    return None


def _together(device: Any) -> bool:
    """Whether the folds are solved together on ``device``: on a GPU, where a step of all
    folds costs what a step of one does; on a CPU the joint objective (whose L-BFGS steps
    are shared by folds that would each stop sooner alone) costs more, so each fold is
    solved alone there (:func:`_newton`)."""
    import torch

    return device is not None and torch.device(device).type == "cuda"


def _fit_folds(X: Any, current: Any, future: Any, groups: Any, tests: Sequence[Any], n_classes: int,
               l2: float, device: Any = None) -> list[dict]:
    """Fit on the rows not in each of ``tests``; per-text probe / bigram / unigram accuracy on
    the rest (each fold alone by :func:`_newton`, L-BFGS where it fails; on a GPU ``device``
    the fits are solved together there by L-BFGS, :func:`_together`)."""
    folds = [_prepare(X, future, is_test, n_classes) for is_test in tests]
    solved = _solve(folds, l2, device) if _together(device) else [_newton(f, l2) or _solve([f], l2)[0]
                                                                    for f in folds]
    return [_score(f, W, b, current, groups) for f, (W, b) in zip(folds, solved)]


def _fit_fold(X: Any, current: Any, future: Any, groups: Any, is_test: Any, n_classes: int, l2: float) -> dict:
    """Fit on the rows not in ``is_test``; per-text probe / bigram / unigram accuracy on the rest."""
    return _fit_folds(X, current, future, groups, [is_test], n_classes, l2)[0]


def _score(f: dict, W: Any, b: Any, current: Any, groups: Any) -> dict:
    import torch

    y, tr, te, Z = f["y"], f["tr"], f["te"], f["Z"]
    with torch.no_grad():
        pred = (Z[te] @ W + b).argmax(-1)
    by_cur: dict[int, Counter] = {}
    for c, t in zip(current[tr].tolist(), y[tr].tolist()):
        by_cur.setdefault(c, Counter())[t] += 1
    bigram = torch.tensor([by_cur[c].most_common(1)[0][0] if c in by_cur else 0 for c in current[te].tolist()])
    g_te = groups[te]
    units = torch.unique(g_te)

    def per_text(ok: Any) -> Any:
        return torch.stack([ok[g_te == u].double().mean() for u in units])

    return {"probe": per_text(pred == y[te]), "bigram": per_text(bigram == y[te]),
            "unigram": per_text(y[te] == 0), "train": int(tr.sum()), "test": int(te.sum()),
            "classes": len(f["classes"]), "coverage": float(f["keep"].double().mean())}


def fit(X: Any, current: Any, future: Any, groups: Any, *, n_classes: int = 50, folds: int = 5,
        l2: float = 1e-3, seed: int = 0, layer: int = -1, tau: int = 0, model: str = "",
        record: bool = True, activations: ActivationStore | None = None, device: Any = None) -> FutureProbe:
    """The probe and baselines on given arrays, cross-validated over ``folds`` folds of texts:
    every text is held out once, and the per-text results of all folds are pooled. The fits
    run on ``device`` (None: the CPU); on a GPU all folds are solved together."""
    import torch

    texts = torch.unique(groups)
    if not isinstance(folds, int) or folds < 2 or len(texts) < 2 * folds:
        raise CircuitsError(bad("folds", folds, f"an int >= 2 with at least 2 texts per fold ({len(texts)} texts)"))
    perm = texts[torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))]
    parts = _folds(X, current, future, groups, [torch.isin(groups, perm[k::folds]) for k in range(folds)],
                   n_classes, l2, activations, device)
    cat = lambda key: torch.cat([p[key] for p in parts])  # noqa: E731
    acc, bigram, unigram = cat("probe"), cat("bigram"), cat("unigram")
    kind, base = ("bigram", bigram) if bigram.mean() >= unigram.mean() else ("unigram", unigram)
    prov = {"layer": layer, "tau": tau, "classes": n_classes, "split": f"{folds}-fold by text, seed {seed}"}
    mk = lambda name, vals: Measurement.from_values(name, vals, model=model, provenance=prov,  # noqa: E731
                                                    record=record)
    return FutureProbe(layer, tau, mk(f"future_probe.accuracy[L{layer},tau={tau}]", acc),
                       mk(f"future_probe.{kind}_accuracy[tau={tau}]", base),
                       mk(f"future_probe.margin[L{layer},tau={tau}]", acc - base), kind,
                       max(p["classes"] for p in parts), sum(p["train"] for p in parts) // folds,
                       sum(p["test"] for p in parts), sum(p["coverage"] for p in parts) / folds)


def future_token_probe(model: Any, texts: Sequence[str], *, layer: int, tau: int = 2, n_classes: int = 50,
                       folds: int = 5, seed: int = 0, activations: ActivationStore | None = None,
                       record: bool = True) -> FutureProbe:
    """Probe the residual stream of ``layer`` at ``t`` for the token at ``t + tau``."""
    X, cur, fut, grp = collect(model, texts, layer=layer, tau=tau, activations=activations)
    mi = model_info(model)
    return fit(X, cur, fut, grp, n_classes=n_classes, folds=folds, seed=seed, layer=layer,
               tau=tau, model=mi.label, record=record, activations=activations, device=mi.device)


def future_token_probes(model: Any, texts: Sequence[str], *, layers: Sequence[int], tau: int = 2,
                        n_classes: int = 50, folds: int = 5, seed: int = 0,
                        activations: ActivationStore | None = None, record: bool = True) -> list[FutureProbe]:
    """:func:`future_token_probe` at each of ``layers`` (in the order given), the residual
    streams of all of them from one forward of the texts; each result equals that of
    :func:`future_token_probe` at its layer."""
    layers = list(layers)
    if not layers:
        raise CircuitsError(bad("layers", layers, "a non-empty list of layers"))
    mi = model_info(model)
    data = _collect_layers(model, texts, layers=layers, tau=tau, activations=activations)
    return [fit(X, cur, fut, grp, n_classes=n_classes, folds=folds, seed=seed, layer=layer, tau=tau,
                model=mi.label, record=record, activations=activations, device=mi.device)
            for layer, (X, cur, fut, grp) in zip(layers, data)]
