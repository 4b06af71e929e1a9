"""Edges (#26): the graph, exact edge patching, EAP / EAP-IG, verification and edge circuits.

Exact patching is checked against identities (a prompt whose corrupted twin is itself changes
nothing; an edge into the logits is path patching to the logits), attribution against finite
differences of exact patching, grouped-query attention against its shared key heads, and the
whole against a hand-built model whose edges are known (planted.build_edges)."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pytest
import torch

from pytest_circuits import ActivationStore, planted
from pytest_circuits import hooks as H
from pytest_circuits.components import MLP, Embed, Head
from pytest_circuits.errors import CircuitsError, CircuitsWarning, ComponentError
from pytest_circuits.models import info as model_info
from pytest_circuits.models import load_model
from pytest_circuits.scores import ComponentScores
from pytest_circuits.techniques import circuits as C
from pytest_circuits.techniques import edges as E
from pytest_circuits.techniques import patching as P

POOL = ["the", "a", "cat", "dog", "sat", "on", "mat", "John", "Mary", "went", "to", "store", "gave", "ball",
        "bag", "city", "river", "king", "queen"]


def pairs(seed: int, n: int, same: int = 0) -> list[tuple[str, str]]:
    """``n`` seeded prompt pairs of 6 words differing in word 2; the last ``same`` pairs are a
    prompt and itself."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(POOL) for _ in range(6)]
        other = list(words)
        if i < n - same:
            other[2] = rng.choice([w for w in POOL if w != words[2]])
        out.append((" ".join(words), " ".join(other)))
    return out


@pytest.fixture(scope="module", params=["gpt2", "gqa"])
def model_task(request, arch_model, logit_diff):
    model = arch_model(request.param)
    return model, logit_diff(model, pairs(seed=3, n=8, same=2))


@pytest.fixture(scope="module", params=["gpt2", "gqa", "neox"])
def model_task64(request, arch_checkpoint, tmp_path_factory, logit_diff):
    """As model_task in float64: finite differences of the metric need more than float32's digits."""
    model = load_model(str(arch_checkpoint(request.param)), cache_dir=tmp_path_factory.mktemp("edges64"),
                       device="cpu", dtype="float64")
    return model, logit_diff(model, pairs(seed=3, n=8, same=2))


def _count(L: int, n_heads: int, parallel: bool) -> int:
    """Edges of a model, counted by receiver: a head input of layer l reads the embedding and
    every writer of earlier layers; an MLP also its own layer's heads (sequential blocks)."""
    total = 1 + L * (n_heads + 1)                                   # the logits
    for l in range(L):
        upstream = 1 + l * (n_heads + 1)
        total += 3 * n_heads * upstream + upstream + (0 if parallel else n_heads)
    return total


# -- the graph ------------------------------------------------------------------------------

@pytest.mark.parametrize("family, parallel", [("gpt2", False), ("neox", True)])
def test_the_graph_has_every_edge_once_and_spells_it_back(arch_model, family, parallel):
    model = arch_model(family)
    g = E.graph(model)
    assert E.parallel_blocks(model) is parallel
    assert len(g) == len(set(g)) == _count(model.cfg.n_layers, model.cfg.n_heads, parallel)
    for e in g:
        assert E.Edge.parse(str(e), model) == e
    names = {str(e) for e in g}
    assert {"embed->L0H0.q", "L0H1->L1H0.k", "mlp0->L1H2.v", "embed->mlp1", "L1H3->logits"} <= names
    assert ("L0H0->mlp0" in names) is (not parallel)     # parallel blocks: attention and MLP read one residual
    assert not any(e.startswith("L1") and "->L1H" in e for e in names)      # never into the same layer's heads


def test_bad_edges_are_refused_with_what_would_be_valid(arch_model, logit_diff):
    gpt2, neox = arch_model("gpt2"), arch_model("neox")
    for text, words in [("L0H1-L1H0.q", "sender->receiver"), ("L0H1->L1H0", "'.k' or '.v'"),
                        ("L0H1->mlp1.q", "an MLP has one input"), ("L0H1->L1H0.x", "component")]:
        with pytest.raises(ComponentError, match="edge|component|part") as err:
            E.Edge.parse(text, gpt2)
        assert words in str(err.value), str(err.value)
    with pytest.raises(ComponentError, match="reads the residual stream before L1H0 writes"):
        E.Edge.parse("L1H0->L0H1.q", gpt2)
    with pytest.raises(ComponentError, match="reads the residual stream before"):
        E.Edge.parse("L1H0->L1H1.v", gpt2)
    with pytest.raises(ComponentError, match="layer must be in 0..1"):
        E.Edge.parse("L5H0->logits", gpt2)
    with pytest.raises(ComponentError, match="parallel blocks"):
        E.Edge.parse("L0H0->mlp0", neox)
    assert E.Edge.parse("L0H0->mlp0", gpt2).receiver == MLP(0)
    with pytest.raises(CircuitsError, match="method"):
        E.edge_attribution(gpt2, logit_diff(gpt2, pairs(0, 2)), method="ig")
    with pytest.raises(CircuitsError, match="steps"):
        E.edge_attribution(gpt2, logit_diff(gpt2, pairs(0, 2)), steps=4)


