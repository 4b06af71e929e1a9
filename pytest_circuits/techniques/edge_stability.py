"""Stability of edge discovery under resampling of the prompts, as a measurement (#26).

Discovery (:func:`~pytest_circuits.techniques.edges.discover`, the rule of
:func:`~pytest_circuits.techniques.edges.edge_circuit`) keeps edge ``e`` when its mean effect
(exact, from :func:`~pytest_circuits.techniques.edges.edge_patch`) or mean score (EAP / EAP-IG,
from :func:`~pytest_circuits.techniques.edges.edge_attribution`) is at least ``threshold`` of
the whole corruption's mean effect, in absolute value. :func:`stability` re-runs it on ``B``
seeded bootstrap resamples of the prompts (``n`` indices drawn with replacement). Nothing is
recomputed: the per-prompt values were computed once; a resample only re-weights the prompts
(weight = how often each was drawn, over ``n``), so ``B`` resamples cost one matrix product,
no forward of the model.

What is reported:

* each edge's **inclusion frequency**: the share of the ``B`` resampled discoveries that keep
  it, a :class:`~pytest_circuits.measurement.Measurement` with the exact Clopper-Pearson
  interval of a proportion over the ``B`` resamples (20 of 20 gives ``1 [0.832, 1]``). The
  resamples are not independent experiments: they are draws from the one set of prompts, so
  the interval describes how discovery varies under resampling of these prompts (the
  bootstrap's stand-in for new prompts), at ``B`` draws; it is not a statement about new
  tasks or models. Nor about new prompts: it counts only the resamples' Monte-Carlo error
  (measured by ``bench/inclusion_coverage.py``: its lower bound is at or below the probability
  that a new sample keeps the edge in only 68-86% of cases);
* each edge's **inclusion on new prompts** (:meth:`Stability.new_prompts`): the probability
  that discovery on a new sample of as many prompts keeps it, from the per-prompt margins of
  the rule, with an interval whose lower bound held in 97-99% of cases in the same bench;
* the circuit's **Jaccard stability**: the expected Jaccard overlap ``|A & B| / |A | B|``
  between the edge sets of two resampled discoveries. The ``B`` resamples are split into
  ``B // 2`` disjoint pairs (resample 0 with 1, 2 with 3, ...), whose Jaccard values are
  independent given the prompts; their mean and its interval are a Measurement (the
  continuous interval of :meth:`~pytest_circuits.measurement.Measurement.from_values`, cut
  to [0, 1] where its t-part reaches beyond). The mean over all ``B (B - 1) / 2`` pairs
  (lower variance, no interval: the pairs share resamples) is ``jaccard_all_pairs``. **Two empty sets have no Jaccard overlap**: such a pair
  is left out (counted in ``undefined``), and when every pair is, ``jaccard`` is None and the
  report says ``n/a`` (neither 1, "equally empty", nor 0). One empty set against a non-empty
  one is 0;
  **What its interval covers** (measured by ``bench/jaccard_coverage.py`` on synthetic
  populations with a known answer, docs/measured.md): the overlap of two resamples of *these*
  prompts in 86-99% of samples at ``B = 20``; not the overlap of the circuits found on two *new*
  samples of ``n`` prompts: its lower bound is at or below that in only 80-91% of samples at
  ``B = 20``, 43% at ``B = 60`` (the interval narrows with ``B``, the bootstrap's bias does not).
  It is a statement about these prompts. For new prompts, draw two prompt sets independently,
  pass them as two tasks and assert on the overlap across them: its lower bound was at or below
  the new-prompts overlap in 92.5-98.5% of samples;
* with several tasks (templates, paraphrases: one source each), each resample draws every
  task's prompts independently and discovers per task; frequencies pool every (task,
  resample) discovery (``frequency(edge, task=...)`` reads one task's), and ``jaccard`` is the
  overlap *across* tasks: per resample, the mean Jaccard over pairs of tasks, ``B`` values
  independent given the prompts. ``per_task`` holds each task's own :class:`Stability`.

Claims assert on bounds: ``st.assert_new_prompts_above("L0H0->L1H0.v", 0.9)`` (new prompts),
``st.frequency("L0H0->L1H0.v").assert_above(0.9)`` (or :meth:`Stability.assert_frequency_above`;
these prompts), ``st.assert_jaccard_above(0.7)``. A bound out of
reach at this ``B`` (a lower bound above 0.832 needs more than 20 resamples) says how many
resamples it takes.

Faithfulness under discovery's variance (:func:`faithfulness_under_resampling`): each
resample's discovered circuit, its recovered fraction on the resampled prompts. An edge set's
faithfulness is not the sum of its edges' effects, so every *distinct* discovered circuit is run
once (on all prompts; resamples re-weight its per-prompt metrics): cheap when discovery is
stable, up to ``B`` circuit runs when it is not. The circuits remove whole components (those of
:mod:`~pytest_circuits.techniques.circuits`), not single edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from .. import stats
from ..errors import CircuitsError, MeasurementError, bad
from ..measurement import DEFAULT_LEVEL, Measurement
from ..measurement import record as record_measurement
from .edges import Edge, EdgeScores, EdgeSweep, discover, per_prompt

DEFAULT_RESAMPLES = 20


def resample_weights(n: int, resamples: int, rng: np.random.Generator) -> Any:
    """``[resamples, n]``: each bootstrap resample's count of each prompt, over ``n``."""
    idx = rng.integers(0, n, size=(resamples, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64) / n


def jaccard(a: Any, b: Any) -> float | None:
    """``|a & b| / |a | b|`` of two bool masks (or sets); None when both are empty."""
    if isinstance(a, (set, frozenset)):
        union = len(a | b)
        return None if union == 0 else len(a & b) / union
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int((a | b).sum())
    return None if union == 0 else int((a & b).sum()) / union


@dataclass(frozen=True, eq=False)
class Stability:
    """:func:`stability`'s result. ``kept[d, e]``: whether discovery ``d`` kept ``edges[e]``
    (discoveries ordered resample by resample, tasks within a resample); ``tasks``: the
    sources' task names."""

    edges: tuple[Edge, ...]
    kept: Any                               # [B * T, E] bool
    resamples: int
    threshold: float
    seed: int
    level: float
    tasks: tuple[str, ...]
    jaccard: Measurement | None
    jaccard_all_pairs: float | None
    undefined: int                          # pairs of two empty discoveries, left out
    pairs: int                              # pairs the Jaccard values come from (defined or not)
    per_task: tuple["Stability", ...] = ()
    # per task: (n prompts, lambda+ [E], lambda- [E], t of the totals) of :func:`_margins` (see :meth:`new_prompts`)
    margins: tuple = field(default=(), repr=False, compare=False)
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({e: i for i, e in enumerate(self.edges)})

    # -- frequencies ---------------------------------------------------------------------
    def _col(self, edge: Any) -> int:
        e = Edge.parse(edge)
        if e not in self._index:
            raise CircuitsError(bad("edge", str(e), "an edge of the source (e.g. "
                                    f"{', '.join(map(str, self.edges[:3]))})"))
        return self._index[e]

    @property
    def counts(self) -> Any:
        """``[E]``: how many discoveries kept each edge."""
        return self.kept.sum(0)

    def frequency(self, edge: Any, *, task: str | None = None, record: bool = True) -> Measurement:
        """The share of resampled discoveries that keep ``edge`` (all tasks pooled, or one
        ``task``'s), with its exact Clopper-Pearson interval over the resamples."""
        if task is not None:
            if task not in self.tasks:
                raise CircuitsError(bad("task", task, f"one of {list(self.tasks)}"))
            return self.per_task[self.tasks.index(task)].frequency(edge, record=record) if self.per_task \
                else self.frequency(edge, record=record)
        col = self._col(edge)
        where = "+".join(self.tasks)
        return Measurement.from_values(
            f"inclusion[{Edge.parse(edge)}]", self.kept[:, col].astype(bool), level=self.level, record=record,
            method="clopper-pearson", labels=None,
            provenance={"what": "share of bootstrap resamples of the prompts whose discovery keeps the edge "
                                "(resamples are not independent experiments)", "tasks": where,
                        "resamples": self.resamples, "threshold": self.threshold, "seed": self.seed})

    def frequencies(self) -> dict[Edge, float]:
        """``{edge: share of discoveries keeping it}`` for every edge kept at least once."""
        n = self.kept.shape[0]
        return {self.edges[i]: float(c) / n for i, c in enumerate(self.counts) if c}

    def stable(self, min_frequency: float = 0.9) -> tuple[Edge, ...]:
        """Edges kept by at least ``min_frequency`` of the discoveries (the share itself, not its
        bound: for a claim assert on the bound, :meth:`assert_frequency_above`), most often
        kept first."""
        if not 0 < min_frequency <= 1:
            raise CircuitsError(bad("min_frequency", min_frequency, "a share in (0, 1]"))
        freq = self.frequencies()
        return tuple(sorted((e for e, f in freq.items() if f >= min_frequency - 1e-12),
                            key=lambda e: (-freq[e], e.sort_key())))

    def assert_frequency_above(self, edge: Any, share: float) -> Measurement:
        """Fail unless the lower bound of ``edge``'s inclusion frequency is above ``share``."""
        return self.frequency(edge).assert_above(share)

    def new_prompts(self, edge: Any) -> Measurement:
        """The probability that discovery on a *new* sample of as many prompts (of each task,
        averaged over tasks) keeps ``edge``, with an interval for it: what an inclusion
        frequency is read as, which :meth:`frequency` is not (its interval only counts the
        ``B`` resamples' Monte-Carlo error around a plug-in estimate of this).

        Discovery keeps the edge when the mean of a per-prompt margin is at least 0: ``d_i =
        v_i - threshold * s T_i`` (or ``-v_i - ...`` for a negative mean; ``s`` the sign of the
        corruption's mean effect ``T``). On ``n`` new prompts that mean is about normal with
        sd ``sigma / sqrt(n)``, so the edge is kept with probability ``Phi(lambda)``, ``lambda
        = sqrt(n) mu / sigma`` (both signs added). ``lambda``'s estimate is the margins'
        t statistic; its interval ``t_hat -+ q * sqrt(1 + t_hat^2 / (2 (n - 1)))`` (``q``
        Student's t quantile; the usual approximation for a non-central t), mapped through
        ``Phi``: the lower bound from the estimate's sign alone, the upper bound from both
        signs, each at its share of the error (over tasks, Bonferroni). Coverage on synthetic
        populations with known answers: bench/inclusion_coverage.py, docs/measured.md. Not
        recorded (a function of the margins' mean and spread, not a mean of per-prompt
        values a baseline could follow): assert on it, or on :meth:`frequency` for these
        prompts. It assumes the corruption's mean effect keeps its sign on new prompts: where
        its own t statistic does not show that (below the quantile at the lower bound's
        level), the lower bound is 0 (said in ``provenance["notes"]``); one prompt gives [0, 1];
        margins without spread give [1, 1] or [0, 0] flagged zero-width."""
        col = self._col(edge)
        if not self.margins:
            raise CircuitsError(bad("stability", "without per-prompt margins", "a Stability from stability()"))
        T = len(self.margins)
        alpha = (1.0 - self.level) / T
        est, low, high, notes = [], [], [], []
        flat = False
        for task, (n, plus, minus, sure) in zip(self.tasks, self.margins):
            lp, lm = float(plus[col]), float(minus[col])
            est.append(min(1.0, _phi(lp) + _phi(lm)))
            if n < 2:
                low.append(0.0)
                high.append(1.0)
                notes.append(f"{task}: one prompt, no spread to go by: [0, 1]")
                continue
            dominant = lp if lp >= lm else lm
            flat = flat or math.isinf(dominant)
            if sure < stats.t_ppf(1.0 - alpha / 2, n - 1):
                # the corruption's mean effect may change sign on new prompts: the margins'
                # normal law no longer bounds the rule from below
                low.append(0.0)
                notes.append(f"{task}: the corruption's mean effect is not shown to keep its sign "
                             f"(t = {sure:.2f}): lower bound 0")
            else:
                low.append(_phi(_shift(dominant, n, -alpha / 2)))
            high.append(min(1.0, _phi(_shift(lp, n, alpha / 4)) + _phi(_shift(lm, n, alpha / 4))))
        n_all = sum(m[0] for m in self.margins)
        mean = float(np.mean(est))
        flags = ("zero-width: every prompt's margin equal",) if flat and min(low) == max(high) else ()
        return Measurement(name=f"inclusion_new_prompts[{Edge.parse(edge)}]", values=(), mean=mean,
                           lower=float(np.mean(low)), upper=float(np.mean(high)), level=self.level, n=n_all,
                           provenance={"what": "probability that discovery on a new sample of as many prompts "
                                               "keeps the edge (normal approximation of the mean margin)",
                                       "tasks": "+".join(self.tasks), "prompts": [m[0] for m in self.margins],
                                       "threshold": self.threshold,
                                       "interval": "t statistic of the margins -+ Student-t quantile x "
                                                   "sqrt(1 + t^2 / (2 (n - 1))), through Phi; Bonferroni over "
                                                   "signs and tasks",
                                       "values": "none: a function of the margins' mean and spread (n counts "
                                                 "every task's prompts)", "per_task": est,
                                       **({"notes": notes} if notes else {})},
                           flags=flags, ratio=True)

    def assert_new_prompts_above(self, edge: Any, share: float) -> Measurement:
        """Fail unless the lower bound of :meth:`new_prompts` (the probability that discovery
        on new prompts keeps ``edge``) is above ``share``."""
        return self.new_prompts(edge).assert_above(share)

    def assert_jaccard_above(self, value: float) -> Measurement:
        """Fail unless the lower bound of the Jaccard stability is above ``value``; a
        MeasurementError when it is undefined (every discovery empty)."""
        if self.jaccard is None:
            raise MeasurementError(f"Jaccard stability of {'+'.join(self.tasks)}: n/a, every pair of discoveries "
                                   f"was empty ({self.undefined} of {self.pairs}): nothing was discovered, so "
                                   "there is no overlap to assert on")
        return self.jaccard.assert_above(value)

    # -- reading -------------------------------------------------------------------------
    def _jaccard_text(self) -> str:
        if self.jaccard is None:
            return f"n/a (all {self.pairs} pairs of discoveries empty)"
        j = self.jaccard
        left = f", {self.undefined} of {self.pairs} pairs both empty, left out" if self.undefined else ""
        return f"{j.mean:.3f} [{j.lower:.3f}, {j.upper:.3f}] over {j.n} pairs{left}"

    def table(self, k: int = 10) -> str:
        what = "across tasks" if len(self.tasks) > 1 else "between resamples"
        lines = [f"stability of edge discovery on {'+'.join(self.tasks)}: {self.resamples} bootstrap resamples "
                 f"(seed {self.seed}), keep |mean| >= {self.threshold:g} of the corruption's; Jaccard {what} "
                 f"{self._jaccard_text()}; per edge, the share of resamples keeping it ({self.level:.0%} "
                 f"Clopper-Pearson over resamples: these prompts) and the probability that discovery on a new "
                 f"sample of as many prompts keeps it ({self.level:.0%} interval, new_prompts):"]
        shown = list(self.stable(1e-12))[:k]
        if not shown:
            lines.append("  (no edge discovered in any resample)")
        for e in shown:
            m = self.frequency(e, record=False)
            new = self.new_prompts(e) if self.margins else None
            also = f"   new prompts {new.mean:.2f} [{new.lower:.2f}, {new.upper:.2f}]" if new is not None else ""
            lines.append(f"  {str(e):>18}  resamples {m.mean:.2f} [{m.lower:.2f}, {m.upper:.2f}]{also}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table(5)

    def to_dict(self) -> dict[str, Any]:
        freq = {}
        for e in self.stable(1e-12):
            m = self.frequency(e, record=False)
            freq[str(e)] = {"frequency": m.mean, "lower": m.lower, "upper": m.upper}
            if self.margins:
                new = self.new_prompts(e)
                freq[str(e)]["new_prompts"] = {"estimate": new.mean, "lower": new.lower, "upper": new.upper}
        return {"tasks": list(self.tasks), "resamples": self.resamples, "threshold": self.threshold,
                "seed": self.seed, "level": self.level, "discoveries": int(self.kept.shape[0]),
                "jaccard": None if self.jaccard is None else self.jaccard.to_dict(),
                "jaccard_all_pairs": self.jaccard_all_pairs, "undefined_pairs": self.undefined,
                "pairs": self.pairs, "frequencies": freq,
                "per_task": [s.to_dict() for s in self.per_task]}


def _phi(x: float) -> float:
    """The standard normal CDF (``x`` may be infinite)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _shift(lam: float, n: int, tail: float) -> float:
    """A one-sided bound on the non-centrality ``lambda`` of the t statistic ``lam`` of ``n``
    margins: ``lam + q * sqrt(1 + lam^2 / (2 (n - 1)))`` with ``q`` Student's t quantile of
    ``1 - |tail|``, negative for a lower bound (``tail < 0``). Infinite ``lam`` (margins
    without spread) stays where it is."""
    if not math.isfinite(lam) or n < 2:
        return lam
    q = stats.t_ppf(1.0 - abs(tail), n - 1)
    return lam + math.copysign(q, tail) * math.sqrt(1.0 + lam * lam / (2.0 * (n - 1)))


def _margins(vals: Any, totals: Any, threshold: float) -> tuple[int, Any, Any, float]:
    """``(n, lambda+ [E], lambda- [E], t_T)``: per edge the t statistic ``sqrt(n) mean / sd`` of
    the per-prompt margins of discovery's rule, ``d+_i = v_i - threshold * s T_i`` (kept with
    a positive mean) and ``d-_i = -v_i - threshold * s T_i`` (kept with a negative one), ``s``
    the sign of the corruption's mean effect. Margins without spread give +-inf (0 mean: -inf,
    as discovery needs a nonzero mean); no corruption effect at all gives -inf (nothing kept).
    ``t_T``: the t statistic of the corruption's effects ``|sqrt(n) mean / sd|`` (inf without
    spread, 0 for one prompt): how surely its mean keeps its sign."""
    n = vals.shape[1]
    s = float(np.sign(totals.mean()))
    sd_t = float(totals.std(ddof=1)) if n > 1 else 0.0
    sure = 0.0 if n < 2 or s == 0 else (math.inf if sd_t == 0 else abs(math.sqrt(n) * float(totals.mean()) / sd_t))
    out = []
    for sign in (1.0, -1.0):
        d = sign * vals - threshold * s * totals[None, :]
        mu = d.mean(1)
        sd = d.std(1, ddof=1) if n > 1 else np.zeros_like(mu)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(sd > 0, math.sqrt(n) * mu / np.where(sd > 0, sd, 1.0),
                           np.where(mu > 0, np.inf, -np.inf))
        if s == 0:
            lam = np.full_like(mu, -np.inf)
        out.append(lam)
    return n, out[0], out[1], sure


def _jaccard_measure(values: list, name: str, level: float, record: bool, **prov: Any) -> Measurement | None:
    defined = [v for v in values if v is not None]
    if not defined:
        return None
    m = Measurement.from_values(name, np.asarray(defined), level=level, record=False, method="bootstrap-t",
                                provenance=prov)
    if m.lower < 0 or m.upper > 1:      # an overlap lies in [0, 1]: the t-interval's part beyond it covers nothing
        m = replace(m, lower=max(m.lower, 0.0), upper=min(m.upper, 1.0),
                    provenance={**m.provenance, "interval": m.provenance["interval"] + ", cut to [0, 1]"})
    return record_measurement(m) if record else m


def _all_pairs(kept: Any) -> float | None:
    vals = [jaccard(kept[a], kept[b]) for a in range(len(kept)) for b in range(a + 1, len(kept))]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _one(edges: tuple[Edge, ...], kept: Any, name: str, resamples: int, threshold: float, seed: int, level: float,
         record: bool, margins: tuple) -> Stability:
    pairs = [jaccard(kept[2 * i], kept[2 * i + 1]) for i in range(resamples // 2)]
    jm = _jaccard_measure(pairs, f"jaccard_stability[{name}]", level, record, task=name, resamples=resamples,
                          threshold=threshold, seed=seed,
                          what="Jaccard overlap of the edge sets of disjoint pairs of resampled discoveries")
    return Stability(edges, kept, resamples, threshold, seed, level, (name,), jm, _all_pairs(kept),
                     sum(p is None for p in pairs), len(pairs), margins=(margins,))


def _draws(read: list, resamples: int, seed: int) -> list:
    """Each source's ``[resamples, n]`` weights, drawn in order from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [resample_weights(vals.shape[1], resamples, rng) for _es, vals, _t, _s in read]


