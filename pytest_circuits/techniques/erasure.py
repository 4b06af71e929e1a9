"""Erasure: a later component that removes what an earlier one wrote.

After Janiak et al. 2023 (arXiv:2310.07325, "memory management" in GELU-4L): head A
writes a direction, erasers B read it and write its negative.

* **Projection ratio** of B's output onto A's at each prompt's last position, aggregated
  over the ``n`` prompts as a **ratio of sums**::

      PR(B, A) = sum_i o_B,i . o_A,i / sum_i |o_A,i|^2      (-1: B removes A's write entirely)

  (:meth:`Measurement.from_ratio`; several erasers: the numerators add). It is *not* the
  mean of per-prompt ratios: where A barely writes on a prompt, ``o_B . o_A / |o_A|^2``
  explodes and one prompt can dominate the mean (SmolLM2, L0H5 -> L24H8: -21.6 as a
  mean of ratios, -12.3 as a ratio of sums). The per-prompt ratios stay available
  (:meth:`ProjectionRatios.pr`).
* **Cosine** ``o_B . o_A / (|o_B| |o_A|)`` per prompt, reported beside every PR. A PR
  is a cosine times a norm ratio, ``PR = cos * |o_B| / |o_A|``: a large reader and a small
  writer give a large |PR| at a negligible cosine (SmolLM2, embed -> L0H0: PR -0.35 at
  cosine -0.016), which is not erasure. An erasure finding should assert on both.
* **Value-input check** (causal): B's output is recomputed from its value path with A's
  output removed from B's input, B's attention pattern and norm scale frozen at the
  clean run. If B erases *because it reads A*, its PR onto A collapses toward 0.
  The recomputation is first checked to reproduce B's actual ``hook_z`` from the clean
  input; if it does not (an architecture this reading does not fit), it raises.
* **Scan**: PR (ratio of sums) for every (earlier writer, later head) pair, most negative
  first, leaving out pairs whose mean cosine is negligible (``|cos| < min_cosine``,
  default :data:`MIN_COSINE` = 0.1) and writers whose mean output norm is under
  ``min_norm_fraction`` (default 1%) of the largest writer's.

Non-finite activations raise :class:`~pytest_circuits.errors.MeasurementError` naming the
hook (a NaN would otherwise sort anywhere in a scan).

The DLA-versus-causal-effect side of the finding is
:func:`pytest_circuits.techniques.effects.dla_vs_total`.

Usage::

    prs = erasure.projection_ratios(model, prompts)
    prs.scan(10)                       # [PairScore(L23H2 -> L29H0: PR -1.38, cos -0.171), ...]
    vc = erasure.value_input_check(model, prompts, "L23H2", ["L29H0"])
    vc.clean.assert_below(-1.0); vc.cosine.assert_below(-0.1); vc.change.assert_above(0.1)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from .. import hooks as H
from ..store import ActivationStore, resolve
from ..components import MLP, Component, Head, parse, parse_many
from ..devices import dtype_rtol
from ..errors import CircuitsError, ComponentError, MeasurementError, NegligibleCosineWarning, bad
from ..measurement import Measurement
from ..models import derived, info as model_info
from .effects import attn_output_weights, attn_post_gains, outputs

MIN_COSINE = 0.1            # |mean cosine| under this: the pair is not reported by the scan
MIN_NORM_FRACTION = 0.01    # writers under 1% of the largest writer's mean norm: left out


def _check_finite(t: Any, what: str) -> None:
    import torch

    if not bool(torch.isfinite(t).all()):
        nbad = int((~torch.isfinite(t)).sum())
        raise MeasurementError(bad("activations", f"{nbad} non-finite values in {what}",
                                   "finite activations (check the model's weights and dtype)"))


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise CircuitsError(bad(name, value, "a number in [0, 1]"))
    return float(value)


def _distinct(comps: tuple[Component, ...], what: str) -> tuple[Component, ...]:
    if not comps:
        raise ComponentError(bad(what, "[]", "at least one component"))
    dup = [str(c) for i, c in enumerate(comps) if c in comps[:i]]
    if dup:
        raise ComponentError(bad(what, [str(c) for c in comps], f"distinct components ({dup[0]} repeats)"))
    return comps


class PairScore(tuple):
    """One scan row: unpacks as ``(writer, reader, pr)`` (the earlier API); ``cosine`` is the
    mean per-prompt cosine of the pair and ``pr`` the ratio of sums."""

    cosine: float

    def __new__(cls, writer: Component, reader: Component, pr: float, cosine: float) -> "PairScore":
        self = super().__new__(cls, (writer, reader, pr))
        self.cosine = cosine
        return self

    @property
    def writer(self) -> Component:
        return self[0]

    @property
    def reader(self) -> Component:
        return self[1]

    @property
    def pr(self) -> float:
        return self[2]

    def __repr__(self) -> str:
        return f"PairScore({self[0]} -> {self[1]}: PR {self[2]:+.3g}, cos {self.cosine:+.3g})"


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
        """Per-prompt PR(reader, writer) (noisy where the writer barely writes; the
        aggregate is :meth:`ratio`)."""
        r, w = self._i(reader), self._i(writer)
        return self.dots[:, r, w] / self.dots[:, w, w].clamp_min(1e-30)

    def cosine(self, reader: Any, writer: Any) -> Any:
        """Per-prompt cosine of ``reader``'s output with ``writer``'s (0 where one is zero)."""
        r, w = self._i(reader), self._i(writer)
        return self.dots[:, r, w] / (self.dots[:, r, r] * self.dots[:, w, w]).sqrt().clamp_min(1e-30)

    def _sum_terms(self, readers: Any, writer: Any) -> tuple[Any, Any, Any, tuple[Component, ...], Component]:
        """Per prompt: ``(sum_r o_r) . o_A``, ``|o_A|^2`` and ``|sum_r o_r|^2``."""
        rs = _distinct(parse_many(readers), "readers")
        w = self._i(writer)
        ri = [self._i(r) for r in rs]
        num = sum(self.dots[:, r, w] for r in ri)
        sq = sum(self.dots[:, a, b] for a in ri for b in ri)
        return num, self.dots[:, w, w], sq, rs, self.components[w]

    def ratio(self, readers: Any, writer: Any) -> float:
        """PR as a ratio of sums over prompts, ``sum_i (sum_r o_r) . o_A / sum_i |o_A|^2``."""
        num, den, _, _, w = self._sum_terms(readers, writer)
        total = float(den.sum())
        if not total > 0:
            raise MeasurementError(f"PR onto {w}: {w} writes nothing at the last position of any prompt "
                                   "(|o_A|^2 sums to 0), so a projection onto it is undefined")
        return float(num.sum()) / total

    def mean_cosine(self, readers: Any, writer: Any) -> float:
        """Mean over prompts of the cosine of the readers' summed output with the writer's."""
        num, den, sq, _, _ = self._sum_terms(readers, writer)
        return float((num / (sq * den).sqrt().clamp_min(1e-30)).mean())

    def measure(self, readers: Any, writer: Any, *, what: str = "pr", min_cosine: float = MIN_COSINE,
                **kw: Any) -> Measurement:
        """PR of ``readers`` (their outputs summed) onto ``writer`` as a ratio of sums
        (:meth:`Measurement.from_ratio`; the mean cosine is in its provenance, and a
        :class:`NegligibleCosineWarning` is issued when ``|cos| < min_cosine``), or with
        ``what="cosine"`` the per-prompt cosine of the summed readers with the writer."""
        import torch

        min_cosine = _check_fraction("min_cosine", min_cosine)
        num, den, sq, rs, w = self._sum_terms(readers, writer)
        names = "+".join(str(r) for r in rs)
        cos = num / (sq * den).sqrt().clamp_min(1e-30)
        prov = {"prompts": self.prompts, "position": "last", "writer": str(w), "readers": names}
        if what == "cosine":
            return Measurement.from_values(f"COSINE({names} onto {w})", cos, model=self.model,
                                           labels=self.labels, provenance=prov, **kw)
        if what != "pr":
            raise CircuitsError(bad("what", what, "'pr' or 'cosine'"))
        if not float(den.sum()) > 0:
            raise MeasurementError(f"PR({names} onto {w}): {w} writes nothing at the last position of "
                                   "any prompt (|o_A|^2 sums to 0), so a projection onto it is undefined")
        mc = float(cos.mean())
        prov.update(mean_cosine=mc, aggregation="ratio of sums: sum_i o_B.o_A / sum_i |o_A|^2")
        if abs(mc) < min_cosine:
            warnings.warn(f"PR({names} onto {w}): mean cosine {mc:+.3g} is under {min_cosine} in size; the "
                          "ratio reflects the norms, not the reader writing against the writer",
                          NegligibleCosineWarning, stacklevel=2)
        return Measurement.from_ratio(f"PR({names} onto {w})", num, den.to(torch.float64), model=self.model,
                                      labels=self.labels, provenance=prov, **kw)

    def scan(self, k: int = 10, *, writers: Sequence[Any] | None = None, min_cosine: float = MIN_COSINE,
             min_norm_fraction: float = MIN_NORM_FRACTION) -> list[PairScore]:
        """The ``k`` most negative PRs (ratio of sums) of a later head onto an earlier writer,
        as :class:`PairScore` rows ``(writer, reader, pr)`` with ``.cosine``.

        Left out: pairs whose mean cosine is negligible (``|cos| < min_cosine``: the PR is
        then a norm ratio, not erasure) and writers whose mean output norm is under
        ``min_norm_fraction`` of the largest writer's (their ratios are noise).
        """
        import torch

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CircuitsError(bad("k", k, "a positive int (how many pairs to list)"))
        min_cosine = _check_fraction("min_cosine", min_cosine)
        min_norm_fraction = _check_fraction("min_norm_fraction", min_norm_fraction)
        diag = torch.diagonal(self.dots, dim1=1, dim2=2)                       # [n, C]
        norms = diag.clamp_min(0).sqrt().mean(0)                               # [C]
        pr = self.dots.sum(0) / diag.sum(0).unsqueeze(0).clamp_min(1e-30)      # [reader, writer]
        cos = (self.dots / (diag.unsqueeze(2) * diag.unsqueeze(1)).sqrt().clamp_min(1e-30)).mean(0)
        widx = range(len(self.components)) if writers is None else [self._i(w) for w in writers]
        out = []
        floor = min_norm_fraction * float(norms.max())
        for w in widx:
            cw = self.components[w]
            if not float(norms[w]) > 0 or float(norms[w]) < floor:
                continue
            for r, cr in enumerate(self.components):
                if isinstance(cr, Head) and cr.layer > cw.layer and abs(float(cos[r, w])) >= min_cosine:
                    out.append(PairScore(cw, cr, float(pr[r, w]), float(cos[r, w])))
        out.sort(key=lambda t: t[2])
        return out[:k]

    def table(self, k: int = 10, **kw: Any) -> str:
        """The scan as text: writer, reader, PR (ratio of sums), mean cosine."""
        rows = self.scan(k, **kw)
        lines = [f"{'writer':>8} {'reader':>8} {'PR':>8} {'cos':>7}"]
        lines += [f"{str(p.writer):>8} {str(p.reader):>8} {p.pr:+8.3f} {p.cosine:+7.3f}" for p in rows]
        return "\n".join(lines)


def projection_ratios(model: Any, prompts: Any, *, intervention: Any = None,
                      activations: ActivationStore | None = None) -> ProjectionRatios:
    """Dot products of every pair of writers' outputs at each prompt's last position."""
    outs = outputs(model, prompts, intervention=intervention, store=activations)
    v = outs.vectors.permute(1, 0, 2)                        # [n, C, d]
    dots = v @ v.transpose(1, 2)
    if not bool(dots.isfinite().all()):
        import torch

        badc = [str(c) for c, ok in zip(outs.components, torch.isfinite(outs.vectors).flatten(1).all(1)) if not ok]
        raise MeasurementError(bad("activations", f"non-finite outputs of {badc[:5]}",
                                   "finite activations (check the model's weights and dtype)"))
    return ProjectionRatios(model_info(model).label, outs.components, dots, prompts.name,
                            prompts.prompts)


def _full_output(model: Any, acts: dict, comp: Component) -> Any:
    if isinstance(comp, Head):
        z = acts[H.z(comp.layer)][:, :, comp.head].double()
        out = z @ attn_output_weights(model)[comp.layer, comp.head]
        post = attn_post_gains(model)
        if post is not None:      # what the head writes through the post-attention norm
            # (padded positions: z and the scale are both 0 there, the write 0)
            out = out * post[comp.layer] / acts[H.attn_post_scale(comp.layer)].double().clamp_min(1e-30)
        return out
    if isinstance(comp, MLP):
        return acts[H.mlp_out(comp.layer)].double()
    return acts[H.EMBED].double()


def _hooks_for_output(comp: Component, model: Any = None) -> list[str]:
    if isinstance(comp, Head):
        post = model is not None and attn_post_gains(model) is not None
        return [H.z(comp.layer)] + ([H.attn_post_scale(comp.layer)] if post else [])
    if isinstance(comp, MLP):
        return [H.mlp_out(comp.layer)]
    return [H.EMBED]


@dataclass(frozen=True, eq=False)
class ValueCheck:
    """PR of the readers (summed) onto the writer, clean and with the writer removed from
    the readers' value input, each a ratio of sums over prompts; ``change`` is
    ``without_writer - clean`` on the same denominator, ``cosine`` the per-prompt cosine of
    the readers' clean output with the writer's; ``reproduction_error`` is the max relative
    error of the recomputed clean reader outputs against the model's own."""

    clean: Measurement
    without_writer: Measurement
    reproduction_error: float
    change: Measurement | None = None
    cosine: Measurement | None = None

    def __post_init__(self) -> None:
        if self.change is None:   # built by hand from two measurements: paired per-example values
            if self.clean.ratio or self.without_writer.ratio:
                # PRs are ratios of sums: their per-example contributions differenced would drop the
                # denominator's noise from the interval (value_input_check builds the change as a ratio)
                raise MeasurementError(bad("change", None, "the change of two ratios, built as a ratio of "
                                           "the numerators' difference over the shared denominator "
                                           "(Measurement.from_ratio), as value_input_check does"))
            object.__setattr__(self, "change", self.without_writer - self.clean)

    def __repr__(self) -> str:
        cos = f", cos {self.cosine.mean:+.3f}" if self.cosine is not None else ""
        return (f"ValueCheck(PR clean {self.clean.mean:+.3f}{cos} -> without writer in value input "
                f"{self.without_writer.mean:+.3f}; recomputation error {self.reproduction_error:.1e})")


