"""Measure the full-size random stand-ins (pytest_circuits.architectures.FULL_SIZE) on this
machine: build, load, and one claim's measurements, with the process's peak memory.

    python scripts/measure_full_size.py                 # every stand-in, each in its own process
    python scripts/measure_full_size.py gpt2-small      # one

Each stand-in runs in a fresh process (so its peak resident memory is its own): it is built
into a temporary folder (random weights at the published dimensions, no download), loaded
with ``pytest_circuits.load_model`` (float32, CPU, compatibility mode), then measures the
greater-than task on 16 prompts: direct effects of every head and MLP (one forward, identity
checked against the logits) and a zero ablation's self-repair decomposition (a resumed
forward). Prints one markdown row per stand-in for docs/measured.md.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(name: str) -> dict:
    import torch

    from pytest_circuits import ActivationStore, load_model, tasks
    from pytest_circuits import architectures as A
    from pytest_circuits.tasks.ioi import vocabulary
    from pytest_circuits.techniques import effects as E

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20      # GiB (ru_maxrss in KiB)

    out: dict = {"name": name, "shape_of": A.FULL_SIZE[name].shape_of, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = A.build_full_size(name, Path(tmp) / name, seed=0, words=list(A.WORDS) + vocabulary())
        out["build_s"], out["build_peak_gib"] = time.perf_counter() - t, peak()
        out["weights_gib"] = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
        t = time.perf_counter()
        model = load_model(folder, cache_dir=Path(tmp) / "cache", device="cpu")
        out["load_s"], out["load_peak_gib"] = time.perf_counter() - t, peak()
        out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        years = tasks.greater_than(model, n=16, seed=0)
        store = ActivationStore(batch_size=8)
        t = time.perf_counter()
        de = E.decompose(model, years.prompts, token="top", activations=store)
        out["decompose_s"] = time.perf_counter() - t
        out["residual"] = float(de.residual.abs().max())
        t = time.perf_counter()
        E.self_repair(model, years.prompts, "L1H1", kind="zero", token="top", activations=store)
        out["self_repair_s"] = time.perf_counter() - t
        out["tokens"] = int(years.prompts.tokens.shape[1])
        out["run_peak_gib"] = peak()
    return out


def row(r: dict) -> str:
    return (f"| {r['shape_of']} | {r['params_m']:.0f}M | {r['weights_gib']:.2f} | {r['build_s']:.0f} | "
            f"{r['load_s']:.0f} | {r['load_peak_gib']:.1f} | {r['decompose_s']:.1f} | {r['self_repair_s']:.1f} | "
            f"{r['run_peak_gib']:.1f} | {r['residual']:.1e} |")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        print(json.dumps(measure(argv[1])))
        return 0
    from pytest_circuits import architectures as A

    names = argv or list(A.FULL_SIZE)
    print("| stand-in | parameters | weights (GiB) | build (s) | load (s) | peak after load (GiB) | "
          "direct effects, 16 prompts (s) | self-repair (s) | peak (GiB) | identity residual |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode} |")
            continue
        print(row(json.loads(proc.stdout.strip().splitlines()[-1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
