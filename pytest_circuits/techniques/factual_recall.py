"""The factual-recall detector of the checkup: on the facts set
(:mod:`pytest_circuits.tasks.facts`), the true answer out-scores a same-relation foil; the
heads with the largest direct effect on the answer - foil logit difference are its components.
"""

from __future__ import annotations

from typing import Any

from ..detection import Detection, decide
from ..errors import CircuitsError, PromptSetError, bad
from ..measurement import Measurement
from ..models import info as model_info

#: the check's title and source on the card
TITLE, SOURCE = "Factual recall", "pytest-circuits facts set"


def detect_factual_recall(model: Any, *, n: int | None = 200, seed: int = 0, min_facts: int = 20,
                          min_share: float = 0.5, activations: Any = None) -> Detection:
    """Factual recall on the project's facts set (``pytest_circuits/data/facts.jsonl``, each fact
    with a same-relation foil), on the facts whose answer and foil are single tokens for this
    tokenizer (a seeded sample of ``n`` of them; ``n=None``: all): the logit difference
    answer - foil, the share of facts where the answer wins,
    and each head's direct effect on that difference (the heatmap; components: the heads with
    the largest mean direct effect).

    Found when the share's lower bound exceeds ``min_share`` (0.5: better than a coin between
    answer and foil; the share is a proportion, with its Clopper-Pearson interval) and the
    logit difference's lower bound exceeds 0; absent when either upper bound is at or below
    its threshold; undecided otherwise. Not applicable with fewer than ``min_facts`` usable
    facts (the reason says how many facts the vocabulary can write)."""
    import numpy as np
    import torch

    from .. import metrics
    from ..components import Head
    from ..tasks import facts
    from . import effects as E

    title, src = TITLE, SOURCE
    label = model_info(model).label
    import warnings

    from ..errors import PromptWarning

    with warnings.catch_warnings():
        # Prompts that reach the model as the unknown token are dropped below, not warned about.
        warnings.simplefilter("ignore", PromptWarning)
        try:
            ps = facts(model, name="checkup_facts")
        except PromptSetError as e:
            return Detection.not_applicable("factual_recall", title, str(e), source=src, model=label)
    unk = getattr(model.tokenizer, "unk_token_id", None)
    readable = [i for i in range(len(ps)) if unk is None or unk not in ps.tokens[i, : ps.lengths[i]].tolist()]
    if len(readable) < min_facts:
        return Detection.not_applicable(
            "factual_recall", title, f"only {len(readable)} facts have a single-token answer and foil and a "
            f"prompt without the unknown token for this tokenizer (at least {min_facts} needed)",
            source=src, model=label)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < min_facts:
            raise CircuitsError(bad("n", n, f"None (all facts) or an int >= min_facts ({min_facts})"))
        if n < len(readable):
            import random

            readable = sorted(random.Random(seed).sample(readable, n))
    if len(readable) < len(ps):
        ps = ps.subset(readable, name="checkup_facts")
    ld = metrics.logit_diff(model, ps, activations=activations)
    ld = Measurement.from_values("facts logit difference (answer - foil)", ld.array, model=label)
    share = Measurement.from_values("facts share answer beats foil", ld.array > 0, model=label, method="clopper-pearson")
    de_a = E.decompose(model, ps, token="answer", activations=activations)
    de_f = E.decompose(model, ps, token=torch.tensor(ps.foil_ids), activations=activations)
    cfg = model.cfg
    heat = np.zeros((cfg.n_layers, cfg.n_heads))
    for i, c in enumerate(de_a.components):
        if isinstance(c, Head):
            heat[c.layer, c.head] = float((de_a.values[i] - de_f.values[i]).mean())
    order = np.argsort(-heat, axis=None)[:5]
    comps = tuple((f"L{int(k) // cfg.n_heads}H{int(k) % cfg.n_heads}", float(heat.flat[k])) for k in order)
    from ..detection import straddle

    found = share.lower > min_share and ld.lower > 0
    excluded = share.upper <= min_share or ld.upper <= 0
    return Detection(
        check="factual_recall", title=title, source=src, model=label,
        **decide(found, excluded, [straddle(share, min_share), straddle(ld, 0.0)]),
        criterion=f"share of facts where the answer beats the foil: lower bound > {min_share:g}, and the "
                  f"logit difference's lower bound > 0 (n={len(ps)} facts); absent when either upper bound "
                  "is at or below",
        measurements=(ld, share), components=comps,
        heatmaps={"direct effect on answer - foil": heat},
        details="components: heads with the largest mean direct effect on the answer - foil logit "
                "difference")
