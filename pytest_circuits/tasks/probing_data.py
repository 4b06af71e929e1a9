"""Labelled texts for sparse probing, written by the project (``pytest_circuits/data/probing/``).

Each shipped file is JSON Lines, one object per line::

    {"text": "Le chat dort ...", "label": "fr", "dataset": "language", "group": 0}

* ``text``: what the model reads (code keeps its newlines);
* ``label``: the text's class, a string (sequence-level label);
* ``dataset``: which dataset the line belongs to;
* ``group``: an int; items of one group are always put on the same side of a train/test
  split (translations of one sentence, a sentence and its spelled-out twin);
* any other key is kept as metadata (``meta[key]``), e.g. ``kind`` in ``code_prose``.

Shipped datasets (see ``data/probing/README.md``):

* :func:`language`: 72 parallel sentences in English, French, German and Spanish
  (288 rows, labels ``en/fr/de/es``, one group per sentence meaning);
* :func:`code_prose`: 80 code snippets (40 Python, 40 JavaScript) and 80 prose sentences
  (40 general, 40 *about* programming, so that topic alone does not separate the classes);
* :func:`digits_words`: 62 sentences with numbers written in digits, each paired with the
  same sentence with the numbers spelled out (group = pair).

Use::

    from pytest_circuits.tasks import probing_data
    fr = probing_data.language().binary("fr")          # French (1) vs the other three (0)
    probing.probe(model, fr, layer=5, k=1)              # or fr.texts, fr.labels, groups=fr.groups
    mine = probing_data.load("my_data.jsonl")           # your own file, same format

Token-level labels are derived from texts: :func:`token_labels` applies a function to
every token of each text (tokenized exactly as :meth:`PromptSet.build` does, BOS
included); :func:`digit_token_labels` labels digit tokens 1 and alphabetic word tokens 0;
:func:`position_labels` labels tokens by position. ``None`` marks a token to leave out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import _jsonl as jsonl
from ..errors import CircuitsError, PromptSetError, bad

SHIPPED = ("language", "code_prose", "digits_words")
_REQUIRED = ("text", "label")


@dataclass(frozen=True)
class BinaryTask:
    """Texts with binary labels (1 = ``positive``) and the group of each text."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    groups: tuple[int, ...]
    positive: str
    negative: str

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        n1 = sum(self.labels)
        return (f"BinaryTask({self.name!r}, n={len(self)}: {n1} {self.positive} vs "
                f"{len(self) - n1} {self.negative})")


