"""Every intervention kind x every positions choice x three architectures, each cell
checked against an independent hand computation.

The hand side uses raw TransformerLens hooks only (``model.run_with_hooks`` on the whole
right-padded batch): it reads the source activations (clean, corrupted, reference, or a
run with layer 0's heads zeroed), builds the replacement tensor by hand (the derangement
row of a resampled source, the reference mean over real tokens, the per-position mean
over the prompts that reach each position, ...), writes it into the hook by hand, and
reads the final residual stream and the last-position logits. The store side is
``ActivationStore.get(..., intervention)`` in batches of 2 (so replacements must follow
their rows) and resumes the forward at the intervened layer.

Architectures: the random tiny Llama, a GPT-2 with non-zero biases and learned
positions, and a grouped-query-attention Llama (2 key/value heads for 4 heads).
"""

from __future__ import annotations

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.errors import NoOpInterventionWarning

from pytest_circuits import architectures as A

ARCHS = A.families()
POSITIONS = [None, "last", (1, 3)]
HEAD = 1                     # the replaced head of layer 1 (L1H1), together with mlp0
SEED = 2

SAME = ["the cat sat on the mat", "the dog sat on the bag", "a king went to the city",
        "the queen said the ball was", "John gave Mary the cat ."]
SAME_CORRUPTED = ["the dog sat on a mat", "a cat went to the bag", "the king sat on a city",
                  "a queen gave the ball to", "Mary gave John the dog !"]
VARIED = ["the cat sat", "the dog sat on the mat", "a king went to the city of Rome",
          "the queen said", "when John and Mary went to the store"]
VARIED_CORRUPTED = ["a dog sat on", "the cat", "a queen went to the city of Paris", "the king said the",
                    "when Mary and John went to a store"]
REFERENCE = ["the cat", "when John and Mary went to the store", "the king of France"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request, arch_model):
    return arch_model(request.param, seed=5)


@pytest.fixture(scope="module")
def sets(model):
    same = PromptSet.build(model, SAME, corrupted=SAME_CORRUPTED, name="same")
    varied = PromptSet.build(model, VARIED, corrupted=VARIED_CORRUPTED, align=False, name="varied")
    assert len(set(same.lengths)) == 1 and len(set(varied.lengths)) > 2
    assert varied.corrupted.lengths != varied.lengths        # "last" must follow each set's own last
    return {"same": same, "varied": varied, "ref": PromptSet.build(model, REFERENCE, name="ref")}


@pytest.fixture(scope="module")
def store():
    return ActivationStore(batch_size=2)


# -- the hand side: raw hooks only --------------------------------------------------------
def raw(model, tokens, replace=None, read=()):
    """One forward of ``tokens`` with ``replace`` ({hook: fn(t) -> t}) and the values of
    ``read`` hooks (as they leave the replacement) and the logits."""
    got = {}

    def keep(name):
        def hook(t, hook=None):
            got[name] = t.detach().clone()
        return hook

    fwd = [(name, (lambda f: lambda t, hook: f(t.clone()))(fn)) for name, fn in (replace or {}).items()]
    fwd += [(name, keep(name)) for name in read]
    with torch.no_grad():
        got["logits"] = model.run_with_hooks(tokens, fwd_hooks=fwd).detach()
    return got


def hooks_of(model):
    return {"mlp": H.mlp_out(0), "head": H.z(1)}


def selection(ps, positions, width):
    """[n, width] bool: the replaced positions of each prompt."""
    sel = torch.zeros(len(ps), width, dtype=torch.bool)
    for i, n in enumerate(ps.lengths):
        if positions is None:
            sel[i, :] = True
        elif positions == "last":
            sel[i, n - 1] = True
        else:
            sel[i, list(positions)] = True
    return sel


def real_mask(ps):
    return torch.arange(ps.tokens.shape[1]).unsqueeze(0) < torch.tensor(ps.lengths).unsqueeze(1)


