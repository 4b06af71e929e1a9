"""Re-render a report's Markdown and HTML from its JSON ledger (no model, no pytest run).

    python scripts/render_report.py docs/example-drift/report.json            # report.md, report.html beside it
    python scripts/render_report.py r.json --markdown out.md --html out.html  # elsewhere

Prints the release verdict (``report.terminal_lines``); exits 0 whatever the verdict (the
gate's exit status belongs to the run or to ``pytest-circuits merge``), 2 on a file that is
missing or not a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_circuits import report as _report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the JSON report (ledger)")
    ap.add_argument("--markdown", type=Path, help="where to write the Markdown (default: beside the JSON)")
    ap.add_argument("--html", type=Path, help="where to write the HTML (default: beside the JSON)")
    args = ap.parse_args(argv)
    try:
        data = json.loads(args.report.read_text("utf-8"))
    except (OSError, ValueError) as e:
        print(f"render_report: cannot read {args.report}: {e}", file=sys.stderr)
        return 2
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        print(f"render_report: {args.report} is not a pytest-circuits report (no 'records' list)", file=sys.stderr)
        return 2
    _report.write_markdown(args.markdown or args.report.with_suffix(".md"), data)
    _report.write_html(args.html or args.report.with_suffix(".html"), data)
    print("\n".join(_report.terminal_lines(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
