"""Erasure: a later component that removes what an earlier one wrote.

After Janiak et al. 2023 (arXiv:2310.07325, "memory management" in GELU-4L): head A
writes a direction, erasers B read it and write its negative.

* **Projection ratio** of B's output onto A's, per prompt at the last position::

      PR(B, A) = (o_B . o_A) / ||o_A||^2          (-1: B removes A's write entirely)

  and the cosine. Several erasers: the sum of their PRs.
* **Value-input check** (causal): B's output is recomputed from its value path with A's
  output removed from B's input, B's attention pattern and norm scale frozen at the
  clean run. If B erases *because it reads A*, its PR onto A collapses toward 0.
  The recomputation is first checked to reproduce B's actual ``hook_z`` from the clean
  input; if it does not (an architecture this reading does not fit), it raises.
* **Scan**: PR for every (earlier writer, later head) pair, most negative first.

The DLA-versus-causal-effect side of the finding is
:func:`pytest_circuits.techniques.effects.dla_vs_total`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .. import hooks as H
from ..activations import ActivationStore, default_store
from ..components import MLP, Component, Head, parse, parse_many
from ..errors import CircuitsError, ComponentError, bad
from ..measurement import Measurement
from ..models import info as model_info
from .effects import outputs


@dataclass(frozen=True, eq=False)
class ProjectionRatios:
    """PR and cosine between every pair of writers at each prompt's last position."""

    model: str
    components: tuple[Component, ...]
    dots: Any            # [n, C, C]  o_i . o_j
    prompts: str
    labels: tuple[str, ...] | None

    def _i(self, c: Any) -> int:
        comp = parse(c)
        try:
            return self.components.index(comp)
        except ValueError:
            raise ComponentError(bad("component", str(comp), "a head, MLP or embed of the model")) from None

    def pr(self, reader: Any, writer: Any) -> Any:
        """Per-prompt PR(reader, writer)."""
        r, w = self._i(reader), self._i(writer)
        return self.dots[:, r, w] / self.dots[:, w, w].clamp_min(1e-30)

    def cosine(self, reader: Any, writer: Any) -> Any:
        r, w = self._i(reader), self._i(writer)
        return self.dots[:, r, w] / (self.dots[:, r, r] * self.dots[:, w, w]).sqrt().clamp_min(1e-30)

    def measure(self, readers: Any, writer: Any, *, what: str = "pr", **kw: Any) -> Measurement:
        """Summed PR (or mean cosine) of ``readers`` onto ``writer``, as a Measurement."""
        rs = parse_many(readers)
        if what == "pr":
            vals = sum(self.pr(r, writer) for r in rs)
        elif what == "cosine":
            vals = sum(self.cosine(r, writer) for r in rs) / len(rs)
        else:
            raise CircuitsError(bad("what", what, "'pr' or 'cosine'"))
        names = "+".join(str(r) for r in rs)
        return Measurement.from_values(f"{what.upper()}({names} onto {parse(writer)})", vals, model=self.model,
                                       labels=self.labels, provenance={"prompts": self.prompts,
                                                                       "position": "last"}, **kw)

    def scan(self, k: int = 10, *, writers: Sequence[Any] | None = None) -> list[tuple[Component, Component, float]]:
        """(writer, reader, mean PR) for readers in later layers, most negative first.

        Pairs where the writer's output is tiny (under 1% of the largest writer's mean
        norm) are left out: their ratios are noise.
        """
        import torch

        norms = torch.diagonal(self.dots, dim1=1, dim2=2).clamp_min(0).sqrt().mean(0)      # [C]
        pr = (self.dots / torch.diagonal(self.dots, dim1=1, dim2=2).unsqueeze(1).clamp_min(1e-30)).mean(0)
        widx = range(len(self.components)) if writers is None else [self._i(w) for w in writers]
        out = []
        floor = 0.01 * float(norms.max())
        for w in widx:
            cw = self.components[w]
            if float(norms[w]) < floor:
                continue
            for r, cr in enumerate(self.components):
                if isinstance(cr, Head) and cr.layer > cw.layer:
                    out.append((cw, cr, float(pr[r, w])))
        out.sort(key=lambda t: t[2])
        return out[:k]


def projection_ratios(model: Any, prompts: Any, *, intervention: Any = None,
                      activations: ActivationStore | None = None) -> ProjectionRatios:
    outs = outputs(model, prompts, intervention=intervention, store=activations)
    v = outs.vectors.permute(1, 0, 2)                        # [n, C, d]
    return ProjectionRatios(model_info(model).label, outs.components, v @ v.transpose(1, 2), prompts.name,
                            prompts.prompts)


def _full_output(model: Any, acts: dict, comp: Component) -> Any:
    import torch

    if isinstance(comp, Head):
        z = acts[H.z(comp.layer)][:, :, comp.head].double()
        return z @ model.W_O[comp.layer, comp.head].detach().to("cpu", torch.float64)
    if isinstance(comp, MLP):
        return acts[H.mlp_out(comp.layer)].double()
    return acts[H.EMBED].double()