def source_by_hand(model, kind, ps, ref, positions, name, slot):
    """The value each (prompt, position) is given, ``[n, width, ...]`` (sliced to ``slot``)."""
    width = ps.tokens.shape[1]

    def clean_of(s, hook=name):
        return raw(model, s.tokens, read=[hook])[hook][(slice(None), slice(None)) + slot].double()

    clean = clean_of(ps)
    if kind == "zero":
        return torch.zeros_like(clean)
    if kind == "mean":
        r = clean_of(ref)
        return r[real_mask(ref)].mean(0).expand_as(clean).clone()
    if kind == "position_mean":       # reference: the prompts being run
        out = torch.zeros_like(clean)
        for p in range(width):
            have = [i for i, n in enumerate(ps.lengths) if n > p]
            if have:
                out[:, p] = clean[have, p].mean(0)
        return out
    if kind in ("resample", "resample_distinct"):
        perm = I.derangement(len(ps), SEED)
        assert not (perm == torch.arange(len(ps))).any()
        if positions == "last":      # the source prompt's own last token, at this prompt's last
            out = clean.clone()
            for i, j in enumerate(perm.tolist()):
                out[i, ps.lengths[i] - 1] = clean[j, ps.lengths[j] - 1]
        else:
            out = clean[perm]
        if kind == "resample_distinct":
            # these prompts differ, so every derangement source's value differs from the prompt's
            # own at the replaced positions (checked here): resample_distinct keeps them all
            sel = selection(ps, positions, width)
            for i in range(len(ps)):
                a, b = clean[i][sel[i]], out[i][sel[i]]
                assert (a - b).abs().max() > 1e-3 * torch.maximum(a.abs().max(), b.abs().max())
        return out
    if kind == "patch":
        corr = clean_of(ps.corrupted)
        if positions == "last":
            out = clean.clone()
            for i, n in enumerate(ps.lengths):
                out[i, n - 1] = corr[i, ps.corrupted.lengths[i] - 1]
            return out
        return corr[:, :width]
    if kind == "freeze":             # the clean value (mlp0 is zeroed upstream)
        return clean
    assert kind == "rerouted"        # the value in the run with attention layer 0 zeroed
    return raw(model, ps.tokens, {H.z(0): lambda t: _set(t, slice(None), 0.0)},
               read=[name])[name][(slice(None), slice(None)) + slot].double()


def _set(t, index, value):
    t[index] = value
    return t


def intervention(model, kind, positions, ref):
    if kind in I.ABLATION_KINDS:
        return I.ablate(model, ["mlp0", f"L1H{HEAD}"], kind, positions=positions,
                        reference=ref if kind == "mean" else None, seed=SEED)
    if kind == "patch":
        return I.patch(model, ["mlp0", f"L1H{HEAD}"], positions=positions)
    if kind == "freeze":
        return I.ablate(model, "mlp0", "zero") + I.freeze(model, f"L1H{HEAD}", positions=positions)
    return I.reroute(model, f"L1H{HEAD}", via=I.ablate(model, "attn0", "zero"), positions=positions)


def by_hand(model, kind, positions, ps, ref):
    """Final residual stream and last-position logits of the intervened run, by hand."""
    hk = hooks_of(model)
    width = ps.tokens.shape[1]
    sel = selection(ps, positions, width)
    replace = {}
    if kind in I.ABLATION_KINDS + ("patch",):
        mlp_src = source_by_hand(model, kind, ps, ref, positions, hk["mlp"], ())
        replace[hk["mlp"]] = lambda t: torch.where(sel.unsqueeze(-1), mlp_src.to(t.dtype), t)
    elif kind == "freeze":
        replace[hk["mlp"]] = lambda t: torch.zeros_like(t)
    head_src = source_by_hand(model, kind, ps, ref, positions, hk["head"], (HEAD,))

    def head(t):
        t[:, :, HEAD] = torch.where(sel.unsqueeze(-1), head_src.to(t.dtype), t[:, :, HEAD])
        return t

    replace[hk["head"]] = head
    last = H.resid_post(model.cfg.n_layers - 1)
    got = raw(model, ps.tokens, replace, read=[last, hk["head"]])
    rows = torch.arange(len(ps))
    return {"resid": got[last].double(), "logits": got["logits"][rows, ps.last].double(),
            "head": got[hk["head"]][:, :, HEAD].double()}


