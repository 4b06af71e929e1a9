"""SmolLM2-135M's greater-than circuit at edge level, with error bars (issue #26).

EAP (edge attribution patching, arXiv:2310.10348) scores every edge of the model (123,211:
embedding, every head's q/k/v inputs and output, every MLP, the logits) on 32 discovery prompts
(``tasks.greater_than(model, n=32, seed=1)``, the seed the node-level circuit of
test_greater_than_circuit.py was found on). Discovery keeps an edge whose mean score is at least
5% of the whole corruption's mean effect (``edges.discover``); 20 seeded bootstrap resamples of
the prompts re-run discovery without a forward of the model (``edge_stability.stability``).

What was measured (2026-12-05, CPU): discovery at 5% is stable (Jaccard 0.812 [0.580, 0.933];
four edges in all 20 resamples: embed->mlp0, mlp0->L20H8.v, mlp23->logits, mlp29->logits), and
every component those edges touch is in the node-level circuit found independently by exact
patching. "All 20 resamples" describes these 32 prompts; on a *new* sample of 32 prompts
(``Stability.new_prompts``, from the per-prompt margins) the data support that embed->mlp0 is
kept with probability above 0.99 and mlp0->L20H8.v above 0.77, but for mlp23->logits and
mlp29->logits only above 0.66 and 0.50 (lower bounds). But attribution alone does not give a
faithful circuit: exact patching finds the largest edge, embed->mlp0, about six times larger
than its EAP score (a non-linear first MLP), and the circuit of the 5% edges recovers under a
tenth of the probability difference on the 100 held-out prompts of test_greater_than_circuit.py
(against 0.87 for the node-level circuit); the 2% edges (18 components) recover about half.
Attribution finds where the circuit is and how stable that is; exact patching must say how much
it does.

Cost on the shared 2-core CPU (load about 7): EAP over every edge of the 32 prompts 688 s,
exact patching of the top 10 edges 143 s, each held-out faithfulness about 70 s.
"""

from pathlib import Path

import pytest

from pytest_circuits import tasks
from pytest_circuits.components import MLP, Head
from pytest_circuits.techniques import circuits as C
from pytest_circuits.techniques import edge_picture
from pytest_circuits.techniques import edges as E
from pytest_circuits.techniques.edge_stability import faithfulness_under_resampling, stability


pytestmark = pytest.mark.model("smollm2-135m")

SOURCE = "arXiv:2310.10348 (EAP), arXiv:2305.00586 (task); edges found by this project"
THRESHOLD = 0.05
# Kept in all 20 resamples (2026-12-05): each a claim of the first test.
CIRCUIT = Path(__file__).parent / "data" / "greater_than_circuit.json"   # the node-level circuit
CORE = ("embed->mlp0", "mlp0->L20H8.v", "mlp23->logits", "mlp29->logits")


def _components(edges):
    """The heads and MLPs at either end of ``edges``, spelled as circuits spell them."""
    return {str(c) for e in map(E.Edge.parse, edges) for c in (e.sender, e.receiver) if isinstance(c, (Head, MLP))}


def _node_circuit(model):
    return {str(c) for c in C.Circuit.load(model, CIRCUIT).components}


@pytest.fixture(scope="module")
def discovery(model):
    return tasks.greater_than(model, n=32, seed=1, name="greater_than:edge_discovery")


@pytest.fixture(scope="module")
def held_out(model):
    return tasks.greater_than(model, n=100, seed=0, name="greater_than:held_out")


@pytest.fixture(scope="module")
def scores(model, discovery):
    return E.edge_attribution(model, discovery)


@pytest.mark.claim(source=SOURCE, finding="edge discovery on greater-than is stable under resampling of the prompts: "
                   "four edges (embed->mlp0, mlp0->L20H8.v, mlp23->logits, mlp29->logits) are kept in at least 80% "
                   "of resamples (20 of 20 measured), two resampled discoveries of these prompts overlap by more "
                   "than half, and every component of those edges is in the node-level circuit found by exact "
                   "patching; on new samples of 32 prompts only embed->mlp0 (above 90%) and mlp0->L20H8.v (above "
                   "70%) are shown to be kept most of the time")
