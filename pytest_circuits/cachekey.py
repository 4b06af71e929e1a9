"""The team key: tamper evidence for caches that several machines share.

A cache entry's sha256 (activation entries, derived results, converted weights' manifests)
tells a corrupted entry from a good one, but anyone who can write the shared location can
also write a new entry together with its new sha256. With a key that the team holds in the
environment variable :data:`ENV` (``PYTEST_CIRCUITS_CACHE_KEY``, e.g. a CI secret), each
entry also carries an HMAC-SHA256 under that key, and an entry whose MAC does not verify
is never used (see docs/trust.md for what this does and does not protect).

The key is read from the environment only, is at least :data:`MIN_CHARS` characters long
(surrounding whitespace is dropped, so a trailing newline from a file does not make two
machines disagree), and is never printed: :class:`TeamKey` shows as ``TeamKey(<hidden>)``
and messages name the variable, never its value. A variable that is set but empty or too
short is an error (a CI secret that did not reach the job is a misconfiguration, not "no
key").
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .errors import CircuitsError

ENV = "PYTEST_CIRCUITS_CACHE_KEY"
MIN_CHARS = 16


class TeamKey:
    """An HMAC-SHA256 key; its value is never shown (repr, str, pickling)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "TeamKey(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> None:  # never pickled with whatever holds it
        raise TypeError("a TeamKey is not serialized")

    def __copy__(self) -> "TeamKey":
        return self

    def __deepcopy__(self, memo: dict) -> "TeamKey":
        return self

    def mac(self, purpose: str, *parts: str | bytes) -> str:
        """HMAC-SHA256 (hex) of ``purpose`` and ``parts``, each length-prefixed (so no two
        sequences of parts give the same message)."""
        h = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in (purpose, *parts):
            data = part.encode() if isinstance(part, str) else bytes(part)
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()

    def verify(self, mac: object, purpose: str, *parts: str | bytes) -> bool:
        """Whether ``mac`` is this key's MAC of ``purpose`` and ``parts`` (constant time)."""
        return isinstance(mac, str) and hmac.compare_digest(mac, self.mac(purpose, *parts))


def key_problem() -> str | None:
    """What is wrong with :data:`ENV` as set now (None: unset, or a usable key). Never
    contains the value."""
    raw = os.environ.get(ENV)
    if raw is None:
        return None
    n = len(raw.strip())
    if n == 0:
        return (f"${ENV} is set but empty (a CI secret that did not reach this job?): unset it to "
                "run without tamper evidence, or give the team's key")
    if n < MIN_CHARS:
        return (f"${ENV} is {n} characters long, shorter than {MIN_CHARS}: use a random key, e.g. "
                "`python -c \"import secrets; print(secrets.token_hex(32))\"`")
    return None


def team_key() -> TeamKey | None:
    """The key in :data:`ENV`, or None when it is unset; raises a :class:`CircuitsError`
    (which names the variable, never the value) when it is set but unusable."""
    problem = key_problem()
    if problem:
        raise CircuitsError(problem)
    raw = os.environ.get(ENV)
    return None if raw is None else TeamKey(raw.strip().encode())