def stability(source: Any, *, threshold: float = 0.05, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
              level: float = DEFAULT_LEVEL, record: bool = True) -> Stability:
    """How stable discovery (:func:`~pytest_circuits.techniques.edges.discover` at
    ``threshold``) is under ``resamples`` seeded bootstrap resamples of the prompts (module
    docstring). ``source``: an :class:`~pytest_circuits.techniques.edges.EdgeSweep` or
    :class:`~pytest_circuits.techniques.edges.EdgeScores` (its per-prompt values are reused,
    nothing runs the model), or a list of them (one per task, the same edges in each) for
    stability across tasks. ``record``: record the Jaccard measurement for the running claim."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 2:
        raise CircuitsError(bad("resamples", resamples, "an int >= 2 (pairs of resamples give the Jaccard)"))
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if not sources or not all(isinstance(s, (EdgeSweep, EdgeScores)) for s in sources):
        raise CircuitsError(bad("source", type(source).__name__, "an EdgeSweep (edge_patch), EdgeScores "
                                "(edge_attribution), or a list of them (one per task)"))
    read = [per_prompt(s) for s in sources]
    edges = read[0][0]
    for s, (es, *_rest) in zip(sources[1:], read[1:]):
        if set(es) != set(edges):
            raise CircuitsError(bad("source", f"{getattr(s, 'task', '?')}: {len(es)} edges",
                                    f"the same edges as {getattr(sources[0], 'task', '?')} ({len(edges)})"))
    names = []
    for i, s in enumerate(sources):
        nm = getattr(s, "task", "") or f"task{i}"
        names.append(nm if nm not in names else f"{nm}#{i}")
    per: list = []
    margins: list = []
    for (es, vals, totals, size), w in zip(read, _draws(read, resamples, seed)):
        at = {e: i for i, e in enumerate(es)}
        order = [at[e] for e in edges] if es != edges else slice(None)
        per.append(discover(vals[order], totals, threshold, w, size=size))      # [B, E]
        margins.append(_margins(vals[order], totals, threshold))
    singles = tuple(_one(edges, k, nm, resamples, threshold, seed, level, record and len(per) == 1, mg)
                    for k, nm, mg in zip(per, names, margins))
    if len(per) == 1:
        return singles[0]
    kept = np.stack(per, axis=1).reshape(resamples * len(per), len(edges))     # resample-major
    T = len(per)
    across = []
    undefined = 0
    for b in range(resamples):
        vs = [jaccard(per[s][b], per[t][b]) for s in range(T) for t in range(s + 1, T)]
        undefined += sum(v is None for v in vs)
        defined = [v for v in vs if v is not None]
        across.append(float(np.mean(defined)) if defined else None)
    name = "+".join(names)
    jm = _jaccard_measure(across, f"jaccard_across_tasks[{name}]", level, record, tasks=name,
                          resamples=resamples, threshold=threshold, seed=seed,
                          what="per resample, the mean Jaccard overlap of the tasks' discovered edge sets")
    allp = [jaccard(per[s][b], per[t][b]) for b in range(resamples) for s in range(T) for t in range(s + 1, T)]
    allp = [v for v in allp if v is not None]
    return Stability(edges, kept, resamples, threshold, seed, level, tuple(names), jm,
                     float(np.mean(allp)) if allp else None, undefined, resamples * T * (T - 1) // 2,
                     per_task=singles, margins=tuple(margins))


# -- faithfulness with discovery's variance ---------------------------------------------------

@dataclass(frozen=True, eq=False)
class ResampledFaithfulness:
    """:func:`faithfulness_under_resampling`'s result. ``values[b]``: the recovered fraction of
    resample ``b``'s discovered circuit on resample ``b``'s prompts (None where it discovered
    nothing with a head or MLP end); ``circuits``: the faithfulness of each distinct discovered
    circuit on all prompts (what the values re-weight); ``seconds``: time spent running them."""

    values: tuple[float | None, ...]
    circuits: tuple[Any, ...]
    threshold: float
    seed: int
    seconds: float = 0.0

    @property
    def defined(self) -> Any:
        return np.array([v for v in self.values if v is not None], dtype=np.float64)

    @property
    def mean(self) -> float | None:
        return float(self.defined.mean()) if len(self.defined) else None

    def quantiles(self, level: float = 0.95) -> tuple[float, float] | None:
        """The middle ``level`` of the resampled values (a percentile bootstrap range: crude at
        20 resamples, and it describes discovery and evaluation under resampling of these
        prompts, not new ones). Measured (bench/faithfulness_coverage.py: a tiny random model,
        a population of prompts, 100 samples of 16 and of 32, discovery at 10%): at 20
        resamples the middle 95% is 0.72 times as wide as the spread of what discovery on a new
        sample of as many prompts recovers, and holds such a value 82-84% of the time, not 95%;
        it holds the population's mean recovered fraction 96-99% of the time; at 100 resamples
        0.90 times as wide, holding a new value 90% of the time. So it understates
        discovery's variance: a claim that the spread is wide errs on the safe side, one that
        its lower end is high does not (docs/measured.md)."""
        d = self.defined
        if not len(d):
            return None
        a = (1 - level) / 2
        return float(np.quantile(d, a)), float(np.quantile(d, 1 - a))

    def __repr__(self) -> str:
        q = self.quantiles()
        none = sum(v is None for v in self.values)
        body = "n/a (nothing discovered)" if q is None else f"{self.mean:.3f}, middle 95% [{q[0]:.3f}, {q[1]:.3f}]"
        return (f"ResampledFaithfulness: recovered {body} over {len(self.values) - none} resamples"
                f"{f' ({none} discovered nothing)' if none else ''}, {len(self.circuits)} distinct circuit(s) run")


def faithfulness_under_resampling(model: Any, task: Any, source: Any, *, threshold: float = 0.05,
                                  resamples: int = DEFAULT_RESAMPLES, seed: int = 0, kind: str = "patch",
                                  activations: Any = None) -> ResampledFaithfulness:
    """Faithfulness with discovery's variance: per bootstrap resample (the draws of
    :func:`stability` with the same ``seed``), the circuit discovered on it
    (:func:`~pytest_circuits.techniques.edges.edge_circuit`'s rule) and its recovered fraction
    (:func:`~pytest_circuits.techniques.circuits.faithfulness`, ``kind`` ablation: whole
    components removed, not single edges) on the resampled prompts, ``sum_w (kept - empty) /
    sum_w (full - empty)``.

    The circuits' own faithfulness measurements are not recorded (no report or baseline
    entry): which circuit the k-th distinct discovery is changes with the prompts and the
    seed. Cost: faithfulness is not additive over edges, so every *distinct* discovered circuit is run
    once on all prompts (one forward of the task per circuit, plus the whole and the empty model
    once); a resample then only re-weights those per-prompt metrics. A stable discovery costs
    one circuit run; one that changes on every resample costs ``resamples`` runs, each resuming
    at the first block where its removal set differs from an earlier circuit's
    (``ActivationStore.shared_prefixes``; edge sets with the same heads and MLPs are one run).
    ``source`` must be scored on ``task``'s prompts, in order."""
    import time

    from . import circuits as C
    from .edges import edge_circuit
    from ..components import MLP, Head

    read = [per_prompt(source)]
    es, vals, totals, size = read[0]
    if vals.shape[1] != len(task.prompts):
        raise CircuitsError(bad("source", f"{vals.shape[1]} prompts", f"the {len(task.prompts)} prompts of "
                                f"{getattr(task, 'name', 'the task')}, in order"))
    weights = _draws(read, resamples, seed)[0]
    kept = discover(vals, totals, threshold, weights, size=size)
    run = C._runner(model, task, kind, None, 0, activations)
    start = time.perf_counter()
    circuits: dict = {}
    for b in range(resamples):
        chosen = tuple(e for e, k in zip(es, kept[b]) if k)
        if any(isinstance(c, (Head, MLP)) for e in chosen for c in (e.sender, e.receiver)) \
                and frozenset(chosen) not in circuits:
            # "resampled[k]" names whichever circuit the k-th new discovery was
            circuits[frozenset(chosen)] = edge_circuit(model, list(chosen), name=f"resampled[{len(circuits)}]")
    runs: dict = {}
    # resampled circuits share most of their components: each run resumes at the first block
    # where it differs from an earlier one (the metric as without; ActivationStore.shared_prefixes)
    with run.sharing([c.components for c in circuits.values()]):
        for key, circ in circuits.items():
            # not recorded: which circuit "resampled[k]" is changes with the prompts and the seed,
            # not a quantity a baseline could follow from run to run (the claim asserts on the spread)
            runs[key] = C._faithfulness(run, circ, record=False)
    values: list = []
    for b in range(resamples):
        key = frozenset(e for e, k in zip(es, kept[b]) if k)
        if key not in runs:
            values.append(None)
            continue
        f = runs[key]
        w = weights[b]
        full, part, empty = (np.asarray(x, dtype=np.float64) for x in (f.full, f.kept, f.empty))
        den = float(w @ (full - empty))
        values.append(float(w @ (part - empty)) / den if abs(den) > 0 else None)
    return ResampledFaithfulness(tuple(values), tuple(runs.values()), threshold, seed,
                                 time.perf_counter() - start)


__all__ = ["DEFAULT_RESAMPLES", "ResampledFaithfulness", "Stability", "faithfulness_under_resampling", "jaccard",
           "resample_weights", "stability"]
