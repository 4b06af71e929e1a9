"""The decoy zoo (pytest_circuits.zoo: the attention-head checkpoints of pytest_circuits.zoo_heads
and the IOI / successor / greater-than ones of pytest_circuits.zoo_tasks) against the mechanism
checkup.

* every entry's ground truth holds, checked with Hugging Face transformers and raw torch only
  (its ``verify``), and that check can fail: run on the wrong checkpoint it raises (the task
  entries' can-fail checks and byte-for-byte determinism are in test_zoo_tasks.py);
* the checkup's verdict on every registered entry (the check it was registered for) is right
  with three detector seeds: FOUND with exactly the planted heads on a mechanism, ABSENT on a
  decoy or a control, never undecided, never changing with the seed: 0 false positives, 0 false
  negatives (scripts/zoo_table.py, which also writes the table in docs/checkup.md);
* the cards say which defining property a decoy lacks; the head checks' three verdicts (found,
  undecided on a limit their interval straddles, absent on a limit beyond it).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pytest_circuits import checkup, load_model, zoo
from pytest_circuits.store import ActivationStore

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = zoo.models()
HEAD_CHECKS = ("induction", "previous_token", "duplicate_token", "copy_suppression")
TASK_CHECKS = ("ioi", "successor", "greater_than")


def _script():
    spec = importlib.util.spec_from_file_location("zoo_table", ROOT / "scripts" / "zoo_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                 # (its dataclasses look their module up there)
    spec.loader.exec_module(mod)
    return mod


TABLE = _script()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every checkpoint of the registry, built once: ``{checkpoint: folder}``."""
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for e in ENTRIES:
        name = TABLE.checkpoint_of(e)
        if name not in out:
            out[name] = e.build(root / name)
    return out


def test_the_registry_is_well_formed():
    names = [e.name for e in ENTRIES]
    assert len(names) == len(set(names))
    for e in ENTRIES:
        assert e.check in checkup.CHECKS, e.name
        assert e.note and callable(e.build), e.name
        assert (e.kind == "mechanism") == bool(e.expect_heads), e.name
    for check in HEAD_CHECKS + TASK_CHECKS:      # what the issue asks of each check
        kinds = [e.kind for e in zoo.models(check)]
        assert kinds.count("mechanism") >= 1 and kinds.count("decoy") >= 2 and kinds.count("control") >= 1, check
    with pytest.raises(Exception, match="registered twice"):
        zoo.register(zoo.ZooModel(name=ENTRIES[0].name, check="induction", kind="control", expect_heads=(),
                                  build=ENTRIES[0].build))


def test_builders_are_deterministic(tmp_path):
    from pytest_circuits import zoo_heads as Z

    for name in ("heads-llama-sink", "heads-gpt2-short"):
        a = Z.build(Z.SPECS[name], tmp_path / "a" / name, {})
        b = Z.build(Z.SPECS[name], tmp_path / "b" / name, {})
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        assert (a / "model.safetensors").stat().st_size < 4 << 20


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_ground_truth_holds(entry, built):
    if entry.verify is None:
        pytest.fail(f"{entry.name}: no ground-truth check (verify)")
    entry.verify(built[TABLE.checkpoint_of(entry)])


@pytest.mark.parametrize("check", HEAD_CHECKS)
def test_ground_truth_can_fail(check, built):
    """A mechanism's check raises on the check's (first) control checkpoint, and every decoy's and
    control's check raises on the check's first mechanism checkpoint (which has the whole
    mechanism, and not the decoy's property at the decoy's heads)."""
    entries = zoo.models(check)
    mechanism = next(e for e in entries if e.kind == "mechanism")
    control = next(e for e in entries if e.kind == "control")
    with pytest.raises(AssertionError):
        mechanism.verify(built[TABLE.checkpoint_of(control)])
    for e in entries:
        if e.kind != "mechanism":
            with pytest.raises(AssertionError):
                e.verify(built[TABLE.checkpoint_of(mechanism)])


def test_the_checkup_has_no_false_positive_or_negative(built):
    """The whole registry (every helper's entries), each entry's check with seeds 0, 1, 2."""
    root = next(iter(built.values())).parent
    rows, _ = TABLE.run(seeds=(0, 1, 2), root=root)
    text = TABLE.markdown(rows, {}, (0, 1, 2))
    print(text)
    assert len(rows) == len(ENTRIES)
    assert [r.entry for r in rows if r.outcome != "OK"] == [], text
    assert "0 false positives, 0 false negatives, 0 other failures" in text


def _detect(built, checkpoint, check, **kw):
    model = load_model(str(built[checkpoint]), device="cpu")
    fn = checkup.CHECKS[check].function()
    return fn(model, activations=ActivationStore(), **kw)


