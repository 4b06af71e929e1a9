"""Indirect object identification on SmolLM2-135M (after Wang et al. 2022, "Interpretability
in the Wild", arXiv:2211.00593).

Prompts: ``tasks.ioi(model, n=64, seed=0)``, eight templates such as "When Mary and John
went to the store, John gave a drink to" -> " Mary", both orders (ABBA/BABA) in equal
numbers, 59 single-token names; corrupted: the ABC prompts (three other names). Scores,
name movers, S-inhibition heads and compensation: ``pytest_circuits.techniques.ioi`` (the
checkup's IOI check, same defaults). Every effect is on ``logit(IO) - logit(S)`` at the
last token.

The issue's example, "the L10 head compensates when L9 is ablated", is GPT-2 small's
backup name movers (claims/gpt2/test_ioi.py). SmolLM2 compensates too, and fully, but not
that way: the compensation is released suppression by a negative name mover, not backup
name movers. The five claims share one measurement (64 prompts: one clean forward, one of
the ABC prompts, seven last-token patches and one ablation from layer 23 on; 20 batches of
32): run alone on the shared 2-core CPU, 50 s with a cold activation cache (22.6 s of it
loading the model), 28 s warm (2026-11-26).
"""

import pytest

from pytest_circuits.tasks.ioi import ioi
from pytest_circuits.techniques import ioi as I

pytestmark = pytest.mark.model("smollm2-135m")

WANG = "arXiv:2211.00593"


@pytest.fixture(scope="module")
def check(model):
    """The checkup's IOI check (its defaults: 64 prompts, seed 0)."""
    return I.detect_ioi(model, n=64, seed=0)


@pytest.fixture(scope="module")
def found(model):
    """What the check measured, part by part (the same prompts and store: no new forwards)."""
    return I.analyse(model, ioi(model, n=64, seed=0))


@pytest.fixture(scope="module")
def knockout(found):
    """The name movers (L23H0, L23H2) patched from the ABC prompts at every position."""
    return found.compensation


def heads(located):
    return [str(x.head) for x in located]


@pytest.mark.claim(source=WANG, finding="SmolLM2 does IOI: at the end of 'When Mary and John went to the store, "
                   "John gave a drink to' it prefers the indirect object over the repeated subject by about "
                   "3 logits")
def test_ioi_logit_difference(check):
    print(check.summary())
    # Measured 2026-11-26, n=64: 3.321 [2.509, 4.037] (seeds 1, 2: 3.80, 3.95); ABC prompts
    # 0.094 [-0.476, 0.683]; the IO is the top next token on 45 of 64 prompts.
    assert check.found, check.summary()
    check.measurement("ioi logit diff (IO - S)").assert_above(2.0)


@pytest.mark.claim(source=WANG, finding="the name movers are L23H0 and L23H2: at the last token they attend to "
                   "the IO name (more than to both mentions of S) and raise logit(IO) - logit(S) directly")
def test_name_movers_in_layer_23(found):
    # Measured 2026-11-26, n=64: DE L23H0 0.384 [0.211, 0.539], L23H2 0.277 [0.120, 0.449];
    # attention to IO 0.511 [0.461, 0.556] and 0.285 [0.229, 0.345]; summed DE 0.661 [0.379,
    # 0.926] of the logit difference's 3.32 (seeds 1, 2: the same two heads). Under the
    # definition's lower bound 0.1: L23H7 0.128 and L23H1 0.109 (means). The largest DE is
    # L23H3's +2.12 [1.93, 2.31]: it attends to S2 (0.57) and writes against S.
    assert heads(found.name_movers) == ["L23H0", "L23H2"], found.name_movers
    found.name_movers[0].score.assert_above(0.15)
    found.scores.quantity("attn_io").measure("L23H0").assert_above(0.4)
    found.mover_de.assert_above(0.3)


@pytest.mark.claim(source=WANG, finding="S-inhibition heads L20H0 and L19H2 attend from the last token to the "
                   "repeated S and feed the name movers: replacing their output there by the ABC prompt's "
                   "lowers the name movers' direct effect")
def test_s_inhibition_heads_feed_the_name_movers(found):
    # Measured 2026-11-26, n=64: fall of the name movers' summed DE (0.661) L20H0 0.760 [0.621,
    # 0.913], L19H2 0.389 [0.330, 0.453], of 7 heads before layer 23 with attention to S2 >=
    # 0.2; attention to S2 0.701 and 0.288 (seeds 1, 2: the same two heads).
    assert heads(found.s_inhibition.heads) == ["L20H0", "L19H2"], found.s_inhibition.heads
    found.s_inhibition.heads[0].score.assert_above(0.5)
    found.s_inhibition.heads[1].score.assert_above(0.25)


@pytest.mark.claim(source=WANG, finding="self-repair of IOI: knocking out the name movers L23H0 and L23H2 "
                   "(their output from the ABC prompts) removes their direct effect, yet the logit difference "
                   "falls by less than half of it")
def test_knocking_out_the_name_movers_is_compensated(knockout):
    print(knockout.table(6))
    # Measured 2026-11-26, n=64: lost DE 0.640 [0.362, 0.908]; LD change +0.027 [-0.190,
    # 0.234] (zero ablation: +0.065); change + lost/2 = 0.346 [0.177, 0.531]. The other heads
    # make up 0.655 [0.470, 0.873] of the loss and the final norm 0.204 [0.155, 0.260] (logits).
    assert [str(h) for h in knockout.name_movers] == ["L23H0", "L23H2"], knockout.name_movers
    (knockout.total + 0.5 * knockout.lost).assert_above(0.0)
    knockout.heads_net.assert_above(0.4)


@pytest.mark.claim(source=WANG, finding="unlike GPT-2 small, SmolLM2 has no backup name movers: the "
                   "compensation is released suppression, the negative name mover L24H4 writing against the "
                   "IO less once the name movers are gone")
def test_compensation_is_released_suppression_not_backups(knockout):
    # Measured 2026-11-26, n=64: L24H4 (attention to IO 0.530 [0.444, 0.617]) clean DE -0.276
    # [-0.543, 0.000] -> ΔDE +0.358 [0.230, 0.485]; released-suppression restored fraction
    # (cross-fitted) 0.560 [0.419, 0.747] (seeds 1, 2: 0.468, 0.672, with L29H0 too). Every
    # role-backup head together: 0.109 [0.055, 0.175] of the loss; none rises by a lower bound
    # over 5% of it (the largest, L29H2, +0.048 = 7.5%).
    assert knockout.backups == () and heads(knockout.released)[:1] == ["L24H4"], knockout.table(6)
    knockout.released_fraction.assert_above(0.3)
    knockout.by_role("backup").assert_below(0.25)
