"""Write the planted ground-truth checkpoints into tests/data/planted/.

    python scripts/make_planted.py [OUT_DIR]

Writes erasure/, erasure_control/, backup/, backup_control/, ordinal/ and
ordinal_control/ (see pytest_circuits/planted.py for what each contains). Deterministic: running it again
rewrites byte-identical model.safetensors files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pytest_circuits.planted import BUILDERS, ORDINAL_BUILDERS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "planted"


def main(out: Path = DEFAULT_OUT) -> None:
    for name, build in {**BUILDERS, **ORDINAL_BUILDERS}.items():
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        build(folder)
        size = (folder / "model.safetensors").stat().st_size
        print(f"{folder}: model.safetensors {size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
