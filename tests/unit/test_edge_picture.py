"""The edge-circuit picture: every edge drawn once, ending at its receiver's own input, width
by |score|, colour by sign, opacity by inclusion frequency, numbers in the tooltips; bad
input refused. The SVG is parsed as XML, not matched as text."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pytest_circuits.errors import CircuitsError
from pytest_circuits.techniques import edge_picture as P
from pytest_circuits.techniques.edges import Edge, EdgeScores
from pytest_circuits.techniques.edge_stability import stability

NS = {"s": "http://www.w3.org/2000/svg"}
SCORES = {"L0H1->L1H0.q": 0.5, "L0H1->L1H0.v": -0.25, "embed->mlp0": 0.1, "L1H0->logits": 1.0,
          "mlp0->L1H0.k": 0.0}


def _paths(text):
    root = ET.fromstring(text)
    return {p.get("data-edge"): p for p in root.iterfind("s:path", NS)}


def _end(path):
    return tuple(float(x) for x in path.get("d").split()[-1].split(","))


def test_each_edge_once_with_width_colour_and_tooltip():
    paths = _paths(P.svg(SCORES, title="t"))
    assert set(paths) == {str(Edge.parse(e)) for e in SCORES}
    w = {e: float(p.get("stroke-width")) for e, p in paths.items()}
    assert w["L1H0->logits"] == P.MAX_WIDTH and w["mlp0->L1H0.k"] == P.MIN_WIDTH
    by_score = sorted(SCORES, key=lambda e: abs(SCORES[e]))
    assert [w[str(Edge.parse(e))] for e in by_score] == sorted(w.values())     # monotone in |score|
    assert paths["L0H1->L1H0.v"].get("stroke") == P.NEGATIVE
    assert paths["L0H1->L1H0.q"].get("stroke") == P.POSITIVE
    assert paths["L0H1->L1H0.v"].find("s:title", NS).text == "L0H1->L1H0.v: score -0.25"
    assert all(p.get("stroke-opacity") == "1.0" for p in paths.values())    # no frequencies: opaque


def test_q_k_v_edges_end_at_three_different_ports_of_the_head():
    paths = _paths(P.svg(SCORES))
    ends = {part: _end(paths[f"{s}->L1H0.{part}"]) for s, part in
            (("L0H1", "q"), ("mlp0", "k"), ("L0H1", "v"))}
    assert len(set(ends.values())) == 3
    assert ends["q"][1] < ends["k"][1] < ends["v"][1]           # q on top, v at the bottom
    assert len({x for x, _ in ends.values()}) == 1              # all on the head's left side


def test_opacity_is_the_inclusion_frequency():
    freq = {"L0H1->L1H0.q": 0.3, "L1H0->logits": 1.0}
    paths = _paths(P.svg(SCORES, frequency=freq))
    assert float(paths["L0H1->L1H0.q"].get("stroke-opacity")) == 0.3
    assert float(paths["L1H0->logits"].get("stroke-opacity")) == 1.0
    assert float(paths["embed->mlp0"].get("stroke-opacity")) == P.MIN_OPACITY    # never kept: the floor
    assert "kept in 30% of resamples" in paths["L0H1->L1H0.q"].find("s:title", NS).text


def test_from_a_stability_result():
    """A Stability's frequencies drawn over the same scores: the opacity of each edge is its
    frequency, recomputed here from the kept matrix."""
    rng = np.random.default_rng(0)
    edges = tuple(Edge.parse(e) for e in SCORES)
    values = rng.normal(size=(len(edges), 12)) * 0.05 + np.array(list(SCORES.values()))[:, None]

    scores = EdgeScores(components=edges, values=values, attribution="eap", steps=1, task="synthetic",
                        totals=np.ones(12), clean=np.full(12, 2.0))
    st = stability(scores, threshold=0.2, resamples=20, seed=0)
    assert 0 < st.kept.mean() < 1                  # some edges kept, some not
    paths = _paths(P.svg(SCORES, frequency=st.frequencies()))
    share = st.kept.mean(0)
    for i, e in enumerate(edges):
        assert float(paths[str(e)].get("stroke-opacity")) == P.opacity(float(share[i]))


def test_deterministic_and_edges_only_as_listed():
    a, b = P.svg(list(SCORES.items())), P.svg(dict(SCORES))
    assert a == b
    plain = _paths(P.svg(list(SCORES)))        # edges without scores: one width
    assert {p.get("stroke-width") for p in plain.values()} == {"2.0"}


@pytest.mark.parametrize("bad_input, words", [
    ({}, "no edge to draw"),
    ({"L0H1->L1H0.q": float("nan")}, "finite"),
    ([("L0H1->L1H0.q", 1.0), ("L0H1->L1H0.q", 2.0)], "each edge once"),
    ({"L0H1->L1H0": 1.0}, "q"),
])
def test_bad_input_is_refused(bad_input, words):
    with pytest.raises(CircuitsError, match=words):
        P.svg(bad_input)


def test_a_frequency_outside_zero_one_is_refused():
    with pytest.raises(CircuitsError, match=r"\[0, 1\]"):
        P.svg(SCORES, frequency={"L0H1->L1H0.q": 1.5})
