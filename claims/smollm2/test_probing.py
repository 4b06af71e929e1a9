"""Sparse probing of MLP neurons on SmolLM2-135M (after Gurnee et al. 2023, arXiv:2305.01610).

How the neurons were found (2026-11-23, seed 0): k=1 mean-difference probes on the
mean-pooled MLP neurons of every layer 0..29, for French vs {en, de, es}
(probing_data.language, 288 sentences, translations grouped) and code vs prose
(probing_data.code_prose, 160 texts). Held-out F1 = 1.00 for French at L13 (L13N1033),
L25 (L25N1120) and L29 (L29N864); for code at L14 (L14N58), L16 (L16N969) and L19
(L19N1157). The earliest of each is stated here (cheapest to compute). The same neuron is
chosen on every one of seeds 0..5, by every selection method (mean difference, F
statistic, mutual information, L1 path). Because the layer was picked by looking at
held-out F1 on seed 0, the claims are measured on another split (seed 1).

Controls for input identity (issue #10: random neurons are not one; an *untrained* model's
best neuron beats them when the classes use different words): the same probe on copies of
SmolLM2 with shuffled weights (probing.random_weights_control: same architecture, tokens
still distinct, nothing learned) and on the token embeddings at the same k
(probing.embedding_control). Measured 2026-11-26: the French neuron beats both; the code
neuron beats the shuffled-weights model but NOT the embedding control: a single embedding
dimension, mean pooled, already separates these code snippets from prose on held-out texts
(F1 1 [0.927, 1]), so code vs prose is readable from token identity alone, and the claim
now says only what survives.
"""

from dataclasses import dataclass

import pytest

from pytest_circuits import Measurement
from pytest_circuits.components import Neuron
from pytest_circuits.tasks import probing_data
from pytest_circuits.techniques import probing

pytestmark = pytest.mark.model("smollm2-135m")

SOURCE = probing.SOURCE
SEED = 1   # the scan used seed 0
OTHER_METHODS = ("f_stat", "mutual_info", "l1")


@dataclass(frozen=True)
class NeuronStudy:
    """A k=1 probe of one layer with the neuron every selection method picks, and its F1 margins
    (paired, on the same held-out texts) over the controls: random neurons of the layer (20
    draws), shuffled-weights copies of the model (2 copies) and the token embeddings at k=1."""

    probe: probing.ProbeResult
    picks: frozenset          # the neuron chosen by each selection method (mean_diff and the others)
    embeddings: Measurement   # the embedding control's F1
    over_random: Measurement
    over_shuffled_weights: Measurement
    over_embeddings: Measurement


def study(model, data, layer: int) -> NeuronStudy:
    r = probing.probe(model, data, layer=layer, k=1, seed=SEED)
    picks = {r.neuron} | {probing.probe(model, data, layer=layer, k=1, method=m, seed=SEED,
                                        record=False).neuron for m in OTHER_METHODS}
    rnd = probing.random_neurons_f1(model, data, layer=layer, k=1, n_repeats=20, seed=SEED)
    rw = probing.random_weights_control(model, data, layer=layer, k=1, n_models=2, seed=SEED)
    emb = probing.embedding_control(model, data, k=1, seed=SEED)
    s = NeuronStudy(r, frozenset(picks), emb, probing.margin(r, rnd), probing.margin(r, rw),
                    probing.margin(r, emb))
    print(r, rnd, rw, emb, s.over_random, s.over_shuffled_weights, s.over_embeddings, sep="\n")
    return s


@pytest.mark.claim(source=SOURCE, finding="L13N1033 is a French-language neuron: alone (k=1) it tells "
                   "French sentences from English, German and Spanish ones on held-out sentences "
                   "(it is strongly negative on French, mean pooled), far above random neurons, above the best "
                   "neuron of shuffled-weights copies of the model and above the token embeddings at k=1")
def test_l13n1033_is_a_french_neuron(model):
    fr = probing_data.language().binary("fr")
    s = study(model, fr, layer=13)
    sh = probing.shuffled_labels_f1(model, fr, layer=13, k=1, n_repeats=10, seed=SEED)
    print(sh)
    # Every selection method picks it, and its activation is lower on French.
    assert s.picks == {Neuron(13, 1033)} and s.probe.directions == (-1,)
    # Measured 2026-11-26 (n=88 held-out sentences, 22 French): F1 1 [0.921, 1]; random-neuron
    # F1 0.369 [0.275, 0.467], margin 0.631 [0.513, 0.706]; shuffled weights 0.297 [0.169, 0.443]
    # (2 copies; 3 copies gave 0.349), margin 0.703 [0.536, 0.812]; embedding control 0.593
    # [0.424, 0.733], margin 0.407 [0.255, 0.556]; shuffled labels 0.338 [0.231, 0.46] (10
    # shuffles; chance, 25% positives). Thresholds about 0.1 under the lower bounds.
    s.probe.f1.assert_above(0.85)
    s.over_random.assert_above(0.4)
    s.over_shuffled_weights.assert_above(0.3)
    s.over_embeddings.assert_above(0.15)
    sh.assert_below(0.6)


@pytest.mark.claim(source=SOURCE, finding="L14N58 tells code from prose: alone (k=1) it tells "
                   "Python/JavaScript snippets from English prose (including prose about "
                   "programming) on held-out texts; it is lower on code, far above random neurons and "
                   "above the best neuron of shuffled-weights copies of the model; but one token-"
                   "embedding dimension does as well, so this distinction is readable from token "
                   "identity alone (the neuron is not shown to carry more)")
def test_l14n58_separates_code_from_prose(model):
    s = study(model, probing_data.code_prose().binary("code"), layer=14)
    # Every selection method picks it, and its activation is lower on code.
    assert s.picks == {Neuron(14, 58)} and s.probe.directions == (-1,)
    # Measured 2026-11-26 (n=48 held-out texts, 24 code): F1 1 [0.927, 1]; random-neuron F1 0.605
    # [0.496, 0.685], margin 0.395 [0.299, 0.48]; shuffled weights 0.68 [0.508, 0.813] (2 copies;
    # 3 copies gave 0.662), margin 0.32 [0.174, 0.475]; embedding control 1 [0.927, 1], margin
    # over it 0 [0, 0].
    s.probe.f1.assert_above(0.8)
    s.over_random.assert_above(0.2)
    s.over_shuffled_weights.assert_above(0.1)
    s.embeddings.assert_above(0.85)   # the negative part: token embeddings alone separate code from prose
