"""A custom intervention and a custom task written only against ``protocols.py`` run
through the store, the metrics and the circuit checks (the same code as docs/extending.md).
"""

from __future__ import annotations

import pytest
import torch

from pytest_circuits import CircuitsError, InterventionError, PromptSet, metrics
from pytest_circuits import hooks as H
from pytest_circuits import store as S
from pytest_circuits.protocols import Intervention, Task, check_intervention, check_task
from pytest_circuits.store import ActivationStore
from pytest_circuits.techniques import circuits as C


# -- the code of docs/extending.md ---------------------------------------------------------

class AddToHead:
    """Add a fixed vector to one head's output before W_O (its ``hook_z``), at every position."""

    def __init__(self, block: int, head: int, vector) -> None:
        self.block, self.head, self.vector = block, head, tuple(float(v) for v in vector)

    @property
    def key(self) -> str:                      # identifies the effect completely: a cache key
        return f"add(L{self.block}H{self.head}, {self.vector})"

    @property
    def layer(self) -> int:                    # nothing before this block changes
        return self.block

    def check(self, model, prompts) -> None:   # raise a project error before any forward
        if len(self.vector) != model.cfg.d_head:
            raise InterventionError(f"vector has {len(self.vector)} entries, d_head is {model.cfg.d_head}")

    def fwd_hooks(self, model, prompts, index, store):
        def add(z, hook=None):                 # z: [batch, pos, head, d_head]
            z = z.clone()
            z[:, :, self.head] += torch.tensor(self.vector, dtype=z.dtype, device=z.device)
            return z
        return [(H.z(self.block), add)]


class CatOrDog:
    """Does the model prefer "mat" over "dog" after "... sat on the"? Corrupted: "cat" -> "dog"."""

    name = "cat-or-dog"

    def __init__(self, model):
        self.prompts = PromptSet.build(
            model, ["the cat sat on the", "a cat sat on the", "the cat went to the"],
            answers=["mat"] * 3, foils=["dog"] * 3,
            corrupted=["the dog sat on the", "a dog sat on the", "the dog went to the"], name=self.name)

    @property
    def prompt_sets(self):
        return (self.prompts,)

    def scores(self, model, *, intervention=None, activations=None, corrupted=False):
        ps = self.prompts.corrupted if corrupted else self.prompts
        store = S.resolve(activations)
        logits = store.get(model, ps, [H.LOGITS_LAST], intervention)[H.LOGITS_LAST].double()
        rows = torch.arange(len(ps))
        answers = torch.tensor(self.prompts.answer_ids)
        foils = torch.tensor(self.prompts.foil_ids)
        return logits[rows, answers] - logits[rows, foils]


# -- the tests ----------------------------------------------------------------------------

@pytest.fixture
def store():
    return ActivationStore(batch_size=2)


@pytest.fixture
def add(tiny):
    return AddToHead(1, 2, tuple(0.5 * (i % 3 - 1) for i in range(tiny.cfg.d_head)))


def test_the_custom_objects_satisfy_the_protocols(tiny, add):
    assert isinstance(add, Intervention) and check_intervention(add) is add
    task = CatOrDog(tiny)
    assert isinstance(task, Task) and check_task(task) is task


