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
from typing import Any, Callable, Sequence

from .detection import Detection
from .errors import CircuitsError, bad
from .measurement import Measurement, record, unrecorded
from .models import info as model_info
from .techniques import heads as _heads
from .techniques import ioi as _ioi
from .techniques import ov as _ov
from .techniques import factual_recall as _fr
from .techniques import greater_than_detector as _gt
from .techniques.factual_recall import detect_factual_recall
# the built-in detectors of greater-than and factual recall live in techniques/; their names
# stay importable from here (checkup.detect_greater_than, ...)
from .techniques.greater_than_detector import (  # noqa: F401
    MAX_PATCHED, MIN_HEAD_SHARE, PATCH_PROMPTS, detect_greater_than, greater_than_heads, greater_than_not_applicable)


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
    Check("greater_than", _gt.TITLE, _gt.SOURCE,
          "after 'from the year XXYY to the year XX' the model prefers years later than XXYY, and the "
          "'01' corruption removes that preference", detect_greater_than),
    Check("factual_recall", _fr.TITLE, _fr.SOURCE,
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
