"""What a claim's source declares, read with ast (pytest_circuits.sources): the merge trusts an
xfail, an expected change, a skip or a tolerance only where these functions find it."""

from __future__ import annotations

import textwrap

import pytest

from pytest_circuits import sources as S

SOURCE = textwrap.dedent('''
    import pytest
    from pytest import mark

    pytestmark = [pytest.mark.claim(finding="every function of this module")]
    TOL = "abs:0.1"

    @pytest.mark.expect_change("step-9000", reason="retrained")
    @pytest.mark.parametrize("k", [1, pytest.param(2, marks=pytest.mark.xfail(reason="k=2"))])
    def test_nested_xfail(model, k):
        pass

    @mark.baseline(tolerance={"loss": "rel:0.2"}, accept_wide=["loss"])
    def test_literal_marker(model):
        pytest.xfail("imperative")

    @pytest.mark.baseline(tolerance=TOL)
    def test_computed_marker(model):
        pytest.importorskip("nothing")

    @pytest.mark.expect_change("step-9000")
    def test_expect_change_without_reason(model):
        pass

    @pytest.mark.model("gpt2", optional="no weights offline")
    def test_optional(model):
        pass

    def helper_not_collected(model):
        pass

    class TestGroup:
        pytestmark = pytest.mark.skipif(True, reason="never here")

        def test_method(self, model):
            pass

    class NotATestClass:
        def test_hidden(self):
            pass

    def check_custom_pattern(model):
        pass
''')


@pytest.fixture(scope="module")
def fns():
    return S.functions(SOURCE)


def test_functions_and_claims(fns):
    assert sorted(fns) == ["TestGroup::test_method", "test_computed_marker", "test_expect_change_without_reason",
                           "test_literal_marker", "test_nested_xfail", "test_optional"]
    assert all(f.is_claim for f in fns.values())                   # the module's pytestmark
    custom = S.functions(SOURCE, python_functions=["check_*"])
    assert list(custom) == ["check_custom_pattern"]


def test_markers_closest_first_and_literal(fns):
    f = fns["test_literal_marker"]
    m = f.closest("baseline")
    assert m.literal and m.kwargs == {"tolerance": {"loss": "rel:0.2"}, "accept_wide": ["loss"]}
    assert not fns["test_computed_marker"].closest("baseline").literal     # TOL is not a literal
    assert f.closest("claim").level == "module"


def test_xfail_skip_expect_change_and_optional(fns):
    assert S.declares_xfail(fns["test_nested_xfail"])                    # inside pytest.param(marks=...)
    assert S.declares_xfail(fns["test_literal_marker"])                  # pytest.xfail() in the body
    assert not S.declares_xfail(fns["test_optional"])
    assert S.declares_skip(fns["test_computed_marker"])                  # importorskip
    assert S.declares_skip(fns["TestGroup::test_method"])                # the class's pytestmark
    assert not S.declares_skip(fns["test_optional"])
    f = fns["test_nested_xfail"]
    assert S.declares_expected_change(f, "step-9000")
    assert S.declares_expected_change(f, "other", params="step-9000-1")  # the node id's model parameter
    assert not S.declares_expected_change(f, "step-12000")
    assert not S.declares_expected_change(fns["test_expect_change_without_reason"], "step-9000")
    assert S.declares_optional_model(fns["test_optional"], "gpt2")
    assert not S.declares_optional_model(fns["test_optional"], "smollm2-135m")


def test_split_nodeid():
    assert S.split_nodeid("claims/a/test_x.py::TestG::test_y[m-1]") == ("claims/a/test_x.py", "TestG::test_y", "m-1")
    assert S.split_nodeid("t.py::test_y") == ("t.py", "test_y", "")


def test_skip_anywhere():
    assert S.skip_anywhere("import pytest\n@pytest.fixture\ndef f():\n    pytest.skip('no')\n")
    assert not S.skip_anywhere("def f():\n    return 1\n")
    assert not S.skip_anywhere("def (:\n")                               # does not parse: nothing declared


@pytest.mark.parametrize("text", ["def (", "x = [" * 10, "\x00"])
def test_a_file_that_does_not_parse_raises_a_syntax_error(text):
    with pytest.raises((SyntaxError, ValueError)):
        S.functions(text)
