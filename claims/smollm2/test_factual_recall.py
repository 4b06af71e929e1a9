"""Factual recall on SmolLM2-135M, over the project's 504 written facts
(pytest_circuits/data/facts.jsonl: 18 relations, each fact with a same-relation foil)."""

import pytest

from pytest_circuits import Measurement, metrics, tasks

pytestmark = pytest.mark.model("smollm2-135m")


@pytest.fixture(scope="module")
def all_facts(model):
    return tasks.facts(model)


@pytest.mark.claim(source="pytest-circuits facts set", finding="the model prefers the true answer "
                   "over a plausible same-relation foil, by several logits on average")
def test_true_answer_beats_foil(model, all_facts):
    ld = metrics.logit_diff(model, all_facts)
    # Measured 2026-11-26: 5.438 [5.045, 5.86], n=504.
    ld.assert_above(4.5)


@pytest.mark.claim(source="pytest-circuits facts set", finding="for most facts the true answer "
                   "out-scores the foil")
def test_most_facts_recalled_over_foil(model, all_facts):
    ld = metrics.logit_diff(model, all_facts)
    wins = Measurement.from_values("answer_beats_foil", ld.array > 0, model=ld.model,
                                   method="clopper-pearson")
    # Measured 2026-11-26: 0.909 [0.88, 0.932], n=504.
    wins.assert_above(0.85)


@pytest.mark.claim(source="pytest-circuits facts set", finding="country -> capital is recalled "
                   "strongly: a large logit margin and the capital is often the top token")
def test_capitals(model):
    capitals = tasks.facts(model, relations=["country_capital"], name="country_capital")
    ld = metrics.logit_diff(model, capitals)
    p = metrics.answer_prob(model, capitals)
    # Measured 2026-11-26: logit_diff 9.19 [8.12, 10.31]; answer_prob 0.353 [0.275, 0.436], n=52.
    ld.assert_above(7.5)
    p.assert_above(0.25)