def value_input_check(model: Any, prompts: Any, writer: Any, readers: Any, *,
                      activations: ActivationStore | None = None, tolerance: float | None = None,
                      min_cosine: float = MIN_COSINE) -> ValueCheck:
    """Remove ``writer``'s output from each reader head's value input (pattern and norm
    scale frozen) and measure the readers' summed PR onto the writer, before and after.

    Every PR is a ratio of sums over prompts (see the module docstring); the change is
    ``sum_i (o_B,i^without - o_B,i) . o_A,i / sum_i |o_A,i|^2``, paired on the same prompts.
    A :class:`NegligibleCosineWarning` is issued when the readers' clean output is nearly
    orthogonal to the writer's (``|mean cosine| < min_cosine``). ``tolerance``: the relative
    error allowed when each reader's ``hook_z`` is recomputed from its value path (default
    1e-3, or the machine epsilon of a half-precision model:
    :func:`pytest_circuits.devices.dtype_rtol`)."""
    import torch

    min_cosine = _check_fraction("min_cosine", min_cosine)
    if tolerance is None:
        tolerance = dtype_rtol(model, 1e-3)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < math.inf:
        raise CircuitsError(bad("tolerance", tolerance, "a positive number (relative error of the recomputed hook_z)"))
    store = resolve(activations)
    A = parse(writer, model)
    Bs = _distinct(parse_many(readers, model), "readers")
    for B in Bs:
        if not isinstance(B, Head):
            raise ComponentError(bad("readers", str(B), "attention heads (the check acts on the value path)"))
        if B.layer <= max(A.layer, -1) and not (A.layer == -1):
            raise ComponentError(bad("readers", str(B), f"heads in layers after the writer {A} (layer {A.layer})"))
    names = set(_hooks_for_output(A, model))
    post = attn_post_gains(model)
    pre_norm = H.ln1_scale(0) in model.hook_dict      # OLMo-2's attention reads the residual unnormalized
    for B in Bs:
        names |= {H.resid_pre(B.layer), H.last(H.pattern(B.layer)), H.last(H.z(B.layer))}
        names |= {H.ln1_scale(B.layer)} if pre_norm else set()
        names |= {H.last(H.attn_post_scale(B.layer))} if post is not None else set()
    acts = store.get(model, prompts, sorted(names))
    for name in sorted(names):
        _check_finite(acts[name], name)
    o_A = _full_output(model, acts, A)                                   # [n, pos, d]
    rows = torch.arange(len(prompts))
    last = prompts.last
    o_A_last = o_A[rows, last]
    norm2 = (o_A_last * o_A_last).sum(-1)
    if not float(norm2.sum()) > 0:
        raise MeasurementError(f"value_input_check: the writer {A} writes nothing at the last position of "
                               f"any of the {len(prompts)} prompts (|o_A|^2 sums to 0), so a projection onto "
                               "it is undefined")
    n_rep = model.cfg.n_heads // getattr(model.cfg, "n_key_value_heads", None) if getattr(
        model.cfg, "n_key_value_heads", None) else 1
    num_clean = torch.zeros(len(prompts), dtype=torch.float64)
    num_without = torch.zeros(len(prompts), dtype=torch.float64)
    o_B_sum = torch.zeros_like(o_A_last)
    worst = 0.0
    for B in Bs:
        resid = acts[H.resid_pre(B.layer)].double()
        scale = (acts[H.ln1_scale(B.layer)].double() if pre_norm        # [n, pos, 1]
                 else torch.ones(resid.shape[:2] + (1,), dtype=torch.float64))
        pattern = acts[H.last(H.pattern(B.layer))][:, B.head].double()     # [n, k_pos]
        W_V = _value_weights(model)[B.layer, B.head // n_rep]
        W_O = attn_output_weights(model)[B.layer, B.head]
        if post is not None:      # through the post-attention norm, its scale frozen at the clean run
            W_O = W_O * post[B.layer] / acts[H.last(H.attn_post_scale(B.layer))].double().reshape(-1, 1, 1)
        b_V = _bias(model, "b_V", B.layer, B.head // n_rep)

        def z_last(x: Any) -> Any:
            v = (x / scale.clamp_min(1e-30)) @ W_V + b_V                 # [n, pos, d_head]
            return (pattern.unsqueeze(-1) * v).sum(1)                     # [n, d_head]

        z_ref = acts[H.last(H.z(B.layer))][:, B.head].double()
        z_re = z_last(resid)
        err = float((z_re - z_ref).norm() / z_ref.norm().clamp_min(1e-30))
        if not err <= tolerance:   # NaN fails too
            raise CircuitsError(f"value_input_check: recomputing {B} from its value path gives relative error "
                                f"{err:.2e} against the model's hook_z (tolerance {tolerance}); this check assumes "
                                "a pre-norm model in compatibility mode (norm weights folded into W_V)")
        worst = max(worst, err)
        def write(zv: Any) -> Any:
            return zv @ W_O if W_O.dim() == 2 else torch.einsum("ne,ned->nd", zv, W_O)

        o_B = write(z_re)
        o_B_without = write(z_last(resid - o_A))
        o_B_sum += o_B
        num_clean += (o_B * o_A_last).sum(-1)
        num_without += (o_B_without * o_A_last).sum(-1)
    _check_finite(torch.stack([num_clean, num_without]), "the recomputed reader outputs")
    label = "+".join(str(b) for b in Bs)
    mname = model_info(model).label
    cos = num_clean / (norm2 * (o_B_sum * o_B_sum).sum(-1)).sqrt().clamp_min(1e-30)
    mc = float(cos.mean())
    prov = {"prompts": prompts.name, "writer": str(A), "readers": label, "position": "last",
            "aggregation": "ratio of sums: sum_i o_B.o_A / sum_i |o_A|^2", "mean_cosine": mc}
    if abs(mc) < min_cosine:
        warnings.warn(f"value_input_check: {label} onto {A}: mean cosine {mc:+.3g} is under {min_cosine} in size; "
                      "the projection ratio reflects the norms, not the readers writing against the writer",
                      NegligibleCosineWarning, stacklevel=2)
    kw = dict(model=mname, provenance=prov, labels=prompts.prompts)
    clean = Measurement.from_ratio(f"PR({label} onto {A})", num_clean, norm2, **kw)
    without = Measurement.from_ratio(f"PR({label} onto {A} | {A} removed from value input)", num_without,
                                     norm2, **kw)
    change = Measurement.from_ratio(f"change of PR({label} onto {A})", num_without - num_clean, norm2, **kw)
    cosine = Measurement.from_values(f"COSINE({label} onto {A})", cos, **kw)
    return ValueCheck(clean, without, worst, change, cosine)


def _value_weights(model: Any) -> Any:
    """``W_V`` (float64, CPU), once per model and weights state (see :func:`..models.derived`)."""
    import torch

    return derived(model, "W_V:float64", lambda m: m.W_V.detach().to("cpu", torch.float64))


def _bias(model: Any, name: str, layer: int, head: int) -> Any:
    import torch

    def compute(m: Any) -> Any:
        try:
            b = getattr(m, name)
        except AttributeError:
            return None
        return b.detach().to("cpu", torch.float64)

    b = derived(model, f"{name}:float64", compute)
    if b is None:
        return torch.zeros((), dtype=torch.float64)
    return b[layer, head]
