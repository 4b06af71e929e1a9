"""The mechanism checkup: the field's standard findings as ready-made checks for any checkpoint.

``pytest --circuits-checkup --circuits-model A --circuits-model B`` turns every check below
into a claim per model (``pytest_circuits/checkup_claims.py``); each check runs a detector
that returns a :class:`~pytest_circuits.detection.Detection`:

==================  ===============================================  ========================
check               detector                                         paper
==================  ===============================================  ========================
induction           ``techniques.heads.detect_induction``            arXiv:2209.11895
previous_token      ``techniques.heads.detect_previous_token``       arXiv:2209.11895
duplicate_token     ``techniques.heads.detect_duplicate_token``      arXiv:2211.00593
ioi                 ``techniques.ioi.detect_ioi``                    arXiv:2211.00593
successor           ``techniques.ov.detect_successor``               arXiv:2312.09230
copy_suppression    ``techniques.ov.detect_copy_suppression``        arXiv:2310.04625
greater_than        :func:`detect_greater_than` (here)               arXiv:2305.00586
factual_recall      :func:`detect_factual_recall` (here)             the project's facts set
==================  ===============================================  ========================

Each detector returns a verdict (:class:`~pytest_circuits.detection.Detection`): **found**
(every defining property holds on the pessimistic interval bounds), **absent** (some
property fails even on the optimistic bounds: the model lacks the mechanism; a finding, not
a failure), **undecided** (an interval straddles the criterion: more data could go either
way) or **n/a** (the model cannot run the check; the reason says what it lacks).

What a checkup claim's outcome means (:mod:`pytest_circuits.checkup_claims`), so that a team
can gate on the run's exit status:

* without a baseline: passed when the check decided (found or absent), skipped when not
  applicable, failed when it could not decide or the detector raised. ``--circuits-checks
  induction:found,successor:absent`` (or the ini option ``circuits_checks``) also fails a
  check whose verdict is not the one expected;
* with ``--circuits-baseline`` / ``--circuits-baseline-of``: the verdict is recorded as the
  measurement :data:`VERDICT` (1 found, 0 absent) beside the headline measurements, and a
  check fails when its verdict differs from the baseline's (a mechanism that vanished or
  appeared), when a headline drifts beyond tolerance, or when it is not applicable here
  but was measured for the baseline.

The mechanism card (rendered by :mod:`pytest_circuits.report.cards`: ``card_lines``,
``card_markdown``, ``card_html``) is one
table per checkpoint: each check's verdict, its criterion, its measurements with intervals
(and the kind of interval: Clopper-Pearson for proportions, bootstrap-t for continuous
quantities) and the located components; the HTML adds the per-head heatmaps.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .detection import Detection
from .errors import CircuitsError, PromptSetError, bad
from .measurement import Measurement, record, unrecorded
from .models import info as model_info
from .techniques import heads as _heads
from .techniques import ioi as _ioi
from .techniques import ov as _ov


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    source: str
    finding: str          # the claim's finding, in words
    detector: Any         # a callable, or a team's "package.module:function" (imported when the check runs)

    def function(self) -> Callable[..., Detection]:
        if callable(self.detector):
            return self.detector
        mod, _, fn = self.detector.partition(":")
        # The built-in checks hold their detectors (plain imports, which tests/unit/test_layers.py
        # sees); a string is a team's own module.
        return getattr(importlib.import_module(mod, __package__), fn)


# The built-in checks (CHECKS, BUILT_IN) are listed after their detectors, below.


def register(check: Check) -> Check:
    """Add a team's own check (e.g. in ``conftest.py``): it becomes a checkup claim per model,
    on the card, like the built-in ones. Its detector takes the model and returns a
    :class:`~pytest_circuits.detection.Detection`. Registering a name again replaces the
    earlier check (a conftest imported again); a built-in name is refused."""
    if not isinstance(check, Check):
        raise CircuitsError(bad("check", check, "a pytest_circuits.checkup.Check"))
    if not check.name.isidentifier():
        raise CircuitsError(bad("check.name", check.name, "an identifier (it names the claim test_<name>)"))
    if check.name in BUILT_IN:
        raise CircuitsError(f"{check.name!r} is a built-in check ({CHECKS[check.name].title}); give yours "
                            "another name")
    CHECKS[check.name] = check
    return check


def names() -> list[str]:
    return list(CHECKS)


EXPECTATIONS = ("found", "absent")
VERDICT = "verdict (1 found, 0 absent)"     # the measurement a baseline keeps of each check's verdict


def parse(spec: str | Sequence[str] | None) -> dict[str, str | None]:
    """The checks named by ``spec`` and the verdict expected of each (None: any decided
    verdict), in registry order. ``spec``: ``"all"``, or a comma list (or list) of check
    names, each optionally ``name:found`` or ``name:absent``, and ``all`` for every other
    check; an unknown name or expectation raises with the valid ones."""
    valid = f"'all' or a comma list of {', '.join(CHECKS)}, each optionally :found or :absent"
    if spec is None or spec == "" or spec == "all":
        return {n: None for n in CHECKS}
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [w for w in items if w]
    if not items:
        raise CircuitsError(bad("checks", spec, valid))
    wanted: dict[str, str | None] = {}
    unknown = []
    for item in items:
        name, _, expect = item.partition(":")
        name, expect = name.strip(), expect.strip()
        if name == "all" and not expect:
            for n in CHECKS:
                wanted.setdefault(n, None)
            continue
        if name not in CHECKS or (expect and expect not in EXPECTATIONS):
            unknown.append(item)
            continue
        wanted[name] = expect or wanted.get(name)
    if unknown:
        raise CircuitsError(bad("checks", ",".join(unknown), valid))
    return {n: wanted[n] for n in CHECKS if n in wanted}


def select(spec: str | Sequence[str] | None) -> list[str]:
    """The checks named by ``spec`` (see :func:`parse`), in registry order."""
    return list(parse(spec))


def run(name: str, model: Any, **kw: Any) -> Detection:
    """Run one check on ``model``. Only the detection's headline measurements are recorded
    for the running claim, and, for a decided verdict, :data:`VERDICT` (1 found, 0 absent,
    one value), which a baseline compares exactly; everything the detector measured on the
    way is not."""
    if name not in CHECKS:
        raise CircuitsError(bad("check", name, f"one of {', '.join(CHECKS)}"))
    check = CHECKS[name]
    with unrecorded():
        det = check.function()(model, **kw)
    if not isinstance(det, Detection):
        who = getattr(check.detector, "__qualname__", check.detector)
        raise CircuitsError(f"check {name!r}: {who} returned {type(det).__name__}, not a Detection")
    label = model_info(model).label
    # The card's row is the check that ran, on the model it ran on, whatever the detector wrote.
    det = dataclasses.replace(det, check=name, model=label,
                              title=det.title or check.title, source=det.source or check.source)
    if det.decided:
        verdict = Measurement.from_values(VERDICT, [1.0 if det.found else 0.0], model=label, record=False,
                                          provenance={"verdict": det.status})
        det = dataclasses.replace(det, measurements=tuple(m for m in det.measurements if m.name != VERDICT)
                                  + (verdict,))
    for m in det.measurements:
        record(m)
    return det


# ----------------------------------------------------------------------------- built-in adapters
def _m(name: str, values: Any, model: Any, **kw: Any) -> Measurement:
    return Measurement.from_values(name, values, model=model_info(model).label, **kw)


def _decide(found: bool, excluded: bool, straddles: Iterable[str | None]) -> dict[str, Any]:
    """Detection keywords for a verdict: found, absent (``excluded``: a defining property fails
    even on its optimistic bound) or undecided, with the straddling measurements as the reason."""
    if found or excluded:
        return {"found": bool(found)}
    why = "; ".join(w for w in straddles if w) or "a property holds on its optimistic bound only"
    return {"found": False, "undecided": True, "reason": why}


MIN_HEAD_SHARE = 0.1     # a greater-than head carries at least a tenth of the '01' drop


def greater_than_not_applicable(model: Any, nouns: Sequence[str] | None = None,
                                centuries: Sequence[int] = range(11, 18)) -> str | None:
    """Why ``model``'s tokenizer cannot write the greater-than prompts, in its own terms (None
    when it can): how it splits a year, which of the event nouns and centuries it lacks."""
    from .prompts import is_single_token
    from .tasks.greater_than import NOUNS, _digit_mode

    tok = model.tokenizer
    pieces = [tok.decode([p]) for p in tok.encode(" 1732", add_special_tokens=False)]
    digits = all(is_single_token(model, str(d)) for d in range(10))
    pairs = all(is_single_token(model, f"{i:02d}") for i in range(100))
    try:
        mode = _digit_mode(model)
    except PromptSetError:
        mode = None
    if mode is None or (mode == "digit" and not digits) or (mode == "two_digit" and not pairs):
        missing = [str(d) for d in range(10) if not is_single_token(model, str(d))]
        return (f"the tokenizer writes the year ' 1732' as {pieces}"
                + (f" and has no token for the digit(s) {', '.join(missing)}" if missing else "")
                + ": years are neither one token per digit nor two-digit tokens, so 'the probability of a "
                "later year' is not a sum over digit tokens")
    nouns = list(NOUNS if nouns is None else nouns)
    if not any(is_single_token(model, " " + w) for w in nouns):
        return (f"none of the {len(nouns)} event nouns of the template ({', '.join(nouns[:4])}, ...) is one "
                "token of the vocabulary")
    if mode == "two_digit" and not any(is_single_token(model, f" {c}") for c in centuries):
        return (f"the vocabulary writes two-digit years but none of the centuries {min(centuries)}..{max(centuries)} "
                "as one token")
    return None


def _year_positions(model: Any, task: Any) -> list[list[int]]:
    """Per clean prompt, the positions of the start year's YY token(s) (the two digits in
    digit mode, the one token in two-digit mode), found by decoding the tokens."""
    tok = model.tokenizer
    ps = task.prompts
    out = []
    for i in range(len(ps)):
        toks = ps.tokens[i, : ps.lengths[i]].tolist()
        text = [tok.decode([t]).strip() for t in toks]
        want = f"{ps.meta['century'][i]}{task.yy[i]:02d}"
        found: list[int] = []
        for a in range(len(toks)):
            got, b = "", a
            while b < len(toks) and len(got) < 4 and want.startswith(got + text[b]) and text[b]:
                got += text[b]
                b += 1
            if got == want:
                # the tokens that hold the last two characters
                pos, acc = [], 0
                for j in range(b - 1, a - 1, -1):
                    pos.insert(0, j)
                    acc += len(text[j])
                    if acc >= 2:
                        break
                found = pos
                break
        if not found:
            raise PromptSetError(f"greater_than: the start year {want} is not a run of tokens in {ps.prompts[i]!r}")
        out.append(found)
    return out


MAX_PATCHED = 8          # greater-than candidates patched, by attention share (one forward each)
PATCH_PROMPTS = 32       # ... on the first 32 prompts


def greater_than_heads(model: Any, task: Any, clean: Any, *, min_attention: float = 0.2,
                       min_share: float = MIN_HEAD_SHARE, max_patched: int = MAX_PATCHED,
                       n_patch: int = PATCH_PROMPTS, activations: Any = None) -> tuple[Any, Any, list, int]:
    """The heads that carry the start year to the answer, located by intervention.

    Candidates: heads whose attention from the last position to the start year's YY
    token(s) is at least ``min_attention`` (mean over prompts) of their attention off
    position 0 (so a head that parks most of its attention on an attention sink at BOS is
    judged by where the rest goes); the ``max_patched`` with the largest share, since each
    costs a forward pass (the share heatmap shows every head, and the details say how many
    were left out). Each candidate's output is patched, at every position, on the first
    ``n_patch`` prompts of the set,
    from the '01' prompts; its score is the fall of PD, per prompt. A head is located when
    the score's lower bound exceeds ``min_share`` times the whole '01' drop (mean).

    Returns ``(share heatmap [L, H], score heatmap [L, H], [(head, Measurement), ...] best
    first, how many candidates were not patched)``."""
    import numpy as np
    import torch

    from . import hooks as H
    from .components import Head
    from .interventions import patch
    from .store import resolve
    from .tasks.greater_than import from_rows, per_prompt_prob_diff

    store = resolve(activations)
    L, nh = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [H.last(H.pattern(l)) for l in range(L)]
    pat = store.get(model, task.prompts, names)
    where = _year_positions(model, task)
    n = len(task.prompts)
    share = np.zeros((L, nh))
    for l in range(L):
        p = pat[names[l]].double()                                      # [n, H, width]
        on = torch.stack([p[i, :, where[i]].sum(-1) for i in range(n)])  # [n, H]
        off_sink = (1.0 - p[:, :, 0]).clamp_min(1e-12)
        share[l] = (on / off_sink).mean(0).numpy()
    corrupted = per_prompt_prob_diff(model, task, corrupted=True, activations=store)
    total = float((clean - corrupted).mean())
    if n_patch < len(task):     # the same prompts, the first n_patch of them
        meta = task.prompts.meta
        task = from_rows(model, [(meta["noun"][i], meta["century"][i], task.yy[i]) for i in range(n_patch)],
                         name=task.prompts.name)
        clean = clean[:n_patch]
    scores = np.zeros((L, nh))
    located = []
    label = model_info(model).label
    cands = sorted(zip(*np.nonzero(share >= min_attention)), key=lambda lh: -share[lh])
    for l, h in cands[:max_patched]:
        head = Head(int(l), int(h))
        fall = clean - per_prompt_prob_diff(model, task, intervention=patch(model, head), activations=store)
        m = Measurement.from_values(f"greater_than PD carried by {head}", fall, model=label, record=False,
                                    provenance={"head": str(head), "intervention": "patched from '01'"})
        scores[l, h] = m.mean
        if total > 0 and m.lower > min_share * total:
            located.append((head, m))
    located.sort(key=lambda x: -x[1].mean)
    return share, scores, located, max(0, len(cands) - max_patched)


def detect_greater_than(model: Any, *, n: int = 100, seed: int = 0, min_pd: float = 0.2,
                        min_drop: float = 0.2, min_attention: float = 0.2, min_share: float = MIN_HEAD_SHARE,
                        activations: Any = None) -> Detection:
    """Greater-than (Hanna et al. 2023): the probability difference PD (mass on years later than
    the start minus mass on earlier ones, :mod:`pytest_circuits.tasks.greater_than`) on ``n``
    seeded prompts, and its drop under the '01' corruption (the start year replaced by 01: the
    intervention that removes what the comparison reads).

    The defining properties: the model prefers later years (PD), and the preference comes
    from the start year (the drop). **Found** when PD's lower bound exceeds ``min_pd`` and
    the drop's lower bound exceeds ``min_drop``; **absent** when either upper bound is at or
    below its threshold (a model that always says "late", reads no year and drops nothing; one
    that copies the year or prefers earlier ones has PD <= 0); **undecided** otherwise.
    0.2 is a definition, not a measurement: 20 points more probability on later years than
    earlier, well below what the paper reports for GPT-2 small (PD 0.817) and what SmolLM2
    shows (0.875), and well above a model without the comparison (PD ~0).

    Components (reported when found, not required): the heads that carry the start year to
    the answer, located by patching each from the '01' prompts (:func:`greater_than_heads`). Not
    applicable when the tokenizer cannot write the prompts (:func:`greater_than_not_applicable`
    says what it lacks)."""
    from .detection import straddle
    from .tasks.greater_than import greater_than, per_prompt_prob_diff

    title, src = CHECKS["greater_than"].title, CHECKS["greater_than"].source
    label = model_info(model).label
    why = greater_than_not_applicable(model)
    if why is not None:
        return Detection.not_applicable("greater_than", title, why, source=src, model=label)
    try:
        task = greater_than(model, n=n, seed=seed, name="checkup_greater_than")
    except PromptSetError as e:
        return Detection.not_applicable("greater_than", title, f"the prompts cannot be written for this "
                                        f"tokenizer: {e}", source=src, model=label)
    clean = per_prompt_prob_diff(model, task, activations=activations)
    corrupted = per_prompt_prob_diff(model, task, corrupted=True, activations=activations)
    pd = _m("greater_than PD", clean, model)
    drop = _m("greater_than PD drop under '01'", clean - corrupted, model)
    share, scores, located, left = greater_than_heads(model, task, clean, min_attention=min_attention,
                                                      min_share=min_share, activations=activations)
    found = pd.lower > min_pd and drop.lower > min_drop
    excluded = pd.upper <= min_pd or drop.upper <= min_drop
    details = ("heads carrying the start year (attention from the end to YY >= "
               f"{min_attention:g} of their off-BOS attention; patched from '01', PD falls by a lower bound > "
               f"{min_share:g} x the drop): " + (", ".join(f"{h} {m.mean:+.3f} [{m.lower:.3f}, {m.upper:.3f}]"
                                                         for h, m in located) or "none")
               + ("" if found or not located else " (not components: the model does not compute greater-than)")
               + (f"; {left} more heads attend to YY as much but were not patched (the {MAX_PATCHED} with the "
                  "largest share were)" if left else ""))
    if not found:
        located = []         # a head that reads the year of a model without the comparison is not its circuit
    return Detection(
        check="greater_than", title=title, source=src, model=label,
        **_decide(found, excluded, [straddle(pd, min_pd), straddle(drop, min_drop)]),
        criterion=f"PD lower bound > {min_pd:g} and its drop under the '01' corruption > {min_drop:g} "
                  f"(n={len(task)} prompts, {task.mode} years); absent when either upper bound is at or below",
        measurements=(pd, drop), components=tuple((str(h), m.mean) for h, m in located),
        more=tuple(m for _, m in located),
        heatmaps={"attention end -> YY (share off BOS)": share, "PD carried (patched from '01')": scores},
        details=details)


def detect_factual_recall(model: Any, *, n: int | None = 200, seed: int = 0, min_facts: int = 20,
                          min_share: float = 0.5, activations: Any = None) -> Detection:
    """Factual recall on the project's facts set (``pytest_circuits/data/facts.jsonl``, each fact
    with a same-relation foil), on the facts whose answer and foil are single tokens for this
    tokenizer (a seeded sample of ``n`` of them; ``n=None``: all): the logit difference
    answer - foil, the share of facts where the answer wins,
    and each head's direct effect on that difference (the heatmap; components: the heads with
    the largest mean direct effect).

    Found when the share's lower bound exceeds ``min_share`` (0.5: better than a coin between
    answer and foil; the share is a proportion, with its Clopper-Pearson interval) and the
    logit difference's lower bound exceeds 0; absent when either upper bound is at or below
    its threshold; undecided otherwise. Not applicable with fewer than ``min_facts`` usable
    facts (the reason says how many facts the vocabulary can write)."""
    import numpy as np
    import torch

    from . import metrics
    from .components import Head
    from .tasks import facts
    from .techniques import effects as E

    title, src = CHECKS["factual_recall"].title, CHECKS["factual_recall"].source
    label = model_info(model).label
    import warnings

    from .errors import PromptWarning

    with warnings.catch_warnings():
        # Prompts that reach the model as the unknown token are dropped below, not warned about.
        warnings.simplefilter("ignore", PromptWarning)
        try:
            ps = facts(model, name="checkup_facts")
        except PromptSetError as e:
            return Detection.not_applicable("factual_recall", title, str(e), source=src, model=label)
    unk = getattr(model.tokenizer, "unk_token_id", None)
    readable = [i for i in range(len(ps)) if unk is None or unk not in ps.tokens[i, : ps.lengths[i]].tolist()]
    if len(readable) < min_facts:
        return Detection.not_applicable(
            "factual_recall", title, f"only {len(readable)} facts have a single-token answer and foil and a "
            f"prompt without the unknown token for this tokenizer (at least {min_facts} needed)",
            source=src, model=label)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < min_facts:
            raise CircuitsError(bad("n", n, f"None (all facts) or an int >= min_facts ({min_facts})"))
        if n < len(readable):
            import random

            readable = sorted(random.Random(seed).sample(readable, n))
    if len(readable) < len(ps):
        ps = ps.subset(readable, name="checkup_facts")
    ld = metrics.logit_diff(model, ps, activations=activations)
    ld = _m("facts logit difference (answer - foil)", ld.array, model)
    share = _m("facts share answer beats foil", ld.array > 0, model, method="clopper-pearson")
    de_a = E.decompose(model, ps, token="answer", activations=activations)
    de_f = E.decompose(model, ps, token=torch.tensor(ps.foil_ids), activations=activations)
    cfg = model.cfg
    heat = np.zeros((cfg.n_layers, cfg.n_heads))
    for i, c in enumerate(de_a.components):
        if isinstance(c, Head):
            heat[c.layer, c.head] = float((de_a.values[i] - de_f.values[i]).mean())
    order = np.argsort(-heat, axis=None)[:5]
    comps = tuple((f"L{int(k) // cfg.n_heads}H{int(k) % cfg.n_heads}", float(heat.flat[k])) for k in order)
    from .detection import straddle

    found = share.lower > min_share and ld.lower > 0
    excluded = share.upper <= min_share or ld.upper <= 0
    return Detection(
        check="factual_recall", title=title, source=src, model=label,
        **_decide(found, excluded, [straddle(share, min_share), straddle(ld, 0.0)]),
        criterion=f"share of facts where the answer beats the foil: lower bound > {min_share:g}, and the "
                  f"logit difference's lower bound > 0 (n={len(ps)} facts); absent when either upper bound "
                  "is at or below",
        measurements=(ld, share), components=comps,
        heatmaps={"direct effect on answer - foil": heat},
        details="components: heads with the largest mean direct effect on the answer - foil logit "
                "difference")


# ----------------------------------------------------------------------------- the built-in checks
CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("induction", "Induction heads", "arXiv:2209.11895",
          "the model has induction heads: on a repeated random token sequence, heads attend from each "
          "token to the one that followed its earlier occurrence, and ablating them raises the loss on "
          "the repeat", _heads.detect_induction),
    Check("previous_token", "Previous-token heads", "arXiv:2209.11895",
          "the model has previous-token heads: heads attend from each token to the one before it",
          _heads.detect_previous_token),
    Check("duplicate_token", "Duplicate-token heads", "arXiv:2211.00593",
          "the model has duplicate-token heads: on a repeated sequence, heads attend from each token to "
          "its earlier occurrence", _heads.detect_duplicate_token),
    Check("ioi", "Indirect object identification", "arXiv:2211.00593",
          "the model completes IOI prompts with the indirect object, and name-mover heads attend to it and "
          "raise its logit (when they are ablated, other heads make up part of their direct effect: backup "
          "name movers or released suppression)", _ioi.detect_ioi),
    Check("successor", "Successor heads", "arXiv:2312.09230",
          "a head's OV circuit maps members of ordinal sequences (numbers, days, months, letters) to their "
          "successors", _ov.detect_successor),
    Check("copy_suppression", "Copy suppression", "arXiv:2310.04625",
          "a negative head lowers the logits of tokens earlier in the context that it attends to",
          _ov.detect_copy_suppression),
    Check("greater_than", "Greater-than", "arXiv:2305.00586",
          "after 'from the year XXYY to the year XX' the model prefers years later than XXYY, and the "
          "'01' corruption removes that preference", detect_greater_than),
    Check("factual_recall", "Factual recall", "pytest-circuits facts set",
          "the model recalls facts: the true answer out-scores a same-relation foil",
          detect_factual_recall),
)}


BUILT_IN = frozenset(CHECKS)



# ----------------------------------------------------------------------------- the card
def to_json(det: Detection) -> dict[str, Any]:
    return {"check": det.check, "title": det.title, "source": det.source, "model": det.model,
            "status": det.status, "applicable": det.applicable, "reason": det.reason,
            "found": det.found, "criterion": det.criterion,
            "measurements": [m.to_dict() for m in det.measurements],
            "intervals": {m.name: interval_kind(m.provenance.get("interval", "")) for m in det.measurements},
            "components": [[c, float(s)] for c, s in det.components],
            "heatmaps": {k: [[float(x) for x in row] for row in _rows2d(v)] for k, v in det.heatmaps.items()},
            "details": det.details}


INTERVAL_KINDS = {"CP": "exact Clopper-Pearson (a proportion)",
                  "bt": "bootstrap-t united with the t-interval (a continuous quantity)",
                  "ratio": "bootstrap-t of a ratio of means (delta-method se)",
                  "BCa": "BCa bootstrap", "none": "no interval: the values do not vary"}


def interval_kind(how: Any) -> str:
    """The short name (a key of :data:`INTERVAL_KINDS`) of the interval a Measurement's
    ``provenance["interval"]`` describes ("" when it says none of them)."""
    how = str(how or "")
    for key, word in (("CP", "Clopper-Pearson"), ("ratio", "ratio of means"), ("none", "do not vary"),
                      ("BCa", "BCa"), ("bt", "bootstrap-t")):
        if word in how:
            return key
    return ""


def _rows2d(v: Any) -> list[list[float]]:
    import numpy as np

    a = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float)
    if a.ndim != 2:
        raise CircuitsError(f"a heatmap must be [layers, heads], got shape {a.shape}")
    return a.tolist()


def dumps(det: Detection) -> str:
    return json.dumps(to_json(det))
