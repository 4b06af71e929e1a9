"""Every code block in README.md and docs/*.md runs here, on the tiny offline model.

The rule, decided by a block's fence and its first line:

* ```` ```bash ````, ```` ```text ````, ```` ```json ````, a bare ```` ``` ```` (commands, output,
  file contents, layouts): not run.
* ```` ```python ```` whose first line starts with ``>>>``: a doctest. A page's doctest blocks
  run in order as one doctest (sharing names, as in a Python session); printed output must
  match.
* ```` ```python ```` whose first line is ``# docs: claim``: a claim file, run through
  ``pytester`` on the tiny model (``--circuits-model=<tiny checkpoint>``, which overrides the
  block's ``@pytest.mark.model``; on the pages in ``SMOLLM2_SHAPED``, a tiny model of SmolLM2's
  shape, as their claims name its components). Claims in the docs carry thresholds measured on SmolLM2,
  which a random 2-layer model need not reach, so the check is that the claim *ran and
  measured*: at least one item, and every item either passed or failed with an
  ``AssertionError`` (the claim's own ``assert`` or ``assert_above``/``below``/``within``).
  A crash (any other exception), an error in set-up, a skip or nothing collected fails the
  test.
* ```` ```python ```` whose first line is ``# docs: model=tiny``: executed with ``model`` (the
  tiny model), ``store`` and ``activations`` (an ``ActivationStore`` over a temporary folder)
  and ``tiny_dir`` (the checkpoint folder) defined; it must run without an exception.
* any other ```` ```python ````: executed as it is, in a fresh namespace, from the repository
  root; it must run without an exception.

Any other ``# docs:`` header is refused, so a typo cannot turn a block into one that is not
run. ``test_a_broken_block_fails`` feeds the runner broken blocks of each kind and expects each
to fail.
"""

from __future__ import annotations

