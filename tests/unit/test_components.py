import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_circuits import MLP, Attn, CircuitsError, ComponentError, Embed, Head, Neuron, parse
from pytest_circuits.components import all_heads, all_layers, parse_many


class Cfg:
    n_layers, n_heads, d_mlp = 30, 9, 1536


@pytest.mark.parametrize("spelling,expected", [
    ("L10H7", Head(10, 7)), ("l10h7", Head(10, 7)), ("10.7", Head(10, 7)), ("a10.h7", Head(10, 7)),
    ("attn9", Attn(9)), ("a9", Attn(9)), ("L9A", Attn(9)), ("mlp9", MLP(9)), ("m9", MLP(9)),
    ("L9M", MLP(9)), ("L3N609", Neuron(3, 609)), ("embed", Embed()), (" L0H0 ", Head(0, 0)),
])
def test_spellings(spelling, expected):
    assert parse(spelling) == expected
    # str() is a spelling that parses back to the same component
    assert parse(str(expected)) == expected


def test_component_passes_through():
    h = Head(1, 2)
    assert parse(h) is h


@pytest.mark.parametrize("spelling,match", [
    ("L40H0", r"layer must be in 0\.\.29"),
    ("L3H9", r"head must be in 0\.\.8"),
    ("L3N1536", r"neuron index must be in 0\.\.1535"),
    ("mlp30", r"this model has 30 layers"),
])
def test_validation_names_valid_range(spelling, match):
    with pytest.raises(ComponentError, match=match):
        parse(spelling, Cfg())


@pytest.mark.parametrize("bad", ["", "L", "H3", "L1H", "layer3", "L1.5H2", "mlp", "10.", "x9", "L-1H0"])
def test_bad_spellings_name_the_valid_ones(bad):
    with pytest.raises(ComponentError, match=r"L10H7, 10\.7"):
        parse(bad)


@pytest.mark.parametrize("bad", [None, 3, 2.5, ["L1H1"]])
def test_bad_types(bad):
    with pytest.raises(ComponentError):
        parse(bad)


def test_constructor_checks_types():
    with pytest.raises(ComponentError, match="Head.layer"):
        Head("3", 1)
    with pytest.raises(ComponentError, match="an int"):
        MLP(True)


@given(st.text(max_size=12))
def test_only_project_errors_escape(text):
    try:
        comp = parse(text)
    except CircuitsError:
        return
    assert parse(str(comp)) == comp


@given(st.integers(-5, 60), st.integers(-5, 20))
def test_validation_never_crashes(layer, head):
    try:
        Head(layer, head).validate(Cfg())
    except ComponentError:
        assert not (0 <= layer < 30 and 0 <= head < 9)
    else:
        assert 0 <= layer < 30 and 0 <= head < 9


def test_enumeration_and_order():
    assert len(all_heads(Cfg())) == 270
    layers = all_layers(Cfg())
    assert layers[:3] == [Attn(0), MLP(0), Attn(1)]
    mixed = [MLP(2), Head(2, 1), Embed(), Attn(1)]
    assert sorted(mixed, key=lambda c: c.sort_key()) == [Embed(), Attn(1), Head(2, 1), MLP(2)]
    assert parse_many("L1H1") == (Head(1, 1),)
    assert parse_many(["mlp1", Attn(0)]) == (MLP(1), Attn(0))


# -- no foreign exception escapes the parser (issue #10, item 7) ---------------------------

@pytest.mark.parametrize("bad", [None, True, False, 0, -1, 10**30, 2.0, float("nan"), b"L1H1",
                                 {"L1H1": 1}, object(), Head])
def test_odd_objects_are_component_errors(bad):
    with pytest.raises(ComponentError, match="is not valid: a Component or a string"):
        parse(bad)
    with pytest.raises(ComponentError, match="is not valid"):
        parse(bad, Cfg())


@pytest.mark.parametrize("bad", ["", "   ", "L-1H0", "L1H-1", "-1.0", "L1234567H0", "L1H1.0", "L1 H1",
                                 "L\u0661H\u0660", "L\uff11H\uff10", "mlp\u00b2", "L1H1\x00",
                                 "\ud800", "L1H\udfff", "emb\u0435d", "L1H1\nL2H2", "\u200bL1H1"])
def test_odd_spellings_are_component_errors(bad):
    """Non-ASCII digits (Arabic-Indic, full-width, superscripts), lone surrogates, NUL,
    a Cyrillic 'е' in "embed", two components in one string, a zero-width space: all rejected."""
    with pytest.raises(ComponentError, match=r"spell it as one of L10H7"):
        parse(bad)


@pytest.mark.parametrize("spelling,expected", [
    ("L999999H0", Head(999999, 0)), ("0.0", Head(0, 0)), ("L007H08", Head(7, 8)), ("\tmlp3\n", MLP(3)),
])
def test_edge_spellings_parse(spelling, expected):
    assert parse(spelling) == expected


def test_huge_and_negative_numbers_fail_validation_not_python():
    with pytest.raises(ComponentError, match=r"layer must be in 0\.\.29"):
        parse("L999999H0", Cfg())
    with pytest.raises(ComponentError, match=r"layer must be in 0\.\.29"):
        Head(-1, 0).validate(Cfg())
    with pytest.raises(ComponentError, match=r"neuron index must be in 0\.\.1535"):
        Neuron(0, 10**30).validate(Cfg())


def test_numpy_ints_are_ints_and_bools_are_not():
    import numpy as np

    h = Head(np.int64(3), np.int32(1))
    assert h == Head(3, 1) and hash(h) == hash(Head(3, 1)) and type(h.layer) is int
    assert str(h) == "L3H1" and parse(str(h)) == h
    for b in (True, np.bool_(True)):
        with pytest.raises(ComponentError, match=r"Head\.layer=.*True.* is not valid: an int"):
            Head(b, 0)
    with pytest.raises(ComponentError, match=r"Neuron\.index=1\.0 is not valid: an int"):
        Neuron(0, 1.0)


@pytest.mark.parametrize("bad", [None, 3, True, 2.5])
def test_parse_many_odd_containers(bad):
    with pytest.raises(ComponentError, match="is not valid"):
        parse_many(bad)


def test_parse_many_reports_the_bad_item():
    with pytest.raises(ComponentError, match=r"component=None is not valid"):
        parse_many(["L1H1", None])
    with pytest.raises(ComponentError, match=r"component='L1X1' is not valid"):
        parse_many(("L1H1", "L1X1"))
    assert parse_many([]) == ()
