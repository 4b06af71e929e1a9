"""Direct and total effects of components on a token's logit, and the self-repair
decomposition of an ablation's total effect.

**Direct effect** (McGrath et al. 2023, arXiv:2307.15771, "the Hydra effect"): at each
prompt's last position, with ``s`` the final norm's scale and ``w_t`` the centred
unembedding column of token ``t`` (``W_U[:, t] - mean_vocab W_U``),

    DE(c) = out_c . w_t / s

Because every writer to the residual stream is a component (embedding, each head,
each MLP; the models have no attention/MLP biases) the direct effects plus the centred
unembedding bias sum exactly to the centred logit (tested). This is direct logit
attribution (DLA); compatibility mode folds the norms so the identity is exact.

**Total effect** of an intervention: the change of the centred logit of ``t``.

**Self-repair decomposition.** With the clean run's scale ``s`` frozen, and ``s'`` the
ablated run's own scale,

    TE = sum_c [DE_abl(c) - DE_clean(c)]  +  sum_c out'_c . w_t (1/s' - 1/s)
       = own change (the ablated components) + sum of downstream ΔDE + norm term

exactly, by construction. Downstream components with large positive ΔDE compensate
(the Hydra effect); a late MLP whose negative DE shrinks under ablation counterbalances.

The token ``t`` is each prompt's answer (``token="answer"``, the default when the set
has answers) or the clean run's top token (``token="top"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import hooks as H
from ..activations import ActivationStore, default_store
from ..components import MLP, Attn, Component, Embed, Head, Neuron, parse, parse_many
from ..errors import CircuitsError, ComponentError, bad
from ..interventions import Interventions, ablate as _ablate
from ..measurement import Measurement
from ..models import info as model_info


def writers(model: Any) -> tuple[Component, ...]:
    """Every residual-stream writer, in forward order: embed, L0H0.., mlp0, L1H0.., ..."""
    cfg = model.cfg
    out: list[Component] = [Embed()]
    for layer in range(cfg.n_layers):
        out += [Head(layer, h) for h in range(cfg.n_heads)]
        out.append(MLP(layer))
    return tuple(out)


def _block(name: str) -> int | None:
    """Block index of a hook name (the embedding counts as -1; after the last block: None)."""
    base = H.base_name(name)
    if base.startswith("blocks."):
        return int(base.split(".")[1])
    return -1 if base == H.EMBED else None


def _hooks_needed(model: Any) -> list[str]:
    L = model.cfg.n_layers
    return ([H.last(H.EMBED), H.last(H.FINAL_SCALE)] + [H.last(H.z(l)) for l in range(L)]
            + [H.last(H.mlp_out(l)) for l in range(L)])


def targets(model: Any, prompts: Any, token: Any, store: ActivationStore) -> Any:
    """Token ids ``[n]`` the effects are measured on."""
    import torch

    if token == "answer":
        prompts.require("answer_ids")
        return torch.tensor(prompts.answer_ids)
    if token == "top":
        return store.get(model, prompts, [H.LOGITS_LAST])[H.LOGITS_LAST].argmax(-1)
    if isinstance(token, int):
        return torch.full((len(prompts),), token)
    try:
        ids = torch.as_tensor(list(token))
    except TypeError:
        ids = None
    if ids is None or ids.shape != (len(prompts),):
        raise CircuitsError(bad("token", token, "'answer', 'top', a token id, or one id per prompt"))
    return ids


def rows_of(components: Sequence[Component], c: Any) -> list[int]:
    """Indices of ``c`` among the writers; an attention layer is all of its heads."""
    comp = parse(c)
    if isinstance(comp, Attn):
        rows = [i for i, x in enumerate(components) if isinstance(x, Head) and x.layer == comp.layer]
    else:
        rows = [i for i, x in enumerate(components) if x == comp]
    if not rows:
        raise ComponentError(bad("component", str(comp), "a head, attention layer, MLP or embed of the model"))
    return rows


@dataclass(frozen=True, eq=False)
class Outputs:
    """Each writer's output at each prompt's last position, and the final-norm scale."""

    components: tuple[Component, ...]
    vectors: Any            # [C, n, d_model]
    scale: Any              # [n]

    def index(self, c: Component) -> int:
        try:
            return self.components.index(c)
        except ValueError:
            raise ComponentError(bad("component", str(c), "a head, MLP or embed of the model "
                                     "(attention layers are the sum of their heads)")) from None


def outputs(model: Any, prompts: Any, *, intervention: Any = None,
            store: ActivationStore | None = None) -> Outputs:
    """Every writer's output vector at the last position (one forward, or none if cached)."""
    import torch

    store = store if store is not None else default_store()
    names = _hooks_needed(model)
    first = getattr(intervention, "layer", 0) if intervention is not None and len(intervention.items) else 0
    if first > 0:
        # Writers before the first intervened layer are exactly as in the clean run: read
        # them there, so the intervened forward can resume at that layer.
        before = [n for n in names if _block(n) is not None and _block(n) < first]
        acts = store.get(model, prompts, before)
        acts.update(store.get(model, prompts, [n for n in names if n not in before], intervention))
    else:
        acts = store.get(model, prompts, names, intervention)
    L = model.cfg.n_layers
    W_O = model.W_O.detach().to("cpu", torch.float64)                 # [L, H, d_head, d_model]
    vecs = [acts[H.last(H.EMBED)].double()]
    for l in range(L):
        z = acts[H.last(H.z(l))].double()                              # [n, H, d_head]
        heads = torch.einsum("nhd,hdm->hnm", z, W_O[l])
        vecs += list(heads)
        vecs.append(acts[H.last(H.mlp_out(l))].double())
    scale = acts[H.last(H.FINAL_SCALE)].double().reshape(-1)
    return Outputs(writers(model), torch.stack(vecs), scale)


