"""The decoy zoo: planted checkpoints that can prove a checkup detector wrong.

Each :class:`ZooModel` is a tiny checkpoint built from plain weights (deterministically, no
training) for one check of the mechanism checkup, of one of three kinds:

* ``"mechanism"``: the mechanism in an unusual but legitimate form (an attention sink,
  grouped-query or rotary attention, heads at non-zero indices, the mechanism split over two
  heads...); the check must say FOUND and locate exactly ``expect_heads``;
* ``"decoy"``: one defining property of the mechanism without the others (the attention
  pattern with an output nothing reads, the output with a pattern that never reaches the
  token, a purely positional head...); the check must not say FOUND;
* ``"control"``: the mechanism removed, or a random initialisation; not FOUND.

``verify`` checks the ground truth with raw torch (no project code): that the planted model
really has (or lacks) the property its kind says. :func:`models` lists every entry; the
builders live in modules imported by :func:`models` on first use (explicit imports, so the layer
test sees them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import CircuitsError, bad

KINDS = ("mechanism", "decoy", "control")

@dataclass(frozen=True)
class ZooModel:
    name: str                                   # unique, e.g. "induction-sink"
    check: str                                  # the checkup check it tests, e.g. "induction"
    kind: str                                   # one of KINDS
    expect_heads: tuple[str, ...]               # a mechanism's heads, e.g. ("L1H2", "L1H3"); () otherwise
    build: Callable[[Path], Path]               # writes the checkpoint folder at the path, returns it
    verify: Callable[[Path], None] | None = None  # raw-torch ground truth; raises AssertionError if wrong
    note: str = ""                              # what is planted, in words

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CircuitsError(bad("kind", self.kind, f"one of {', '.join(KINDS)}"))
        if self.kind == "mechanism" and not self.expect_heads:
            raise CircuitsError(f"zoo model {self.name!r}: a mechanism names the heads it plants")

    @property
    def expect_found(self) -> bool:
        return self.kind == "mechanism"


_REGISTRY: dict[str, ZooModel] = {}
_loaded = False


def register(entry: ZooModel) -> ZooModel:
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise CircuitsError(f"zoo model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def models(check: str | None = None) -> list[ZooModel]:
    """Every registered zoo model (of ``check`` when given), in registration order."""
    global _loaded
    if not _loaded:
        _loaded = True
        # The builder modules: each registers its entries when imported (one import line each).
        from .zoo_heads import ZOO_ENTRIES as _heads   # induction, previous-token, duplicate-token, copy suppression
        from .zoo_tasks import ENTRIES as _tasks       # IOI, successor, greater-than
        for _e in (*_heads, *_tasks):                  # ZooModel fields (the builders import nothing from here)
            register(ZooModel(**_e))

    return [m for m in _REGISTRY.values() if check is None or m.check == check]
