"""What a mechanism detector returns: :class:`Detection`.

Every detector of the mechanism checkup (induction heads, IOI, successor heads, copy
suppression, greater-than, factual recall) returns one ``Detection`` per model: whether
the mechanism was found by the detector's stated criterion (on interval bounds, never on
means alone), the located components with their scores, the headline measurements with
their intervals, and per-head score maps for the report's heatmaps. A model a check
cannot run on (e.g. a tokenizer without single-token names) gets ``applicable=False`` and
the reason: the checkup reports it as not applicable, never as passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import CircuitsError


@dataclass(frozen=True)
class Detection:
    check: str                                   # short id: "induction", "ioi", ...
    title: str                                   # what it detects, in words
    source: str = ""                             # the paper (arXiv id)
    model: str = ""
    applicable: bool = True
    reason: str = ""                             # why not applicable (applicable=False only)
    found: bool = False                          # the criterion held
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
        return "n/a" if not self.applicable else ("found" if self.found else "not found")

    def summary(self) -> str:
        """One paragraph: verdict, criterion, measurements, top components."""
        lines = [f"{self.title}: {self.status}" + (f" ({self.reason})" if not self.applicable else "")]
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