def _unembed_dirs(model: Any, ids: Any) -> tuple[Any, Any]:
    import torch

    W_U = model.W_U.detach().to("cpu", torch.float64)
    b_U = model.b_U.detach().to("cpu", torch.float64)
    w = W_U[:, ids] - W_U.mean(1, keepdim=True)                        # [d_model, n]
    b = b_U[ids] - b_U.mean()
    return w.T, b                                                      # [n, d_model], [n]


def direct_effects(outs: Outputs, w: Any, scale: Any | None = None) -> Any:
    """``[C, n]`` direct effects, dividing by ``scale`` (default: the run's own)."""
    s = outs.scale if scale is None else scale
    return (outs.vectors * w.unsqueeze(0)).sum(-1) / s.unsqueeze(0)


@dataclass(frozen=True, eq=False)
class DirectEffects:
    """Direct effects of every writer on token ``t`` (centred logits), per prompt."""

    model: str
    components: tuple[Component, ...]
    values: Any             # [C, n] float64
    bias: Any               # [n]  centred b_U[t]
    logit: Any              # [n]  centred logit of t (sum of values + bias)
    token_ids: Any
    prompts: str
    provenance: dict = field(default_factory=dict)

    def of(self, c: Any) -> Any:
        """Per-prompt direct effect of ``c`` (an attention layer sums its heads)."""
        return self.values[rows_of(self.components, c)].sum(0)

    def measure(self, c: Any, **kw: Any) -> Measurement:
        comp = parse(c)
        return Measurement.from_values(f"DE({comp})", self.of(comp), model=self.model,
                                       provenance={**self.provenance, "component": str(comp)}, **kw)

    def top(self, k: int = 10) -> list[tuple[Component, float]]:
        """Components by mean |direct effect|, largest first."""
        means = self.values.mean(1)
        order = means.abs().argsort(descending=True)[:k]
        return [(self.components[int(i)], float(means[i])) for i in order]


def decompose(model: Any, prompts: Any, *, token: Any = "answer", intervention: Any = None,
              activations: ActivationStore | None = None) -> DirectEffects:
    """Direct effect of every writer on ``token`` (see module docstring)."""
    store = activations if activations is not None else default_store()
    ids = targets(model, prompts, token, store)
    outs = outputs(model, prompts, intervention=intervention, store=store)
    w, b = _unembed_dirs(model, ids)
    values = direct_effects(outs, w)
    mi = model_info(model)
    return DirectEffects(mi.label, outs.components, values, b, values.sum(0) + b, ids, prompts.name,
                         {"model": mi.label, "prompts": prompts.name, "token": str(token),
                          "intervention": intervention.key if intervention is not None else "none"})


