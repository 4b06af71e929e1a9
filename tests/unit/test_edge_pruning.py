"""Exact removal of many edges at once and the ACDC-style pass (issue #26, item 2).

The one-forward removal of a set of edges is checked against identities (nothing removed is
the clean run; every edge, or every edge into the logits, removed is the corrupted run) and,
for one edge, against exact edge patching (side runs and held hooks: other code); the pass
against the planted edge model (its three edges found, its decoy and the control's nothing)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pytest_circuits import ActivationStore, planted
from pytest_circuits.components import Embed
from pytest_circuits.errors import CircuitsError
from pytest_circuits.techniques import circuits as C
from pytest_circuits.techniques import edge_pruning as EP
from pytest_circuits.techniques import edges as E

from .test_edges import pairs, planted_models  # noqa: F401  (a fixture: the planted edge model and its control)


@pytest.fixture(scope="module", params=["gpt2", "gqa", "neox", "gptj"])
def model_task(request, arch_model, logit_diff):
    model = arch_model(request.param)
    return model, logit_diff(model, pairs(seed=3, n=8, same=2))


def test_removing_nothing_all_or_the_logits_inputs_gives_the_clean_and_corrupted_runs(model_task):
    model, task = model_task
    store = ActivationStore()
    clean = task.scores(model, activations=store).double().numpy()
    corrupted = task.scores(model, activations=store, corrupted=True).double().numpy()
    scale = np.abs(clean).max() + np.abs(corrupted).max()
    assert np.abs(corrupted - clean).max() > 1e-3 * scale                 # the corruption does something
    np.testing.assert_allclose(EP.removed_metric(model, task, (), activations=store), clean, atol=1e-5 * scale)
    everything = EP.removed_metric(model, task, E.graph(model), activations=store)
    np.testing.assert_allclose(everything, corrupted, atol=1e-5 * scale)
    into_logits = [e for e in E.graph(model) if e.receiver is None]
    np.testing.assert_allclose(EP.removed_metric(model, task, into_logits, activations=store), corrupted,
                               atol=1e-5 * scale)


def test_one_removed_edge_is_exact_edge_patching(model_task):
    """Per prompt, every kind of edge (q, k, v of a head, an MLP, the logits), sampled: the
    metric with the edge removed minus the clean metric equals edge_patch's raw effect."""
    model, task = model_task
    store = ActivationStore()
    rng = random.Random(1)
    by_kind: dict = {}
    for e in E.graph(model):
        by_kind.setdefault(e.part or ("logits" if e.receiver is None else "mlp"), []).append(e)
    chosen = [e for kind in sorted(by_kind) for e in rng.sample(by_kind[kind], min(3, len(by_kind[kind])))]
    sw = E.edge_patch(model, task, chosen, activations=store)
    clean = task.scores(model, activations=store).double().numpy()
    size = max(np.abs(sw.values.numpy()).max(), 1e-6)
    for e in chosen:
        got = EP.removed_metric(model, task, [e], activations=store) - clean
        np.testing.assert_allclose(got, sw.of(e).numpy(), atol=1e-4 * size + 1e-6, err_msg=str(e))


def test_removals_compose_through_the_run(model_task):
    """Every edge out of the embedding removed: each receiver reads the corrupted embedding,
    so every sender writes what it writes in the corrupted run, and the run is the corrupted
    run. (Every edge removed, the first test, is the corrupted run only because each removal
    subtracts the sender's output *in this run*, already changed by the removals upstream of
    it: with the clean run's outputs the heads' changes would be subtracted twice.)"""
    model, task = model_task
    store = ActivationStore()
    clean = task.scores(model, activations=store).double().numpy()
    corrupted = task.scores(model, activations=store, corrupted=True).double().numpy()
    scale = np.abs(clean).max() + np.abs(corrupted).max()
    from_embed = [e for e in E.graph(model) if isinstance(e.sender, Embed)]
    got = EP.removed_metric(model, task, from_embed, activations=store)
    np.testing.assert_allclose(got, corrupted, atol=1e-5 * scale)


def test_the_exact_pass_finds_the_planted_edges_and_not_the_decoy(planted_models):
    model, task = planted_models[False]
    result = EP.acdc(model, task, threshold=0.01)
    print(result)
    assert set(map(str, result.edges)) == set(planted.EDGES["planted"]), result.edges
    assert planted.EDGES["decoy"] not in set(map(str, result.edges))          # exact: the decoy does nothing
    assert len(result.trace) == len(E.graph(model))
    # with every other edge removed the three edges still carry the effect
    assert abs(result.metric - result.clean) < 0.05 * abs(result.corrupted - result.clean)
    assert set(map(str, result.circuit.components)) == {"L0H0", "L1H0"}
    # the pass's circuit is a Circuit the node-level checks take
    assert C.faithfulness(model, task, result.circuit).recovered.mean > 0.95
    # a screened pass: only the planted edges and the decoy tried, every other edge removed first
    screened = EP.acdc(model, task, threshold=0.01, edges=list(planted.EDGES["planted"]) + [planted.EDGES["decoy"]])
    assert set(map(str, screened.edges)) == set(planted.EDGES["planted"]) and len(screened.trace) == 4


def test_the_control_has_nothing_to_prune_against(planted_models):
    model, task = planted_models[True]
    with pytest.raises(CircuitsError, match="nothing to prune against"):
        EP.acdc(model, task)


def test_bad_arguments_are_refused(planted_models):
    model, task = planted_models[False]
    with pytest.raises(CircuitsError, match="max_edges"):
        EP.acdc(model, task, max_edges=10)
    with pytest.raises(CircuitsError, match="threshold"):
        EP.acdc(model, task, threshold=1.5)


class _NaNOnPrompt:
    """A task whose metric is NaN on prompt 1 (a model or metric gone non-finite)."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def logit_metric(self, i):
        metric = self._task.logit_metric(i)
        return (lambda logits: metric(logits) * float("nan")) if i == 1 else metric


def test_a_non_finite_metric_is_refused_not_pruned_or_scored(planted_models):
    """NaN compares false with every threshold: unchecked, the pass would keep every edge and
    attribution would score NaN, both silently."""
    from pytest_circuits.errors import MeasurementError

    model, task = planted_models[False]
    bad = _NaNOnPrompt(task)
    with pytest.raises(MeasurementError, match=r"removed_metric\[planted_edges\].*not finite.*prompts\[1\]"):
        EP.removed_metric(model, bad, ())
    with pytest.raises(MeasurementError, match="not finite"):
        EP.acdc(model, bad)
    with pytest.raises(MeasurementError, match=r"edge_attribution\[planted_edges\].*not finite"):
        E.edge_attribution(model, bad)