def test_edge_discovery_is_stable(model, scores):
    st = stability(scores, threshold=THRESHOLD, resamples=20, seed=0)
    print(st.table(12))
    edge_picture.attach("greater-than edges", scores, frequency=st, k=12,
                        title="SmolLM2-135M greater-than: top 12 EAP edges, opacity by inclusion frequency")
    # Measured 2026-12-05: Jaccard 0.812 [0.580, 0.933] over 10 pairs; the CORE edges 20 of 20
    # (1 [0.832, 1]), mlp24->logits 0.95, L20H8->mlp21 0.90, then 0.55 and less.
    st.assert_jaccard_above(0.5)
    for edge in CORE:
        st.assert_frequency_above(edge, 0.8)
    # On new samples of 32 prompts (Stability.new_prompts, measured 2026-12-05): embed->mlp0
    # 1 [0.996, 1], mlp0->L20H8.v 0.998 [0.777, 1]; mlp23->logits [0.659, 1], mlp29->logits [0.503, 1].
    st.assert_new_prompts_above("embed->mlp0", 0.9)
    st.assert_new_prompts_above("mlp0->L20H8.v", 0.7)
    assert _components(CORE) <= _node_circuit(model), "a CORE edge's head or MLP is not in the node-level circuit"


@pytest.mark.claim(source=SOURCE, finding="EAP puts the greater-than edges in the right direction but misjudges their "
                   "size: exact patching confirms the sign of the four stable edges, and finds embed->mlp0 more "
                   "than twice as large as its EAP score")
def test_attribution_underestimates_the_first_mlp(model, discovery, scores):
    check = E.verify(model, discovery, scores, k=10)
    print(check)
    # Measured 2026-12-05 (means over the 32 prompts): embed->mlp0 score -0.250, exact -1.533;
    # mlp0->L20H8.v -0.089 / -0.205; mlp23->logits -0.083 / -0.118; mlp29->logits -0.089 / -0.098.
    # 5 of the top 10 flagged (off by more than 2x; mlp22->logits of the other sign).
    # EAP scores' 95% upper bounds all below 0 (embed->mlp0 -0.25 [-0.348, -0.167] ... mlp29->logits
    # -0.0894 [-0.128, -0.0586]); exact effects' too (embed->mlp0 -1.533 [-1.695, -1.276]).
    for edge in CORE:
        scores.measure(edge).assert_below(0.0)
        check.exact.measure(edge).assert_below(0.0)
    score = float(scores.of("embed->mlp0").mean())
    check.exact.measure("embed->mlp0").assert_below(2 * score)


@pytest.mark.claim(source=SOURCE, finding="a circuit from EAP's 5% edges alone is not faithful: with every other head "
                   "and MLP patched from the '01' run it recovers under 15% of the probability difference on "
                   "held-out prompts, also across resampled discoveries; the 2% edges recover about half")
def test_the_attribution_circuit_is_not_faithful(model, discovery, held_out, scores):
    five = E.edge_circuit(model, scores, threshold=THRESHOLD, name="greater-than EAP edges >= 5%")
    two = E.edge_circuit(model, scores, threshold=0.02, name="greater-than EAP edges >= 2%")
    f5, f2 = C.faithfulness(model, held_out, five), C.faithfulness(model, held_out, two)
    resampled = faithfulness_under_resampling(model, discovery, scores, threshold=THRESHOLD, resamples=20, seed=0)
    print(f5, f2, resampled, sep="\n")
    # Measured 2026-12-05, held-out n=100: 5% edges (6 components) recovered 0.086 [0.070, 0.103];
    # 2% edges (18 components) 0.515 [0.477, 0.552]; under resampling of discovery (32 prompts,
    # 20 resamples, 11 distinct circuits) 0.080, middle 95% [0.051, 0.112].
    f5.recovered.assert_below(0.15)
    f2.recovered.assert_within(0.4, 0.65)
    low, high = resampled.quantiles()
    assert high < 0.15, f"resampled discoveries recover up to {high:.3f} (middle 95%)"
