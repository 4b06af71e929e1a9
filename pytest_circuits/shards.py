"""Splitting one claims suite over N CI jobs: ``pytest --circuits-shard K/N``.

The assignment rule (documented in docs/release-gate.md):

1. Every collected item gets a key ``(model, nodeid)``: the model parameter's id of a claim
   run on a model (``""`` for an item without one), then the node id.
2. The items are sorted by that key: all the items of one model are next to each other,
   and within a model, the parameters of one claim function too.
3. The sorted list is cut into N contiguous runs whose sizes differ by at most one (the
   first ``len % N`` runs get one item more); shard K (1-based) runs the K-th.

So every item is in exactly one shard; the assignment depends only on the set of node ids
collected (never on the machine, the order of collection, a hash seed or time); no shard is
empty when there are at least N items; and a model is loaded by at most
``ceil(its items / run size) + 1`` shards (at most ``models + N - 1`` loads in all, against
``models x N`` for a random split). Adding or removing a claim may move others to another
shard: the merge checks that all the shards come from the same suite.

Nothing here imports pytest or torch: the plugin loads in every pytest run.
"""

from __future__ import annotations

from typing import Sequence

from .config import MAX_SHARDS


def parse_shard(spec: object) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N <= MAX_SHARDS`` (10,000); anything else raises
    ValueError with a sentence saying what is wrong (the plugin turns it into a usage error)."""
    text = str(spec).strip()
    k, sep, n = text.partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not K/N (e.g. 1/4: the first of 4 shards)")
    try:
        index, count = int(k.strip()), int(n.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not K/N with integers K and N (e.g. 2/4)") from None
    if count < 1:
        raise ValueError(f"{text!r}: in K/N, the number of shards N must be at least 1")
    if count > MAX_SHARDS:
        raise ValueError(f"{text!r}: in K/N, the number of shards N must be at most {MAX_SHARDS:,} "
                         "(one CI job per shard)")
    if not 1 <= index <= count:
        raise ValueError(f"{text!r}: the shard K must be between 1 and N={count} (shards count from 1)")
    return index, count


def bounds(total: int, count: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` of each of ``count`` contiguous runs over ``total`` sorted items
    (sizes differ by at most one, larger runs first)."""
    size, extra = divmod(total, count)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def assign(keys: Sequence[tuple[str, str]], count: int) -> list[int]:
    """The shard (1-based) of each item, given the items' ``(model, nodeid)`` keys, in the
    order given. Keys must be distinct (node ids are)."""
    if count < 1:
        raise ValueError(f"count={count}: at least one shard")
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    shard = [0] * len(keys)
    for k, (start, stop) in enumerate(bounds(len(keys), count), start=1):
        for pos in order[start:stop]:
            shard[pos] = k
    return shard
