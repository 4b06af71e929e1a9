"""docs/examples.md: the seven findings of issue #11's "Why", each a claim of at most 15 lines.

The rule (``claim_lines``): the lines of a claim block that are neither blank, nor a comment,
nor an import (``import x`` / ``from x import y``, continued lines included): the marker, the
fixtures, the decorator, the ``def`` and the body count. The blocks themselves run in
tests/unit/test_docs.py (claim blocks, on a tiny model of SmolLM2's shape since they name its
components); this file checks that they are there, short, and use the API the issue asked for.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_docs_runner", Path(__file__).with_name("test_docs.py"))
_docs = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_docs)     # the docs test's block extraction, not its tests
BLOCKS, ROOT, SMOLLM2_SHAPED = _docs.BLOCKS, _docs.ROOT, _docs.SMOLLM2_SHAPED

PAGE = "docs/examples.md"
MAX_LINES = 15
EXAMPLES = [b for b in BLOCKS if b.page == PAGE and b.kind == "claim"]

# One per finding named under "Why" in issue #11, in order: what each example must show.
FINDINGS = [
    ("attention layer 23 has the largest direct effect", 'assert_top("attn23", by="attn"'),
    ("total effect exceeds the direct effect", "(cost - direct).assert_above"),
    ("minimal except for mlp28", 'excluding("mlp28")'),
    ("robustness cells", 'rob["faithfulness"]["zero"]'),
    ("per_prompt_prob_diff, model first", "per_prompt_prob_diff(model, years"),
    ("the checkpoint-perturbation command", '"-m", "pytest_circuits", "perturb"'),
    ("the default probe split reaches the threshold", "r.f1.assert_above(0.9)"),
]


def claim_lines(code: str) -> int:
    """Lines of a claim block that count (see the module docstring)."""
    imports: set[int] = set()
    for node in ast.parse(code).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return sum(1 for i, line in enumerate(code.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in imports)


def test_seven_examples_run_on_a_model_of_smollm2s_shape():
    assert len(EXAMPLES) == len(FINDINGS) == 7
    assert PAGE in SMOLLM2_SHAPED
    assert (ROOT / PAGE).is_file()


@pytest.mark.parametrize("i", range(len(FINDINGS)), ids=[f[0] for f in FINDINGS])
def test_each_example_is_short_and_uses_the_api(i: int):
    block, (finding, api) = EXAMPLES[i], FINDINGS[i]
    n = claim_lines(block.code)
    assert n <= MAX_LINES, f"{block.id} ({finding}): {n} lines, more than {MAX_LINES}"
    assert api in block.code, f"{block.id} ({finding}) does not use {api!r}"
    assert "Measurement.from_values(\"" not in block.code or i == 4   # only the per-prompt shares build one


def test_the_rule_counts_what_it_says():
    code = ("# docs: claim\nimport pytest\nfrom a import (b,\n    c)\n\n"
            "@pytest.mark.claim(source='s',\n                   finding='f')\ndef test_x(model):\n"
            "    # a comment\n    x = 1\n")
    assert claim_lines(code) == 4
