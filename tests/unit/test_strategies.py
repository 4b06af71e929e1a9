import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_circuits import CircuitsError, parse, strategies as cst, tasks
from pytest_circuits.components import Component
from pytest_circuits.tasks import probing_data


class Cfg:
    n_layers, n_heads, d_mlp = 4, 3, 16


@given(c=cst.components(Cfg()))
def test_components_are_valid_and_round_trip(c):
    assert isinstance(c, Component)
    c.validate(Cfg())
    assert parse(str(c)) == c


@given(c=cst.components(Cfg(), kinds=["mlp"], layers=[2]))
def test_component_kinds_and_layers(c):
    assert str(c) == "mlp2"


def test_component_strategy_errors():
    with pytest.raises(CircuitsError, match="kinds="):
        cst.components(Cfg(), kinds=["bogus"])
    with pytest.raises(CircuitsError, match=r"layers in 0\.\.3"):
        cst.components(Cfg(), layers=[7])


@given(p=cst.template_prompts("The {noun} of {place}", noun=["king", "queen"], place=["France", "Spain"]))
def test_template_prompts(p):
    assert p.split()[1] in ("king", "queen") and p.split()[-1] in ("France", "Spain")


def test_template_errors():
    with pytest.raises(CircuitsError, match="placeholders"):
        cst.template_prompts("The {noun}", place=["x"])
    with pytest.raises(CircuitsError, match="non-empty"):
        cst.template_prompts("The {noun}", noun=[])


@given(ex=cst.feature_examples(probing_data.language()))
def test_feature_examples(ex):
    text, label = ex
    assert isinstance(text, str) and label in ("en", "fr", "de", "es")


@given(data=st.data())
def test_greater_than_rows_build(tiny, data):
    import warnings

    rows = data.draw(st.lists(cst.greater_than_rows(yy=range(2, 91), model=tiny), min_size=1, max_size=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # only nouns the tokenizer knows: no <unk> warning
        task = tasks.from_rows(tiny, rows)
    assert task.yy == tuple(r[2] for r in rows) and len(task) == len(rows)
