"""Progress display that stays quiet where it would only be noise.

Bars show on an interactive terminal; they are silent under ``-q``, in CI logs
(``CI`` set or stderr not a TTY) and on xdist workers. Long steps without a count
(model loading) print one line when they start and end instead; the one-time weight
conversion does so in logs too, since it explains a pause of half a minute or more. A long
run of claims says where it is, with an estimate of the time left, once a minute, under
``-q`` too (:class:`Heartbeat`).
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


#: seconds between two lines of a long run's heartbeat (:class:`Heartbeat`)
HEARTBEAT_SECONDS = 60.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


# The estimate waits for 1 / ESTIMATE_AFTER of the tests: after the first of 1,587 tests (a model
# load) it read "about 26 h 46 min left" for a lane that takes 17 minutes.
ESTIMATE_AFTER = 20


class Heartbeat:
    """Where a long run of claims is, with an estimate of the time left: one line on stderr
    every :data:`HEARTBEAT_SECONDS` while tests run, under ``-q`` and in CI logs too (a run
    shorter than that prints nothing). The estimate is the mean time of the tests finished so
    far times the tests left, once a twentieth of them have finished (:data:`ESTIMATE_AFTER`);
    it stays rough while claims that load a model or fill the activation cache weigh on it.

    ``started(name)`` and ``finished(name)`` are called as tests start and finish (on the
    controller under xdist, with several running at once); ``line()`` is the text printed."""

    def __init__(self, total: int, *, every: float | None = None, write: Any = None,
                 clock: Any = time.monotonic) -> None:
        self.total = max(0, int(total))
        self.every = HEARTBEAT_SECONDS if every is None else float(every)
        self._write = write or (lambda text: print(text, file=sys.stderr, flush=True))
        self._clock = clock
        self.t0 = clock()
        self.done = 0
        self.running: dict[str, float] = {}
        self._last = self.t0
        self._thread: Any = None
        self._stop: Any = None

    def started(self, name: str) -> None:
        self.running[name] = self._clock()

    def finished(self, name: str) -> None:
        if self.running.pop(name, None) is not None:
            self.done += 1

    def line(self) -> str:
        now = self._clock()
        elapsed = now - self.t0
        text = f"pytest-circuits: {self.done}/{self.total} tests done in {_duration(elapsed)}"
        left = self.total - self.done
        need = max(1, -(-self.total // ESTIMATE_AFTER))      # a twentieth of the tests, rounded up
        if self.done >= need and left > 0:
            mean = elapsed / self.done
            text += f"; about {_duration(mean * left)} left (at {_duration(mean)} a test so far)"
        elif left > 0:
            text += ("; no estimate before the first test finishes" if need == 1 else
                     f"; no estimate before {need} tests finish (the first load models and fill caches)")
        if self.running:
            name, since = min(self.running.items(), key=lambda kv: kv[1])
            text += f"; running {name} for {_duration(now - since)}"
        return text

    def beat(self) -> bool:
        """Print a line if :attr:`every` seconds have passed since the last one."""
        now = self._clock()
        if now - self._last < self.every:
            return False
        self._last = now
        self._write(self.line())
        return True

    def start(self) -> "Heartbeat":
        """Beat from a daemon thread until :meth:`stop` (a no-op on xdist workers, whose
        controller beats for the whole run)."""
        import threading

        if self._thread is not None or os.environ.get("PYTEST_XDIST_WORKER"):
            return self
        self._stop = threading.Event()
        tick = max(0.05, min(1.0, self.every / 4))

        def run() -> None:
            while not self._stop.wait(tick):
                self.beat()

        self._thread = threading.Thread(target=run, name="pytest-circuits-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