# -- exact edge patching -----------------------------------------------------------------------

@pytest.mark.slow
def test_exact_edge_patching_keeps_its_identities(model_task):
    """Every edge: a prompt whose corrupted twin is itself changes by nothing; an edge into the
    logits equals path patching of its sender to the logits (the sender's direct path alone)."""
    model, task = model_task
    store = ActivationStore(batch_size=8)
    sw = E.edge_patch(model, task, activations=store)
    assert set(sw.components) == set(E.graph(model))
    vals = sw.values                                               # [edges, prompts]
    scale = float(vals.abs().max())
    assert scale > 1e-3                                            # the other prompts do change
    assert float(vals[:, -2:].abs().max()) <= 1e-5 * scale         # the two prompts equal to their twins
    for s in E.senders(model):
        if isinstance(s, Embed):
            continue
        want = P.path_patch(model, task, s, activations=store).array
        # float32 logits of size ~1: differences of a few 1e-8 are rounding
        np.testing.assert_allclose(sw.of(f"{s}->logits").numpy(), want, atol=1e-6, rtol=1e-3)
    # the table and the normalized effects read by edge spelling
    e = sw.top(1, order="abs")[0].component
    assert sw.normalized(str(e)) == pytest.approx(float(sw.of(e).mean()) / sw.scale)
    assert str(e) in sw.table(3)


def test_a_key_edge_into_a_gqa_head_changes_that_head_alone(arch_model, logit_diff):
    """Heads 0 and 1 share key/value head 0: the side run (the residual edited, q held) changes
    both, the patched run only the receiver."""
    model = arch_model("gqa")
    assert model.cfg.n_key_value_heads == 2 and model.cfg.n_heads == 4
    task = logit_diff(model, pairs(seed=5, n=4))
    store = ActivationStore()
    ps = task.prompts
    clean = store.get(model, ps, [H.z(1)])[H.z(1)]
    for part in ("k", "v"):
        iv = E.edge_intervention(model, f"L0H2->L1H1.{part}")
        patched = store.get(model, ps, [H.z(1)], iv)[H.z(1)]
        side = store.get(model, ps, [H.z(1)], iv.items[0].via)[H.z(1)]
        change = (patched - clean).abs().amax(dim=(0, 1, 3))      # per head
        side_change = (side - clean).abs().amax(dim=(0, 1, 3))
        assert float(change[1]) > 1e-4
        assert float(change[0]) == float(change[2]) == float(change[3]) == 0.0
        assert float(side_change[0]) > 1e-4          # L1H0 reads the same, changed key/value head in the side run
        torch.testing.assert_close(patched[:, :, 1], side[:, :, 1])


# -- attribution ------------------------------------------------------------------------------

def test_eap_is_the_derivative_of_exact_edge_patching(model_task64):
    """EAP's score of an edge is d/de m(the edge patched a fraction e of the way) at e = 0:
    compared, per prompt, with a central finite difference of exact edge patching (the two are
    computed by different code: gradients in the batch's graph, and hooks only)."""
    model, task = model_task64
    assert model.cfg.dtype == torch.float64
    store = ActivationStore(batch_size=8)
    rng = random.Random(0)
    by_kind: dict = {}
    for e in E.graph(model):
        by_kind.setdefault(e.part or ("logits" if e.receiver is None else "mlp"), []).append(e)
    chosen = [e for kind in sorted(by_kind) for e in rng.sample(by_kind[kind], min(3, len(by_kind[kind])))]
    scores = E.edge_attribution(model, task, edges=chosen)
    assert scores.attribution == "eap" and scores.steps == 1 and scores.values.shape == (len(chosen), 8)
    eps = 1e-2      # rotary families compute in float32 somewhere: a smaller step drowns in its rounding
    clean = task.scores(model, activations=store).double()
    size = float(scores.values.abs().max())
    for e in chosen:
        up = task.scores(model, intervention=E.edge_intervention(model, e, scale=eps), activations=store).double()
        down = task.scores(model, intervention=E.edge_intervention(model, e, scale=-eps), activations=store).double()
        fd = ((up - down) / (2 * eps)).numpy()
        np.testing.assert_allclose(scores.of(e).numpy(), fd, rtol=1e-2, atol=2e-3 * size, err_msg=str(e))
        assert np.allclose((up - clean).numpy(), 0, atol=1e-7) or np.abs(fd).max() > 0
    assert float(scores.values[:, -2:].abs().max()) == 0.0             # no sender differs on those prompts