import doctest
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[A-Za-z0-9_+-]*)[ \t]*$")
HEADER = re.compile(r"^#\s*docs:\s*(?P<kind>.*?)\s*$")
KINDS = {"claim", "model=tiny"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int        # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> str:
        """'skip', 'doctest', 'claim', 'model=tiny' or 'plain'."""
        if self.lang != "python":
            return "skip"
        first = self.code.lstrip("\n").split("\n", 1)[0].strip()
        if first.startswith(">>>"):
            return "doctest"
        m = HEADER.match(first)
        if m is None:
            return "plain"
        if m["kind"] not in KINDS:
            raise ValueError(f"{self.id}: unknown docs header {first!r}; valid: "
                             + ", ".join(f"'# docs: {k}'" for k in sorted(KINDS)))
        return m["kind"]


def extract(text: str, page: str) -> list[Block]:
    """The fenced code blocks of a markdown text, indented ones (in lists) included."""
    blocks: list[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, start = m["indent"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: code block never closed")
        blocks.append(Block(page, start + 1, m["lang"].lower(), "\n".join(body) + "\n"))
        i += 1
    return blocks


def _all_blocks() -> list[Block]:
    out: list[Block] = []
    for p in PAGES:
        out += extract(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))
    return out


BLOCKS = _all_blocks()
RUN = [b for b in BLOCKS if b.kind in ("plain", "model=tiny", "claim")]
DOCTEST_PAGES = sorted({b.page for b in BLOCKS if b.kind == "doctest"})


# -- running one block ---------------------------------------------------------------

def run_doctests(blocks: list[Block], name: str) -> doctest.TestResults:
    """Run the doctest blocks of one page in order, as one doctest; return its results."""
    text = "\n".join(b.code for b in blocks)
    test = doctest.DocTestParser().get_doctest(text, {"__name__": "__docs__"}, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    return runner.summarize(verbose=False)


def exec_block(block: Block, namespace: dict) -> None:
    code = compile(block.code, block.id, "exec")
    cwd = os.getcwd()
    os.chdir(ROOT)           # paths in the docs are relative to the repository root
    try:
        exec(code, {"__name__": "__docs__", **namespace})
    finally:
        os.chdir(cwd)


class _Outcomes:
    """Records, per claim item, how its call phase ended (inside the pytester run)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[str, str]] = {}   # nodeid -> (outcome, exception type)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if call.when == "call" or report.outcome != "passed":
            exc = call.excinfo.typename if call.excinfo is not None else ""
            if call.when != "call":
                self.items[item.nodeid] = (f"{report.outcome} in {call.when}", exc)
            elif item.nodeid not in self.items:
                self.items[item.nodeid] = (report.outcome, exc)
        return report


def run_claim(block: Block, pytester: pytest.Pytester, tiny_dir: Path, cache: Path) -> dict[str, tuple[str, str]]:
    """Run a claim block through pytester on the tiny model; raise unless it ran and measured."""
    pytester.makepyfile(**{"test_docs_claim": block.code})
    rec = _Outcomes()
    pytester.inline_run(f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={cache}",
                        "-p", "no:cacheprovider", "-q", plugins=[rec])
    if not rec.items:
        raise AssertionError(f"{block.id}: the claim block collected no item")
    bad = {node: oc for node, oc in rec.items.items()
           if not (oc[0] == "passed" or (oc[0] == "failed" and oc[1] == "AssertionError"))}
    if bad:
        raise AssertionError(f"{block.id}: a claim must pass or fail on its own assertion; got {bad}")
    return rec.items


# Pages whose claim blocks name SmolLM2's components (attn23, L29H0, mlp28): their claims run on a
# random tiny model of SmolLM2's shape (30 layers, 9 heads, 3 key/value heads) instead of the
# 2-layer one, so that the components exist (tests/unit/test_examples.py checks those pages).
SMOLLM2_SHAPED = {"docs/examples.md"}


@pytest.fixture(scope="session")
def smollm2_shaped_dir(tmp_path_factory):
    from pytest_circuits.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("smollm2-shaped") / "ckpt", n_layers=30, d_model=72,
                                n_heads=9, n_kv_heads=3, d_mlp=64, seed=0)


# -- the tests -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def docs_store(tmp_path_factory):
    from pytest_circuits.store import ActivationStore

    return ActivationStore(cache_dir=tmp_path_factory.mktemp("docs-store"))


def _run(block: Block, request) -> None:
    from pytest_circuits import registry as R

    registry = dict(R._REGISTRY)     # a block may register a model (docs/models.md): undo it after
    try:
        _run_kind(block, request)
    finally:
        R._REGISTRY.clear()
        R._REGISTRY.update(registry)


def _run_kind(block: Block, request) -> None:
    if block.kind == "plain":
        exec_block(block, {})
    elif block.kind == "model=tiny":
        store = request.getfixturevalue("docs_store")
        exec_block(block, {"model": request.getfixturevalue("tiny"), "store": store, "activations": store,
                           "tiny_dir": request.getfixturevalue("tiny_dir")})
    elif block.kind == "claim":
        ckpt = request.getfixturevalue("smollm2_shaped_dir" if block.page in SMOLLM2_SHAPED else "tiny_dir")
        outcomes = run_claim(block, request.getfixturevalue("pytester"), ckpt,
                             request.getfixturevalue("tmp_path") / "cache")
        print(block.id, outcomes)     # which claims passed and which failed their threshold on the tiny model
    else:  # pragma: no cover
        raise AssertionError(block.kind)


def test_the_docs_have_blocks_of_each_kind():
    kinds = {b.kind for b in BLOCKS}
    assert {"plain", "model=tiny", "claim", "doctest", "skip"} <= kinds, kinds
    assert any(b.page == "README.md" and b.kind == "claim" for b in BLOCKS)


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs(block: Block, request):
    _run(block, request)


@pytest.mark.parametrize("page", DOCTEST_PAGES)
def test_doctests(page: str):
    blocks = [b for b in BLOCKS if b.page == page and b.kind == "doctest"]
    results = run_doctests(blocks, page)
    assert results.attempted > 0
    assert results.failed == 0, f"{page}: {results.failed} of {results.attempted} doctest examples failed"


BROKEN = textwrap.dedent('''
    Some prose.

    ```python
    from pytest_circuits import Measurement
    Measurement.from_values("x", [1.0, 2.0]).assert_above(100.0)
    ```

    ```python
    # docs: model=tiny
    model.no_such_method()
    ```

    ```python
    # docs: claim
    import pytest
    from pytest_circuits import PromptSet, metrics

    @pytest.mark.claim(source="docs test", finding="crashes instead of measuring")
    def test_crash(model):
        ps = PromptSet.build(model, ["the cat sat"], answers=[" no-such-word"])
        metrics.logit_diff(model, ps).assert_above(0.0)
    ```

    ```python
    >>> 1 + 1
    3
    ```

    ```bash
    this is not run
    ```
''')


def test_a_broken_block_fails(request):
    blocks = extract(BROKEN, "broken.md")
    assert [b.kind for b in blocks] == ["plain", "model=tiny", "claim", "doctest", "skip"]
    for b in blocks[:3]:
        with pytest.raises(Exception) as err:
            _run(b, request)
        if b.kind == "claim":   # a crash is not "ran and measured"
            assert "must pass or fail on its own assertion" in str(err.value)
    assert run_doctests(blocks[3:4], "broken.md").failed == 1
    # a claim that only fails its threshold is accepted: it ran and measured
    ok = extract(BROKEN.replace('answers=[" no-such-word"]', 'answers=[" mat"], foils=[" cat"]')
                 .replace("assert_above(0.0)", "assert_above(1e9)"), "broken.md")[2]
    outcomes = run_claim(ok, request.getfixturevalue("pytester"), request.getfixturevalue("tiny_dir"),
                         request.getfixturevalue("tmp_path") / "cache2")
    assert [oc for oc in outcomes.values()] == [("failed", "AssertionError")]


def test_typos_in_headers_and_fences_are_refused():
    with pytest.raises(ValueError, match="unknown docs header"):
        extract("```python\n# docs: modle=tiny\nx = 1\n```\n", "typo.md")[0].kind
    with pytest.raises(ValueError, match="never closed"):
        extract("```python\nx = 1\n", "open.md")



LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?:#[^)\s]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    missing = [m["target"] for m in LINK.finditer(text)
               if "://" not in m["target"] and not (page.parent / m["target"]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
