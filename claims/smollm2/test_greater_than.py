"""Greater-than on SmolLM2-135M (Hanna, Liu & Variengien 2023, arXiv:2305.00586).

SmolLM2 writes years one token per digit, so PD is the two-step per-digit
probability difference (see pytest_circuits.tasks.greater_than).
"""

import pytest
from hypothesis import given

from pytest_circuits import strategies as cst
from pytest_circuits import tasks

pytestmark = pytest.mark.model("smollm2-135m")

SOURCE = "arXiv:2305.00586"


@pytest.fixture(scope="module")
def years(model):
    # 200 prompts, YY uniform in 02..98, centuries 11..17, seeded.
    return tasks.greater_than(model, n=200, seed=0)


@pytest.mark.claim(source=SOURCE, finding="after 'from the year XXYY to the year XX' the model puts "
                   "most probability on years later than XXYY")
def test_prefers_later_years(model, years):
    pd = tasks.prob_diff(model, years)
    # Measured 2026-11-26: 0.875 [0.847, 0.897], n=200.
    pd.assert_above(0.75)


@pytest.mark.claim(source=SOURCE, finding="the '01' corruption removes the comparison: with YY=01 in "
                   "the start year, the model no longer prefers years after the original YY")
def test_corruption_removes_preference(model, years):
    clean = tasks.prob_diff(model, years)
    corrupted = tasks.prob_diff(model, years, corrupted=True)
    drop = clean.paired_difference(corrupted, name="prob_diff drop (clean - 01)")
    # Measured 2026-11-26: corrupted -0.694 [-0.743, -0.637]; drop 1.569 [1.515, 1.616], n=200.
    corrupted.assert_below(0.0)
    drop.assert_above(1.2)


@pytest.mark.claim(source=SOURCE, finding="property: for any noun, century and YY up to 90, the model "
                   "prefers later years (PD > 0.3) and the '01' corruption lowers PD")
@cst.model_settings
@given(row=cst.greater_than_rows(yy=range(2, 91)))
def test_every_prompt_prefers_later_years(model, row):
    one = tasks.from_rows(model, [row], name="hypothesis")
    pd = float(tasks.per_prompt_prob_diff(model, one)[0])
    drop = pd - float(tasks.per_prompt_prob_diff(model, one, corrupted=True)[0])
    # Measured 2026-11-23 over 2,600 random rows with YY <= 90 (seeds 7 and 123): min PD 0.496
    # (1st percentile 0.69), min drop 0.033 (1st percentile 0.31). The one negative PD among the
    # 200 seeded prompts is at YY=94, which leaves few later years: hence YY <= 90.
    assert pd > 0.3, f"{one.prompts.prompts[0]!r}: PD {pd:.3f}"
    assert drop > 0.0, f"{one.prompts.prompts[0]!r}: drop {drop:.3f}"
