"""Find SmolLM2-135M's greater-than circuit with the project's tools, and document it.

Discovery runs on one seeded prompt set (seed 1); the claims in
claims/smollm2/test_greater_than_circuit.py check the result on another (seed 0), so
the circuit is not judged on the prompts that chose it. Steps, each timed:

1. attribution screen (TransformerLens's attribution_patch) on ``--screen-n`` prompts;
2. exact activation patching of every head and MLP (the screen's reference);
3. activation patching of each layer's attention and MLP output by position;
4. path patching from the logits backwards (patching.discover) over the screen's top
   ``--candidates`` components plus any exact-patching hit the screen missed;
5. the circuit: path patching's direct-path backbone recovers little of PD (see the
   write-up), so the circuit is grown from the exact-patching ranking (circuits.grow, 4
   components at a time, until faithfulness reaches ``--target``) and pruned of every
   component whose removal costs nothing (circuits.prune);
6. faithfulness, completeness, minimality and the ablation-robustness matrix of both on
   the discovery prompts.

``--from-results`` reuses steps 1-4 from an earlier docs/greater-than/results.json.

Writes docs/greater-than/{results.json, *.png} and claims/smollm2/data/greater_than_circuit.json.

    python scripts/discover_greater_than.py [--n 24] [--screen-n 12] [--candidates 40] [--threshold 0.03]

The defaults are the settings of the shipped results (about 25 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pytest_circuits import ActivationStore, load_model, plots, tasks
from pytest_circuits.techniques import circuits as C
from pytest_circuits.techniques import patching as P
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "greater-than"
CIRCUIT = ROOT / "claims" / "smollm2" / "data" / "greater_than_circuit.json"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--screen-n", type=int, default=12)
    ap.add_argument("--candidates", type=int, default=40)
    ap.add_argument("--threshold", type=float, default=0.03)
    ap.add_argument("--position-n", type=int, default=12)
    ap.add_argument("--skip-positions", action="store_true")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--from-results", action="store_true")
    args = ap.parse_args()
    DOCS.mkdir(parents=True, exist_ok=True)
    out: dict = {"args": vars(args), "timings_s": {}}
    t = out["timings_s"]

    model = load_model("smollm2-135m")
    task = tasks.greater_than(model, n=args.n, seed=args.seed, name="greater_than:discovery")
    store = ActivationStore(batch_size=32)
    clean = task.scores(model, activations=store)
    corrupted = task.scores(model, activations=store, corrupted=True)
    out["prob_diff"] = {"clean": float(clean.mean()), "corrupted": float(corrupted.mean())}
    print(f"PD clean {clean.mean():.3f}, corrupted {corrupted.mean():.3f} (n={args.n})", flush=True)

    if args.from_results:
        prev = json.loads((DOCS / "results.json").read_text())
        out.update({k: v for k, v in prev.items() if k not in ("args", "timings_s")})
        t.update(prev.get("timings_s", {}))
        effects = prev["exact_sweep"]["effects"]
        ranking = sorted(effects, key=lambda k: -abs(effects[k]["mean"]))
        backbone = C.Circuit.of(model, prev["discovery"]["circuit"]["components"],
                                edges=[tuple(e) for e in prev["discovery"]["circuit"]["edges"]],
                                name="path-patching-backbone")
    else:
        t0 = time.perf_counter()
        screen = P.attribution_screen(model, task, n=args.screen_n)
        t["attribution_screen"] = time.perf_counter() - t0
        print(screen, flush=True)

        say("exact activation patching of every head and MLP")
        t0 = time.perf_counter()
        exact = P.sweep(model, task, activations=store)
        t["exact_sweep_all"] = time.perf_counter() - t0
        print(exact.table(15), flush=True)
        agree = screen.agreement(exact, k=args.candidates)
        out["screen_vs_exact"] = {"spearman": agree.spearman, "recall_at_k": agree.recall_at_k, "k": agree.k}
        print(agree, flush=True)
        out["exact_sweep"] = exact.to_dict()
        out["screen"] = {str(c): float(m) for c, m in zip(screen.components, screen.means)}
        plots.component_heatmap(model, exact.grid(mlp=True) / exact.scale, DOCS / "activation_patching.png",
                                title=f"SmolLM2-135M greater-than: activation patching ('01' corruption, n={args.n})")
        plots.component_heatmap(model, screen.grid(mlp=True), DOCS / "attribution_screen.png",
                                title=f"attribution patching screen (n={args.screen_n})",
                                cbar="gradient estimate (denoising)")

        if not args.skip_positions:
            sub = tasks.greater_than(model, n=args.position_n, seed=args.seed, name="greater_than:positions")
            say("patching by position")
            t0 = time.perf_counter()
            pos = P.position_sweep(model, sub, activations=store)
            t["position_sweep"] = time.perf_counter() - t0
            toks = [model.tokenizer.decode([int(x)]) for x in sub.prompts.tokens[0]]
            for label, sw in pos.items():
                g, positions = P.position_grid(model, sw)
                plots.heatmap(g, DOCS / f"positions_{label}.png",
                              title=f"patching {label} output at one position (n={args.position_n})",
                              xlabels=[f"{p}\n{toks[p]!r}" for p in positions],
                              ylabels=[str(layer) for layer in range(model.cfg.n_layers)], xlabel="position",
                              ylabel="layer", cbar="effect / corruption's effect")
                out[f"positions_{label}"] = sw.to_dict()

        cands = [r.component for r in screen.top(args.candidates, order="abs")]
        missed = [c for c in exact.significant(args.threshold) if c not in cands]
        out["exact_hits_missed_by_screen"] = [str(c) for c in missed]
        say("path patching from the logits backwards")
        t0 = time.perf_counter()
        found = P.discover(model, task, candidates=cands + missed, threshold=args.threshold,
                           name="smollm2-greater-than", activations=store)
        t["path_patching_discovery"] = time.perf_counter() - t0
        print(found, flush=True)
        out["discovery"] = {"circuit": found.circuit.to_dict(), "rounds": [r.to_dict() for r in found.rounds],
                            "found": [[str(c) for c in f] for f in found.found]}
        logits_round = found.rounds[0]
        plots.component_heatmap(model, logits_round.grid(mlp=True) / logits_round.scale,
                                DOCS / "path_patching_logits.png",
                                title="path patching: direct path to the logits (screened candidates)")

        ranking = [str(r.component) for r in exact.ranking(order="abs")]
        backbone = C.Circuit(found.circuit.components, found.circuit.edges, "path-patching-backbone")

    say("growing the circuit from the exact-patching ranking, then pruning")
    t0 = time.perf_counter()
    grown = C.grow(model, task, ranking, target=args.target, step=4, max_size=120, name="grown",
                   activations=store)
    circ = C.prune(model, task, grown.circuit, min_cost=0.0, name="smollm2-greater-than", activations=store)
    t["grow_and_prune"] = time.perf_counter() - t0
    print(grown, circ, sep="\n", flush=True)
    out["growth"] = {"steps": [{"size": k, **m.to_dict()} for k, m in grown.steps], "reached": grown.reached}
    for v in out["growth"]["steps"]:
        v.pop("values", None)
    back = C.faithfulness(model, task, backbone, activations=store)
    print(back, flush=True)
    out["backbone_faithfulness"] = {"recovered": back.recovered.to_dict(), "fraction": back.fraction.to_dict()}
    say("circuit checks")
    t0 = time.perf_counter()
    faith = C.faithfulness(model, task, circ, activations=store)
    mini = C.minimality(model, task, circ, activations=store)
    comp = C.completeness(model, task, circ, activations=store)
    rob = C.robustness(model, task, circ, faithful_above=0.5, gaps_within=0.2, costs_above=None,
                       activations=store)
    t["circuit_checks"] = time.perf_counter() - t0
    print(faith, mini, mini.table(), comp, comp.table(), rob, sep="\n", flush=True)
    out["circuit"] = circ.to_dict()
    out["faithfulness"] = {"recovered": faith.recovered.to_dict(), "fraction": faith.fraction.to_dict()}
    out["minimality"] = {str(c): m.to_dict() for c, m in mini.costs.items()}
    out["completeness"] = [{"removed": [str(c) for c in k], **g.to_dict()} for k, g in zip(comp.subsets, comp.gaps)]
    out["robustness"] = rob.to_dict()
    for v in out["minimality"].values():
        v.pop("values", None)
    for v in out["completeness"]:
        v.pop("values", None)
    circ.save(CIRCUIT, found_by="scripts/discover_greater_than.py", args=vars(args))
    (DOCS / "results.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"timings: {json.dumps(t)}", flush=True)


if __name__ == "__main__":
    main()
