"""Copy suppression on SmolLM2-135M (McDougall et al. 2023, arXiv:2310.04625).

Measured with :func:`pytest_circuits.techniques.ov.detect_copy_suppression` (defaults: 200
seeded alphabetic tokens, bottom-5 of their OV logits; 60 repeated-sequence prompts of 10
tokens; seed 0). Two heads pass both of its criteria, L24H4 and L23H3; the next head by
OV self-suppression, L29H6, is at 0.49. L24H4 attends at the last position to the
induction-predicted token (the one after the earlier copy of the current token) on 36 of
the 60 prompts, L23H3 on 22: they push down what induction would copy.

Successor heads (Gould et al. 2023, arXiv:2312.09230) are not claimed: no head's OV
circuit ranks the successor first for most ordinal pairs (best L23H3, succession score
0.176 [0.104, 0.27] over 91 pairs, against a chance level near 0.1), measured 2026-11-26
with :func:`~pytest_circuits.techniques.ov.detect_successor`.
"""

import pytest

from pytest_circuits.techniques import ov

pytestmark = pytest.mark.model("smollm2-135m")

COPY_SUPPRESSION = "arXiv:2310.04625"


@pytest.fixture(scope="module")
def copy_suppression(model):
    return ov.detect_copy_suppression(model, seed=0)


@pytest.mark.claim(source=COPY_SUPPRESSION, finding="copy-suppression heads: the OV circuits of L24H4 and "
                   "L23H3 put most tokens' own logit among the lowest, and in a forward pass they lower "
                   "the logit of the earlier context token they attend to")
@pytest.mark.parametrize("head, ov_min, de_max", [("L24H4", 0.8, -0.15), ("L23H3", 0.8, -0.08)])
def test_copy_suppression_heads(copy_suppression, head, ov_min, de_max):
    print(copy_suppression.summary())
    assert copy_suppression.found and head in dict(copy_suppression.components), copy_suppression.details
    # Measured 2026-11-26 (n = 200 tokens, 60 prompts): OV self-suppression L24H4 0.92
    # [0.873, 0.954], L23H3 0.915 [0.867, 0.95]; attended-token DE L24H4 -0.295
    # [-0.407, -0.207], L23H3 -0.151 [-0.19, -0.115].
    copy_suppression.measurement(f"copy suppression OV {head}").assert_above(ov_min)
    copy_suppression.measurement(f"attended-token DE {head}").assert_below(de_max)