@dataclass(frozen=True, eq=False)
class SelfRepair:
    """An ablation's total effect on the centred logit of ``t``, decomposed exactly.

    ``total = own + downstream + norm`` per prompt, where ``own`` is the ablated
    components' change of direct effect, ``downstream`` the sum of every other
    component's ΔDE (upstream ones are exactly 0) and ``norm`` the final-norm term.
    """

    model: str
    ablation: Any
    components: tuple[Component, ...]
    ablated: tuple[int, ...]        # indices into components
    clean_de: Any                   # [C, n]
    delta_de: Any                   # [C, n]  DE_abl - DE_clean, clean scale frozen
    norm_term: Any                  # [n]
    total: Any                      # [n]  centred logit change (from the decomposition)
    clean_logit: Any                # [n]
    prompts: str
    labels: tuple[str, ...] | None = None

    # -- per-prompt arrays -----------------------------------------------------------
    @property
    def own(self) -> Any:
        return self.delta_de[list(self.ablated)].sum(0)

    @property
    def downstream(self) -> Any:
        mask = [i for i in range(len(self.components)) if i not in set(self.ablated)]
        return self.delta_de[mask].sum(0)

    def _rows(self, c: Any) -> list[int]:
        return rows_of(self.components, c)

    def delta(self, c: Any) -> Any:
        return self.delta_de[self._rows(c)].sum(0)

    # -- measurements ----------------------------------------------------------------
    def _m(self, name: str, values: Any, **prov: Any) -> Measurement:
        return Measurement.from_values(name, values, model=self.model, labels=self.labels,
                                       provenance={"ablation": self.ablation.key, "prompts": self.prompts, **prov})

    def total_effect(self) -> Measurement:
        return self._m(f"TE({self.ablation.key})", self.total)

    def own_effect(self) -> Measurement:
        """The ablated components' own ΔDE (= -DE for zero ablation)."""
        return self._m(f"ΔDE_own({self.ablation.key})", self.own)

    def direct_effect(self, c: Any) -> Measurement:
        """Clean direct effect of ``c``."""
        comp = parse(c)
        return self._m(f"DE({comp})", self.clean_de[self._rows(comp)].sum(0), component=str(comp))

    def compensation(self, by: Any) -> Measurement:
        """ΔDE of ``by`` under the ablation (positive: it makes up for the loss)."""
        comp = parse(by)
        return self._m(f"ΔDE({comp} | {self.ablation.key})", self.delta(comp), component=str(comp))

    def restored_fraction(self, by: Any) -> Measurement:
        """ΔDE(by) / (-own ΔDE): the fraction of the ablated direct effect that ``by`` restores."""
        comp = parse(by)
        return Measurement.from_ratio(f"restored({comp} | {self.ablation.key})", self.delta(comp), -self.own,
                                      model=self.model, labels=self.labels,
                                      provenance={"ablation": self.ablation.key, "component": str(comp)})

    def norm_effect(self) -> Measurement:
        return self._m(f"norm_term({self.ablation.key})", self.norm_term)

    def ranking(self, k: int = 10, *, include_ablated: bool = False) -> list[tuple[Component, float]]:
        """Components by mean ΔDE, most compensating first."""
        means = self.delta_de.mean(1)
        order = means.argsort(descending=True)
        out = [(self.components[int(i)], float(means[i])) for i in order
               if include_ablated or int(i) not in set(self.ablated)]
        return out[:k]

    def table(self, k: int = 8) -> str:
        """A readable summary: total, own, downstream, norm, and the top compensators."""
        rows = [f"self-repair under {self.ablation.key} on {self.prompts} (n={self.total.shape[0]}, means):",
                f"  total effect  {float(self.total.mean()):+.4f}",
                f"  own ΔDE       {float(self.own.mean()):+.4f}",
                f"  downstream ΔDE{float(self.downstream.mean()):+.4f}",
                f"  norm term     {float(self.norm_term.mean()):+.4f}"]
        rows += [f"    {str(c):>8} ΔDE {v:+.4f}" for c, v in self.ranking(k)]
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (f"SelfRepair({self.ablation.key}: TE {float(self.total.mean()):+.3f} = own "
                f"{float(self.own.mean()):+.3f} + downstream {float(self.downstream.mean()):+.3f} + norm "
                f"{float(self.norm_term.mean()):+.3f}, n={self.total.shape[0]})")


def self_repair(model: Any, prompts: Any, ablate: Any, *, kind: str = "resample", token: Any = "answer",
                positions: Any = "last", reference: Any = None, seed: int = 0,
                activations: ActivationStore | None = None) -> SelfRepair:
    """Ablate ``ablate`` (spelling(s), components, or an Interventions) and decompose its effect."""
    store = activations if activations is not None else default_store()
    if isinstance(ablate, Interventions):
        abl = ablate
    else:
        abl = _ablate(model, ablate, kind, positions=positions, reference=reference, seed=seed)
    ids = targets(model, prompts, token, store)
    w, b = _unembed_dirs(model, ids)
    clean = outputs(model, prompts, store=store)
    after = outputs(model, prompts, intervention=abl, store=store)
    de_clean = direct_effects(clean, w)
    de_abl_frozen = direct_effects(after, w, scale=clean.scale)
    delta = de_abl_frozen - de_clean
    norm = de_abl_frozen.sum(0) * (clean.scale / after.scale - 1.0)
    total = delta.sum(0) + norm
    ablated: list[int] = []
    for item in abl:
        comp = item.component
        # a neuron's writer is its MLP
        ablated += rows_of(clean.components, MLP(comp.layer) if isinstance(comp, Neuron) else comp)
    mi = model_info(model)
    return SelfRepair(mi.label, abl, clean.components, tuple(sorted(set(ablated))), de_clean, delta, norm,
                      total, de_clean.sum(0) + b, prompts.name, prompts.prompts)


