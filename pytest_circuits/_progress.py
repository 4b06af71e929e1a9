"""Progress display that stays quiet where it would only be noise.

Bars show on an interactive terminal; they are silent under ``-q``, in CI logs
(``CI`` set or stderr not a TTY) and on xdist workers. Long steps without a count
(model loading) print one line when they start and end instead; the one-time weight
conversion does so in logs too, since it explains a 20-second pause.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterable, Iterator

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def interactive() -> bool:
    if _QUIET or os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


def bar(iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    if not interactive():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)


@contextlib.contextmanager
def status(message: str, *, always: bool = False) -> Iterator[None]:
    """One line when a long step starts and one when it ends: on an interactive terminal,
    or anywhere (but under ``-q`` and on xdist workers) with ``always=True``."""
    start = time.perf_counter()
    loud = interactive() or (always and not _QUIET and not os.environ.get("PYTEST_XDIST_WORKER"))
    if loud:
        print(f"\n{message} ...", file=sys.stderr, flush=True)
    yield
    if loud:
        print(f"{message}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
