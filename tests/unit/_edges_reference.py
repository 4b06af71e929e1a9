"""Edge attribution one prompt at a time, as pytest_circuits.techniques.edges computed it before
it ran prompts in batches (kept here as the reference the batched code must equal): per prompt
and step, one forward and backward of the whole model for d m / d z, d m / d mlp_out and
d m / d resid_final, then per layer a side forward of four copies of the prompt (from the
tokens) and one vector-Jacobian product per head."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pytest_circuits import hooks as H
from pytest_circuits.components import MLP, Embed, Head
from pytest_circuits.models import info as model_info
from pytest_circuits.store import ActivationStore
from pytest_circuits.techniques import edges as E


class _Stop(Exception):
    pass


def _run(model: Any, tokens: Any, hooks: list) -> Any:
    try:
        with model.hooks(fwd_hooks=hooks):
            return model(tokens)
    except _Stop:
        return None


def _receiver_grads(model, tokens, metric, targets, layers, seen_metric):
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
        logits = _run(model, tokens, hooks)
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
            raise _Stop

        side_hooks = [(H.resid_pre(l), inputs), (E._qkv(l, "q"), one(0)), (E._qkv(l, "k"), one(1)),
                      (E._qkv(l, "v"), one(2)), (H.z(l), take_z), (H.mlp_out(l), take_mlp)]
        if not par:
            side_hooks.append((H.resid_mid(l), mid))
        with torch.enable_grad():
            _run(model, reps, side_hooks)
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
            g = _receiver_grads(model, tokens, metric, targets, layers, at_clean if k == 0 else None)
            for key, v in g.items():
                acc[key] = acc[key] + v if key in acc else v
        for j, e in enumerate(es):
            grad = acc[(e.receiver, e.part)] / steps
            scores[j, i] = float((deltas[e.sender][i, :length] * grad).sum())
        fixed = [(nm, (lambda t, hook=None, v=corr[nm][i: i + 1, :length]: v.to(t.device, t.dtype))) for nm in names]
        with torch.no_grad():
            totals[i] = float(metric(_run(model, tokens, fixed))) - at_clean[0]
        at_clean_all.append(at_clean[0])
    return scores, totals, np.asarray(at_clean_all)