@pytest.mark.filterwarnings("error::pytest_circuits.errors.NoOpInterventionWarning")
@pytest.mark.parametrize("positions", POSITIONS, ids=["all", "last", "pos1,3"])
@pytest.mark.parametrize("kind", I.KINDS)
def test_every_kind_at_every_position_matches_raw_hooks(model, sets, store, kind, positions):
    ps = sets["varied" if positions == "last" else "same"]
    ref = sets["ref"]
    iv = intervention(model, kind, positions, ref)
    last = H.resid_post(model.cfg.n_layers - 1)
    got = store.get(model, ps, [H.LOGITS_LAST, last, H.z(1)], iv)
    want = by_hand(model, kind, positions, ps, ref)
    real = real_mask(ps)
    torch.testing.assert_close(got[H.LOGITS_LAST].double(), want["logits"], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[last].double()[real], want["resid"][real], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[H.z(1)][:, :, HEAD].double()[real], want["head"][real], atol=2e-5, rtol=1e-5)
    # The intervention did something (the hand side is not the clean run) well above the
    # tolerance of the comparisons: a check that cannot pass by replacing nothing on both sides.
    clean = store.get(model, ps, [last])[last].double()
    assert float((clean[real] - want["resid"][real]).abs().max()) > 1e-4


# -- no-op ablations are flagged -----------------------------------------------------------
def test_resample_of_identical_sources_is_flagged(model, store):
    same = PromptSet.build(model, ["the cat sat on the mat"] * 4, name="identical")
    with pytest.warns(NoOpInterventionWarning, match=r"resample: every prompt's source output for L1H1 "
                                                     r"at the last position equals its own"):
        store.get(model, same, [H.LOGITS_LAST], I.ablate(model, "L1H1", "resample", positions="last"))


def test_resample_where_only_the_last_token_agrees_is_not_flagged(model, store, sets):
    # Same last token, different contexts: layer-1 outputs differ, the ablation does something.
    ps = PromptSet.build(model, ["the cat sat on the mat", "a dog went to the mat", "the king said the mat"],
                         name="same-last-token")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", NoOpInterventionWarning)
        store.get(model, ps, [H.LOGITS_LAST], I.ablate(model, "L1H1", "resample", positions="last"))


def test_zero_ablation_of_an_output_that_is_already_zero_is_flagged(model, sets):
    store = ActivationStore(batch_size=2)
    ps = sets["same"]
    zero_first = I.ablate(model, "L1H1", "zero")
    # Zeroing the same head twice: the second replacement finds 0 already.
    with pytest.warns(NoOpInterventionWarning, match=r"zero ablation of L1H1 at every position: its output "
                                                     r"there is already 0 on every prompt"):
        store.get(model, ps, [H.LOGITS_LAST], zero_first + I.ablate(model, "L1H1", "zero"))


def test_mean_over_a_reference_equal_to_the_prompt_is_flagged(model):
    one = PromptSet.build(model, ["the cat sat on the mat"] * 3, name="one-prompt-thrice")
    ref = PromptSet.build(model, ["the cat sat on the mat"], name="itself")
    with pytest.warns(NoOpInterventionWarning, match="position_mean ablation of mlp0"):
        ActivationStore().get(model, one, [H.LOGITS_LAST], I.ablate(model, "mlp0", "position_mean", reference=ref,
                                                                    positions="last"))