def test_the_cards_say_what_a_decoy_lacks(built):
    d = _detect(built, "induction-dead-output", "induction")
    assert d.status == "absent" and "no effect on it (an output nothing reads): L1H1" in d.details
    d = _detect(built, "cs-llama-sink", "induction")          # the suppressor is anti-induction, not located
    assert d.found and [c for c, _ in d.components] == ["L1H2"]
    assert "L2H1" in d.details and "anti-induction: lowers the token it attends to" in d.details
    d = _detect(built, "induction-anti", "induction")
    assert d.status == "absent" and "anti-induction (they lower it): L1H2" in d.details
    d = _detect(built, "prev-sink-only", "previous_token")
    assert d.status == "absent" and "no head has the pattern" in d.details
    d = _detect(built, "prev-no-output", "previous_token")
    assert d.status == "absent" and "L0H2 have the pattern, but their output does not carry the token" in d.details
    for ckpt in ("cs-positional", "cs-self", "cs-uniform"):
        d = _detect(built, ckpt, "copy_suppression")
        assert d.status == "absent" and "absent: most like one: L2H1" in d.details, d.details
        assert d.measurement("predicted-copy share L2H1").upper < 0.5     # it does not attend to the copy
    d = _detect(built, "cs-amplifier", "copy_suppression")
    assert d.status == "absent" and "L2H1: amplifier: raises the token it attends to" in d.details


def test_too_few_predictions_make_copy_suppression_na_unless_no_ov_circuit_suppresses(built):
    """Nothing in ``induction-anti`` predicts a repeated token, so where a head attends when the
    model predicts one cannot be measured: the model lacks what the check measures on (n/a,
    saying so, never passed), although its L1H2 (OV -identity) could be copy suppression. In a
    random model nothing predicts either, but no head's OV circuit suppresses tokens (property 3
    fails on every upper bound): absent."""
    d = _detect(built, "induction-anti", "copy_suppression")
    assert d.status == "n/a" and not d.applicable and not d.found
    assert d.reason.startswith("the model makes too few in-context predictions to measure copy suppression on")
    assert "in only 0 of 32 sequences" in d.reason and "L1H2 1 [" in d.reason
    assert d.measurement("copy suppression OV (top head)").provenance["head"] == "L1H2"
    d = _detect(built, "random-gpt2", "copy_suppression")
    assert d.status == "absent" and "no prediction for a head to suppress" in d.details
    assert d.measurement("copy suppression OV (top head)").upper <= 0.5


def _limit_inside(m):
    """A limit strictly inside ``m``'s interval (which must have width)."""
    assert m.lower < m.upper, m
    return (m.lower + m.upper) / 2


@pytest.mark.parametrize("checkpoint, check, measurement, keyword, heads, above", [
    ("heads-llama-sink", "induction", "induction effect on the attended token L1H1", "min_effect",
     ["L1H1", "L1H3"], True),
    ("heads-llama-sink", "previous_token", "previous-token token dependence L0H1", "min_dependence", ["L0H1"], True),
    ("dup-llama-gqa", "duplicate_token", "duplicate-token token dependence L0H1", "min_dependence",
     ["L0H1", "L0H3"], True),
    ("cs-llama-sink", "copy_suppression", "predicted-copy effect on the attended token L2H1", "min_effect",
     ["L2H1"], False),
])
def test_a_straddled_limit_is_undecided_a_missed_one_absent(built, checkpoint, check, measurement, keyword,
                                                            heads, above):
    """The head checks' three verdicts against one measured interval: a limit below it leaves
    the mechanism found, a limit inside it (the deciding property of the best candidate
    straddles) makes the verdict undecided with ``detection.straddle``'s words, and a limit
    beyond it makes it absent (every candidate fails on the optimistic bound)."""
    from pytest_circuits.detection import straddle

    found = _detect(built, checkpoint, check)
    assert found.found and [c for c, _ in found.components] == heads
    m = found.measurement(measurement)
    sign = 1 if above else -1                    # copy suppression's effect must be below -min_effect
    inside = sign * _limit_inside(m)
    d = _detect(built, checkpoint, check, **{keyword: inside})
    assert d.status == "undecided" and d.components == () and not d.decided
    why = straddle(m, sign * inside, above=above)
    assert why and why in d.reason, (why, d.reason)
    assert d.reason.startswith(f"{heads[0]} could be ")
    beyond = abs(m.upper if above else m.lower) * 1.5
    d = _detect(built, checkpoint, check, **{keyword: beyond})
    assert d.status == "absent" and d.components == () and d.reason == ""
    below = abs(m.lower if above else m.upper) * 0.5
    d = _detect(built, checkpoint, check, **{keyword: below})
    assert d.found and [c for c, _ in d.components] == heads


