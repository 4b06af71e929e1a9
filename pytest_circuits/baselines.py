"""Baselines: what each claim measured last time, per model, and the tolerance for drift.

One readable JSON file per model, ``<baseline-dir>/<model>.json``::

    {"model": "smollm2-135m", "fingerprint": "gguf-sha256:...", "versions": {...},
     "claims": {"claims/smollm2/test_greater_than.py::test_prefers_later_years": {
         "greater_than.prob_diff": {"mean": 0.875, "lower": 0.848, "upper": 0.893,
                                    "n": 200, "sem": 0.011}}}}

Semantics follow pytest-regressions:

* no baseline for a claim's measurement: it is written and the claim **fails**, saying so
  (commit the file, or rerun);
* ``--circuits-update-baselines``: the entries of the claims that ran are rewritten and
  the claims pass; entries of claims that did not run are never touched;
* a measurement outside tolerance fails with a table (metric | obtained | baseline |
  difference | tolerance) and the obtained values are written beside the baseline as
  ``<model>.obtained.json``.

Tolerances (two-sided, per metric): ``"3se"`` (default: 3 combined standard errors of
the two means), ``"abs:0.05"``, ``"rel:0.1"``; from ``@pytest.mark.baseline(tolerance=...)``
(one spec for all metrics, or ``{metric: spec}``) or the ``circuits_baseline_tolerance``
ini option.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import CircuitsError, bad

DEFAULT_TOLERANCE = "3se"
_SPEC = re.compile(r"^(?:(?P<k>\d+(?:\.\d+)?)se|abs:(?P<abs>\d+(?:\.\d+)?(?:e-?\d+)?)|rel:(?P<rel>\d+(?:\.\d+)?(?:e-?\d+)?))$")


class BaselineError(CircuitsError):
    """A baseline file is unreadable or malformed, or a tolerance spec is invalid."""


@dataclass(frozen=True)
class Tolerance:
    kind: str      # "se", "abs" or "rel"
    value: float

    @classmethod
    def parse(cls, spec: Any) -> "Tolerance":
        if isinstance(spec, Tolerance):
            return spec
        m = _SPEC.match(str(spec).strip()) if isinstance(spec, str) else None
        if not m:
            raise BaselineError(bad("tolerance", spec, "'3se' (standard errors), 'abs:0.05' or 'rel:0.1'"))
        if m.group("k"):
            return cls("se", float(m.group("k")))
        if m.group("abs"):
            return cls("abs", float(m.group("abs")))
        return cls("rel", float(m.group("rel")))

    def allowed(self, obtained: Mapping[str, float], expected: Mapping[str, float]) -> float:
        if self.kind == "abs":
            return self.value
        if self.kind == "rel":
            return self.value * abs(expected["mean"])
        return self.value * math.sqrt(obtained.get("sem", 0.0) ** 2 + expected.get("sem", 0.0) ** 2)

    def __str__(self) -> str:
        return f"{self.value:g}se" if self.kind == "se" else f"{self.kind}:{self.value:g}"


def summary(m: Mapping[str, Any]) -> dict[str, Any]:
    """What a baseline keeps of a measurement (from ``Measurement.to_dict()``)."""
    values = m.get("values") or []
    n = int(m["n"])
    if n > 1 and values:
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        sem = sd / math.sqrt(n)
    else:
        sem = 0.0
    return {"mean": m["mean"], "lower": m["lower"], "upper": m["upper"], "n": n, "level": m["level"],
            "sem": sem}


def metric_keys(measurements: list[Mapping[str, Any]]) -> list[str]:
    """Names of a claim's measurements, made unique in order (``name``, ``name#2``...)."""
    seen: dict[str, int] = {}
    out = []
    for m in measurements:
        k = m["name"]
        seen[k] = seen.get(k, 0) + 1
        out.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
    return out


def model_file(directory: Path, model_label: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_label).strip("_") or "model"
    return directory / f"{safe}.json"


def load(path: Path) -> dict[str, Any]:
    """Read a baseline file; a malformed one is an error naming the file, never ignored."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise BaselineError(f"baseline file {path} is not valid JSON ({e}); fix it, or delete it and "
                            "rerun with --circuits-update-baselines") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims", {}), dict):
        raise BaselineError(f"baseline file {path} does not have the expected layout "
                            "({'model': ..., 'claims': {claim: {metric: {...}}}})")
    for claim, metrics in data.get("claims", {}).items():
        for metric, entry in (metrics or {}).items():
            if not isinstance(entry, dict) or not {"mean", "n"} <= set(entry):
                raise BaselineError(f"baseline file {path}: entry {claim!r} / {metric!r} lacks mean and n")
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (xdist workers update one file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX: best effort
            pass
        yield


def update(path: Path, model: Mapping[str, Any], claim: str, entries: Mapping[str, Any]) -> None:
    """Set ``claim``'s entries in the file (read-modify-write under a lock, atomic replace)."""
    with _locked(path):
        claims = dict((load(path) or {}).get("claims", {}))
        claims[claim] = dict(entries)
        data = {"model": model.get("label"), "fingerprint": model.get("fingerprint"),
                "versions": model.get("versions", {}), "claims": dict(sorted(claims.items()))}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", "utf-8")
        os.replace(tmp, path)


@dataclass(frozen=True)
class Row:
    metric: str
    obtained: float
    baseline: float | None
    tolerance: str
    allowed: float | None

    @property
    def difference(self) -> float | None:
        return None if self.baseline is None else self.obtained - self.baseline

    @property
    def ok(self) -> bool:
        return self.baseline is not None and abs(self.difference) <= self.allowed + 1e-12  # type: ignore[operator]


def compare(obtained: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Mapping[str, Any]],
            tolerance: Any) -> list[Row]:
    """One row per obtained metric; ``tolerance`` is a spec or ``{metric: spec}``."""
    rows = []
    for metric, got in obtained.items():
        spec = tolerance.get(metric, DEFAULT_TOLERANCE) if isinstance(tolerance, Mapping) else tolerance
        tol = Tolerance.parse(spec)
        exp = expected.get(metric)
        rows.append(Row(metric, got["mean"], None if exp is None else exp["mean"], str(tol),
                        None if exp is None else tol.allowed(got, exp)))
    return rows


def table(rows: list[Row]) -> str:
    head = ("metric", "obtained", "baseline", "difference", "tolerance")
    body = [(r.metric, f"{r.obtained:.6g}", "-" if r.baseline is None else f"{r.baseline:.6g}",
             "-" if r.difference is None else f"{r.difference:+.3g}",
             f"{r.tolerance} (±{r.allowed:.3g})" if r.allowed is not None else r.tolerance)
            for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
    line = lambda xs: " | ".join(x.ljust(w) for x, w in zip(xs, widths))  # noqa: E731
    marks = ["  " if r.ok else "! " for r in rows]
    return "\n".join(["  " + line(head), "  " + "-+-".join("-" * w for w in widths)]
                     + [m + line(b) for m, b in zip(marks, body)])