def test_eap_ig_one_step_is_eap_and_many_steps_integrate_to_the_logits(arch_model, logit_diff):
    """Into the logits every sender moves the final residual along one straight line, so the
    EAP-IG scores of all edges into the logits add up to m(corrupted) - m(clean) as the steps
    grow (a left Riemann sum of the gradient along the line)."""
    model = arch_model("gpt2")
    task = logit_diff(model, pairs(seed=7, n=3))
    eap = E.edge_attribution(model, task, edges=[e for e in E.graph(model) if e.receiver is None or e.receiver.layer == 1])
    one = E.edge_attribution(model, task, method="eap-ig", steps=1, edges=eap.edges)
    assert torch.equal(eap.values, one.values)
    # a ComponentScores keyed by edge: of() is the edge's row (its spelling reads the same row),
    # top(order="abs") the ranking by |mean| with ties in edge order (what verify() patches)
    assert isinstance(eap, ComponentScores) and eap.edges == eap.components and eap.n == 3
    raw = eap.values.numpy()
    for i, e in enumerate(eap.edges):
        assert torch.equal(eap.of(e), eap.values[i]) and torch.equal(eap.of(str(e)), eap.values[i])
    means = raw.mean(1)
    by_abs = sorted(range(len(eap.edges)), key=lambda i: (-abs(means[i]), i))
    assert [r.component for r in eap.top(5, order="abs")] == [eap.edges[i] for i in by_abs[:5]]
    m = eap.measure(str(eap.edges[by_abs[0]]), record=False)
    assert m.name == f"eap[{eap.edges[by_abs[0]]}]" and m.values == tuple(raw[by_abs[0]].tolist())
    assert one.title == "EAP-IG scores (1 step)" and one.attribution == "eap-ig"
    with pytest.raises(ComponentError):
        eap.of("L1H0->L1H0.q")                                    # not an edge of the graph
    into = [e for e in E.graph(model) if e.receiver is None]
    total = (task.scores(model, corrupted=True) - task.scores(model)).double().numpy()
    errors = {}
    for steps in (2, 8):
        ig = E.edge_attribution(model, task, method="eap-ig", steps=steps, edges=into)
        errors[steps] = np.abs(ig.values.numpy().sum(0) - total).max()
    first = np.abs(eap.values.numpy()[[eap._index[e] for e in into]].sum(0) - total).max()
    print(f"EAP-IG into the logits: |sum - total| max {errors} (EAP {first:.3g}), |total| max "
          f"{np.abs(total).max():.3g}")
    assert errors[8] <= 0.05 * np.abs(total).max(), (errors, first, total)
    assert errors[8] < errors[2] and errors[8] < first


# -- batched attribution against one prompt at a time ---------------------------------------------
# The reference: edge attribution one prompt at a time, as edges.py computed it before it ran
# prompts in batches (per prompt and step one forward and backward of the whole model, then per
# layer a side forward of four copies of the prompt from the tokens, one VJP per head).

class _RefStop(Exception):
    pass


def _ref_run(model: Any, tokens: Any, hooks: list) -> Any:
    try:
        with model.hooks(fwd_hooks=hooks):
            return model(tokens)
    except _RefStop:
        return None


