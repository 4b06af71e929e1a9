"""The checkup's built-in greater-than and factual-recall checks, against independent computations
on tiny models (the greater-than PD from tasks.greater_than; each head's direct effect on the
answer - foil logit difference from raw TransformerLens hooks)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pytest_circuits import checkup, load_model, metrics, tasks
from pytest_circuits.detection import Detection
from pytest_circuits.errors import CircuitsError, PromptWarning
from pytest_circuits.store import ActivationStore
from pytest_circuits.tasks.facts import load_facts
from pytest_circuits.testing import WORDS, make_tiny_checkpoint


@pytest.fixture(scope="module")
def facts_model(tmp_path_factory):
    """A random tiny Llama whose word-level vocabulary holds every word of the facts set."""
    words = set(WORDS)
    for r in load_facts():
        for text in (r["prompt"], r["answer"], r["foil"]):
            words.update(w for w in re.findall(r"[A-Za-z]+", text))
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("facts") / "ckpt", words=sorted(words), seed=3)
    return load_model(path, cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


def test_greater_than_check_is_the_task_metric(tiny):
    store = ActivationStore()
    det = checkup.detect_greater_than(tiny, n=40, seed=1, activations=store)
    task = tasks.greater_than(tiny, n=40, seed=1)
    pd = tasks.prob_diff(tiny, task)
    drop = pd.paired_difference(tasks.prob_diff(tiny, task, corrupted=True))
    assert det.applicable and det.check == "greater_than"
    got = det.measurement("greater_than PD")
    assert np.allclose(got.array, pd.array, atol=1e-6)
    assert np.allclose(det.measurement("greater_than PD drop under '01'").array, drop.array, atol=1e-6)
    # The verdict is the criterion on the bounds, nothing else.
    want = got.lower > 0.2 and det.measurement("greater_than PD drop under '01'").lower > 0.2
    assert det.found == want
    assert not det.found, "a random tiny model has no greater-than comparison"


def test_factual_recall_not_applicable_without_the_words(tiny):
    det = checkup.detect_factual_recall(tiny)
    assert not det.applicable and "facts" in det.reason and det.status == "n/a"
    assert det.measurements == () and not det.found


def test_factual_recall_heatmap_is_raw_direct_effects(facts_model):
    model = facts_model
    det = checkup.detect_factual_recall(model, n=None, activations=ActivationStore())
    assert det.applicable, det.reason
    with pytest.warns(PromptWarning):        # prompts with words the vocabulary lacks (dropped below)
        ps = tasks.facts(model)
    unk = model.tokenizer.unk_token_id
    keep = [i for i in range(len(ps)) if unk not in ps.tokens[i, : ps.lengths[i]].tolist()]
    ps = ps.subset(keep)
    ld = det.measurement("facts logit difference (answer - foil)")
    assert ld.n == len(ps) >= 20
    assert np.allclose(ld.array, metrics.logit_diff(model, ps).array, atol=1e-4)
    share = det.measurement("facts share answer beats foil")
    assert np.allclose(share.array, (ld.array > 0).astype(float))
    assert det.found == (share.lower > 0.5 and ld.lower > 0)
    # Raw hooks: head (l, h)'s output at the last position, over the final norm's scale, on
    # W_U[:, answer] - W_U[:, foil], averaged over the facts.
    store: dict[str, torch.Tensor] = {}
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)] + ["ln_final.hook_scale"]

    def keep_hook(t, hook):
        store[hook.name] = t.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(ps.tokens, fwd_hooks=[(n, keep_hook) for n in names])
    rows = torch.arange(len(ps))
    last = ps.last
    torch.set_grad_enabled(False)
    dirn = (model.W_U[:, list(ps.answer_ids)] - model.W_U[:, list(ps.foil_ids)]).T.double()   # [n, d]
    scale = store["ln_final.hook_scale"][rows, last, 0].double()
    want = np.zeros((model.cfg.n_layers, model.cfg.n_heads))
    for l in range(model.cfg.n_layers):
        z = store[f"blocks.{l}.attn.hook_z"][rows, last].double()
        for h in range(model.cfg.n_heads):
            out = z[:, h] @ model.W_O[l][h].double()
            want[l, h] = float(((out * dirn).sum(-1) / scale).mean())
    torch.set_grad_enabled(True)
    assert np.allclose(det.heatmaps["direct effect on answer - foil"], want, atol=1e-4)
    top = det.components[0]
    assert top[0] == "L{}H{}".format(*np.unravel_index(np.argmax(want), want.shape))


def test_factual_recall_samples_n_facts(facts_model):
    a = checkup.detect_factual_recall(facts_model, n=30, seed=1)
    b = checkup.detect_factual_recall(facts_model, n=30, seed=1)
    c = checkup.detect_factual_recall(facts_model, n=30, seed=2)
    ld = "facts logit difference (answer - foil)"
    assert a.measurement(ld).n == 30 and a.measurement(ld).values == b.measurement(ld).values
    assert a.measurement(ld).values != c.measurement(ld).values
    with pytest.raises(CircuitsError, match="min_facts"):
        checkup.detect_factual_recall(facts_model, n=5)


def test_run_records_only_headlines_and_names_the_model(tiny):
    from pytest_circuits import measurement as M

    rec: list = []
    M._RECORDERS.append(rec)
    try:
        det = checkup.run("greater_than", tiny, n=10)
    finally:
        M._RECORDERS.remove(rec)
    assert [m.name for m in rec] == [m.name for m in det.measurements]
    assert det.model == "ckpt"
    with pytest.raises(CircuitsError, match="one of induction"):
        checkup.run("nope", tiny)


def test_detection_refuses_contradictions():
    with pytest.raises(CircuitsError, match="needs a reason"):
        Detection("x", "X", applicable=False)
    with pytest.raises(CircuitsError, match="cannot be found"):
        Detection("x", "X", applicable=False, reason="r", found=True)
    d = Detection.not_applicable("x", "X", "no names")
    assert d.status == "n/a" and "no names" in d.summary()
    with pytest.raises(CircuitsError, match="has no measurement"):
        d.measurement("m")