@dataclass(frozen=True)
class ProbingData:
    """Texts with class labels (strings), groups and per-row metadata."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    groups: tuple[int, ...]
    meta: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        counts = {c: self.labels.count(c) for c in self.classes}
        return f"ProbingData({self.name!r}, n={len(self)}, classes={counts})"

    @property
    def classes(self) -> tuple[str, ...]:
        """The labels present, in order of first appearance."""
        return tuple(dict.fromkeys(self.labels))

    def binary(self, positive: str, negative: str | Sequence[str] | None = None) -> BinaryTask:
        """``positive`` (label 1) against ``negative`` (label 0): one class, several, or
        (default) every other class."""
        if positive not in self.classes:
            raise CircuitsError(bad("positive", positive, f"one of the labels {list(self.classes)}"))
        if negative is None:
            neg = tuple(c for c in self.classes if c != positive)
        else:
            neg = (negative,) if isinstance(negative, str) else tuple(negative)
            unknown = [c for c in neg if c not in self.classes]
            if unknown or positive in neg:
                raise CircuitsError(bad("negative", negative, f"labels other than {positive!r} among "
                                        f"{list(self.classes)}"))
        if not neg:
            raise CircuitsError(f"dataset {self.name!r} has only the class {positive!r}: a binary "
                                "task needs a second class")
        keep = [i for i, c in enumerate(self.labels) if c == positive or c in neg]
        neg_name = neg[0] if len(neg) == 1 else ("rest" if negative is None else "+".join(neg))
        return BinaryTask(name=f"{self.name}:{positive}-vs-{neg_name}",
                          texts=tuple(self.texts[i] for i in keep),
                          labels=tuple(int(self.labels[i] == positive) for i in keep),
                          groups=tuple(self.groups[i] for i in keep), positive=positive,
                          negative=neg_name)

    def where(self, **conditions: Any) -> "ProbingData":
        """Rows whose metadata (or ``label``) equals the given values, or is in a given
        list/tuple/set of values: ``data.where(kind=("python", "prose"))``."""
        cols = dict(self.meta)
        cols["label"] = self.labels
        for key in conditions:
            if key not in cols:
                raise CircuitsError(bad(key, conditions[key], f"a metadata key of {self.name!r}: "
                                        f"{sorted(cols)}"))

        def ok(i: int) -> bool:
            for key, want in conditions.items():
                v = cols[key][i]
                if isinstance(want, (list, tuple, set, frozenset)):
                    if v not in want:
                        return False
                elif v != want:
                    return False
            return True

        keep = [i for i in range(len(self)) if ok(i)]
        if not keep:
            raise CircuitsError(f"no row of {self.name!r} matches {conditions}")
        return ProbingData(name=self.name, texts=tuple(self.texts[i] for i in keep),
                           labels=tuple(self.labels[i] for i in keep),
                           groups=tuple(self.groups[i] for i in keep),
                           meta={k: tuple(v[i] for i in keep) for k, v in self.meta.items()})


def load(path: str | Path | None = None, *, dataset: str | None = None) -> ProbingData:
    """Read a probing JSONL file: a shipped dataset by name (``dataset="language"``) or
    your own file (``path=``). Rows without ``group`` get one group each."""
    if (path is None) == (dataset is None):
        raise CircuitsError("give exactly one of path= (your own JSONL file) or dataset= "
                            f"(one of {list(SHIPPED)})")
    if dataset is not None:
        if dataset not in SHIPPED:
            raise CircuitsError(bad("dataset", dataset, f"one of {list(SHIPPED)}"))
        text = resources.files("pytest_circuits").joinpath(f"data/probing/{dataset}.jsonl").read_text("utf-8")
        where, name = f"pytest_circuits/data/probing/{dataset}.jsonl", dataset
    else:
        p = Path(path)  # type: ignore[arg-type]
        if not p.is_file():
            raise CircuitsError(bad("path", str(path), "an existing JSONL file"))
        text = p.read_text("utf-8")
        where, name = str(p), p.stem
    texts: list[str] = []
    labels: list[str] = []
    groups: list[int | None] = []
    extra: list[dict[str, Any]] = []
    hint = 'each line needs {"text": str, "label": str|int, optionally "group": int}'
    for lineno, row in jsonl.rows(text, where, _REQUIRED, hint):
        if not isinstance(row["text"], str) or not row["text"]:
            raise PromptSetError(f"{where}:{lineno}: text={row['text']!r} is not a non-empty string")
        g = row.get("group")
        if g is not None and (isinstance(g, bool) or not isinstance(g, int)):
            raise PromptSetError(f"{where}:{lineno}: group={g!r} is not an int")
        texts.append(row["text"])
        labels.append(str(row["label"]))
        groups.append(g)
        extra.append({k: v for k, v in row.items() if k not in ("text", "label", "group")})
    if not texts:
        raise PromptSetError(f"{where}: no rows")
    # Rows without a group get their own, numbered after the largest given group.
    nxt = max([g for g in groups if g is not None], default=-1) + 1
    filled: list[int] = []
    for g in groups:
        if g is None:
            filled.append(nxt)
            nxt += 1
        else:
            filled.append(g)
    keys = sorted({k for e in extra for k in e})
    meta = {k: tuple(e.get(k) for e in extra) for k in keys}
    return ProbingData(name=name, texts=tuple(texts), labels=tuple(labels), groups=tuple(filled),
                       meta=meta)


def language() -> ProbingData:
    """288 sentences: 72 meanings x English, French, German, Spanish (labels en/fr/de/es)."""
    return load(dataset="language")


def code_prose() -> ProbingData:
    """160 texts: ``code`` (40 Python + 40 JavaScript) vs ``prose`` (40 general + 40 about
    programming); ``meta["kind"]`` says which."""
    return load(dataset="code_prose")


def digits_words() -> ProbingData:
    """124 sentences: numbers in ``digits`` vs the same sentence with numbers in ``words``."""
    return load(dataset="digits_words")


# -- token-level labels --------------------------------------------------------------
TokenLabel = Callable[[str, int], "int | bool | None"]


def token_labels(model: Any, texts: Sequence[str], fn: TokenLabel) -> list[list[int | None]]:
    """Per-token labels for ``pooling="token"``: ``fn(token_text, position)`` for every token
    of each text as :meth:`PromptSet.build` tokenizes it (position 0 is BOS when the
    tokenizer has one; it is always ``None``). ``None`` leaves a token out."""
    from ..prompts import PromptSet

    ps = PromptSet.build(model, texts, name="token_labels")
    tok = model.tokenizer
    bos = tok.bos_token_id
    out: list[list[int | None]] = []
    for i, n in enumerate(ps.lengths):
        ids = ps.tokens[i, :n].tolist()
        row: list[int | None] = []
        for pos, t in enumerate(ids):
            if pos == 0 and bos is not None and t == bos:
                row.append(None)
                continue
            v = fn(tok.decode([t]), pos)
            row.append(None if v is None else int(v))
        out.append(row)
    return out


def digit_token_labels(model: Any, texts: Sequence[str]) -> list[list[int | None]]:
    """1 for tokens made of digits, 0 for alphabetic word tokens, ``None`` otherwise
    (punctuation, spaces, BOS)."""

    def f(s: str, pos: int) -> int | None:
        s = s.strip()
        if s.isdigit():
            return 1
        if s.isalpha():
            return 0
        return None

    return token_labels(model, texts, f)


def position_labels(model: Any, texts: Sequence[str], boundary: int = 8) -> list[list[int | None]]:
    """1 for tokens at position ``>= boundary``, 0 before it (BOS left out)."""
    return token_labels(model, texts, lambda s, pos: int(pos >= boundary))