def _ref_receiver_grads(model, tokens, metric, targets, layers, seen_metric):
    L, n_heads = model.cfg.n_layers, model.cfg.n_heads
    par = E.parallel_blocks(model)
    kept: dict = {}
    seen: dict = {}

    def set_leaf(name):
        def fn(t, hook=None):
            leaf = targets[name].to(t.device, t.dtype).clone().requires_grad_(True)
            kept[name] = leaf
            return leaf
        return fn

    def through(name):
        def fn(t, hook=None):
            out = t - t.detach() + targets[name].to(t.device, t.dtype)
            kept[name] = out
            return out
        return fn

    def look(name):
        def fn(t, hook=None):
            seen[name] = t
        return fn

    hooks: list = [(H.EMBED, set_leaf(H.EMBED))]
    if H.POS_EMBED in targets:
        hooks.append((H.POS_EMBED, lambda t, hook=None: targets[H.POS_EMBED].to(t.device, t.dtype)))
    for l in range(L):
        hooks += [(H.z(l), through(H.z(l))), (H.mlp_out(l), through(H.mlp_out(l))),
                  (H.resid_pre(l), look(H.resid_pre(l)))]
        if not par:
            hooks.append((H.resid_mid(l), look(H.resid_mid(l))))
    hooks.append((H.resid_post(L - 1), look(H.resid_post(L - 1))))
    with torch.enable_grad():
        logits = _ref_run(model, tokens, hooks)
        m = metric(logits)
        if seen_metric is not None:
            seen_metric.append(float(m.detach()))
        names = [H.z(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)]
        got = torch.autograd.grad(m, [kept[n] for n in names] + [seen[H.resid_post(L - 1)]], allow_unused=True)
    grads = dict(zip(names + ["final"], got))
    out: dict = {}
    final = grads["final"]
    out[(None, None)] = (final[0] if final is not None else torch.zeros_like(seen[H.resid_post(L - 1)][0])
                         ).detach().to("cpu", torch.float64)
    reps = tokens.expand(4, -1)
    for l in sorted(set(layers)):
        x_pre = seen[H.resid_pre(l)].detach()
        x_mlp = x_pre if par else seen[H.resid_mid(l)].detach()
        leaves = [x_pre.clone().requires_grad_(True) for _ in range(3)] + [x_mlp.clone().requires_grad_(True)]
        side: dict = {}

        def inputs(t, hook=None):
            fourth = leaves[3] if par else x_pre
            return torch.cat(leaves[:3] + [fourth]).to(t.dtype)

        def one(copy):
            def fn(t, hook=None):
                return t[copy: copy + 1].expand_as(t).contiguous()
            return fn

        def take_z(t, hook=None):
            side["z"] = t[0]

        def mid(t, hook=None):
            return torch.cat([t[:3], leaves[3].to(t.dtype)])

        def take_mlp(t, hook=None):
            side["mlp"] = t[3]
            raise _RefStop

        side_hooks = [(H.resid_pre(l), inputs), (E._qkv(l, "q"), one(0)), (E._qkv(l, "k"), one(1)),
                      (E._qkv(l, "v"), one(2)), (H.z(l), take_z), (H.mlp_out(l), take_mlp)]
        if not par:
            side_hooks.append((H.resid_mid(l), mid))
        with torch.enable_grad():
            _ref_run(model, reps, side_hooks)
            gz = grads[H.z(l)]
            for h in range(n_heads):
                parts = (None,) * 3 if gz is None else torch.autograd.grad(
                    side["z"][:, h], leaves[:3], grad_outputs=gz[0, :, h], retain_graph=True, allow_unused=True)
                for p, g in zip(E.PARTS, parts):
                    out[(Head(l, h), p)] = (torch.zeros_like(x_pre[0]) if g is None else g[0]).detach().to(
                        "cpu", torch.float64)
            gm = grads[H.mlp_out(l)]
            g = None if gm is None else torch.autograd.grad(side["mlp"], leaves[3], grad_outputs=gm[0],
                                                            allow_unused=True)[0]
            out[(MLP(l), None)] = (torch.zeros_like(x_pre[0]) if g is None else g[0]).detach().to("cpu", torch.float64)
    return out


def one_at_a_time(model, task, edges=None, steps: int = 1):
    """``(values [E, n], totals [n], clean [n])`` of EAP (``steps=1``) or EAP-IG, one prompt at a time."""
    es = E.as_edges(model, edges)
    ps = task.prompts
    n = len(ps)
    store = ActivationStore()
    L = model.cfg.n_layers
    names = [H.EMBED] + ([H.POS_EMBED] if len(E._sender_hooks(model, Embed())) > 1 else []) \
        + [H.z(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)]
    clean = store.get(model, ps, names)
    corr = store.get(model, ps.corrupted, names)
    deltas = {s: E.sender_delta(model, ps, s, store) for s in E.senders(model)}
    device = model_info(model).device
    layers = {e.receiver.layer for e in es if e.receiver is not None}
    scores = np.zeros((len(es), n))
    totals = np.zeros(n)
    at_clean_all: list = []
    for i in range(n):
        length = ps.lengths[i]
        tokens = ps.tokens[i: i + 1, :length].to(device)
        metric = task.logit_metric(i)
        acc: dict = {}
        at_clean: list = []
        for k in range(steps):
            a = k / steps
            targets = {nm: (clean[nm][i: i + 1, :length].double() * (1 - a) + corr[nm][i: i + 1, :length].double() * a)
                       for nm in names}
            g = _ref_receiver_grads(model, tokens, metric, targets, layers, at_clean if k == 0 else None)
            for key, v in g.items():
                acc[key] = acc[key] + v if key in acc else v
        for j, e in enumerate(es):
            grad = acc[(e.receiver, e.part)] / steps
            scores[j, i] = float((deltas[e.sender][i, :length] * grad).sum())
        fixed = [(nm, (lambda t, hook=None, v=corr[nm][i: i + 1, :length]: v.to(t.device, t.dtype))) for nm in names]
        with torch.no_grad():
            totals[i] = float(metric(_ref_run(model, tokens, fixed))) - at_clean[0]
        at_clean_all.append(at_clean[0])
    return scores, totals, np.asarray(at_clean_all)


