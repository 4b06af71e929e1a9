"""Install the built wheel into a new, minimal environment and check that pytest finds
the plugin through its entry point alone (no repo, no conftest, no torch needed for --help).

    python scripts/check_install.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str, cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        sys.stdout.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"check_install: {' '.join(cmd)} failed ({out.returncode})")
    return out.stdout


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="circuits-install-") as tmp:
        tmp_path = Path(tmp)
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT))
        wheel = next((tmp_path / "dist").glob("pytest_circuits-*.whl"))
        run(sys.executable, "-m", "venv", str(tmp_path / "env"))
        py = str(tmp_path / "env" / "bin" / "python")
        run(py, "-m", "pip", "install", "-q", "pytest")
        run(py, "-m", "pip", "install", "-q", "--no-deps", str(wheel))
        work = tmp_path / "elsewhere"
        work.mkdir()
        help_text = run(py, "-m", "pytest", "--help", cwd=work)
        for opt in ("--circuits-model", "--circuits-device", "--circuits-cache-dir"):
            if opt not in help_text:
                raise SystemExit(f"check_install: {opt} missing from `pytest --help` in a fresh environment")
        files = run(py, "-c", "import importlib.resources as r; "
                    "print(r.files('pytest_circuits').joinpath('data/facts.jsonl').is_file())", cwd=work)
        if files.strip() != "True":
            raise SystemExit("check_install: data/facts.jsonl is missing from the wheel")
    print(f"check_install: {wheel.name} installs into a new environment; `pytest --help` shows the "
          "circuits options and the shipped data is included")


if __name__ == "__main__":
    main()
