"""Metrics read at each prompt's last position: logit difference, probability
difference over token sets, KL to a reference run, loss.

Each returns a :class:`~pytest_circuits.measurement.Measurement` over the prompts,
computed from the activation store (so a repeated metric costs no forward pass), and
accepts an ``intervention`` (ablation or patch) to measure the model under it.

Every metric refuses what is not a number: logits (or losses) that are NaN or infinite
at the rows it reads raise :class:`~pytest_circuits.errors.MeasurementError` naming the
metric, the model and how many prompts are affected -- ``top1`` included, where an
argmax over NaN would otherwise give a confident 0 (a broken model "passing" a negative
claim). Token ids are ints (numpy ints and integer tensors too), never bools.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

from . import hooks as H
from .store import ActivationStore, Intervention, resolve
from .errors import MeasurementError, PromptSetError, bad
from .measurement import Measurement
from .models import info as model_info
from .prompts import PromptSet

# KL(p || q) >= 0 exactly; in float64 a sum over a vocabulary can round to a tiny negative.
# Anything more negative than this is a wrong computation, not rounding, and is raised.
KL_ROUNDING = 1e-9


def _prov(model: Any, prompts: Any, intervention: Intervention | None, hooks: list[str],
          **extra: Any) -> dict[str, Any]:
    return {"model": model_info(model).label, "prompts": prompts.name, "hooks": hooks,
            "intervention": intervention.key if intervention is not None else "none", **extra}


def _check_prompts(prompts: Any) -> None:
    if not isinstance(prompts, PromptSet):
        raise PromptSetError(bad("prompts", type(prompts).__name__,
                                 "a PromptSet (PromptSet.build(model, [...]))"))


def _finite(name: str, model: Any, prompts: Any, x: Any, what: str,
            intervention: Intervention | None = None) -> None:
    """Raise unless every entry of ``x`` (``[n, ...]``, one row per prompt) is finite."""
    import torch

    ok = torch.isfinite(x).reshape(x.shape[0], -1).all(1)
    if bool(ok.all()):
        return
    badrows = (~ok).nonzero().flatten().tolist()
    first = badrows[0]
    under = f" under {intervention.key}" if intervention is not None else ""
    raise MeasurementError(
        f"{name} on {model_info(model).label}{under}: the {what} are not finite (NaN or inf) on "
        f"{len(badrows)} of {len(prompts)} prompts (first: prompts[{first}]={prompts.prompts[first]!r}); "
        "nothing can be measured from them -- check the model's weights (a NaN or inf weight), its "
        "dtype (float16 overflow) and the intervention")


def last_logits(model: Any, prompts: Any, *, intervention: Intervention | None = None,
                activations: ActivationStore | None = None) -> Any:
    """``[n, d_vocab]`` logits at each prompt's last real position."""
    _check_prompts(prompts)
    return resolve(activations).get(model, prompts, [H.LOGITS_LAST], intervention)[H.LOGITS_LAST]


def _finite_logits(name: str, model: Any, prompts: Any, intervention: Intervention | None,
                   activations: ActivationStore | None) -> Any:
    logits = last_logits(model, prompts, intervention=intervention, activations=activations)
    _finite(name, model, prompts, logits, "last-position logits", intervention)
    return logits


def logit_diff(model: Any, prompts: Any, *, intervention: Intervention | None = None,
               activations: ActivationStore | None = None, name: str = "logit_diff",
               **kw: Any) -> Measurement:
    """``logit(answer) - logit(foil)`` per prompt (needs answers and foils)."""
    _check_prompts(prompts)
    prompts.require("answer_ids", "foil_ids")
    logits = _finite_logits(name, model, prompts, intervention, activations).float()
    rows = range(len(prompts))
    vals = logits[list(rows), list(prompts.answer_ids)] - logits[list(rows), list(prompts.foil_ids)]
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def answer_prob(model: Any, prompts: Any, *, intervention: Intervention | None = None,
                activations: ActivationStore | None = None, name: str = "answer_prob",
                **kw: Any) -> Measurement:
    """Probability of the answer token per prompt."""
    _check_prompts(prompts)
    prompts.require("answer_ids")
    probs = _finite_logits(name, model, prompts, intervention, activations).float().softmax(-1)
    vals = probs[list(range(len(prompts))), list(prompts.answer_ids)]
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def top1(model: Any, prompts: Any, *, intervention: Intervention | None = None,
         activations: ActivationStore | None = None, name: str = "top1", **kw: Any) -> Measurement:
    """1.0 where the answer is the most likely next token, else 0.0 (mean = accuracy).

    The logits are checked finite first: ``argmax`` over a row of NaN returns an index
    anyway, which would read as a confident "never the answer".
    """
    import torch

    _check_prompts(prompts)
    prompts.require("answer_ids")
    logits = _finite_logits(name, model, prompts, intervention, activations)
    vals = (logits.argmax(-1).to("cpu") == torch.tensor(prompts.answer_ids)).double()
    kw.setdefault("method", "clopper-pearson")      # a proportion: successes out of prompts
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def prob_diff(model: Any, prompts: Any, positive: Sequence[Any], negative: Sequence[Any], *,
              intervention: Intervention | None = None, activations: ActivationStore | None = None,
              name: str = "prob_diff", **kw: Any) -> Measurement:
    """``sum p(positive) - sum p(negative)`` per prompt.

    ``positive``/``negative`` are token-id lists, either one list for every prompt or
    one list per prompt (ints, numpy ints or integer tensors; not bools).
    """
    import torch

    _check_prompts(prompts)
    pos = _per_prompt("positive", positive, len(prompts), model)
    neg = _per_prompt("negative", negative, len(prompts), model)
    probs = _finite_logits(name, model, prompts, intervention, activations).float().softmax(-1)
    vals = torch.stack([probs[i, p].sum() - probs[i, q].sum() for i, (p, q) in enumerate(zip(pos, neg))])
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST]),
                                   labels=prompts.prompts, **kw)