def test_an_ablation_that_straddles_its_limit_leaves_induction_undecided(built):
    found = _detect(built, "heads-llama-sink", "induction")
    inc = found.measurement("second-copy loss increase, induction heads ablated, over control")
    d = _detect(built, "heads-llama-sink", "induction", min_loss_increase=_limit_inside(inc))
    assert d.status == "undecided" and [c for c, _ in d.components] == ["L1H1", "L1H3"]   # located, not causal
    assert d.reason.startswith("L1H1, L1H3 have the pattern and copy, but whether ablating them raises")
    assert "straddles the criterion's lower limit" in d.reason
    d = _detect(built, "heads-llama-sink", "induction", min_loss_increase=inc.upper * 1.5)
    assert d.status == "absent" and "ablating them does not raise the second-copy loss" in d.details


def test_a_short_context_and_a_vocabulary_of_codes_are_checked(built):
    """The model the checkup once called n/a for both checks (32 positions; no alphabetic token)."""
    for check, head in (("induction", "L1H1"), ("copy_suppression", "L2H3"), ("previous_token", "L0H2")):
        d = _detect(built, "heads-gpt2-short", check)
        assert d.applicable and d.found and [c for c, _ in d.components] == [head], (check, d.summary())
        assert "periods up to 15" in d.details or "periods up to" in d.details


@pytest.mark.parametrize("kind, expected, got, heads, outcome", [
    ("mechanism", ("L1H1",), ["found"] * 3, [("L1H1",)] * 3, "OK"),
    ("mechanism", ("L1H1",), ["found"] * 3, [("L1H1", "L1H3")] * 3, "FP"),          # a head not planted
    ("mechanism", ("L1H1", "L1H3"), ["found"] * 3, [("L1H1",)] * 3, "FN"),          # a planted head missed
    ("mechanism", ("L1H1",), ["found"] * 3, [("L1H3",)] * 3, "FP+FN"),
    ("mechanism", ("L1H1",), ["absent"] * 3, [()] * 3, "FN"),
    ("mechanism", ("L1H1",), ["n/a"] * 3, [()] * 3, "N/A"),
    ("decoy", (), ["found"] * 3, [("L0H1",)] * 3, "FP"),
    ("control", (), ["absent"] * 3, [()] * 3, "OK"),
    ("decoy", (), ["absent", "found", "absent"], [(), ("L0H1",), ()], "SEED"),
    ("decoy", (), ["undecided"] * 3, [()] * 3, "UNDECIDED"),
])
def test_the_table_judges_each_row(kind, expected, got, heads, outcome):
    row = TABLE.Row("e", "c", "induction", kind, expected, got=list(got), heads=list(heads))
    row.judge()
    assert row.outcome == outcome


def test_each_headline_keeps_its_kind_of_interval(built):
    """The OV self-suppression is a proportion of sampled tokens (Clopper-Pearson, its count in
    the interval's description); attention shares and effects are continuous (bootstrap-t), and
    a headline "(top head)" is the located head's own measurement under a head-free name."""
    from pytest_circuits import stats

    d = _detect(built, "cs-llama-sink", "copy_suppression")
    ov, top = d.measurement("copy suppression OV L2H1"), d.measurement("copy suppression OV (top head)")
    assert "Clopper-Pearson" in ov.provenance["interval"] and top.provenance["head"] == "L2H1"
    assert (top.values, top.lower, top.upper) == (ov.values, ov.lower, ov.upper)
    k = int(sum(ov.values))
    assert (ov.lower, ov.upper) == stats.clopper_pearson(k, ov.n, 0.95) and f"({k}/{ov.n})" in ov.provenance["interval"]
    for name in ("predicted-copy share", "predicted-copy effect on the attended token"):
        m, t = d.measurement(f"{name} L2H1"), d.measurement(f"{name} (top head)")
        assert "Clopper-Pearson" not in m.provenance["interval"] and (t.lower, t.upper) == (m.lower, m.upper)
    d = _detect(built, "heads-llama-sink", "induction")
    for m in d.measurements:
        assert "Clopper-Pearson" not in m.provenance["interval"], m
    # The control's increase is a detail, not a headline a baseline compares: its heads are drawn
    # per layer as many as were located there, so a borderline head that drops out redraws them.
    names = [m.name for m in d.measurements]
    assert "second-copy loss increase, induction heads ablated, over control" in names
    assert "second-copy loss increase, control heads ablated" not in names
    assert d.measurement("second-copy loss increase, control heads ablated").n == 32