def compensation(model: Any, prompts: Any, *, ablate: Any, by: Any, kind: str = "resample",
                 token: Any = "answer", positions: Any = "last", seed: int = 0, reference: Any = None,
                 activations: ActivationStore | None = None) -> Measurement:
    """ΔDE of ``by`` when ``ablate`` is ablated (its ``restored_fraction`` via :func:`self_repair`)."""
    sr = self_repair(model, prompts, ablate, kind=kind, token=token, positions=positions, seed=seed,
                     reference=reference, activations=activations)
    return sr.compensation(by)


def total_effect(model: Any, prompts: Any, intervention: Any, *, token: Any = "answer",
                 activations: ActivationStore | None = None) -> Measurement:
    """Change of the centred logit of ``token`` under ``intervention``, read from the logits."""
    import torch

    store = activations if activations is not None else default_store()
    ids = targets(model, prompts, token, store)
    rows = torch.arange(len(prompts))

    def centred(iv: Any) -> Any:
        lg = store.get(model, prompts, [H.LOGITS_LAST], iv)[H.LOGITS_LAST].double()
        return lg[rows, ids] - lg.mean(-1)

    vals = centred(intervention) - centred(None)
    return Measurement.from_values(f"TE({intervention.key})", vals, model=model_info(model).label,
                                   labels=prompts.prompts,
                                   provenance={"prompts": prompts.name, "token": str(token),
                                               "intervention": intervention.key})


def dla_vs_total(model: Any, prompts: Any, component: Any, *, kind: str = "resample", token: Any = "answer",
                 positions: Any = "last", seed: int = 0, reference: Any = None,
                 activations: ActivationStore | None = None) -> "DLAvsTotal":
    """How far the direct logit attribution of ``component`` overstates its causal effect.

    DLA is the clean direct effect; the causal effect is minus the total effect of
    ablating the component (``kind``, at ``positions``: the last token by default). ``overstatement`` is the
    paired difference ``DLA - causal``; ``causal_fraction`` the ratio of means.
    """
    comp = parse(component, model)
    sr = self_repair(model, prompts, comp, kind=kind, token=token, positions=positions, seed=seed,
                     reference=reference, activations=activations)
    if kind == "zero":
        dla = sr.direct_effect(comp)
    else:
        # Against a resampled/mean baseline the comparable DLA is the direct effect lost.
        dla = sr._m(f"DLA({comp}) vs {kind}", -sr.own, component=str(comp))
    causal = sr._m(f"causal({comp})", -sr.total, component=str(comp))
    over = dla.paired_difference(causal, name=f"DLA overstatement({comp})")
    frac = Measurement.from_ratio(f"causal/DLA({comp})", -sr.total, -sr.own if kind != "zero" else sr.clean_de[sr._rows(comp)].sum(0),
                                  model=sr.model, labels=sr.labels, provenance={"component": str(comp)})
    return DLAvsTotal(str(comp), dla, causal, over, frac, sr)


@dataclass(frozen=True, eq=False)
class DLAvsTotal:
    component: str
    dla: Measurement
    causal: Measurement
    overstatement: Measurement
    causal_fraction: Measurement
    self_repair: SelfRepair

    def __repr__(self) -> str:
        return (f"DLAvsTotal({self.component}: DLA {self.dla.mean:+.3f}, causal {self.causal.mean:+.3f}, "
                f"causal/DLA {self.causal_fraction.mean:.2f})")


def sweep(model: Any, prompts: Any, components: Sequence[Any], *, kind: str = "resample", token: Any = "answer",
          positions: Any = "last", seed: int = 0, reference: Any = None,
          activations: ActivationStore | None = None) -> list[SelfRepair]:
    """``self_repair`` for each component in turn (each resumes from the clean stream at its layer)."""
    from ..progress import bar

    comps = parse_many(components, model)
    return [self_repair(model, prompts, c, kind=kind, token=token, positions=positions, seed=seed,
                        reference=reference, activations=activations)
            for c in bar(comps, "ablation sweep", total=len(comps))]
