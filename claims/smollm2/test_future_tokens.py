"""Future-token decodability on SmolLM2-135M (after Wu, Morris & Levine 2024, arXiv:2404.00859).

Texts: the 152 English texts of the project's probing data (72 English sentences of the
language set and 80 prose texts of the code/prose set). A linear probe reads the residual
stream at position t and predicts the token at t+2 (50 most frequent targets), 5-fold
cross-validated by text, seed 0 (the default, fixed before looking).
"""

import pytest

from pytest_circuits.tasks import probing_data
from pytest_circuits.techniques import future as F

pytestmark = pytest.mark.model("smollm2-135m")


@pytest.fixture(scope="module")
def english():
    lang, cp = probing_data.language(), probing_data.code_prose()
    return ([t for t, l in zip(lang.texts, lang.labels) if l == "en"]
            + [t for t, l in zip(cp.texts, cp.labels) if l == "prose"])


@pytest.mark.claim(source=F.SOURCE, finding="the token two positions ahead is better decoded from the "
                   "middle of the network (layer 15) than from the current token's own embedding (layer 0), "
                   "where a probe does no better than predictors that see no hidden state")
def test_token_two_ahead_is_decodable_mid_network(model, english):
    mid = F.future_token_probe(model, english, layer=15, tau=2)
    low = F.future_token_probe(model, english, layer=0, tau=2)
    gain = mid.accuracy.paired_difference(low.accuracy, name="future_probe.accuracy L15 - L0 (tau=2)")
    print(mid, low, sep="\n")
    # Measured 2026-11-26 (n=152 texts, 595 held-out positions): gain 0.114 [0.067, 0.16];
    # seeds 1-3 gave lower bounds 0.054, 0.057, 0.034 (2026-11-23, old intervals).
    gain.assert_above(0.02)
    # Control, measured: layer-0 margin over the best no-hidden-state baseline -0.0577
    # [-0.107, -0.0122].
    low.margin.assert_below(0.05)
    # Not asserted: layer 15's margin over that baseline, +0.0558 [+0.00838, +0.1] on seed 0, is
    # positive on every seed tried but its lower bound falls to 0.000 on one (seed 2; 2026-11-23,
    # old intervals): too fragile at this data size to state as a finding.
