"""Metrics read at each prompt's last position: logit difference, probability
difference over token sets, KL to a reference run, loss.

Each returns a :class:`~pytest_circuits.measurement.Measurement` over the prompts,
computed from the activation store (so a repeated metric costs no forward pass), and
accepts an ``intervention`` (ablation or patch) to measure the model under it.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import hooks as H
from .activations import ActivationStore, Intervention, default_store
from .errors import PromptSetError, bad
from .measurement import Measurement
from .models import info as model_info


def _store(activations: ActivationStore | None) -> ActivationStore:
    return activations if activations is not None else default_store()


def _prov(model: Any, prompts: Any, intervention: Intervention | None, hooks: list[str],
          **extra: Any) -> dict[str, Any]:
    return {"model": model_info(model).label, "prompts": prompts.name, "hooks": hooks,
            "intervention": intervention.key if intervention is not None else "none", **extra}


def last_logits(model: Any, prompts: Any, *, intervention: Intervention | None = None,
                activations: ActivationStore | None = None) -> Any:
    """``[n, d_vocab]`` logits at each prompt's last real position."""
    return _store(activations).get(model, prompts, [H.LOGITS_LAST], intervention)[H.LOGITS_LAST]


def logit_diff(model: Any, prompts: Any, *, intervention: Intervention | None = None,
               activations: ActivationStore | None = None, name: str = "logit_diff",
               **kw: Any) -> Measurement:
    """``logit(answer) - logit(foil)`` per prompt (needs answers and foils)."""
    prompts.require("answer_ids", "foil_ids")
    logits = last_logits(model, prompts, intervention=intervention, activations=activations).float()
    rows = range(len(prompts))
    vals = logits[list(rows), list(prompts.answer_ids)] - logits[list(rows), list(prompts.foil_ids)]
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def answer_prob(model: Any, prompts: Any, *, intervention: Intervention | None = None,
                activations: ActivationStore | None = None, name: str = "answer_prob",
                **kw: Any) -> Measurement:
    """Probability of the answer token per prompt."""
    prompts.require("answer_ids")
    probs = last_logits(model, prompts, intervention=intervention, activations=activations).float().softmax(-1)
    vals = probs[list(range(len(prompts))), list(prompts.answer_ids)]
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def top1(model: Any, prompts: Any, *, intervention: Intervention | None = None,
         activations: ActivationStore | None = None, name: str = "top1", **kw: Any) -> Measurement:
    """1.0 where the answer is the most likely next token, else 0.0 (mean = accuracy)."""
    prompts.require("answer_ids")
    logits = last_logits(model, prompts, intervention=intervention, activations=activations)
    import torch

    vals = (logits.argmax(-1) == torch.tensor(prompts.answer_ids)).double()
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def prob_diff(model: Any, prompts: Any, positive: Sequence[Any], negative: Sequence[Any], *,
              intervention: Intervention | None = None, activations: ActivationStore | None = None,
              name: str = "prob_diff", **kw: Any) -> Measurement:
    """``sum p(positive) - sum p(negative)`` per prompt.

    ``positive``/``negative`` are token-id lists, either one list for every prompt or
    one list per prompt.
    """
    import torch

    probs = last_logits(model, prompts, intervention=intervention, activations=activations).float().softmax(-1)
    pos = _per_prompt("positive", positive, len(prompts), model)
    neg = _per_prompt("negative", negative, len(prompts), model)
    vals = torch.stack([probs[i, p].sum() - probs[i, q].sum() for i, (p, q) in enumerate(zip(pos, neg))])
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def kl_divergence(model: Any, prompts: Any, intervention: Intervention | None, *,
                  reference: Intervention | None = None, activations: ActivationStore | None = None,
                  name: str = "kl", **kw: Any) -> Measurement:
    """``KL(reference || intervened)`` of the next-token distribution, per prompt (nats).

    The reference is the clean run unless ``reference`` names another intervention.
    """
    ref = last_logits(model, prompts, intervention=reference, activations=activations).double()
    new = last_logits(model, prompts, intervention=intervention, activations=activations).double()
    lp, lq = ref.log_softmax(-1), new.log_softmax(-1)
    vals = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST],
                                                    reference=reference.key if reference else "clean"),
                                   labels=prompts.prompts, **kw)


def loss(model: Any, prompts: Any, *, intervention: Intervention | None = None,
         activations: ActivationStore | None = None, name: str = "loss", **kw: Any) -> Measurement:
    """Mean next-token cross-entropy (nats) over each prompt's tokens."""
    import torch

    nll = _store(activations).get(model, prompts, [H.TOKEN_LOSS], intervention)[H.TOKEN_LOSS]
    counts = torch.tensor(prompts.lengths, dtype=torch.float64) - 1
    if (counts <= 0).any():
        i = int((counts <= 0).nonzero()[0])
        raise PromptSetError(bad(f"prompts[{i}]", prompts.prompts[i], "at least two tokens to have a loss"))
    vals = nll.double().sum(1) / counts
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.TOKEN_LOSS]),
                                   labels=prompts.prompts, **kw)


def _per_prompt(what: str, ids: Sequence[Any], n: int, model: Any) -> list[list[int]]:
    ids = list(ids)
    if not ids:
        raise PromptSetError(bad(what, [], "token ids (one list for all prompts, or one per prompt)"))
    if all(isinstance(i, int) for i in ids):
        lists = [list(ids)] * n
    else:
        if len(ids) != n:
            raise PromptSetError(bad(what, f"{len(ids)} lists", f"one list per prompt ({n})"))
        lists = [list(x) for x in ids]
    d_vocab = model.cfg.d_vocab
    for row in lists:
        for t in row:
            if not isinstance(t, int) or not 0 <= t < d_vocab:
                raise PromptSetError(bad(what, t, f"token ids in 0..{d_vocab - 1}"))
    return lists
