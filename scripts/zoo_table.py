"""The decoy zoo's false-positive / false-negative table: every check of the mechanism checkup
on every zoo checkpoint (:mod:`pytest_circuits.zoo`).

    python scripts/zoo_table.py                         # print the tables (Markdown)
    python scripts/zoo_table.py --seeds 0,1,2           # each check with three detector seeds
    python scripts/zoo_table.py --write docs/checkup.md # and put them between the markers there

For each registered entry (a check on a checkpoint: a mechanism, a decoy or a control) the
first table gives what was expected (a mechanism: FOUND with exactly the planted heads;
otherwise absent), what each seed gave, the heads located and the outcome: OK, FP (found
where nothing was planted, or heads located that were not planted), FN (a planted mechanism
missed, or a planted head not located), N/A (the check did not run: never OK), UNDECIDED (a
verdict that is neither found nor absent), SEED (the verdict changed with the seed). The second table is every check on every checkpoint, with
no expectation (what the checkup reports). Checkpoints are built into ``--root`` (default: a
temporary folder) and loaded on the CPU; every activation stays in memory.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:               # this checkout's package, not another installed one
    sys.path.insert(0, str(ROOT))
BEGIN = "<!-- zoo-table:begin (scripts/zoo_table.py --write docs/checkup.md) -->"
END = "<!-- zoo-table:end -->"


@dataclass
class Row:
    entry: str
    checkpoint: str
    check: str
    kind: str
    expected: tuple[str, ...]                  # planted heads (a mechanism), else ()
    got: list[str] = field(default_factory=list)          # status per seed
    heads: list[tuple[str, ...]] = field(default_factory=list)
    outcome: str = ""
    why: str = ""

    def judge(self) -> None:
        found = [g == "found" for g in self.got]
        if any(g == "n/a" for g in self.got):
            self.outcome = "N/A"
        elif any(g not in ("found", "absent") for g in self.got):   # e.g. "undecided"
            self.outcome = "UNDECIDED"
        elif len({(g, h) for g, h in zip(self.got, self.heads)}) > 1:
            self.outcome = "SEED"
        elif self.kind == "mechanism":
            if not found[0]:
                self.outcome = "FN"
            else:
                extra = set(self.heads[0]) - set(self.expected)
                missing = set(self.expected) - set(self.heads[0])
                self.outcome = "FP" if extra and not missing else "FN" if missing and not extra else \
                    "FP+FN" if extra else "OK"
        else:
            self.outcome = "FP" if found[0] else "OK"


def checkpoint_of(entry: Any) -> str:
    """Entries that share a builder share one checkpoint folder (its ``checkpoint`` name when
    the builder has one, else the entry's name)."""
    return str(getattr(entry.build, "checkpoint", entry.name))


def _run_check(name: str, model: Any, seed: int) -> Any:
    from pytest_circuits import checkup

    fn = checkup.CHECKS[name].function()
    kw = {"seed": seed} if "seed" in inspect.signature(fn).parameters else {}
    return checkup.run(name, model, **kw)


def run(entries: Sequence[Any] | None = None, *, seeds: Sequence[int] = (0,), root: Path | None = None,
        all_checks: bool = False) -> tuple[list[Row], dict[str, dict[str, str]]]:
    """Build and load every checkpoint of ``entries`` (default: the whole registry), run each
    entry's check with every seed (and, with ``all_checks``, every check once with seed 0);
    returns the judged rows and ``{checkpoint: {check: cell}}``."""
    from pytest_circuits import checkup, load_model, zoo
    from pytest_circuits.store import ActivationStore, reset, set_current

    entries = list(zoo.models() if entries is None else entries)
    root = Path(tempfile.mkdtemp(prefix="zoo-")) if root is None else Path(root)
    by_ckpt: dict[str, list[Any]] = {}
    for e in entries:
        by_ckpt.setdefault(checkpoint_of(e), []).append(e)
    rows: list[Row] = []
    matrix: dict[str, dict[str, str]] = {}
    for ckpt, es in by_ckpt.items():
        folder = root / ckpt
        if not (folder / "config.json").exists():
            es[0].build(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(str(folder), device="cpu", cache_dir=root / ".model-cache")
        token = set_current(ActivationStore())
        try:
            done: dict[tuple[str, int], Any] = {}
            for e in es:
                row = Row(e.name, ckpt, e.check, e.kind, tuple(e.expect_heads))
                for s in seeds:
                    det = done.get((e.check, s)) or _run_check(e.check, model, s)
                    done[(e.check, s)] = det
                    row.got.append(det.status if det.applicable else "n/a")
                    row.heads.append(tuple(c for c, _ in det.components) if det.found else ())
                    if s == seeds[0]:
                        row.why = (det.details.strip().splitlines()[0].strip() if det.details else det.reason)
                row.judge()
                rows.append(row)
            if all_checks:
                for name in checkup.CHECKS:
                    det = done.get((name, seeds[0])) or _run_check(name, model, seeds[0])
                    matrix.setdefault(ckpt, {})[name] = (
                        "n/a" if not det.applicable else
                        "FOUND " + ",".join(c for c, _ in det.components[:4]) if det.found else
                        det.status)
        finally:
            reset(token)
    order = {c: i for i, c in enumerate(checkup.CHECKS)}
    kinds = {k: i for i, k in enumerate(zoo.KINDS)}
    rows.sort(key=lambda r: (order.get(r.check, len(order)), kinds.get(r.kind, len(kinds))))   # stable: registry order
    return rows, matrix


def markdown(rows: Sequence[Row], matrix: dict[str, dict[str, str]], seeds: Sequence[int]) -> str:
    out = [f"| check | zoo model | kind | expected | got (seeds {', '.join(map(str, seeds))}) | located | outcome |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        expected = f"FOUND {', '.join(r.expected)}" if r.kind == "mechanism" else "absent"
        got = " / ".join(dict.fromkeys(r.got))
        located = ", ".join(r.heads[0]) if r.heads and r.heads[0] else "-"
        out.append(f"| {r.check} | `{r.entry}` | {r.kind} | {expected} | {got} | {located} | **{r.outcome}** |")
    bad = [r for r in rows if r.outcome != "OK"]
    fp = sum("FP" in r.outcome for r in rows)
    fn = sum("FN" in r.outcome for r in rows)
    out += ["", f"{len(rows)} entries: {fp} false positives, {fn} false negatives, "
                f"{len(bad) - sum(('FP' in r.outcome or 'FN' in r.outcome) for r in bad)} other failures."]
    if matrix:
        checks = list(next(iter(matrix.values())))
        out += ["", "Every check on every zoo checkpoint (seed 0; no expectation: what the checkup reports):", "",
                "| checkpoint | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
        for ckpt, cells in matrix.items():
            out.append(f"| `{ckpt}` | " + " | ".join(cells.get(c, "") for c in checks) + " |")
    return "\n".join(out)


def write_between_markers(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path}: no markers {BEGIN!r} ... {END!r} to write between")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="detector seeds, comma separated (default 0,1,2)")
    ap.add_argument("--root", type=Path, default=None, help="where to build the checkpoints (default: a temp dir)")
    ap.add_argument("--write", type=Path, default=None, help="a Markdown file with the zoo-table markers")
    ap.add_argument("--only-own-check", action="store_true", help="skip the every-check x every-checkpoint table")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds={args.seeds!r}: comma-separated ints")
    if not seeds:
        ap.error("--seeds: at least one seed")
    rows, matrix = run(seeds=seeds, root=args.root, all_checks=not args.only_own_check)
    if not rows:
        print("the zoo registry is empty: nothing was checked", file=sys.stderr)
        return 1
    text = markdown(rows, matrix, seeds)
    print(text)
    if args.write is not None:
        write_between_markers(args.write, text)
    return 0 if all(r.outcome == "OK" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