def test_the_store_runs_a_custom_intervention(tiny, add, store):
    ps = CatOrDog(tiny).prompts
    clean = store.get(tiny, ps, [H.z(1)])[H.z(1)]
    got = store.get(tiny, ps, [H.z(1), H.LOGITS_LAST], add)
    expected = clean.clone()
    real = torch.arange(ps.tokens.shape[1]).unsqueeze(0) < torch.tensor(ps.lengths).unsqueeze(1)
    expected[:, :, 2] += torch.tensor(add.vector) * real.unsqueeze(-1)
    torch.testing.assert_close(got[H.z(1)], expected)
    assert store.counters.resumed_passes >= 1      # layer=1: resumed from the clean stream
    # The same numbers from a store that never resumes, and from raw TransformerLens hooks.
    full = ActivationStore(batch_size=2, resume=False).get(tiny, ps, [H.LOGITS_LAST], add)[H.LOGITS_LAST]
    torch.testing.assert_close(got[H.LOGITS_LAST], full, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        raw = tiny.run_with_hooks(ps.tokens.to(tiny.cfg.device),
                                  fwd_hooks=add.fwd_hooks(tiny, ps, torch.arange(len(ps)), store)).cpu()
    torch.testing.assert_close(got[H.LOGITS_LAST], raw[torch.arange(len(ps)), ps.last], atol=1e-4, rtol=1e-4)
    # and it changes the output (the test could fail)
    assert not torch.allclose(got[H.LOGITS_LAST], store.get(tiny, ps, [H.LOGITS_LAST])[H.LOGITS_LAST])


def test_the_metrics_run_a_custom_intervention(tiny, add, store):
    ps = CatOrDog(tiny).prompts
    ld = metrics.logit_diff(tiny, ps, intervention=add, activations=store)
    logits = store.get(tiny, ps, [H.LOGITS_LAST], add)[H.LOGITS_LAST].double()
    rows = torch.arange(len(ps))
    expected = logits[rows, list(ps.answer_ids)] - logits[rows, list(ps.foil_ids)]
    assert ld.values == pytest.approx(expected.tolist(), abs=1e-5)
    assert add.key in ld.provenance["intervention"]


def test_a_custom_intervention_is_checked_before_any_forward(tiny, store):
    ps = CatOrDog(tiny).prompts
    with pytest.raises(InterventionError, match="d_head"):
        store.get(tiny, ps, [H.LOGITS_LAST], AddToHead(1, 0, (1.0,)))
    assert store.counters.forward_passes == 0


def test_an_object_missing_a_protocol_member_is_refused(tiny, store):
    class NoLayer:
        key = "x"

        def check(self, model, prompts):
            pass

        def fwd_hooks(self, model, prompts, index, store):
            return []

    with pytest.raises(InterventionError, match="missing: layer"):
        store.get(tiny, CatOrDog(tiny).prompts, [H.LOGITS_LAST], NoLayer())


def test_the_circuit_checks_run_a_custom_task(tiny, store):
    task = CatOrDog(tiny)
    everything = " ".join(f"attn{layer} mlp{layer}" for layer in range(tiny.cfg.n_layers))
    for kind in ("patch", "zero"):
        f = C.faithfulness(tiny, task, everything, kind=kind, activations=store)
        # The whole model as the circuit recovers all of the metric, exactly.
        assert f.recovered.mean == pytest.approx(1.0, abs=1e-9)
        torch.testing.assert_close(f.kept, task.scores(tiny, activations=store))
    part = C.faithfulness(tiny, task, "L1H0 mlp1", kind="patch", activations=store)
    assert part.kept.shape == (3,) and "cat-or-dog" in repr(part.recovered.provenance)


def test_a_task_missing_a_member_is_refused(tiny):
    class NoScores:
        name = "x"
        prompts = None
        prompt_sets = ()

    with pytest.raises(CircuitsError, match="missing: scores"):
        C.faithfulness(tiny, NoScores(), "L0H0")


def test_an_explicit_store_still_wins_over_the_current_one(tiny, store):
    """``activations=`` is honoured: the measurement runs on the store passed, not the current one."""
    other = ActivationStore()
    ps = CatOrDog(tiny).prompts
    with S.use(other):
        assert S.current() is other and S.resolve(None) is other and S.resolve(store) is store
        metrics.logit_diff(tiny, ps, activations=store)
        assert store.counters.computed == 1 and other.counters.computed == 0
        metrics.logit_diff(tiny, ps)
        assert other.counters.computed == 1
    assert S.current() is not other                 # restored on exit


def test_the_docs_show_this_code():
    """docs/extending.md holds the same intervention and task as this file, word for word."""
    import inspect
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
    for obj in (AddToHead, CatOrDog):
        assert inspect.getsource(obj) in page, f"docs/extending.md no longer shows {obj.__name__} as tested here"


def test_steering_the_writer_is_erased_in_the_planted_model():
    """The planted-model test of docs/extending.md: a second copy of the writer's output is
    erased (95%) by L1H1 in ``erasure``, and reaches the logits in ``erasure_control``."""
    from pathlib import Path

    from pytest_circuits import load_model, planted

    def steering_effect(path):
        model = load_model(path, device="cpu")
        ps = PromptSet.build(model, planted.PROMPTS, answers=[planted.ANSWER] * 4, foils=[planted.FOIL] * 4)
        store = ActivationStore()
        z = store.get(model, ps, [H.last(H.z(0))])[H.last(H.z(0))][0, 0]    # the writer's own z
        again = AddToHead(0, 0, tuple(float(x) for x in z))
        return (metrics.logit_diff(model, ps, intervention=again, activations=store)
                - metrics.logit_diff(model, ps, activations=store))

    root = Path(__file__).resolve().parents[2] / "tests" / "data" / "planted"
    erased = steering_effect(root / "erasure")               # a path works as well as a string
    control = steering_effect(str(root / "erasure_control"))
    # Measured: erasure 1.045, control 10.66 (identical on every prompt).
    assert control.lower > 5.0 and erased.upper < 0.15 * control.lower