def _hooks_for_output(comp: Component) -> list[str]:
    if isinstance(comp, Head):
        return [H.z(comp.layer)]
    if isinstance(comp, MLP):
        return [H.mlp_out(comp.layer)]
    return [H.EMBED]


@dataclass(frozen=True, eq=False)
class ValueCheck:
    """Summed PR of the readers onto the writer, clean and with the writer removed from
    the readers' value input; ``reproduction_error`` is the max relative error of the
    recomputed clean reader outputs against the model's own."""

    clean: Measurement
    without_writer: Measurement
    reproduction_error: float

    @property
    def change(self) -> Measurement:
        """Paired ``without_writer - clean``: about ``-clean`` for a value-path eraser, about 0
        for a reader whose anti-alignment does not come from reading the writer."""
        return self.without_writer.paired_difference(self.clean, name=f"change of {self.clean.name}")

    def __repr__(self) -> str:
        return (f"ValueCheck(PR clean {self.clean.mean:+.3f} -> without writer in value input "
                f"{self.without_writer.mean:+.3f}; recomputation error {self.reproduction_error:.1e})")


def value_input_check(model: Any, prompts: Any, writer: Any, readers: Any, *,
                      activations: ActivationStore | None = None, tolerance: float = 1e-3) -> ValueCheck:
    """Remove ``writer``'s output from each reader head's value input (pattern and norm
    scale frozen) and measure the readers' summed PR onto the writer, before and after."""
    import torch

    store = activations if activations is not None else default_store()
    A = parse(writer, model)
    Bs = parse_many(readers, model)
    for B in Bs:
        if not isinstance(B, Head):
            raise ComponentError(bad("readers", str(B), "attention heads (the check acts on the value path)"))
        if B.layer <= max(A.layer, -1) and not (A.layer == -1):
            raise ComponentError(bad("readers", str(B), f"heads in layers after the writer {A} (layer {A.layer})"))
    names = set(_hooks_for_output(A))
    for B in Bs:
        names |= {H.resid_pre(B.layer), H.ln1_scale(B.layer), H.last(H.pattern(B.layer)), H.last(H.z(B.layer))}
    acts = store.get(model, prompts, sorted(names))
    o_A = _full_output(model, acts, A)                                   # [n, pos, d]
    rows = torch.arange(len(prompts))
    last = prompts.last
    o_A_last = o_A[rows, last]
    norm2 = (o_A_last * o_A_last).sum(-1).clamp_min(1e-30)
    n_rep = model.cfg.n_heads // getattr(model.cfg, "n_key_value_heads", None) if getattr(
        model.cfg, "n_key_value_heads", None) else 1
    pr_clean = torch.zeros(len(prompts), dtype=torch.float64)
    pr_without = torch.zeros(len(prompts), dtype=torch.float64)
    worst = 0.0
    for B in Bs:
        resid = acts[H.resid_pre(B.layer)].double()
        scale = acts[H.ln1_scale(B.layer)].double()                       # [n, pos, 1]
        pattern = acts[H.last(H.pattern(B.layer))][:, B.head].double()     # [n, k_pos]
        W_V = model.W_V[B.layer, B.head // n_rep].detach().to("cpu", torch.float64)
        W_O = model.W_O[B.layer, B.head].detach().to("cpu", torch.float64)
        b_V = _bias(model, "b_V", B.layer, B.head // n_rep)

        def z_last(x: Any) -> Any:
            v = (x / scale.clamp_min(1e-30)) @ W_V + b_V                 # [n, pos, d_head]
            return (pattern.unsqueeze(-1) * v).sum(1)                     # [n, d_head]

        z_ref = acts[H.last(H.z(B.layer))][:, B.head].double()
        z_re = z_last(resid)
        err = float((z_re - z_ref).norm() / z_ref.norm().clamp_min(1e-30))
        worst = max(worst, err)
        if err > tolerance:
            raise CircuitsError(f"value_input_check: recomputing {B} from its value path gives relative error "
                                f"{err:.2e} against the model's hook_z (tolerance {tolerance}); this check assumes "
                                "a pre-norm model in compatibility mode (norm weights folded into W_V)")
        o_B = z_re @ W_O
        o_B_without = z_last(resid - o_A) @ W_O
        pr_clean += (o_B * o_A_last).sum(-1) / norm2
        pr_without += (o_B_without * o_A_last).sum(-1) / norm2
    label = "+".join(str(b) for b in Bs)
    mname = model_info(model).label
    prov = {"prompts": prompts.name, "writer": str(A), "readers": label, "position": "last"}
    clean = Measurement.from_values(f"PR({label} onto {A})", pr_clean, model=mname, provenance=prov,
                                    labels=prompts.prompts)
    without = Measurement.from_values(f"PR({label} onto {A} | {A} removed from value input)", pr_without,
                                      model=mname, provenance=prov, labels=prompts.prompts)
    return ValueCheck(clean, without, worst)


def _bias(model: Any, name: str, layer: int, head: int) -> Any:
    import torch

    try:
        b = getattr(model, name)
    except AttributeError:
        return torch.zeros((), dtype=torch.float64)
    return b[layer, head].detach().to("cpu", torch.float64)
