"""Induction, previous-token and duplicate-token heads on SmolLM2-135M (after Olsson et al.
2022, "In-context Learning and Induction Heads", arXiv:2209.11895).

Prompts: 32 sequences of 20 distinct random tokens, each followed by itself once, after BOS
(``tasks.induction.repeated_tokens(model)``, seed 0: ids 2457..24575 of the vocabulary that
decode and re-encode to themselves and contain a letter or digit). Scores, the in-context
loss and the ablations: ``pytest_circuits.techniques.heads`` (the checkup's induction check,
same defaults). A head "is" of a kind when its score's 95% lower bound exceeds 0.5.
"""

import pytest

from pytest_circuits.techniques import heads

pytestmark = pytest.mark.model("smollm2-135m")

OLSSON = "arXiv:2209.11895"


@pytest.mark.claim(source=OLSSON, finding="SmolLM2 has four induction heads, in layers 17-18: L18H6, L17H4, "
                   "L17H3 and L17H5 put most of their attention on the token after the current token's "
                   "earlier occurrence")
def test_induction_heads_in_layers_17_and_18(model):
    d = heads.detect_induction(model)
    print(d.summary())
    # Measured 2026-11-26, n=32: L18H6 0.852 [0.824, 0.874], L17H4 0.739 [0.703, 0.768],
    # L17H3 0.684 [0.647, 0.715], L17H5 0.634 [0.601, 0.665]; the next heads are under the
    # definition's 0.5: L18H7 0.493, L23H2 0.486, L23H7 0.440.
    assert d.found and {c for c, _ in d.components} == {"L18H6", "L17H4", "L17H3", "L17H5"}, d.summary()
    d.measurement("induction score L18H6").assert_above(0.75)
    d.measurement("induction score L17H5").assert_above(0.5)


@pytest.mark.claim(source=OLSSON, finding="in-context learning on repeated random tokens runs through the "
                   "induction heads: mean-ablating them raises the loss on the second copy far more than "
                   "ablating as many other heads of layers 17-18")
def test_ablating_the_induction_heads_undoes_the_in_context_drop(model):
    d = heads.detect_induction(model)
    print(d.details)
    # Measured 2026-11-26, n=32: loss on the first copy 14.27, second 3.96 nats; drop 10.31
    # [9.81, 10.77]. Mean-ablating L18H6 L17H4 L17H3 L17H5: second-copy loss +3.663 [3.383,
    # 3.906]; control (L17H6 L17H7 L17H8 L18H0) +0.171 [0.119, 0.228]; excess 3.492 [3.234, 3.743].
    d.measurement("in-context loss drop (first - second copy)").assert_above(8.0)
    d.measurement("second-copy loss increase, induction heads ablated").assert_above(2.5)
    d.measurement("second-copy loss increase, induction heads ablated, over control").assert_above(2.5)


@pytest.mark.claim(source=OLSSON, finding="previous-token heads, the other half of the induction circuit: "
                   "L16H0 and L11H1 attend to the token before the current one")
def test_previous_token_heads(model):
    d = heads.detect_previous_token(model)
    print(d.summary())
    # Measured 2026-11-26, n=32: L16H0 0.886 [0.876, 0.895], L11H1 0.842 [0.825, 0.855]; also
    # above 0.5: L2H1 0.765, L1H2 0.733, L19H3 0.655, L22H1 0.580.
    assert [c for c, _ in d.components[:2]] == ["L16H0", "L11H1"], d.summary()
    d.measurement("previous-token score L16H0").assert_above(0.8)
    d.measurement("previous-token score L11H1").assert_above(0.75)


@pytest.mark.claim(source=OLSSON, finding="a duplicate-token head: L14H3 attends from a repeated token to "
                   "its earlier copy")
def test_duplicate_token_head(model):
    d = heads.detect_duplicate_token(model)
    print(d.summary())
    # Measured 2026-11-26, n=32: L14H3 0.688 [0.657, 0.718]; next L8H0 0.511 (lower bound under
    # 0.5), L5H6 0.444.
    assert [c for c, _ in d.components][:1] == ["L14H3"], d.summary()
    d.measurement("duplicate-token score L14H3").assert_above(0.55)
