"""The zoo's IOI, successor-head and greater-than checkpoints (pytest_circuits/zoo_tasks.py):
each is built deterministically, its ground truth holds by raw transformers/torch forwards (no
project code), and its own check says FOUND with exactly the planted heads on a mechanism and
never on a decoy or a control, with the same decided verdict for three detector seeds."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from pytest_circuits import ActivationStore, checkup, load_model, zoo, zoo_tasks

TASK_CHECKS = ("ioi", "successor", "greater_than")
ENTRIES = [m for m in zoo.models() if m.check in TASK_CHECKS]
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each entry built once (lazily), by name."""
    root = tmp_path_factory.mktemp("zoo-tasks")
    cache: dict[str, object] = {}

    def get(entry):
        if entry.name not in cache:
            cache[entry.name] = entry.build(root / entry.name)
        return cache[entry.name]
    return get


def test_every_check_has_a_mechanism_two_decoys_and_a_control():
    kinds = {c: Counter(m.kind for m in ENTRIES if m.check == c) for c in TASK_CHECKS}
    for c, k in kinds.items():
        assert k["mechanism"] >= 1 and k["decoy"] >= 2 and k["control"] >= 1, (c, k)
    assert len({m.name for m in ENTRIES}) == len(ENTRIES) == len(zoo_tasks.ENTRIES)
    assert all(m.verify is not None and m.note for m in ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda m: m.name)
def test_ground_truth_and_verdict(entry, built, tmp_path):
    path = built(entry)
    entry.verify(path)                                           # raw forwards: the planted property holds
    again = entry.build(tmp_path / "again")                      # deterministic, byte for byte
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(path)
    model = load_model(str(path), device="cpu", cache_dir=tmp_path / "cache")
    verdicts = []
    for seed in SEEDS:
        det = checkup.CHECKS[entry.check].function()(model, seed=seed, activations=ActivationStore())
        print(det.summary())
        verdicts.append((det.status, sorted(c for c, _ in det.components)))
    want = ("found" if entry.expect_found else "absent", sorted(entry.expect_heads))
    assert verdicts == [want] * len(SEEDS), (entry.name, verdicts)


@pytest.mark.parametrize("check, mechanism, other", [
    ("ioi", "ioi-sink-gqa", "ioi-control-no-s-inhibition"),
    ("successor", "successor-split-sink-gqa", "successor-decoy-erased"),
    ("greater_than", "greater-than-gpt2-positional", "greater-than-decoy-late-bias"),
])
def test_ground_truth_checks_can_fail(check, mechanism, other, built):
    """A mechanism's raw-forward ground truth does not hold on a decoy or control of the same
    check (the verification is not vacuous)."""
    by_name = {m.name: m for m in ENTRIES}
    with pytest.raises(AssertionError):
        by_name[mechanism].verify(built(by_name[other]))
