"""``tasks.logit_difference``: any prompt set with answers, foils and aligned corrupted prompts as
a circuit task. Its scores are checked against the metric computed independently
(``metrics.logit_diff``, and the model's own forward by hand), its differentiable metric against
its scores, and bad prompt sets are refused."""

from __future__ import annotations

import pytest
import torch

from pytest_circuits import metrics, tasks
from pytest_circuits.errors import PromptSetError
from pytest_circuits.prompts import PromptSet
from pytest_circuits.protocols import check_task

CLEAN = ["the cat sat on the", "a dog went to the", "the king gave a"]
CORRUPTED = ["the dog sat on the", "a cat went to the", "the queen gave a"]


@pytest.fixture(scope="module")
def task(tiny):
    ps = PromptSet.build(tiny, CLEAN, answers=[" mat", " store", " ball"], foils=[" ball", " mat", " store"],
                         corrupted=CORRUPTED, align=True, name="ld")
    return tasks.logit_difference(ps)


def test_scores_equal_the_logit_difference_metric(tiny, task):
    check_task(task, logit_metric=True)
    clean = task.scores(tiny)
    assert clean.dtype == torch.float64 and clean.shape == (3,)
    independent = metrics.logit_diff(tiny, task.prompts, record=False)
    assert torch.allclose(clean.float(), torch.as_tensor(independent.values).float(), atol=1e-5)


def test_corrupted_scores_read_the_clean_prompts_answers(tiny, task):
    got = task.scores(tiny, corrupted=True)
    ps = task.prompts
    for i, text in enumerate(CORRUPTED):
        tokens = ps.corrupted.tokens[i: i + 1, : ps.lengths[i]]
        logits = tiny(tokens).double()[0, -1]
        assert got[i].item() == pytest.approx((logits[ps.answer_ids[i]] - logits[ps.foil_ids[i]]).item(), abs=1e-4)
    assert not torch.allclose(got, task.scores(tiny))     # the corruption changes the metric


def test_logit_metric_equals_the_score_on_a_full_forward(tiny, task):
    ps = task.prompts
    clean = task.scores(tiny)
    for i in range(len(ps)):
        logits = tiny(ps.tokens[i: i + 1, : ps.lengths[i]])
        assert task.logit_metric(i)(logits).item() == pytest.approx(clean[i].item(), abs=1e-4)


def test_bad_prompt_sets_are_refused(tiny):
    no_foils = PromptSet.build(tiny, CLEAN, answers=[" mat"] * 3, corrupted=CORRUPTED, align=True)
    no_corrupted = PromptSet.build(tiny, CLEAN, answers=[" mat"] * 3, foils=[" ball"] * 3)
    for ps in (no_foils, no_corrupted):
        with pytest.raises(PromptSetError):
            tasks.logit_difference(ps)
    with pytest.raises(PromptSetError, match="a PromptSet"):
        tasks.logit_difference(CLEAN)


def test_non_finite_logits_are_refused(tiny, task, monkeypatch):
    from pytest_circuits import metrics as M
    from pytest_circuits.errors import MeasurementError

    real = M.last_logits

    def poisoned(*a, **kw):
        out = real(*a, **kw).clone()
        out[1, 0] = float("nan")
        return out

    monkeypatch.setattr(M, "last_logits", poisoned)
    with pytest.raises(MeasurementError):
        task.scores(tiny)
