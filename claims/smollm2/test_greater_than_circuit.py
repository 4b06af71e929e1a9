"""SmolLM2-135M's greater-than circuit, found by the project and checked on held-out prompts.

scripts/discover_greater_than.py found the circuit (data/greater_than_circuit.json) on 24
prompts drawn with seed 1: exact activation patching ranked every head and MLP, the circuit
was grown from that ranking until it recovered 80% of PD, then pruned of components whose
removal cost nothing (path patching's direct-path backbone, also in the write-up, recovers
only about 10%). The claims below check it on the first 100 prompts of seed 0 (the set of
test_greater_than.py), which played no part in choosing it.
Removal is patching from the '01' run at every position unless a claim says otherwise;
see docs/greater-than/README.md for what was found and the heatmaps.
"""

from pathlib import Path

import pytest

from pytest_circuits.techniques import circuits as C
from pytest_circuits import tasks

pytestmark = pytest.mark.model("smollm2-135m")

SOURCE = "arXiv:2305.00586 (method); circuit found by this project"
CIRCUIT = Path(__file__).parent / "data" / "greater_than_circuit.json"


@pytest.fixture(scope="module")
def years(model):
    return tasks.greater_than(model, n=100, seed=0, name="greater_than:held_out")


@pytest.fixture(scope="module")
def circuit(model):
    return C.Circuit.load(model, CIRCUIT)


@pytest.mark.claim(source=SOURCE, finding="the circuit alone recovers most of the model's greater-than PD: with every "
                   "other head and MLP patched from the '01' run, PD stays close to the full model's")
def test_circuit_is_faithful(model, years, circuit):
    f = C.faithfulness(model, years, circuit)
    print(f)
    # Measured 2026-11-26, n=100: recovered 0.873 [0.847, 0.895]; fraction of the model's PD
    # 0.766 [0.714, 0.81] (circuit 0.654, model 0.854, everything removed -0.721).
    f.recovered.assert_above(0.8)
    f.fraction.assert_above(0.65)


@pytest.mark.claim(source=SOURCE, finding="the circuit is complete: removing a part of it hurts the circuit about as "
                   "much as it hurts the whole model")
def test_circuit_is_complete(model, years, circuit):
    comp = C.completeness(model, years, circuit, n_random=2)
    print(comp.table())
    # Measured 2026-11-26, n=100 (the whole circuit and 2 random halves): worst gap
    # -0.0512 [-0.0635, -0.0398].
    comp.assert_gaps_within(0.1)


# On the held-out prompts mlp28's cost is not distinguishable from 0 (0.00197 [-0.00992, 0.0157], 2026-11-26).
# circuits.prune keeps every component not shown to cost nothing (upper bound > 0 on the
# discovery prompts), so it stayed. The claim is stated for the other 35, and mlp28 is named
# here rather than silently dropped.
NOT_SHOWN_NEEDED = ("mlp28",)


@pytest.mark.claim(source=SOURCE, finding="the circuit is minimal except for mlp28: removing any other one of its 35 "
                   "components from it lowers PD")
def test_circuit_is_minimal(model, years, circuit):
    mini = C.minimality(model, years, circuit)
    print(mini.table())
    # Measured 2026-11-26, n=100: costs from mlp0 0.873 [0.847, 0.895] down to L11H8 0.0043
    # [0.00144, 0.00729] and mlp4 0.0082 [0.00155, 0.0154]; mlp28 0.00197 [-0.00992, 0.0157].
    # excluding() refuses a name that is not a measured component of the circuit.
    mini.excluding(*NOT_SHOWN_NEEDED).assert_each_above(0.0)


@pytest.mark.claim(source=SOURCE, finding="whether the circuit is faithful depends on the ablation: it recovers most "
                   "of PD when the rest is patched from the '01' run or set to its per-position mean, about half "
                   "under resampling from other prompts, and little under zero ablation")
def test_faithfulness_depends_on_the_ablation(model, years, circuit):
    rob = C.robustness(model, years, circuit, kinds=C.ABLATIONS, faithful_above=0.5, gaps_within=None,
                       costs_above=None)
    print(rob.table())
    recovered = rob["faithfulness"]
    # Measured 2026-11-26, n=100, recovered: patch 0.873 [0.847, 0.895], mean 0.751 [0.659, 0.842],
    # resample 0.534 [0.389, 0.66], zero 0.189 [0.00771, 0.34].
    recovered["patch"].assert_above(0.8)
    recovered["mean"].assert_above(0.6)
    recovered["resample"].assert_within(0.3, 0.75)
    recovered["zero"].assert_below(0.4)
    assert rob.depends_on_ablation == ["faithfulness"]
