"""Write the architecture table of docs/models.md from the architecture matrix's results.

    python scripts/models_table.py            # run the matrix tests, then rewrite the table
    python scripts/models_table.py --check    # run them, and fail if the committed table differs

The matrix (tests/unit/test_architecture_matrix.py) checks every technique on a tiny random
checkpoint of every family in ``pytest_circuits.architectures`` and records each cell's observed
outcome (exact / exact with an option / refused, and why) into the file named by
``$PYTEST_CIRCUITS_MATRIX_RESULTS``. This script runs those tests with that variable set, refuses
to write a table when a test failed or a cell was not recorded (a skipped or deselected cell
leaves a gap, never a guessed entry), and renders the recorded outcomes between the markers of
docs/models.md. tests/unit/test_architecture_matrix.py checks that the committed table is the
rendering of the outcomes the matrix asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "models.md"
START, END = "<!-- architecture-matrix:start -->", "<!-- architecture-matrix:end -->"
MATRIX_TESTS = "tests/unit/test_architecture_matrix.py"

sys.path.insert(0, str(ROOT))


def read_results(path: Path) -> dict[tuple[str, str], dict]:
    """``{(technique, family): outcome}`` from a results file (one JSON object a line). A cell
    recorded twice with different outcomes is an error."""
    cells: dict[tuple[str, str], dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        key = (rec["technique"], rec["family"])
        out = {k: rec[k] for k in ("kind", "option", "feature", "why")}
        if key in cells and cells[key] != out:
            raise SystemExit(f"{path}:{n}: {key} recorded as {cells[key]} and as {out}")
        cells[key] = out
    return cells


def expected_cells() -> dict[tuple[str, str], dict]:
    """The outcomes the matrix tests assert, in the form :func:`read_results` returns."""
    from pytest_circuits import architectures as A

    out = {}
    for t in A.TECHNIQUES:
        for f in A.FAMILIES:
            o = A.expected(t, f)
            out[(t, f)] = {"kind": o.kind, "option": [list(x) for x in o.option], "feature": o.feature, "why": o.why}
    return out


def render(cells: dict[tuple[str, str], dict]) -> str:
    """The markdown table (families x techniques) and its notes; every cell must be present."""
    from pytest_circuits import architectures as A

    missing = [(t, f) for t in A.TECHNIQUES for f in A.FAMILIES if (t, f) not in cells]
    if missing:
        raise SystemExit(f"{len(missing)} cells of the matrix have no recorded outcome (skipped or not run), "
                         f"e.g. {missing[:3]}: no table is written with gaps")
    notes: list[str] = []

    def text(c: dict) -> str:
        if c["kind"] == "exact":
            return "exact"
        note = f"{c['feature']}" + (f": {c['why']}" if c["why"] else "")
        if note not in notes:
            notes.append(note)
        mark = f"[{notes.index(note) + 1}]"
        if c["kind"] == "option":
            opts = ", ".join(f'{k}="{v}"' for k, v in c["option"])
            return f"exact with `{opts}` {mark}"
        return f"refused {mark}"

    techniques = list(A.TECHNIQUES)
    lines = ["| family | exercises | " + " | ".join(techniques) + " |",
             "|---|---|" + "---|" * len(techniques)]
    for name, fam in A.FAMILIES.items():
        row = [f"{fam.title} (`{name}`)", "; ".join(fam.features)]
        row += [text(cells[(t, name)]) for t in techniques]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for i, note in enumerate(notes, 1):
        lines.append(f"[{i}] {note}.")
        lines.append("")
    lines.append("What each column checks:")
    lines.append("")
    for t, what in A.TECHNIQUES.items():
        lines.append(f"- **{t}**: {what}.")
    return "\n".join(lines).rstrip() + "\n"


def splice(doc: str, table: str) -> str:
    """``doc`` with the text between the markers replaced by ``table``."""
    if START not in doc or END not in doc or doc.index(START) > doc.index(END):
        raise SystemExit(f"{DOC} lacks the markers {START} ... {END}")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"


def run_matrix(results: Path) -> None:
    env = {**os.environ, "PYTEST_CIRCUITS_MATRIX_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    # the two tests of this table itself are left out: they compare the committed table, which
    # is what is being rewritten
    proc = subprocess.run([sys.executable, "-m", "pytest", MATRIX_TESTS, "-q", "-p", "no:cacheprovider",
                           "-k", "not committed_table and not table_script"], cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the matrix tests failed (exit {proc.returncode}): no table is written")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail when the committed table differs")
    ap.add_argument("--results", type=Path, help="render from this results file instead of running the tests")
    args = ap.parse_args(argv)
    if args.results is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "matrix.jsonl"
            path.touch()
            run_matrix(path)
            cells = read_results(path)
    else:
        cells = read_results(args.results)
    doc = DOC.read_text(encoding="utf-8")
    new = splice(doc, render(cells))
    if args.check:
        if new != doc:
            print(f"{DOC} is not the rendering of the matrix's results: run python scripts/models_table.py")
            return 1
        print(f"{DOC}: the architecture table is current")
        return 0
    DOC.write_text(new, encoding="utf-8")
    print(f"wrote the architecture table of {DOC} ({len(cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
