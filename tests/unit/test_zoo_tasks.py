"""The zoo's IOI, successor-head and greater-than checkpoints (pytest_circuits/zoo_tasks.py):
each is built deterministically (byte for byte), and its raw-forward ground truth (no project
code) can fail: a mechanism's does not hold on a decoy or control of the same check.

That every entry's ground truth holds, and that its check says FOUND with exactly the planted
heads on a mechanism and ABSENT on a decoy or a control, for three detector seeds, is tested
once for the whole registry (heads and tasks) in tests/unit/test_zoo.py, through
scripts/zoo_table.py (the table in docs/checkup.md)."""

from __future__ import annotations

import hashlib

import pytest

from pytest_circuits import zoo, zoo_tasks

TASK_CHECKS = ("ioi", "successor", "greater_than")
ENTRIES = [m for m in zoo.models() if m.check in TASK_CHECKS]


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


def test_the_task_entries_are_the_modules():
    assert len({m.name for m in ENTRIES}) == len(ENTRIES) == len(zoo_tasks.ENTRIES)
    assert {m.check for m in ENTRIES} == set(TASK_CHECKS)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda m: m.name)
def test_builders_are_deterministic(entry, built, tmp_path):
    path = built(entry)
    again = entry.build(tmp_path / "again")
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(path)


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
