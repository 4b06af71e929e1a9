"""hypothesis strategies for claims, and settings profiles for expensive model claims.

    from hypothesis import given
    from pytest_circuits import strategies as cst

    @cst.model_settings
    @given(row=cst.greater_than_rows())
    def test_property(model, row): ...

* :func:`components` - components valid for a model (heads, attention layers, MLPs, neurons);
* :func:`template_prompts` - prompts from a template and filler lists;
* :func:`greater_than_rows` - ``(noun, century, YY)`` rows for :func:`pytest_circuits.tasks.from_rows`;
* :func:`feature_examples` - ``(text, label)`` pairs drawn from a probing dataset.

Profiles (registered on import; load one with ``settings.load_profile``):
``circuits`` - few examples, no deadline (a model call is slow), no too-slow health check;
``circuits-ci`` - the same, derandomized, so a CI run is reproducible from its log.
:data:`model_settings` applies the ``circuits`` settings to one test.
"""

from __future__ import annotations

from typing import Any, Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from .components import MLP, Attn, Head, Neuron
from .errors import CircuitsError, bad

settings.register_profile("circuits", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("circuits-ci", parent=settings.get_profile("circuits"), derandomize=True)

model_settings = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def components(model: Any, kinds: Sequence[str] = ("head", "attn", "mlp", "neuron"),
               layers: Sequence[int] | None = None) -> st.SearchStrategy:
    """Components of ``model`` (validated against its config)."""
    cfg = getattr(model, "cfg", model)
    ls = list(layers) if layers is not None else list(range(cfg.n_layers))
    bad_layers = [l for l in ls if not 0 <= l < cfg.n_layers]
    if not ls or bad_layers:
        raise CircuitsError(bad("layers", ls, f"layers in 0..{cfg.n_layers - 1}"))
    layer = st.sampled_from(ls)
    makers = {"head": st.builds(Head, layer, st.integers(0, cfg.n_heads - 1)),
              "attn": st.builds(Attn, layer), "mlp": st.builds(MLP, layer),
              "neuron": st.builds(Neuron, layer, st.integers(0, cfg.d_mlp - 1))}
    unknown = [k for k in kinds if k not in makers]
    if unknown or not kinds:
        raise CircuitsError(bad("kinds", list(kinds), f"some of {sorted(makers)}"))
    return st.one_of(*(makers[k] for k in kinds))


def template_prompts(template: str, **fillers: Sequence[str]) -> st.SearchStrategy:
    """Strings from ``template.format(**choice)``, each filler drawn from its list."""
    for name, options in fillers.items():
        if not options:
            raise CircuitsError(bad(name, list(options), "a non-empty list of fillers"))
    try:
        template.format(**{k: v[0] for k, v in fillers.items()})
    except (KeyError, IndexError) as e:
        raise CircuitsError(bad("template", template, f"placeholders matching the fillers ({e})")) from None
    return st.fixed_dictionaries({k: st.sampled_from(list(v)) for k, v in fillers.items()}).map(
        lambda d: template.format(**d))


def greater_than_rows(nouns: Sequence[str] | None = None, centuries: Sequence[int] = range(11, 18),
                      yy: Sequence[int] = range(2, 99), *, model: Any = None) -> st.SearchStrategy:
    """``(noun, century, YY)`` rows for :func:`pytest_circuits.tasks.from_rows`; with ``model``,
    only nouns that are one ordinary token of its tokenizer (never its unknown token)."""
    from .tasks.greater_than import NOUNS

    nouns = list(nouns or NOUNS)
    if model is not None:
        from .prompts import is_single_token

        nouns = [w for w in nouns if is_single_token(model, " " + w)]
        if not nouns:
            raise CircuitsError(bad("nouns", nouns, "at least one noun that is a single token of the model"))
    return st.tuples(st.sampled_from(nouns), st.sampled_from(list(centuries)), st.sampled_from(list(yy)))


def feature_examples(dataset: Any) -> st.SearchStrategy:
    """``(text, label)`` pairs drawn from a probing dataset (``tasks.probing_data``)."""
    rows = list(zip(dataset.texts, dataset.labels))
    if not rows:
        raise CircuitsError(bad("dataset", dataset, "a dataset with at least one example"))
    return st.sampled_from(rows)
