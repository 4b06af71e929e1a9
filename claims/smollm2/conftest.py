from pathlib import Path

import pytest

from pytest_circuits import tasks


@pytest.fixture(scope="session")
def facts_top1(model):
    """The 171 facts the embedded model answers top-1 (data/facts_top1.jsonl; made by
    scripts/select_top1_facts.py and re-checked by test_self_repair.py::test_study_set_is_top1)."""
    return tasks.facts(model, path=Path(__file__).parent / "data" / "facts_top1.jsonl", name="facts_top1")
