"""The greater-than detector of the checkup (arXiv:2305.00586): after "from the year XXYY to
the year XX" a model prefers years later than XXYY, and the '01' corruption removes that
preference; the heads that carry the drop are located by patching. The prompts are
:mod:`pytest_circuits.tasks.greater_than`'s.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..detection import Detection, decide
from ..errors import PromptSetError
from ..measurement import Measurement
from ..models import info as model_info

#: the check's title and source on the card
TITLE, SOURCE = "Greater-than", "arXiv:2305.00586"


MIN_HEAD_SHARE = 0.1     # a greater-than head carries at least a tenth of the '01' drop


def greater_than_not_applicable(model: Any, nouns: Sequence[str] | None = None,
                                centuries: Sequence[int] = range(11, 18)) -> str | None:
    """Why ``model``'s tokenizer cannot write the greater-than prompts, in its own terms (None
    when it can): how it splits a year, which of the event nouns and centuries it lacks."""
    from ..prompts import is_single_token
    from ..tasks.greater_than import NOUNS, _digit_mode

    tok = model.tokenizer
    pieces = [tok.decode([p]) for p in tok.encode(" 1732", add_special_tokens=False)]
    digits = all(is_single_token(model, str(d)) for d in range(10))
    pairs = all(is_single_token(model, f"{i:02d}") for i in range(100))
    try:
        mode = _digit_mode(model)
    except PromptSetError:
        mode = None
    if mode is None or (mode == "digit" and not digits) or (mode == "two_digit" and not pairs):
        missing = [str(d) for d in range(10) if not is_single_token(model, str(d))]
        return (f"the tokenizer writes the year ' 1732' as {pieces}"
                + (f" and has no token for the digit(s) {', '.join(missing)}" if missing else "")
                + ": years are neither one token per digit nor two-digit tokens, so 'the probability of a "
                "later year' is not a sum over digit tokens")
    nouns = list(NOUNS if nouns is None else nouns)
    if not any(is_single_token(model, " " + w) for w in nouns):
        return (f"none of the {len(nouns)} event nouns of the template ({', '.join(nouns[:4])}, ...) is one "
                "token of the vocabulary")
    if mode == "two_digit" and not any(is_single_token(model, f" {c}") for c in centuries):
        return (f"the vocabulary writes two-digit years but none of the centuries {min(centuries)}..{max(centuries)} "
                "as one token")
    return None


def _year_positions(model: Any, task: Any) -> list[list[int]]:
    """Per clean prompt, the positions of the start year's YY token(s) (the two digits in
    digit mode, the one token in two-digit mode), found by decoding the tokens."""
    tok = model.tokenizer
    ps = task.prompts
    out = []
    for i in range(len(ps)):
        toks = ps.tokens[i, : ps.lengths[i]].tolist()
        text = [tok.decode([t]).strip() for t in toks]
        want = f"{ps.meta['century'][i]}{task.yy[i]:02d}"
        found: list[int] = []
        for a in range(len(toks)):
            got, b = "", a
            while b < len(toks) and len(got) < 4 and want.startswith(got + text[b]) and text[b]:
                got += text[b]
                b += 1
            if got == want:
                # the tokens that hold the last two characters
                pos, acc = [], 0
                for j in range(b - 1, a - 1, -1):
                    pos.insert(0, j)
                    acc += len(text[j])
                    if acc >= 2:
                        break
                found = pos
                break
        if not found:
            raise PromptSetError(f"greater_than: the start year {want} is not a run of tokens in {ps.prompts[i]!r}")
        out.append(found)
    return out


MAX_PATCHED = 8          # greater-than candidates patched, by attention share (one forward each)
PATCH_PROMPTS = 32       # ... on the first 32 prompts


def greater_than_heads(model: Any, task: Any, clean: Any, *, min_attention: float = 0.2,
                       min_share: float = MIN_HEAD_SHARE, max_patched: int = MAX_PATCHED,
                       n_patch: int = PATCH_PROMPTS, activations: Any = None) -> tuple[Any, Any, list, int]:
    """The heads that carry the start year to the answer, located by intervention.

    Candidates: heads whose attention from the last position to the start year's YY
    token(s) is at least ``min_attention`` (mean over prompts) of their attention off
    position 0 (so a head that parks most of its attention on an attention sink at BOS is
    judged by where the rest goes); the ``max_patched`` with the largest share, since each
    costs a forward pass (the share heatmap shows every head, and the details say how many
    were left out). Each candidate's output is patched, at every position, on the first
    ``n_patch`` prompts of the set,
    from the '01' prompts; its score is the fall of PD, per prompt. A head is located when
    the score's lower bound exceeds ``min_share`` times the whole '01' drop (mean).

    Returns ``(share heatmap [L, H], score heatmap [L, H], [(head, Measurement), ...] best
    first, how many candidates were not patched)``."""
    import numpy as np
    import torch

    from .. import hooks as H
    from ..components import Head
    from ..interventions import patch
    from ..store import resolve
    from ..tasks.greater_than import from_rows, per_prompt_prob_diff

    store = resolve(activations)
    L, nh = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [H.last(H.pattern(l)) for l in range(L)]
    pat = store.get(model, task.prompts, names)
    where = _year_positions(model, task)
    n = len(task.prompts)
    share = np.zeros((L, nh))
    for l in range(L):
        p = pat[names[l]].double()                                      # [n, H, width]
        on = torch.stack([p[i, :, where[i]].sum(-1) for i in range(n)])  # [n, H]
        off_sink = (1.0 - p[:, :, 0]).clamp_min(1e-12)
        share[l] = (on / off_sink).mean(0).numpy()
    corrupted = per_prompt_prob_diff(model, task, corrupted=True, activations=store)
    total = float((clean - corrupted).mean())
    if n_patch < len(task):     # the same prompts, the first n_patch of them
        meta = task.prompts.meta
        task = from_rows(model, [(meta["noun"][i], meta["century"][i], task.yy[i]) for i in range(n_patch)],
                         name=task.prompts.name)
        clean = clean[:n_patch]
    scores = np.zeros((L, nh))
    located = []
    label = model_info(model).label
    cands = sorted(zip(*np.nonzero(share >= min_attention)), key=lambda lh: -share[lh])
    for l, h in cands[:max_patched]:
        head = Head(int(l), int(h))
        fall = clean - per_prompt_prob_diff(model, task, intervention=patch(model, head), activations=store)
        m = Measurement.from_values(f"greater_than PD carried by {head}", fall, model=label, record=False,
                                    provenance={"head": str(head), "intervention": "patched from '01'"})
        scores[l, h] = m.mean
        if total > 0 and m.lower > min_share * total:
            located.append((head, m))
    located.sort(key=lambda x: -x[1].mean)
    return share, scores, located, max(0, len(cands) - max_patched)


def detect_greater_than(model: Any, *, n: int = 100, seed: int = 0, min_pd: float = 0.2,
                        min_drop: float = 0.2, min_attention: float = 0.2, min_share: float = MIN_HEAD_SHARE,
                        activations: Any = None) -> Detection:
    """Greater-than (Hanna et al. 2023): the probability difference PD (mass on years later than
    the start minus mass on earlier ones, :mod:`pytest_circuits.tasks.greater_than`) on ``n``
    seeded prompts, and its drop under the '01' corruption (the start year replaced by 01: the
    intervention that removes what the comparison reads).

    The defining properties: the model prefers later years (PD), and the preference comes
    from the start year (the drop). **Found** when PD's lower bound exceeds ``min_pd`` and
    the drop's lower bound exceeds ``min_drop``; **absent** when either upper bound is at or
    below its threshold (a model that always says "late", reads no year and drops nothing; one
    that copies the year or prefers earlier ones has PD <= 0); **undecided** otherwise.
    0.2 is a definition, not a measurement: 20 points more probability on later years than
    earlier, well below what the paper reports for GPT-2 small (PD 0.817) and what SmolLM2
    shows (0.875), and well above a model without the comparison (PD ~0).

    Components (reported when found, not required): the heads that carry the start year to
    the answer, located by patching each from the '01' prompts (:func:`greater_than_heads`). Not
    applicable when the tokenizer cannot write the prompts (:func:`greater_than_not_applicable`
    says what it lacks)."""
    from ..detection import straddle
    from ..tasks.greater_than import greater_than, per_prompt_prob_diff

    title, src = TITLE, SOURCE
    label = model_info(model).label
    why = greater_than_not_applicable(model)
    if why is not None:
        return Detection.not_applicable("greater_than", title, why, source=src, model=label)
    try:
        task = greater_than(model, n=n, seed=seed, name="checkup_greater_than")
    except PromptSetError as e:
        return Detection.not_applicable("greater_than", title, f"the prompts cannot be written for this "
                                        f"tokenizer: {e}", source=src, model=label)
    clean = per_prompt_prob_diff(model, task, activations=activations)
    corrupted = per_prompt_prob_diff(model, task, corrupted=True, activations=activations)
    pd = Measurement.from_values("greater_than PD", clean, model=label)
    drop = Measurement.from_values("greater_than PD drop under '01'", clean - corrupted, model=label)
    share, scores, located, left = greater_than_heads(model, task, clean, min_attention=min_attention,
                                                      min_share=min_share, activations=activations)
    found = pd.lower > min_pd and drop.lower > min_drop
    excluded = pd.upper <= min_pd or drop.upper <= min_drop
    details = ("heads carrying the start year (attention from the end to YY >= "
               f"{min_attention:g} of their off-BOS attention; patched from '01', PD falls by a lower bound > "
               f"{min_share:g} x the drop): " + (", ".join(f"{h} {m.mean:+.3f} [{m.lower:.3f}, {m.upper:.3f}]"
                                                         for h, m in located) or "none")
               + ("" if found or not located else " (not components: the model does not compute greater-than)")
               + (f"; {left} more heads attend to YY as much but were not patched (the {MAX_PATCHED} with the "
                  "largest share were)" if left else ""))
    if not found:
        located = []         # a head that reads the year of a model without the comparison is not its circuit
    return Detection(
        check="greater_than", title=title, source=src, model=label,
        **decide(found, excluded, [straddle(pd, min_pd), straddle(drop, min_drop)]),
        criterion=f"PD lower bound > {min_pd:g} and its drop under the '01' corruption > {min_drop:g} "
                  f"(n={len(task)} prompts, {task.mode} years); absent when either upper bound is at or below",
        measurements=(pd, drop), components=tuple((str(h), m.mean) for h, m in located),
        more=tuple(m for _, m in located),
        heatmaps={"attention end -> YY (share off BOS)": share, "PD carried (patched from '01')": scores},
        details=details)
