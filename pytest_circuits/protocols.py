"""The contracts between layers, written down (a leaf: no project imports but errors).

Two kinds of objects cross layer boundaries and may be written by a user:

**Intervention**: what the activation store (:mod:`pytest_circuits.store`) calls on an
ablation or patch, and nothing more. The store

1. keys its cache entries on ``key`` (two interventions with equal keys must change the
   forward identically);
2. calls ``check(model, prompts)`` once per request, before any forward (raise a project
   error when the intervention cannot apply to these prompts);
3. reads ``layer``: the first block the intervention acts in. Every hook it returns must act
   at block ``layer`` or later (the embedding counts as block
   :data:`pytest_circuits.hooks.EMBED_BLOCK`, -1, before block 0). When ``layer > 0`` the
   store may resume the forward at that block from the clean run's residual stream instead
   of recomputing the identical prefix (and at block 0 from the clean embedding output when
   the intervention also has ``first_positions``, item 5). Return 0 (or -1) to run the
   whole model. A hook that does not fire in the forward the store ran is an error;
4. calls ``fwd_hooks(model, prompts, index, store)`` once per batch: ``index`` holds the
   batch's rows in ``prompts`` (a 1-d integer tensor), ``store`` is the store running the
   forward (use it for any activation the hooks need, e.g. a corrupted run's). It returns
   ``[(hook_name, fn)]`` in TransformerLens's ``fwd_hooks`` form; ``fn(tensor, hook)``
   returns the replacement (or None to keep the tensor).

5. optionally reads ``first_positions(model, prompts)``: per prompt (``[n]`` ints), the
   first position whose activations the intervention can make differ from the clean run
   (a lower bound is safe; a prompt's length means "none"). An intervention that has it
   must accept ``fwd_hooks(..., offset=p)``: the store then runs only positions ``p..`` of
   the blocks from ``layer`` on (their attention reads the clean run's keys and values for
   the earlier positions), so axis 1 of every hooked tensor starts at position ``p``.
   Without it, every position is run.

6. optionally calls ``before(layer)`` and ``after(layer)``, both interventions: the parts
   acting before block ``layer`` and those acting in it or later (``before(l)`` composed
   with ``after(l)`` must be the intervention itself, and ``before(l).key`` must identify
   the prefix's effect as ``key`` does the whole's). Inside
   :meth:`~pytest_circuits.store.ActivationStore.shared_prefixes`, a run whose intervention
   has them may resume at block ``l`` from the residual stream of an earlier run whose
   intervention had the same ``before(l)``, applying only ``after(l)``.

The built-in interventions (:mod:`pytest_circuits.interventions`) implement exactly this.

**Task**: what the circuit tools (:mod:`pytest_circuits.techniques.circuits`,
:mod:`pytest_circuits.techniques.patching`) need: ``name``; ``prompts``, the clean prompt set
whose ``corrupted`` counterpart is aligned token for token; ``prompt_sets``, every set the
metric runs a forward on (interventions apply to each); and
``scores(model, *, intervention=None, activations=None, corrupted=False)``, the metric per
prompt as a float tensor ``[n]``. The attribution screen also needs ``logit_metric(i)``: a
differentiable function of prompt ``i``'s logits. :func:`check_task` checks a task once,
with a message that says what is missing.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from .errors import CircuitsError, InterventionError, bad

INTERVENTION_MEMBERS = ("key", "layer", "check", "fwd_hooks")
TASK_MEMBERS = ("prompts", "prompt_sets", "scores", "name")


@runtime_checkable
class Intervention(Protocol):
    """What the store calls on an intervention (see the module docstring)."""

    @property
    def key(self) -> str:
        """A string that identifies the intervention's effect completely (a cache key)."""
        ...

    @property
    def layer(self) -> int:
        """The first block whose input the intervention may change (0: run the whole model)."""
        ...

    def check(self, model: Any, prompts: Any) -> None:
        """Raise a project error when the intervention cannot apply to ``prompts``."""
        ...

    def fwd_hooks(self, model: Any, prompts: Any, index: Any, store: Any) -> list[tuple[str, Callable[..., Any]]]:
        """Hooks for one batch; ``index`` holds the batch's rows in ``prompts``."""
        ...


@runtime_checkable
class Task(Protocol):
    """What the circuit tools need from a task (see the module docstring)."""

    name: str

    @property
    def prompts(self) -> Any:
        ...

    @property
    def prompt_sets(self) -> Sequence[Any]:
        ...

    def scores(self, model: Any, *, intervention: Any = None, activations: Any = None,
               corrupted: bool = False) -> Any:
        ...


def check_intervention(intervention: Any) -> Any:
    """``intervention`` when it has every member the store calls, else an InterventionError."""
    missing = [m for m in INTERVENTION_MEMBERS if not hasattr(intervention, m)]
    if missing:
        raise InterventionError(bad("intervention", intervention,
                                    f"an object with {', '.join(INTERVENTION_MEMBERS)} (see pytest_circuits."
                                    f"protocols.Intervention; missing: {', '.join(missing)}), e.g. the result "
                                    "of interventions.ablate(), patch() or nothing()"))
    return intervention


def check_task(task: Any, *, logit_metric: bool = False, corrupted: bool = True) -> Any:
    """``task`` when it has every member the circuit tools use (and ``logit_metric`` when
    asked), and each of its prompt sets has a corrupted counterpart (when ``corrupted``);
    else a CircuitsError that names what is missing."""
    need = TASK_MEMBERS + (("logit_metric",) if logit_metric else ())
    missing = [m for m in need if not hasattr(task, m)]
    if missing:
        raise CircuitsError(bad("task", type(task).__name__,
                                f"a task with {', '.join(need)} (see pytest_circuits.protocols.Task; "
                                f"missing: {', '.join(missing)}), e.g. tasks.greater_than(model)"))
    if corrupted:
        for ps in task.prompt_sets:
            ps.require("corrupted")
    return task


__all__ = ["INTERVENTION_MEMBERS", "Intervention", "TASK_MEMBERS", "Task", "check_intervention", "check_task"]
