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
    assert "Clopper-Pearson" in share.provenance["interval"]          # a proportion of facts
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
    # the decided verdict is recorded last, one value: what a baseline compares exactly
    assert rec[-1].name == checkup.VERDICT and rec[-1].values == ((1.0,) if det.found else (0.0,))
    assert det.decided and det.model == "ckpt"
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


# ----------------------------------------------------------------------------- verdicts and n/a reasons
def test_decide_and_straddle():
    from pytest_circuits.detection import decide, straddle
    from pytest_circuits.measurement import Measurement

    m = Measurement.from_values("pd", [0.1, 0.3, 0.2, 0.35, 0.15] * 4)
    assert 0 < m.lower < 0.2 < m.upper < 0.5
    assert "pd 0.22 [" in straddle(m, 0.2) and "straddles the criterion's lower limit 0.2" in straddle(m, 0.2)
    assert straddle(m, 0.0) is None and straddle(m, 0.5) is None
    assert decide(True, False, []) == {"found": True}
    assert decide(False, True, [straddle(m, 0.2)]) == {"found": False}
    undecided = decide(False, False, [straddle(m, 0.2), None])
    assert undecided["undecided"] and undecided["reason"] == straddle(m, 0.2)
    d = Detection("x", "X", found=False, **{k: v for k, v in undecided.items() if k != "found"})
    assert d.status == "undecided" and not d.decided
    with pytest.raises(CircuitsError, match="undecided needs a reason"):
        Detection("x", "X", undecided=True)
    with pytest.raises(CircuitsError, match="undecided"):
        Detection("x", "X", undecided=True, found=True, reason="r")
    assert Detection("x", "X").status == "absent" and Detection("x", "X", found=True).status == "found"


def _vocab_model(tmp_path, words):
    """A zero-weight Llama whose word-level vocabulary is exactly ``words`` (plus specials)."""
    from pytest_circuits.planted import _write_tokenizer
    from pytest_circuits.testing import SPECIALS
    from pytest_circuits.zoo_tasks import _llama

    vocab = SPECIALS + list(words)
    path = tmp_path / "ckpt"
    path.mkdir(parents=True)
    _write_tokenizer(path, vocab)
    _llama(vocab, d_model=16, n_heads=2, n_kv=2).save_pretrained(str(path))
    return load_model(str(path), device="cpu", cache_dir=tmp_path / "cache")


def test_greater_than_not_applicable_says_what_the_vocabulary_lacks(tmp_path):
    """In the model's terms, never as a usage error (no "nouns=[...] is not valid")."""
    words = ["The", "lasted", "from", "the", "year", "to", "war"]
    no_digits = _vocab_model(tmp_path / "a", words)
    det = checkup.detect_greater_than(no_digits)
    assert det.status == "n/a" and "writes the year ' 1732' as" in det.reason
    assert "has no token for the digit(s) 0, 1, 2" in det.reason and "is not valid" not in det.reason
    no_nouns = _vocab_model(tmp_path / "b", words[:-1] + [str(d) for d in range(10)])
    det = checkup.detect_greater_than(no_nouns)
    assert det.status == "n/a" and det.reason.startswith("none of the 20 event nouns of the template (war, ")
    assert checkup.greater_than_not_applicable(no_nouns, nouns=["war"]) is not None


def test_greater_than_heads_are_located_by_raw_patching(tmp_path):
    """On the zoo's greater-than model: the located head L1H3 and its score, the fall of PD when its
    output is patched from the '01' prompts, recomputed with raw hooks and PD written out here."""
    from pytest_circuits import zoo_tasks

    model = load_model(str(zoo_tasks.build_greater_than(tmp_path / "gt")), device="cpu", cache_dir=tmp_path / "c")
    det = checkup.detect_greater_than(model, n=40, seed=5, activations=ActivationStore())
    assert det.found and [c for c, _ in det.components] == ["L1H3"]
    got = det.measurement("greater_than PD carried by L1H3")
    assert got.n == checkup.PATCH_PROMPTS == 32                 # patched on the first 32 of the 40 prompts
    task = tasks.greater_than(model, n=40, seed=5, name="checkup_greater_than")
    digits = list(task.digit_ids)
    _, corrupt = model.run_with_cache(task.second.corrupted.tokens)

    def patch(z, hook):
        z = z.clone()
        z[:, :, 3] = corrupt["blocks.1.attn.hook_z"][:, :, 3]
        return z

    def pd(logits):
        out = []
        for i, yy in enumerate(task.yy):
            last = task.second.lengths[i] - 1
            p1 = logits[i, last - 1].double().softmax(-1)[digits]
            p2 = logits[i, last].double().softmax(-1)[digits]
            a, b = divmod(yy, 10)
            out.append(float(p1[a + 1:].sum() + p1[a] * p2[b + 1:].sum() - p1[:a].sum() - p1[a] * p2[:b + 1].sum()))
        return np.array(out)

    with torch.no_grad():
        clean = pd(model(task.second.tokens))
        patched = pd(model.run_with_hooks(task.second.tokens, fwd_hooks=[("blocks.1.attn.hook_z", patch)]))
    assert np.allclose(got.values, (clean - patched)[:32], atol=1e-5)
    assert np.allclose(det.measurement("greater_than PD").values, clean, atol=1e-5)
    assert got.lower > checkup.MIN_HEAD_SHARE * det.measurement("greater_than PD drop under '01'").mean
    assert det.heatmaps["attention end -> YY (share off BOS)"][1, 3] > 0.95
