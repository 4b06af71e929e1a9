"""Copy suppression on SmolLM2-135M (McDougall et al. 2023, arXiv:2310.04625).

Measured with :func:`pytest_circuits.techniques.ov.detect_copy_suppression` (defaults: the
induction check's 32 repeated random sequences, seed 0; at the repeated tokens where the model
gives the next token probability above 1/2, in 25 of the 32 sequences: a head's share of
attention on that token's earlier copy and its direct effect through it; OV self-suppression
over 200 sampled tokens, bottom 5). One head has every property, L24H4. L23H3, whose OV circuit
suppresses as well and which an earlier criterion (the argmax of its attention) reported beside
it, does not attend to the predicted token's copy: share 0.129 [0.103, 0.16].

Successor heads (Gould et al. 2023, arXiv:2312.09230) are not claimed: no head's OV
circuit ranks the successor first for most ordinal pairs (best L23H3, succession score
0.176 [0.104, 0.27] over 91 pairs, against a chance level near 0.1), measured 2026-11-26
with :func:`~pytest_circuits.techniques.ov.detect_successor`.
"""

import pytest

from pytest_circuits.components import Head
from pytest_circuits.techniques import heads, ov

pytestmark = pytest.mark.model("smollm2-135m")

COPY_SUPPRESSION = "arXiv:2310.04625"


@pytest.fixture(scope="module")
def copy_suppression(model):
    return ov.detect_copy_suppression(model, seed=0)


@pytest.mark.claim(source=COPY_SUPPRESSION, finding="a copy-suppression head: where the model predicts a token "
                   "that occurs earlier, L24H4 attends to that earlier copy and lowers the token's logit, and "
                   "its OV circuit puts most tokens' own logit among the lowest")
def test_copy_suppression_heads(copy_suppression):
    print(copy_suppression.summary())
    assert copy_suppression.found and [c for c, _ in copy_suppression.components] == ["L24H4"], \
        copy_suppression.details
    # Measured 2026-12-04 (25 sequences with a prediction; 200 tokens): share 0.69 [0.612, 0.763],
    # effect through it -0.46 [-0.591, -0.348] nats, OV self-suppression 0.94 [0.898, 0.969];
    # ablating it alone lowers the second-copy loss by 0.286 [0.258, 0.317] (it is no amplifier).
    copy_suppression.measurement("copy suppression OV L24H4").assert_above(0.8)
    copy_suppression.measurement("predicted-copy share L24H4").assert_above(0.55)
    copy_suppression.measurement("predicted-copy effect on the attended token L24H4").assert_below(-0.15)


@pytest.mark.claim(source=COPY_SUPPRESSION, finding="L23H3 suppresses through its OV circuit but is not a "
                   "copy-suppression head: it does not attend to the earlier copy of the token the model predicts")
def test_l23h3_lacks_the_attention(model, copy_suppression):
    assert "L23H3" not in dict(copy_suppression.components)
    ps, _, _ = heads.prompt_set(model)
    ev = heads.head_evidence(model, ps)["copy_suppression"]
    # Measured 2026-12-04: share 0.129 [0.103, 0.16], effect -0.112 [-0.15, -0.083] (it lowers what
    # little it reads there); OV self-suppression about 0.9 (the card's heatmap).
    ev.measure("share", Head(23, 3), record=True).assert_below(0.5)
