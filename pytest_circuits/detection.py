"""What a mechanism detector returns: :class:`Detection`.

Every detector of the mechanism checkup (induction heads, IOI, successor heads, copy
suppression, greater-than, factual recall) returns one ``Detection`` per model, with one of
four verdicts (:attr:`Detection.status`):

* ``"found"``: every defining property of the mechanism holds by the detector's stated
  criterion, on the pessimistic interval bounds;
* ``"absent"``: the model lacks it: some defining property fails even on the optimistic
  bounds (for a located mechanism: for every candidate component). Absence is a finding,
  not an error;
* ``"undecided"``: neither: an interval straddles the criterion's threshold (e.g. a
  logit difference of 0.4 [-0.1, 0.9] against "above 0"), so more data could go either
  way; ``reason`` says which measurement;
* ``"n/a"``: the model cannot run the check (e.g. a tokenizer without single-token
  names); ``reason`` says what the model lacks, in the model's terms.

Besides the verdict: the located components with their scores, the headline measurements
with their intervals, and per-head score maps for the report's heatmaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import CircuitsError


@dataclass(frozen=True)
class Detection:
    check: str                                   # short id: "induction", "ioi", ...
    title: str                                   # what it detects, in words
    source: str = ""                             # the paper (arXiv id)
    model: str = ""
    applicable: bool = True
    reason: str = ""                             # why not applicable, or why undecided
    found: bool = False                          # the criterion held
    undecided: bool = False                      # neither found nor excluded (reason says why)
    criterion: str = ""                          # the criterion, with its thresholds, in words
    measurements: tuple[Any, ...] = ()           # headline Measurements (named, with intervals)
    components: tuple[tuple[str, float], ...] = ()  # located components, best first, with score
    heatmaps: Mapping[str, Any] = field(default_factory=dict)  # name -> [n_layers, n_heads] array
    details: str = ""                            # a short table that explains the result
    # Per-component measurements (e.g. "induction score L5H1"): shown and available through
    # measurement(name), but not the claim's headline, since their names change with the heads located.
    more: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not self.applicable and not self.reason:
            raise CircuitsError(f"Detection {self.check!r}: not applicable needs a reason")
        if not self.applicable and self.found:
            raise CircuitsError(f"Detection {self.check!r}: not applicable cannot be found")
        if self.undecided and (self.found or not self.applicable or not self.reason):
            raise CircuitsError(f"Detection {self.check!r}: undecided needs a reason, and is neither found "
                                "nor not applicable")

    @classmethod
    def not_applicable(cls, check: str, title: str, reason: str, *, source: str = "",
                       model: str = "") -> "Detection":
        return cls(check=check, title=title, source=source, model=model, applicable=False,
                   reason=reason)

    def measurement(self, name: str) -> Any:
        """The measurement called ``name`` (a headline or one of ``more``), recorded for the
        running claim: a claim that asserts on it reports it and compares it with its baseline."""
        from .measurement import record

        for m in self.measurements + self.more:
            if m.name == name:
                return record(m)
        raise CircuitsError(f"Detection {self.check!r} has no measurement {name!r}; it has "
                            f"{[m.name for m in self.measurements + self.more]}")

    @property
    def status(self) -> str:
        """``"found"``, ``"absent"``, ``"undecided"`` or ``"n/a"`` (module docstring)."""
        if not self.applicable:
            return "n/a"
        return "found" if self.found else ("undecided" if self.undecided else "absent")

    @property
    def decided(self) -> bool:
        """Found or absent: the verdict a gate can rely on."""
        return self.applicable and not self.undecided

    def summary(self) -> str:
        """One paragraph: verdict, criterion, measurements, top components."""
        lines = [f"{self.title}: {self.status}" + (f" ({self.reason})" if self.reason else "")]
        if self.criterion:
            lines.append(f"  criterion: {self.criterion}")
        for m in self.measurements + self.more:
            lines.append(f"  {m!r}")
        if self.components:
            lines.append("  components: " + ", ".join(f"{c} {s:+.3g}" for c, s in self.components[:8]))
        if self.details:
            lines.append(self.details)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Detection({self.check!r}, {self.status}, components="
                f"{[c for c, _ in self.components[:5]]})")


def straddle(m: Any, threshold: float, *, above: bool = True) -> str | None:
    """Why ``m`` cannot decide "``m`` above ``threshold``" (or below, ``above=False``): its
    interval holds the threshold, so the pessimistic bound fails and the optimistic one
    passes. None when the interval is clear of it on either side."""
    lo, hi = float(m.lower), float(m.upper)
    if above and lo <= threshold < hi or not above and lo < threshold <= hi:
        return (f"{m.name} {m.mean:.3g} [{lo:.3g}, {hi:.3g}] straddles the criterion's "
                f"{'lower' if above else 'upper'} limit {threshold:g}")
    return None


def decide(found: bool, excluded: bool, straddles: Iterable[str | None]) -> dict[str, Any]:
    """A :class:`Detection`'s verdict keywords: found, absent (``excluded``: a defining property
    fails even on its optimistic bound) or undecided, with the straddling measurements (the
    texts of :func:`straddle`) as the reason."""
    if found or excluded:
        return {"found": bool(found)}
    why = "; ".join(w for w in straddles if w) or "a property holds on its optimistic bound only"
    return {"found": False, "undecided": True, "reason": why}