def unequal_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    """Seeded prompt pairs of 3 to 9 words differing in one word; the last pair a prompt and itself."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(POOL) for _ in range(3 + (i * 5) % 7)]
        other = list(words)
        if i < n - 1:
            at = rng.randrange(len(words))
            other[at] = rng.choice([w for w in POOL if w != words[at]])
        out.append((" ".join(words), " ".join(other)))
    return out


# every family whose edges are not refused: rotary, QK-norm, ALiBi, a sliding window, parallel
# blocks, fused projections, experts (the families outside CORE_FAMILIES run in the matrix lane)
EDGE_FAMILIES = ["gpt2", "gqa", "neox", "llama", "gptj", "mistral", "qwen2", "qwen3", "gemma", "phi3", "mixtral",
                 "qwen3moe", "bloom"]


@pytest.mark.parametrize("family, sizes", [(f, {}) for f in EDGE_FAMILIES]
                         + [("gqa", {"n_layers": 3, "n_heads": 6, "n_kv_heads": 2, "d_model": 96})],
                         ids=EDGE_FAMILIES + ["gqa-groups-of-3"])
def test_batched_attribution_equals_one_prompt_at_a_time(arch_model, family, sizes, logit_diff):
    """Every edge, EAP and EAP-IG: prompts of unequal length in batches of 3 (right-padded, the
    first two batches padded) give each prompt's scores, totals and clean metric as the one-at-a-time
    reference does, to float32 rounding. The reference takes each head's input gradient by its own
    side forward and vector-Jacobian product (the method before the gradients were taken in the
    batch's own graph), so the two share no gradient code beyond autograd."""
    model = arch_model(family, **sizes)
    words = {"answer": " Paris", "foil": " Rome"} if family == "qwen2" else {}     # byte-level BPE: the space is the word's
    task = logit_diff(model, unequal_pairs(seed=11, n=8), **words)
    lengths = task.prompts.lengths
    assert len(set(lengths)) >= 4, lengths
    store = ActivationStore(batch_size=3)
    batches = E._attribution_batches(model, task.prompts, len(lengths), store, 1)
    assert len(batches) == 3 and all(len({lengths[int(i)] for i in b}) > 1 for b in batches[:2])
    for method, steps in (("eap", 1), ("eap-ig", 2)):
        began = time.perf_counter()
        got = E.edge_attribution(model, task, method=method, steps=steps, activations=store)
        # the call's own seconds: positive and within the wall time around it
        assert 0 < got.seconds <= time.perf_counter() - began, got.seconds
        want, totals, clean = one_at_a_time(model, task, steps=steps)
        values = got.values.numpy()
        assert got.edges == E.graph(model) and values.shape == want.shape
        scale = np.abs(want).max()
        assert scale > 1e-3
        diff = np.abs(values - want).max()
        print(f"{family} {method}: {len(got.edges)} edges x {len(lengths)} prompts, max |batched - one at a time| "
              f"{diff:.2e} (max |score| {scale:.3g})")
        assert diff <= 1e-5 * scale, (diff, scale)
        assert not values[:, -1].any()          # the prompt equal to its twin: exactly 0 on every edge
        # the metric's own float32 rounding, at the size of the metric (totals are differences of it)
        np.testing.assert_allclose(got.clean, clean, rtol=0, atol=1e-5 * np.abs(clean).max())
        np.testing.assert_allclose(got.totals, totals, rtol=0, atol=1e-5 * np.abs(clean).max())


# -- planted ground truth ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted_models(tmp_path_factory, logit_diff):
    out = {}
    for control in (False, True):
        root = tmp_path_factory.mktemp("edges-control" if control else "edges")
        model = load_model(str(planted.build_edges(root / "ckpt", control=control)), cache_dir=root / "cache",
                           device="cpu")
        out[control] = (model, logit_diff(model, planted.EDGE_PROMPTS, planted.ANSWER, planted.FOIL,
                                         name="planted_edges"))
    return out


@pytest.mark.slow
def test_planted_edges_are_recovered_and_the_decoy_is_flagged(planted_models):
    model, task = planted_models[False]
    store = ActivationStore()
    sw = E.edge_patch(model, task, activations=store)
    found = {str(e) for e in sw.significant(0.05)}
    assert found == set(planted.EDGES["planted"]), sw.table(8)
    # value only: the relay's edges into the reader's query and key do nothing
    for part in ("q", "k"):
        assert abs(sw.normalized(f"L0H0->L1H0.{part}")) < 1e-6
    decoy = planted.EDGES["decoy"]
    assert abs(sw.normalized(decoy)) < 0.01
    scores = E.edge_attribution(model, task)
    assert abs(float(scores.of(decoy).mean())) > 0.2 * abs(sw.scale)            # a first-order estimate calls it large
    agreement = scores.agreement(sw, k=3)
    assert agreement.recall_at_k == 1.0
    check = E.verify(model, task, scores, k=6, activations=store)
    assert E.Edge.parse(decoy) in check.flagged
    assert set(map(str, check.confirmed)) >= set(planted.EDGES["planted"])
    for c in check.checks:
        if c.problem:
            assert abs(c.exact) < 0.01 * abs(sw.scale), c      # only edges whose exact effect is ~0
    assert "magnitude" in repr(check)
    # EAP-IG moves the decoy's score towards its exact effect
    ig = E.edge_attribution(model, task, method="eap-ig", steps=4, edges=[decoy] + list(planted.EDGES["planted"]))
    assert abs(float(ig.of(decoy).mean())) < abs(float(scores.of(decoy).mean()))
    # the edge circuit: its edges, its endpoints, and the checks of circuits.py accept it
    circ = E.edge_circuit(model, sw, threshold=0.05, name="planted")
    assert set(circ.edges) == {("embed", "L0H0.v"), ("L0H0", "L1H0.v"), ("L1H0", "logits")}
    assert set(circ.components) == {Head(0, 0), Head(1, 0)}
    faith = C.faithfulness(model, task, circ, activations=store)
    assert faith.recovered.mean > 0.95


def test_the_control_model_has_no_edge(planted_models):
    model, task = planted_models[True]
    store = ActivationStore()
    sw = E.edge_patch(model, task, activations=store)
    assert sw.clean == pytest.approx(sw.corrupted, abs=1e-9)      # the corruption changes nothing
    assert float(sw.values.abs().max()) < 1e-5


def test_edge_circuits_save_and_load_with_head_inputs(arch_model, tmp_path):
    model = arch_model("gpt2")
    circ = E.edge_circuit(model, ["L0H1->L1H0.q", "embed->L0H1.v", "L1H0->logits"], name="c")
    assert set(circ.edges) == {("L0H1", "L1H0.q"), ("embed", "L0H1.v"), ("L1H0", "logits")}
    assert circ.components == (Head(0, 1), Head(1, 0))
    again = C.Circuit.load(model, circ.save(tmp_path / "c.json"))
    assert again.edges == circ.edges and again.components == circ.components
    with pytest.raises(CircuitsError, match="q, k or v input"):
        C.Circuit.of(model, ["L1H0"], edges=[("L0H0", "mlp1.q")])
    with pytest.raises(CircuitsError, match="at least one head or MLP"):
        E.edge_circuit(model, [])


@pytest.mark.parametrize("family", ["gemma2"])
def test_a_norm_after_attention_is_refused_by_name(arch_model, family, logit_diff):
    from pytest_circuits.errors import MeasurementError

    model = arch_model(family)
    task = logit_diff(model, pairs(seed=1, n=2))
    with pytest.raises(MeasurementError, match="norm after attention"):
        E.edge_patch(model, task, ["L0H0->logits"])
    with pytest.raises(MeasurementError, match="norm after attention"):
        E.edge_attribution(model, task)


class _ReadsAnotherPosition:
    """A task whose metric also reads the next-to-last position's logits (the store's last
    logits do not give it)."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def logit_metric(self, i):
        m, answer, at = self._task.logit_metric(i), self._task.prompts.answer_ids[i], self._task.prompts.lengths[i] - 2
        return lambda logits: m(logits) + 0.5 * logits[0, at, answer]


def _soft_cap(x):
    """``c tanh(x / c)`` with ``c`` the largest |x| (a soft-cap that shows on a tiny model's logits)."""
    c = x.detach().abs().max()
    return c * torch.tanh(x / c)


def test_attribution_shortcuts_are_checked_and_the_long_way_agrees(arch_model, logit_diff, monkeypatch):
    """EAP's two shortcuts, each checked, each with a long way that gives the same numbers:
    (1) a head's derivative at its projection's input from the model's ``W_Q/W_K/W_V``: taken on
    GQA when the check passes; with the weights' heads reversed (not the projection any more) the
    check fails at every layer and part and the per-head products through the projection give the
    reference's scores; (2) the corrupted run's metric from the store's last logits: a metric that
    also reads another position is seen to, and gets the forward's totals; (3) the scoring
    products skip the positions before a batch's first changed token (their deltas all 0); (4)
    where the metric reads the last position alone, the forward stops at the final residual and
    only that position is unembedded, once the first batch showed those logits equal the whole
    forward's; an unembedding that differs (a soft-cap the forward adds) is seen to, and the whole
    forward gives the reference's scores; (5) receiver layers scored one product per chunk of
    layers or one per layer, the same scores."""
    model = arch_model("gqa")
    task = logit_diff(model, unequal_pairs(seed=11, n=8))
    want, totals, clean = one_at_a_time(model, task)
    scale = np.abs(want).max()
    verdicts: dict = {}
    real = E._part_grad

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        verdicts.update(args[-1])
        return out

    monkeypatch.setattr(E, "_part_grad", spy)
    starts: list = []
    deltas = E._deltas
    monkeypatch.setattr(E, "_deltas", lambda *a: (lambda out: starts.append(out[1]) or out)(deltas(*a)))
    W = {p: E._proj_weights(model, p) for p in E.PARTS}
    head = E._head
    for reverse in (False, True):
        verdicts.clear()
        if reverse:
            monkeypatch.setattr(E, "_proj_weights", lambda m, p: W[p].flip(1))
            # (4) and an unembedding at the last positions that is not the forward's (a soft-cap, say)
            monkeypatch.setattr(E, "_head", lambda m, final, last: _soft_cap(head(m, final, last)))
            monkeypatch.setattr(E, "SCORE_CHUNK", 1)        # (5) each receiver layer scored alone
        got = E.edge_attribution(model, task, activations=ActivationStore(batch_size=3))
        parts = {k: v for k, v in verdicts.items() if k[1] in E.PARTS}
        assert len(parts) == 3 * model.cfg.n_layers and set(parts.values()) == {not reverse}, parts
        assert verdicts[E.HEAD_CHECK] is (not reverse)
        assert np.abs(got.values.numpy() - want).max() <= 1e-5 * scale
        np.testing.assert_allclose(got.totals, totals, rtol=0, atol=1e-5 * np.abs(clean).max())
    assert max(starts) > 0, starts          # (3) scoring skipped an unchanged prefix, scores as the reference's
    monkeypatch.undo()
    wide = _ReadsAnotherPosition(task)
    store = ActivationStore(batch_size=3)
    last = store.get(model, task.prompts.corrupted, [H.LOGITS_LAST])[H.LOGITS_LAST][:2]
    width = max(task.prompts.lengths[:2])
    assert E._metric_of_last([task.logit_metric(i) for i in range(2)], last, task.prompts.lengths[:2], width)
    assert E._metric_of_last([wide.logit_metric(i) for i in range(2)], last, task.prompts.lengths[:2], width) is None

    def refuses_nan(logits):
        assert bool(torch.isfinite(logits).all()), "non-finite logits"
        return logits[0, -1, 0]

    assert E._metric_of_last([refuses_nan], last, task.prompts.lengths[:1], width) is None
    plain = totals
    want, totals, clean = one_at_a_time(model, wide)
    verdicts.clear()
    monkeypatch.setattr(E, "_part_grad", spy)
    got = E.edge_attribution(model, wide, activations=store)
    assert verdicts and E.HEAD_CHECK not in verdicts      # it reads another position: the whole forward
    assert np.abs(got.values.numpy() - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_allclose(got.totals, totals, rtol=0, atol=1e-5 * np.abs(clean).max())
    assert np.abs(got.totals - plain).max() > 1e-3      # the other position's term is in them


@pytest.mark.parametrize("family", ["gpt2", "gqa", "gemma"])
def test_the_norm_in_closed_form_is_taken_only_where_it_is_the_models(arch_model, logit_diff, family, monkeypatch):
    """A head part's derivative goes back through the attention's norm in closed form (LayerNorm
    on GPT-2, RMSNorm on the GQA Llama, Gemma's RMSNorm with its gain ``1 + weight``), found per
    layer and checked against the model's own backward. The gains and biases are made random
    first (a tiny checkpoint's gain of 1 would hide a gain left out). Taken at every layer, the
    scores equal the one-at-a-time reference's; with every candidate's gain doubled (a norm
    that is not the model's) none is taken and the model's own backward gives the same scores."""
    model = arch_model(family)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for l in range(model.cfg.n_layers):
            for ln in (model.blocks[l].ln1, model.blocks[l].ln2):
                mod = getattr(ln, "original_component", ln)
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.3 * torch.randn(mod.bias.shape, generator=gen))
    task = logit_diff(model, unequal_pairs(seed=3, n=6))
    want, totals, clean = one_at_a_time(model, task)
    scale = np.abs(want).max()
    assert scale > 1e-3
    real, candidates = E._norm_form, E._norm_candidates
    for wrong in (False, True):
        found: dict = {}

        def spy(model, l, *args):
            out = real(model, l, *args)
            found.setdefault(l, out)
            return out

        monkeypatch.setattr(E, "_norm_form", spy)
        if wrong:
            monkeypatch.setattr(E, "_norm_candidates", lambda m, l: [(c, 2 * g, b, e) for c, g, b, e in candidates(m, l)])
        got = E.edge_attribution(model, task, activations=ActivationStore(batch_size=3))
        assert sorted(found) == list(range(model.cfg.n_layers)), found
        taken = [v is not None for v in found.values()]
        assert taken == [not wrong] * model.cfg.n_layers, (wrong, found)
        if not wrong:
            assert {v[0] for v in found.values()} == {family == "gpt2"}          # centered: LayerNorm alone
        diff = np.abs(got.values.numpy() - want).max()
        print(f"{family} norm {'not ' if wrong else ''}in closed form: max |diff| {diff:.2e} (max |score| {scale:.3g})")
        assert diff <= 1e-5 * scale
        np.testing.assert_allclose(got.totals, totals, rtol=0, atol=1e-5 * np.abs(clean).max())
        monkeypatch.undo()


def test_deltas_are_zero_before_each_rows_first_change_only_where_the_runs_differ_by_rounding(arch_model):
    """The senders' deltas of a batch: 0 before each row's first changed token and everywhere in
    a row equal to its corruption (exactly, though the two runs' values there differ by
    rounding), 0 past each row's length, ``corrupted - clean`` elsewhere; the products skip the
    positions before the batch's first change. A difference there larger than rounding (a
    sender that read a later token) and NaN are not taken as 0: the deltas are then the computed
    differences from position 0."""
    model = arch_model("gqa")
    L, n_heads = model.cfg.n_layers, model.cfg.n_heads
    clean_tok = torch.tensor([[5, 6, 7, 8, 9], [5, 9, 7, 8, 0], [4, 4, 4, 4, 4]])
    corr_tok = torch.tensor([[5, 6, 1, 8, 9], [5, 9, 7, 2, 0], [4, 4, 4, 4, 4]])
    lengths = torch.tensor([5, 4, 5])
    first = E._first_changes(clean_tok, corr_tok, lengths)
    assert first.tolist() == [2, 3, 5]
    gen = torch.Generator().manual_seed(0)
    names = E._sender_hooks(model, Embed()) + [H.z(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)]
    clean, corr = {}, {}
    for nm in names:
        shape = (3, 5, n_heads, model.cfg.d_head) if ".attn." in nm else (3, 5, model.cfg.d_model)
        clean[nm] = torch.randn(shape, generator=gen)
        corr[nm] = clean[nm] * (1 + 1e-6 * torch.randn(shape, generator=gen))      # rounding apart
        corr[nm][0, 2:] += torch.randn(corr[nm][0, 2:].shape, generator=gen)
        corr[nm][1, 3:] += torch.randn(corr[nm][1, 3:].shape, generator=gen)
    want = torch.stack([E._write(model, s, corr) - E._write(model, s, clean) for s in E.senders(model)], 1)
    out, begin = E._deltas(model, clean, corr, first, lengths, torch.float64, "cpu")
    assert begin == 2 and out.shape == (3, len(E.senders(model)), 3, model.cfg.d_model)
    assert not out[2].any() and not out[1, :, :1].any() and not out[1, :, 2:].any()     # twin, prefix, padding
    torch.testing.assert_close(out[0], want[0, :, 2:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[1, :, 1], want[1, :, 3], rtol=1e-9, atol=1e-9)
    corr[H.mlp_out(0)][1, 1] += 0.5                                   # a sender that moved before the change
    with pytest.warns(CircuitsWarning, match="blocks.0.hook_mlp_out differs .* before a row's first changed"):
        out, begin = E._deltas(model, clean, corr, first, lengths, torch.float64, "cpu")
    assert begin == 0 and out[1, :, 1].any() and out[2].any()       # the computed differences, from 0
    assert not out[1, :, 4].any()                                   # padding stays 0
    corr[H.mlp_out(0)][1, 1] -= 0.5
    clean[H.z(0)][0, 0, 0, 0] = float("nan")
    with pytest.warns(CircuitsWarning):
        assert E._deltas(model, clean, corr, first, lengths, torch.float64, "cpu")[1] == 0     # NaN equals nothing
    assert E._first_changes(clean_tok, clean_tok, lengths).tolist() == [5, 5, 5]       # nothing changed at all


def test_attribution_takes_the_clean_outputs_from_its_own_forward(arch_model, logit_diff):
    """An empty store runs the corrupted prompts' forwards for the attribution, not the clean
    ones: the gradient forward is the clean run (its scores against a reference built from the
    store's clean outputs: test_batched_attribution_equals_one_prompt_at_a_time), and a prompt
    equal to its corruption, batched apart from its twin, scores exactly 0."""
    model = arch_model("gqa")
    task = logit_diff(model, unequal_pairs(seed=4, n=7))
    store = ActivationStore(batch_size=3)
    got = E.edge_attribution(model, task, activations=store)
    corrupted_only = ActivationStore(batch_size=3)
    L = model.cfg.n_layers
    names = E._sender_hooks(model, Embed()) + [H.z(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)]
    corrupted_only.get(model, task.prompts.corrupted, names + [H.LOGITS_LAST])
    assert store.counters.forward_passes == corrupted_only.counters.forward_passes > 0
    assert got.values[:, :-1].abs().max() > 0 and not got.values[:, -1].any()


def test_a_warm_run_of_attribution_and_its_verification_runs_no_forward(arch_model, logit_diff, tmp_path):
    """What a claim does (EAP, then exact patching of its top edges), then again from the same
    cache folder in a new store, as a warm run: the second runs no forward and gives the same
    numbers. (Before, the verification's prefetch asked for every layer's clean residual, which
    the first run had kept in memory only: one clean forward per warm run.)"""
    model = arch_model("gqa")
    task = logit_diff(model, pairs(seed=5, n=6))
    runs = []
    for _ in range(2):
        store = ActivationStore(cache_dir=tmp_path)
        scores = E.edge_attribution(model, task, activations=store)
        check = E.verify(model, task, scores, k=3, activations=store)
        runs.append((store.counters.forward_passes, scores.values, check.exact.values))
    (cold, s0, x0), (warm, s1, x1) = runs
    assert cold > 0 and warm == 0
    assert torch.equal(s0, s1) and torch.equal(x0, x1)
