"""Baselines: what each claim measured last time, per model, and the tolerance for drift.

One readable JSON file per model, ``<baseline-dir>/<model>.json``::

    {"model": "smollm2-135m", "fingerprint": "converted-sha256:...", "versions": {...},
     "claims": {"claims/smollm2/test_greater_than.py::test_prefers_later_years": {
         "greater_than.prob_diff": {"mean": 0.875, "lower": 0.848, "upper": 0.893,
                                    "n": 200, "level": 0.95, "sem": 0.011}}}}

Semantics follow pytest-regressions:

* no baseline for a claim's measurement: it is written and the claim **fails**, saying so
  (commit the file, or rerun);
* ``--circuits-update-baselines``: the entries of the claims that ran are rewritten and
  the claims pass; entries of claims that did not run are never touched;
* a measurement outside tolerance fails with a table (metric | obtained | baseline |
  difference | tolerance) and the obtained values are written beside the baseline as
  ``<model>.obtained.json``.

What a file may hold (checked on load, :func:`read`). Every problem is a
:class:`BaselineError` naming the file, the claim, the metric and the field with its
value. A problem in one claim's entries fails only the claims that use them; a file that
is not JSON, or whose top level is not the layout above, fails every claim of that model.

* ``mean``: a finite number; ``n``: a positive integer (both required);
* ``lower``, ``upper``: finite numbers with ``lower <= mean <= upper`` (optional);
* ``sem``: a finite number ``>= 0`` (optional; missing counts as 0, which only makes an
  ``se`` tolerance tighter); ``level``: a number in (0, 1) (optional);
* a claim's entry is ``{metric: {...}}``; ``versions`` is ``{package: version}``.

Tolerances (two-sided, per metric; :class:`Tolerance`):

* ``"3se"`` (the default): ``|obtained - baseline| <= 3 * sqrt(sem_obtained**2 + sem_baseline**2)``;
* ``"abs:0.05"``: ``<= 0.05``;
* ``"rel:0.1"``: ``<= 0.1 * |baseline mean|``;

from ``@pytest.mark.baseline(tolerance=...)`` (one spec for all metrics, or
``{metric: spec}``; metrics not named get the run's default) or the
``circuits_baseline_tolerance`` ini option; :func:`tolerance_policy` is the one place
that resolves them.

**A tolerance wider than the value.** A check whose allowed band is wider than the value
itself cannot fail for any plausible value, so it is flagged and, unless the claim accepts
it with ``@pytest.mark.baseline(accept_wide=True)`` (or a list of metric names), the
claim fails. The rule: the value's *scale* is the largest of ``|baseline mean|``, the
baseline interval's width and the obtained interval's width; a tolerance is *wide* when
its allowance exceeds ``WIDE_FACTOR[kind] * scale``: 1 for ``abs`` and ``rel`` (the
band may not be wider than the value or its uncertainty), 2.5 for ``se`` (a ``3se`` band
is by construction about 1.1 times the width of a 95% interval, 2.1 times at n=2, so only
a lying ``sem`` or a very large multiple crosses 2.5). An allowance that is not a finite
number always fails.

**A baseline judged against the measurement** (:func:`spread_problem`). The rule above takes
its scale partly from the baseline, so a baseline that is wide but self-consistent (mean
+100, interval +-300, sem 100 at n=6, against a measurement whose own sem is 0.3) would set
its own tolerance. So a baseline is also refused when its spread, rescaled to the obtained
``n`` (``sem * sqrt(n_baseline / n_obtained)``, and its interval width likewise), is more
than :func:`spread_limit` times the fresh measurement's: ``max(SPREAD_FACTOR, sqrt(F))``,
where ``F`` is the ``1 - SPREAD_TAIL`` quantile of the F distribution with
``(n_baseline - 1, n_obtained - 1)`` degrees of freedom (the ratio two honest sample
variances of one population exceed with probability ``SPREAD_TAIL``; it matters only at
small n: 22.2 at n=6, 10 from n=10 on). The obtained spread is floored by its interval
(``sem >= width / 8``, ``width >= 8 * sem``), so a Clopper-Pearson interval of all-equal 0/1
values (sem 0, width > 0) is a spread; a measurement with no spread at all (all values equal,
``[v, v]``) counts as a sem of ``FLAT_SPREAD`` (1%) of the larger |mean|. A baseline whose interval is more than
``INTERVAL_FACTOR`` times wider than its own ``sem`` and ``n`` imply (``2 * t * sem``) is refused
too. Measured on the shipped baselines and on checkpoint changes (docs/trust.md): a rerun
gives a spread ratio of exactly 1, halving an attention layer's output at most 1.94.

Metric names are a claim's keys: two measurements with the same name in one claim are an
error (:func:`metric_keys`), never made unique by call order.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .config import NUMERIC_PACKAGES, versions
from .errors import BaselineError, CircuitsError, DuplicateMetricError, bad

DEFAULT_TOLERANCE = "3se"
_NUM = r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_SPEC = re.compile(rf"^(?:(?P<k>{_NUM})se|abs:(?P<abs>{_NUM})|rel:(?P<rel>{_NUM}))$")
VALID_SPEC = "'3se' (standard errors), 'abs:0.05' or 'rel:0.1' (a finite number >= 0)"

#: allowance / scale above which a tolerance is "wider than the value" (see the module doc)
WIDE_FACTOR = {"abs": 1.0, "rel": 1.0, "se": 2.5}
#: a baseline whose spread (rescaled to the obtained n) exceeds this many times the fresh
#: measurement's is refused; at small n the F quantile below is larger and is used instead
SPREAD_FACTOR = 10.0
#: the tail of the F distribution whose quantile bounds the honest ratio of two sample variances
SPREAD_TAIL = 1e-6
#: a measurement whose values are all equal (no spread) is judged as if its sem were this share of
#: the larger |mean| (so a checkpoint whose measurement became constant is not refused on that alone)
FLAT_SPREAD = 0.01
#: a baseline whose interval is wider than this many times ``2 * t * sem`` is inconsistent with
#: its own sem and n (measured on the shipped baselines: at most 1.2)
INTERVAL_FACTOR = 10.0

#: what a baseline's numbers depend on; recorded with every baseline, compared on every check
VERSION_PACKAGES = NUMERIC_PACKAGES

_EPS = sys.float_info.epsilon
#: the largest number of examples an entry may state (a count, not a number that overflows a float)
MAX_N = 10 ** 12


# -- tolerances -------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    kind: str      # "se", "abs" or "rel"
    value: float

    @classmethod
    def parse(cls, spec: Any) -> "Tolerance":
        if isinstance(spec, Tolerance):
            return spec
        m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
        if not m:
            raise BaselineError(bad("tolerance", spec, VALID_SPEC))
        kind = "se" if m.group("k") else "abs" if m.group("abs") else "rel"
        value = float(m.group("k") or m.group("abs") or m.group("rel"))
        if not math.isfinite(value):
            raise BaselineError(bad("tolerance", spec, VALID_SPEC))
        return cls(kind, value)

    def allowed(self, obtained: Mapping[str, Any], expected: Mapping[str, Any]) -> float:
        """The largest ``|obtained mean - baseline mean|`` this tolerance accepts.

        May be ``inf`` when the numbers overflow; :func:`verdict` fails such a row."""
        if self.kind == "abs":
            return self.value
        if self.kind == "rel":
            return self.value * abs(float(expected["mean"]))
        return self.value * math.hypot(float(obtained.get("sem", 0.0)), float(expected.get("sem", 0.0)))

    def __str__(self) -> str:
        return f"{self.value:g}se" if self.kind == "se" else f"{self.kind}:{self.value:g}"


@dataclass(frozen=True)
class TolerancePolicy:
    """The tolerance of each metric of one claim, and which wide tolerances it accepts."""

    default: Tolerance
    per_metric: Mapping[str, Tolerance] = field(default_factory=dict)
    accept_wide: bool | frozenset[str] = False

    def for_metric(self, metric: str) -> Tolerance:
        return self.per_metric.get(metric, self.default)

    def accepts_wide(self, metric: str) -> bool:
        return self.accept_wide is True or (isinstance(self.accept_wide, frozenset) and metric in self.accept_wide)

    def unknown_metrics(self, metrics: Iterable[str]) -> list[str]:
        """Metric names the policy mentions that are not among ``metrics`` (typos)."""
        known = set(metrics)
        named = set(self.per_metric) | (self.accept_wide if isinstance(self.accept_wide, frozenset) else set())
        return sorted(named - known)


def tolerance_policy(marker: Any = None, default: Any = DEFAULT_TOLERANCE) -> TolerancePolicy:
    """Resolve ``@pytest.mark.baseline(...)`` against the run's default tolerance.

    ``marker`` is the marker (anything with ``args`` and ``kwargs``), its kwargs as a
    mapping, or None. Accepted: ``tolerance=spec | {metric: spec}`` (or one positional
    spec) and ``accept_wide=True | [metric, ...]``; anything else is an error."""
    if marker is None:
        args, kwargs = (), {}
    elif isinstance(marker, Mapping):
        args, kwargs = (), dict(marker)
    else:
        args, kwargs = tuple(getattr(marker, "args", ())), dict(getattr(marker, "kwargs", {}))
    unknown = sorted(set(kwargs) - {"tolerance", "accept_wide"})
    if unknown:
        raise BaselineError(bad("baseline marker keyword", unknown[0], "tolerance=... or accept_wide=..."))
    if len(args) > 1 or (args and "tolerance" in kwargs):
        raise BaselineError(bad("baseline marker arguments", args, "at most one tolerance, positional or "
                                "tolerance=..., not both"))
    base = Tolerance.parse(default)
    spec = args[0] if args else kwargs.get("tolerance")
    per: dict[str, Tolerance] = {}
    if isinstance(spec, Mapping):
        for metric, s in spec.items():
            if not isinstance(metric, str):
                raise BaselineError(bad("tolerance metric", metric, "a metric name (str)"))
            per[metric] = Tolerance.parse(s)
    elif spec is not None:
        base = Tolerance.parse(spec)
    acc = kwargs.get("accept_wide", False)
    if isinstance(acc, bool):
        accept: bool | frozenset[str] = acc
    elif isinstance(acc, str):
        accept = frozenset([acc])
    elif isinstance(acc, (list, tuple, set, frozenset)) and all(isinstance(a, str) for a in acc):
        accept = frozenset(acc)
    else:
        raise BaselineError(bad("accept_wide", acc, "True, False, or a list of metric names"))
    return TolerancePolicy(base, per, accept)


# -- what a baseline keeps of a measurement ---------------------------------------------
def summary(m: Mapping[str, Any]) -> dict[str, Any]:
    """What a baseline keeps of a measurement (from ``Measurement.to_dict()``)."""
    values = m.get("values") or []
    n = int(m["n"])
    if n > 1 and len(values) == n:
        mean = math.fsum(values) / n
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        sem = sd / math.sqrt(n)
    else:
        sem = 0.0
    return {"mean": m["mean"], "lower": m["lower"], "upper": m["upper"], "n": n, "level": m["level"],
            "sem": sem}


def metric_keys(measurements: Iterable[Mapping[str, Any]], claim: str = "", *, strict: bool = True) -> list[str]:
    """The keys of a claim's measurements: their names, which must be distinct.

    A repeated name raises :class:`DuplicateMetricError` (keys made unique by call order
    would compare the wrong baselines once the order changes). ``strict=False`` returns
    the names as they are, for reports of a claim that has already failed."""
    names = [m["name"] if isinstance(m, Mapping) else m.name for m in measurements]
    if strict:
        seen: set[str] = set()
        dup = [k for k in names if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
        if dup:
            who = f"claim {claim}" if claim else "a claim"
            raise DuplicateMetricError(
                f"{who} recorded {names.count(dup[0])} measurements named {dup[0]!r}; give them distinct names "
                "(e.g. include the ablation kind or the circuit in the name)")
    return names


def model_file(directory: Path, model_label: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_label).strip("_") or "model"
    return directory / f"{safe}.json"


# -- reading and validating -------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:      # an int beyond a float
        return False


def entry_problems(entry: Any) -> list[str]:
    """What is wrong with one metric's entry (empty when it is valid), field by field."""
    if not isinstance(entry, Mapping):
        return [bad("entry", entry, "an object {\"mean\": ..., \"n\": ..., ...}")]
    out = []
    for f in ("mean", "n"):
        if f not in entry:
            out.append(f"{f} is missing: every entry needs mean and n")
    for f in ("mean", "lower", "upper", "sem"):
        if f in entry:
            v = entry[f]
            if not _is_number(v) or not _finite(v):
                out.append(bad(f, v, "a finite number"))
            elif f == "sem" and v < 0:
                out.append(bad(f, v, "a standard error >= 0"))
    if "n" in entry:
        n = entry["n"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
            out.append(bad("n", n, f"a positive integer (the number of examples, at most {MAX_N:.0e})"))
    if "level" in entry:
        lv = entry["level"]
        if not _is_number(lv) or not 0.0 < lv < 1.0:
            out.append(bad("level", lv, "a confidence level in (0, 1)"))
    if not out:
        nums = {f: float(entry[f]) for f in ("lower", "mean", "upper") if f in entry}
        slack = 4 * _EPS * max(abs(x) for x in nums.values())
        order = [f for f in ("lower", "mean", "upper") if f in nums]
        for a, b in zip(order, order[1:]):
            if nums[a] > nums[b] + slack:
                out.append(f"{a}={entry[a]!r} > {b}={entry[b]!r} is not valid: lower <= mean <= upper")
    return out


def _where(path: Any, claim: str, metric: str | None = None) -> str:
    return f"baseline file {path}: claim {claim!r}" + (f", metric {metric!r}" if metric is not None else "")


@dataclass(frozen=True)
class BaselineFile:
    """A baseline file, read and checked. ``claims`` holds the valid claims' entries;
    ``problems`` maps each claim with a malformed entry to what is wrong (file, claim,
    metric, field and value in each line)."""

    path: Path
    exists: bool = False
    model: str | None = None
    fingerprint: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    versions_of: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    claims: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def claim_versions(self, claim: str) -> Mapping[str, str]:
        """The versions ``claim``'s entries were recorded with."""
        return self.versions_of.get(claim, self.versions)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(Exception):
    pass


def _str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _parse(path: Path) -> dict[str, Any] | None:
    """The file's JSON with its top level checked; None when there is no file."""
    if not path.exists():
        return None
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BaselineError(f"baseline file {path} cannot be read ({e}); fix it, or delete it and rerun with "
                            "--circuits-update-baselines") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        raise BaselineError(f"baseline file {path} has the key {e.args[0]!r} twice in one object, so one of "
                            "the two would be silently ignored; keep one") from None
    except (ValueError, RecursionError) as e:
        raise BaselineError(f"baseline file {path} is not valid JSON ({e}); fix it, or delete it and "
                            "rerun with --circuits-update-baselines") from None
    layout = "({'model': ..., 'versions': {package: version}, 'claims': {claim: {metric: {...}}}})"
    if not isinstance(data, dict):
        raise BaselineError(f"baseline file {path} does not have the expected layout {layout}: "
                            f"its top level is a {type(data).__name__}")
    for key, ok, valid in (("claims", lambda v: isinstance(v, dict), "an object {claim: {metric: {...}}}"),
                           ("versions", _str_map, "an object {package: version}"),
                           ("versions_of", lambda v: isinstance(v, dict) and all(_str_map(x) for x in v.values()),
                            "an object {claim: {package: version}}"),
                           ("model", lambda v: v is None or isinstance(v, str), "a model name"),
                           ("fingerprint", lambda v: v is None or isinstance(v, str), "a weights fingerprint")):
        if key in data and not ok(data[key]):
            raise BaselineError(f"baseline file {path} does not have the expected layout {layout}: "
                                + bad(key, _short(data[key]), valid))
    return data


def _short(v: Any) -> Any:
    s = repr(v)
    return v if len(s) <= 80 else s[:77] + "..."


def read(path: Path | str) -> BaselineFile:
    """Read and check a baseline file (a missing file is an empty baseline).

    Raises :class:`BaselineError` when the whole file is unusable (not JSON, a wrong top
    level, a key twice); a malformed claim entry is kept in ``problems`` instead."""
    path = Path(path)
    data = _parse(path)
    if data is None:
        return BaselineFile(path)
    claims: dict[str, dict[str, Mapping[str, Any]]] = {}
    problems: dict[str, tuple[str, ...]] = {}
    for claim, metrics in data.get("claims", {}).items():
        if not isinstance(metrics, dict):
            problems[claim] = (f"{_where(path, claim)}: " + bad("entry", _short(metrics),
                                                                 "an object {metric: {\"mean\": ..., \"n\": ...}}"),)
            continue
        lines = [f"{_where(path, claim, metric)}: {p}" for metric, entry in metrics.items()
                 for p in entry_problems(entry)]
        if lines:
            problems[claim] = tuple(lines)
        else:
            claims[claim] = metrics
    return BaselineFile(path, True, data.get("model"), data.get("fingerprint"), data.get("versions", {}),
                        data.get("versions_of", {}), claims, problems, data)


def load(path: Path) -> dict[str, Any]:
    """The file's JSON (``{}`` when missing), refusing any malformed part (whole-file view)."""
    bf = read(path)
    for lines in bf.problems.values():
        raise BaselineError("\n".join(lines))
    return dict(bf.raw)


# -- writing ----------------------------------------------------------------------------
def _lock_file(path: Path) -> Path:
    """A lock file for ``path`` outside its folder (nothing is left beside the baselines)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"pytest-circuits-locks-{uid}"
    key = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return folder / f"{key}.lock"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for read-modify-write (xdist workers update one file).

    The lock is taken on a stable file in a per-user temp folder keyed by the hash of the
    baseline's absolute path: the baseline itself is replaced atomically, so locking it
    would not serialize writers, and a ``.lock`` beside it would litter the folder."""
    lock = _lock_file(path)
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            try:
                import msvcrt

                msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
            except (ImportError, OSError):
                pass
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; a baseline file is shared (committed, read by CI and
        # teammates), so give it the mode an ordinary new file gets (0666 less the umask), or keep
        # the mode of the file it replaces.
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _relevant(v: Mapping[str, str]) -> dict[str, str]:
    return {k: v[k] for k in ("python", *VERSION_PACKAGES) if k in v}


def update(path: Path, model: Mapping[str, Any], claim: str, entries: Mapping[str, Any]) -> None:
    """Set ``claim``'s entries in the file (read-modify-write under a lock, atomic replace).

    Other claims' entries are kept exactly as they are, malformed ones included (never
    rewrite what did not run). The entries written are checked first, so a file this
    function writes always reads back. A file that is not JSON is refused, not overwritten."""
    path = Path(path)
    for metric, entry in entries.items():
        lines = entry_problems(entry)
        if lines:
            raise BaselineError(f"refusing to write {path}: claim {claim!r}, metric {metric!r}: " + "; ".join(lines))
    now = {**versions(), **dict(model.get("versions") or {})}
    with _locked(path):
        old = _parse(path) or {}
        claims = dict(old.get("claims", {}))
        claims[claim] = {k: dict(v) for k, v in entries.items()}
        then = dict(old.get("versions") or {})
        versions_of = {c: v for c, v in dict(old.get("versions_of") or {}).items() if c in claims and c != claim}
        if _relevant(then) != _relevant(now):   # the claims not rewritten keep the versions they had
            for c in claims:
                if c != claim and c not in versions_of:
                    versions_of[c] = then
        versions_of = {c: v for c, v in versions_of.items() if _relevant(v) != _relevant(now)}
        data: dict[str, Any] = {"model": model.get("label"), "fingerprint": model.get("fingerprint"),
                                "versions": now}
        if versions_of:
            data["versions_of"] = dict(sorted(versions_of.items()))
        data["claims"] = dict(sorted(claims.items()))
        _write_atomic(path, data)


# -- comparing --------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One metric of a claim against its baseline.

    ``wide``: the tolerance is wider than the value's own scale (see the module doc), so
    the check cannot fail; ``accepted``: the claim said so explicitly."""

    metric: str
    obtained: float
    baseline: float | None
    tolerance: str
    allowed: float | None
    wide: bool = False
    accepted: bool = False
    scale: float | None = None
    spread: str = ""      # why the baseline cannot judge this measurement (spread_problem), or ""

    @property
    def difference(self) -> float | None:
        return None if self.baseline is None else self.obtained - self.baseline

    @property
    def finite_allowance(self) -> bool:
        return self.allowed is not None and math.isfinite(self.allowed)

    @property
    def within(self) -> bool:
        """The difference is inside the allowed band (exactly equal counts as inside, up to
        the rounding of the subtraction)."""
        if self.baseline is None or not self.finite_allowance:
            return False
        slack = 2 * _EPS * max(abs(self.obtained), abs(self.baseline))
        return abs(self.difference) <= self.allowed + slack  # type: ignore[arg-type,operator]

    @property
    def trusted(self) -> bool:
        """The check could have failed: a finite allowance, not wider than the value (or
        accepted), from a baseline whose spread is consistent with the measurement's."""
        return self.finite_allowance and (not self.wide or self.accepted) and not self.spread

    @property
    def ok(self) -> bool:
        return self.within and self.trusted

    @property
    def flag(self) -> str:
        """What a report shows beside the row ('' when nothing is wrong with the tolerance)."""
        if self.baseline is None or self.tolerance == "updated":
            return ""
        if not self.finite_allowance:
            return f"allowance {self.allowed} is not a finite number: the check cannot be made"
        parts = [f"baseline refused: {self.spread}"] if self.spread else []
        if self.wide:
            parts.append("tolerance wider than the value (scale " f"{self.scale:.3g}): the check cannot fail"
                         + (" (accepted)" if self.accepted else ""))
        return "; ".join(parts)


def _width(e: Mapping[str, Any]) -> float:
    return float(e["upper"]) - float(e["lower"]) if "upper" in e and "lower" in e else 0.0


def scale(obtained: Mapping[str, Any], expected: Mapping[str, Any]) -> float:
    """The value's own scale: max(|baseline mean|, baseline interval width, obtained interval width)."""
    return max(abs(float(expected["mean"])), _width(expected), _width(obtained))


def is_wide(tol: Tolerance, allowed: float, obtained: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """Whether ``allowed`` exceeds ``WIDE_FACTOR[tol.kind]`` times the value's scale."""
    return allowed > 0 and allowed > WIDE_FACTOR[tol.kind] * scale(obtained, expected)


def spread_limit(n_baseline: int, n_obtained: int) -> float:
    """How many times the fresh measurement's spread a baseline's may be (module doc):
    ``max(SPREAD_FACTOR, sqrt(F quantile))``; ``inf`` when either n is 1 (no spread to judge)."""
    if n_baseline < 2 or n_obtained < 2:
        return math.inf
    return max(SPREAD_FACTOR, math.sqrt(_f_quantile(1.0 - SPREAD_TAIL, n_baseline - 1, n_obtained - 1)))


@functools.lru_cache(maxsize=1024)
def _f_quantile(p: float, d1: int, d2: int) -> float:
    from .stats import beta_ppf

    x = beta_ppf(p, d1 / 2.0, d2 / 2.0)
    return math.inf if x >= 1.0 else (d2 * x) / (d1 * (1.0 - x))


def _t_quantile(level: float, n: int) -> float:
    from .stats import t_ppf

    return t_ppf(0.5 + level / 2.0, n - 1) if n > 1 else math.inf


def interval_problem(e: Mapping[str, Any]) -> str:
    """What makes a baseline entry's interval inconsistent with its own sem and n ("" if nothing):
    an interval more than :data:`INTERVAL_FACTOR` times ``2 * t * sem`` wide."""
    sem, n, width = float(e.get("sem", 0.0)), int(e["n"]), _width(e)
    if sem <= 0 or n < 2 or width <= 0:
        return ""
    expected = 2.0 * _t_quantile(float(e.get("level", 0.95)), n) * sem
    if width > INTERVAL_FACTOR * expected:
        return (f"its interval [{float(e['lower']):.4g}, {float(e['upper']):.4g}] (width {width:.3g}) is "
                f"{width / expected:.3g} times the width its own sem {sem:.3g} and n={n} imply "
                f"({expected:.3g}); at most {INTERVAL_FACTOR:g} times is accepted")
    return ""


def spread_problem(obtained: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """Why ``expected`` (a baseline entry) cannot judge ``obtained`` (the fresh measurement's
    summary), with the numbers; "" when it can. See the module doc: the baseline's sem and
    interval width, rescaled to the obtained n, may be at most :func:`spread_limit` times the
    measurement's, and its interval must agree with its own sem and n."""
    inner = interval_problem(expected)
    if inner:
        return inner
    n_b, n_o = int(expected["n"]), int(obtained.get("n", expected["n"]))
    limit = spread_limit(n_b, n_o)
    if math.isinf(limit):
        return ""
    k = math.sqrt(n_b / n_o)
    sem_b, w_b = float(expected.get("sem", 0.0)) * k, _width(expected) * k
    sem_o, w_o = float(obtained.get("sem", 0.0)), _width(obtained)
    floor_sem, floor_w = max(sem_o, w_o / 8.0), max(w_o, 8.0 * sem_o)
    if floor_sem == 0.0:   # all values equal ([v, v], flagged zero-width): judged against a share of the value
        floor_sem = FLAT_SPREAD * max(abs(float(obtained.get("mean", 0.0))), abs(float(expected["mean"])))
        floor_w = 8.0 * floor_sem
    slack = 1e-12 * max(1.0, abs(float(expected["mean"])), abs(float(obtained.get("mean", 0.0))))
    at = f" at n={n_o}" + (f" (baseline n={n_b}, rescaled by sqrt({n_b}/{n_o}))" if n_b != n_o else "")
    if sem_b > limit * floor_sem + slack:
        return (f"the baseline's sem {sem_b:.3g}{at} is {_times(sem_b, floor_sem)} the fresh measurement's "
                f"{floor_sem:.3g}; at most {limit:.3g} times is accepted, so its tolerance would come from the "
                "baseline, not from the measurement")
    if w_b > limit * floor_w + slack:
        return (f"the baseline's interval width {w_b:.3g}{at} is {_times(w_b, floor_w)} the fresh measurement's "
                f"{floor_w:.3g}; at most {limit:.3g} times is accepted, so the baseline would set the scale of "
                "its own check")
    return ""


def _times(a: float, b: float) -> str:
    return f"{a / b:.3g} times" if b > 0 else "infinitely many times (the measurement has no spread)"


def compare(obtained: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Mapping[str, Any]],
            tolerance: Any) -> list[Row]:
    """One row per obtained metric; ``tolerance`` is a spec, ``{metric: spec}`` or a
    :class:`TolerancePolicy`. Entries are assumed valid (see :func:`verdict`)."""
    policy = tolerance if isinstance(tolerance, TolerancePolicy) else tolerance_policy({"tolerance": tolerance})
    rows = []
    for metric, got in obtained.items():
        tol = policy.for_metric(metric)
        exp = expected.get(metric)
        if exp is None:
            rows.append(Row(metric, float(got["mean"]), None, str(tol), None))
            continue
        try:
            allowed = tol.allowed(got, exp)
        except OverflowError:
            allowed = math.inf
        rows.append(Row(metric, float(got["mean"]), float(exp["mean"]), str(tol), allowed,
                        wide=is_wide(tol, allowed, got, exp), accepted=policy.accepts_wide(metric),
                        scale=scale(got, exp), spread=spread_problem(got, exp)))
    return rows


@dataclass(frozen=True)
class Verdict:
    """A claim's measurements against its baseline: what the session reports and raises on."""

    claim: str
    path: Path | None
    rows: tuple[Row, ...] = ()
    problems: tuple[str, ...] = ()                     # the baseline (or obtained) entries are malformed
    missing: tuple[str, ...] = ()                      # in the baseline, no longer recorded by the claim
    version_changes: tuple[tuple[str, str, str], ...] = ()   # (package, then, now)
    unused_tolerances: tuple[str, ...] = ()            # metrics the marker names but the claim did not record

    @property
    def new(self) -> list[str]:
        return [r.metric for r in self.rows if r.baseline is None]

    @property
    def drifted(self) -> list[Row]:
        return [r for r in self.rows if r.baseline is not None and r.finite_allowance and not r.within]

    @property
    def untrusted(self) -> list[Row]:
        """Rows whose check could not have failed (non-finite or unaccepted wide allowance)."""
        return [r for r in self.rows if r.baseline is not None and not r.trusted]

    @property
    def passed(self) -> bool:
        return not (self.problems or self.missing or self.new or self.drifted or self.untrusted)

    def explain(self) -> list[str]:
        """One line per reason the claim fails, other than new metrics and drift (which the
        session words with the paths it writes)."""
        out = list(self.problems)
        for r in self.untrusted:
            if r.spread:
                out.append(f"{self.claim}, metric {r.metric!r}: baseline {r.baseline:.6g} refused: {r.spread}. "
                           f"Check {self.path}; rerun the claim with --circuits-update-baselines to record it "
                           "again")
            if not r.finite_allowance:
                out.append(f"{self.claim}, metric {r.metric!r}: tolerance {r.tolerance} gives an allowance of "
                           f"{r.allowed}, not a finite number; the check cannot be made")
            elif r.wide and not r.accepted:
                hint = ("the baseline's sem is larger than its own interval suggests: check the file"
                        if r.tolerance.endswith("se") else "use a narrower tolerance")
                out.append(f"{self.claim}, metric {r.metric!r}: tolerance {r.tolerance} allows ±{r.allowed:.3g}, "
                           f"wider than the value's own scale {r.scale:.3g} (largest of |baseline mean| and the "
                           f"interval widths): the check cannot fail. {hint}, or accept it with "
                           f"@pytest.mark.baseline(accept_wide=[{r.metric!r}])")
        if self.missing:
            out.append(f"{self.claim}: the baseline {self.path} has {', '.join(map(repr, self.missing))}, which "
                       "the claim no longer records; rerun with --circuits-update-baselines to drop them")
        return out

    def version_lines(self) -> list[str]:
        return [f"{pkg} {then} -> {now}" for pkg, then, now in self.version_changes]


def version_changes(then: Mapping[str, str], now: Mapping[str, str] | None) -> list[tuple[str, str, str]]:
    """``(package, then, now)`` for each recorded version that differs now (python and
    :data:`VERSION_PACKAGES`; packages the baseline did not record are not compared)."""
    now = now or {}
    return [(k, str(then[k]), str(now.get(k, "not recorded"))) for k in ("python", *VERSION_PACKAGES)
            if k in then and str(then[k]) != str(now.get(k, "not recorded"))]


def verdict(obtained: Mapping[str, Mapping[str, Any]], baseline: BaselineFile, claim: str,
            tolerance: Any = DEFAULT_TOLERANCE, versions_now: Mapping[str, str] | None = None) -> Verdict:
    """Compare ``claim``'s obtained entries (``{metric: summary(...)}``) with ``baseline``.

    Pure: reads nothing, writes nothing, raises only for a tolerance that is not valid
    (:class:`BaselineError`). Malformed entries become ``problems``; metric names the
    marker gives a tolerance for but the claim did not record become ``unused_tolerances``
    (a typo, or a marker shared by several claims: worth a warning, not a failure)."""
    policy = tolerance if isinstance(tolerance, TolerancePolicy) else tolerance_policy({"tolerance": tolerance})
    unused = tuple(policy.unknown_metrics(obtained))
    problems = [f"obtained value of claim {claim!r}, metric {metric!r}: {p}"
                for metric, entry in obtained.items() for p in entry_problems(entry)]
    problems += baseline.problems.get(claim, ())
    changes = tuple(version_changes(baseline.claim_versions(claim), versions_now)) if baseline.exists else ()
    if problems:
        return Verdict(claim, baseline.path, (), tuple(problems), (), changes, unused)
    expected = baseline.claims.get(claim, {})
    rows = compare(obtained, expected, policy)
    missing = tuple(m for m in expected if m not in obtained) if expected else ()
    return Verdict(claim, baseline.path, tuple(rows), (), missing, changes, unused)


def table(rows: Iterable[Row]) -> str:
    rows = list(rows)
    head = ("metric", "obtained", "baseline", "difference", "tolerance")
    body = [(r.metric, f"{r.obtained:.6g}", "-" if r.baseline is None else f"{r.baseline:.6g}",
             "-" if r.difference is None else f"{r.difference:+.3g}",
             (f"{r.tolerance} (±{r.allowed:.3g})" if r.allowed is not None else r.tolerance)
             + (f"  {r.flag.upper() if not r.trusted else r.flag}" if r.flag else ""))
            for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
    line = lambda xs: " | ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    marks = ["  " if r.ok else "! " for r in rows]
    return "\n".join(["  " + line(head), "  " + "-+-".join("-" * w for w in widths)]
                     + [m + line(b) for m, b in zip(marks, body)])