def kl_divergence(model: Any, prompts: Any, intervention: Intervention | None, *,
                  reference: Intervention | None = None, activations: ActivationStore | None = None,
                  name: str = "kl", **kw: Any) -> Measurement:
    """``KL(reference || intervened)`` of the next-token distribution, per prompt (nats).

    ``KL(p || q) = sum_v p(v) (log p(v) - log q(v))``, in float64 from the last-position
    logits. The reference is the clean run unless ``reference`` names another
    intervention. KL is never negative: a value below ``-KL_ROUNDING`` is raised as a
    wrong computation; only rounding-sized negatives are set to 0.
    """
    _check_prompts(prompts)
    ref = _finite_logits(name, model, prompts, reference, activations).double()
    new = _finite_logits(name, model, prompts, intervention, activations).double()
    vals = _kl_values(ref, new)
    _finite(name, model, prompts, vals, "KL values", intervention)
    vals = _nonnegative_kl(name, model, prompts, vals)
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.LOGITS_LAST],
                                                    reference=reference.key if reference else "clean"),
                                   labels=prompts.prompts, **kw)


def _kl_values(ref_logits: Any, new_logits: Any) -> Any:
    """Per row ``sum_v p(v) (log p(v) - log q(v))`` with ``p, q`` the softmaxes of the two
    logit rows (float64); not clamped."""
    lp, lq = ref_logits.double().log_softmax(-1), new_logits.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def _nonnegative_kl(name: str, model: Any, prompts: Any, vals: Any) -> Any:
    """``vals`` with rounding-sized negatives set to 0; a KL below ``-KL_ROUNDING`` is an error."""
    if bool((vals < -KL_ROUNDING).any()):
        i = int(vals.argmin())
        raise MeasurementError(
            f"{name} on {model_info(model).label}: KL(reference || intervened) = {float(vals[i]):.3g} < 0 "
            f"on prompts[{i}]={prompts.prompts[i]!r}; a KL divergence cannot be negative, so the "
            "distributions compared are not what they should be")
    return vals.clamp_min(0.0)  # only rounding-sized negatives (> -KL_ROUNDING) are changed


def loss(model: Any, prompts: Any, *, intervention: Intervention | None = None,
         activations: ActivationStore | None = None, name: str = "loss", **kw: Any) -> Measurement:
    """Mean next-token cross-entropy (nats) over each prompt's tokens."""
    import torch

    _check_prompts(prompts)
    counts = torch.tensor(prompts.lengths, dtype=torch.float64) - 1
    if (counts <= 0).any():
        i = int((counts <= 0).nonzero()[0])
        raise PromptSetError(bad(f"prompts[{i}]", prompts.prompts[i], "at least two tokens to have a loss"))
    nll = resolve(activations).get(model, prompts, [H.TOKEN_LOSS], intervention)[H.TOKEN_LOSS].double()
    # Only each prompt's real positions count (padding is not the prompt).
    real = torch.arange(nll.shape[1]).unsqueeze(0) < (counts.long()).unsqueeze(1)
    _finite(name, model, prompts, torch.where(real, nll, torch.zeros_like(nll)), "per-token losses",
            intervention)
    vals = torch.where(real, nll, torch.zeros_like(nll)).sum(1) / counts
    return Measurement.from_values(name, vals, model=model_info(model).label,
                                   provenance=_prov(model, prompts, intervention, [H.TOKEN_LOSS]),
                                   labels=prompts.prompts, **kw)


def _token_id(what: str, t: Any, d_vocab: int) -> int:
    import numpy as np

    if hasattr(t, "tolist") and not isinstance(t, (list, tuple)):  # numpy / torch scalars
        t = t.tolist()
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or not 0 <= t < d_vocab:
        raise PromptSetError(bad(what, t, f"token ids in 0..{d_vocab - 1} (ints, not bools)"))
    return int(t)


def _per_prompt(what: str, ids: Any, n: int, model: Any) -> list[list[int]]:
    """``ids`` as one list of token ids per prompt (one list shared, or one per prompt)."""
    valid = "token ids (one list for all prompts, or one list per prompt)"
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):  # numpy array, tensor
        ids = ids.tolist()
    if ids is None or isinstance(ids, (str, bytes, numbers.Number)) or not hasattr(ids, "__iter__"):
        raise PromptSetError(bad(what, ids, valid))
    try:
        ids = list(ids)
    except TypeError:
        raise PromptSetError(bad(what, ids, valid)) from None
    if not ids:
        raise PromptSetError(bad(what, [], valid))
    d_vocab = model.cfg.d_vocab

    def is_list(x: Any) -> bool:
        return isinstance(x, (list, tuple)) or (hasattr(x, "tolist") and getattr(x, "ndim", 0) == 1)

    if not any(is_list(x) for x in ids):
        row = [_token_id(what, t, d_vocab) for t in ids]
        return [row] * n
    if not all(is_list(x) for x in ids):
        raise PromptSetError(bad(what, ids, valid + ", not a mix of ids and lists"))
    if len(ids) != n:
        raise PromptSetError(bad(what, f"{len(ids)} lists", f"one list per prompt ({n})"))
    lists = []
    for i, x in enumerate(ids):
        x = x.tolist() if hasattr(x, "tolist") else list(x)
        if not x:
            raise PromptSetError(bad(f"{what}[{i}]", [], "at least one token id"))
        lists.append([_token_id(f"{what}[{i}]", t, d_vocab) for t in x])
    return lists
