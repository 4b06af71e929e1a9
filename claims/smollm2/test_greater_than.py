import pytest

from pytest_circuits import tasks

pytestmark = pytest.mark.model("smollm2-135m")


@pytest.mark.claim(source="arXiv:2305.00586", finding="the model computes greater-than on years")
def test_prob_diff_is_positive(model, activations):
    data = tasks.greater_than(model, n=200, seed=0)
    pd = tasks.prob_diff(model, data, activations=activations)
    cpd = tasks.prob_diff(model, data, corrupted=True, activations=activations)
    diff = pd.paired_difference(cpd)
    print(pd, cpd, diff)
    assert pd.lower > 0.0
