"""Any prompt set with answers, foils and aligned corrupted prompts as a circuit task.

``logit_difference(prompts)`` gives the task the circuit tools need
(:class:`~pytest_circuits.protocols.Task`: ``scores``, and ``logit_metric`` for edge attribution
and the attribution screen), with the metric ``logit(answer_i) - logit(foil_i)`` at prompt
``i``'s last real position. On the corrupted prompts the metric reads the *clean* prompt's answer
and foil (IOI's convention: an ABC prompt's ``logit(IO) - logit(S)`` of the clean names), so
"the whole corruption's effect" is the change of the clean prompt's own logit difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PromptSetError, bad


@dataclass(frozen=True)
class LogitDifference:
    """``logit(answer) - logit(foil)`` at the last position of each prompt of ``prompts``
    (a :class:`~pytest_circuits.prompts.PromptSet` with answers, foils and a corrupted
    counterpart aligned token for token)."""

    prompts: Any

    def __post_init__(self) -> None:
        from ..prompts import PromptSet

        if not isinstance(self.prompts, PromptSet):
            raise PromptSetError(bad("prompts", type(self.prompts).__name__, "a PromptSet"))
        self.prompts.require("answer_ids", "foil_ids")
        corr = self.prompts.corrupted
        if corr is None or list(corr.lengths) != list(self.prompts.lengths):
            raise PromptSetError(bad("prompts", self.prompts.name, "a PromptSet whose corrupted prompts are "
                                     "aligned token for token with the clean ones (PromptSet.build(..., "
                                     "corrupted=..., align=True))"))

    @property
    def name(self) -> str:
        return self.prompts.name

    @property
    def prompt_sets(self) -> tuple[Any, ...]:
        return (self.prompts,)

    def scores(self, model: Any, *, intervention: Any = None, activations: Any = None,
               corrupted: bool = False) -> Any:
        """The logit difference per prompt, float64 ``[n]`` (of the corrupted prompts, with the
        clean prompts' answers and foils, when ``corrupted``); a MeasurementError for
        non-finite logits."""
        import torch

        from ..metrics import _finite_logits

        ps = self.prompts.corrupted if corrupted else self.prompts
        logits = _finite_logits(f"logit_difference[{self.name}]", model, ps, intervention, activations).double()
        rows = torch.arange(len(ps), device=logits.device)
        answers = torch.tensor(self.prompts.answer_ids, device=logits.device)
        foils = torch.tensor(self.prompts.foil_ids, device=logits.device)
        return (logits[rows, answers] - logits[rows, foils]).cpu()

    def logit_metric(self, i: int) -> Any:
        """Prompt ``i``'s logit difference as a differentiable function of its logits
        ``[1, pos, vocab]``."""
        last, a, f = self.prompts.lengths[i] - 1, self.prompts.answer_ids[i], self.prompts.foil_ids[i]

        def metric(logits: Any) -> Any:
            return logits[0, last, a] - logits[0, last, f]

        return metric

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return f"LogitDifference({self.prompts.name!r}, n={len(self.prompts)})"


def logit_difference(prompts: Any) -> LogitDifference:
    """The circuit task of ``prompts`` with the metric ``logit(answer) - logit(foil)`` at the last
    position (module docstring): ``edges.edge_attribution(model, tasks.logit_difference(ioi(model)))``."""
    return LogitDifference(prompts)


__all__ = ["LogitDifference", "logit_difference"]
