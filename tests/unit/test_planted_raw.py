"""Planted ground truth, checked with raw TransformerLens hooks only.

The four checkpoints in tests/data/planted/ (written by scripts/make_planted.py from
pytest_circuits/planted.py) have hand-set weights; these tests load them the way users
do (``load_model``: a TransformerBridge in compatibility mode) and confirm each planted
mechanism, and its absence in the control, without any of this package's measurement
code: per-head outputs from ``hook_z @ W_O``, direct logit attribution from
``ln_final.hook_scale`` and ``W_U``, and zero-ablation of a head's ``hook_z`` slice.

A bridge forward costs ~0.3 s even on these tiny models, so all prompts go through in
one right-padded batch, read at each prompt's own last real position, and each model
is run twice (clean, ablated) once per module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pytest_circuits
from pytest_circuits import planted
from pytest_circuits.components import parse

DATA = Path(__file__).resolve().parent.parent / "data" / "planted"
NAMES = list(planted.BUILDERS)
PROMPTS = planted.PROMPTS
# DLA of a head writing WRITE * U, read through the final norm of a residual 8 C + r U:
# WRITE * LOGIT_SCALE / sqrt((64 + r^2) / 32).
DLA_ERASURE = 8 / ((64 + 0.05 ** 2) / 32) ** 0.5   # 5.657 (writer's output is 95% erased)
DE_BACKUP = 8 / (65 / 32) ** 0.5                   # 5.613


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("planted-cache")
    return {n: pytest_circuits.load_model(str(DATA / n), cache_dir=cache, device="cpu") for n in NAMES}


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def run(model, ablate: str | None = None) -> dict[str, torch.Tensor]:
    """One batched forward over PROMPTS, everything read at each prompt's last real token.

    Returns ``logits`` [n, vocab], ``scale`` [n] (ln_final.hook_scale) and, for every head
    ``L{l}H{h}``, its output ``hook_z[:, last, h] @ W_O[l][h]`` [n, d_model]. ``ablate``
    zeroes that head's ``hook_z`` slice.
    """
    got: dict[str, torch.Tensor] = {}

    def keep(t, hook):
        got[hook.name] = t.detach().clone()

    def zero(z, hook):
        z = z.clone()
        z[:, :, parse(ablate).head] = 0.0
        return z

    names = [z_name(L) for L in range(model.cfg.n_layers)] + ["ln_final.hook_scale"]
    fwd = [(z_name(parse(ablate).layer), zero)] if ablate else []
    fwd += [(n, keep) for n in names]
    tokens = model.to_tokens(PROMPTS)  # right-padded
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in PROMPTS])
    rows = torch.arange(len(PROMPTS))
    for i, p in enumerate(PROMPTS):  # right padding: ``last`` is each prompt's own last token
        assert tokens[i, last[i]] == model.to_tokens(p)[0, -1]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd)
        out = {"logits": logits[rows, last], "scale": got["ln_final.hook_scale"][rows, last, 0]}
        for L in range(model.cfg.n_layers):
            z = got[z_name(L)][rows, last]  # [n, head, d_head]
            for h in range(model.cfg.n_heads):
                out[f"L{L}H{h}"] = z[:, h] @ model.W_O[L][h]
    return out


def dla(model, r, comp: str, token: int) -> torch.Tensor:
    """Direct logit attribution of head ``comp`` on ``token`` (per prompt) in run ``r``."""
    with torch.no_grad():
        return r[comp] @ model.W_U[:, token] / r["scale"]


def erasure_numbers(model) -> dict[str, torch.Tensor]:
    spec = planted.ERASURE
    ans = model.to_single_token(spec["answer"])
    clean, ablated = run(model), run(model, ablate=spec["writer"])
    o_a, o_b = clean[spec["writer"]], clean[spec["eraser"]]
    return dict(
        dla=dla(model, clean, spec["writer"], ans),
        te=clean["logits"][:, ans] - ablated["logits"][:, ans],
        pr=(o_b * o_a).sum(-1) / (o_a * o_a).sum(-1),
        eraser_norm=o_b.norm(dim=-1),
        ablated_writer_norm=ablated[spec["writer"]].norm(dim=-1),
        logits=clean["logits"][:, ans],
    )


def backup_numbers(model) -> dict[str, torch.Tensor]:
    spec = planted.BACKUP
    ans = model.to_single_token(spec["answer"])
    clean, ablated = run(model), run(model, ablate=spec["primary"])
    de_q, de_q_abl = dla(model, clean, spec["backup"], ans), dla(model, ablated, spec["backup"], ans)
    return dict(de_p=dla(model, clean, spec["primary"], ans), de_q=de_q, de_q_ablated=de_q_abl,
                delta=de_q_abl - de_q, te_p=clean["logits"][:, ans] - ablated["logits"][:, ans],
                ablated_primary_norm=ablated[spec["primary"]].norm(dim=-1),
                logits=clean["logits"][:, ans])


@pytest.fixture(scope="module")
def numbers(models):
    return {"erasure": erasure_numbers(models["erasure"]),
            "erasure_control": erasure_numbers(models["erasure_control"]),
            "backup": backup_numbers(models["backup"]),
            "backup_control": backup_numbers(models["backup_control"])}


def test_erasure_dla_misattributes_writer(numbers):
    n = numbers["erasure"]
    assert (n["ablated_writer_norm"] == 0).all()
    torch.testing.assert_close(n["dla"], torch.full_like(n["dla"], DLA_ERASURE), atol=1e-3, rtol=0)
    assert (n["te"].abs() < 0.2 * n["dla"]).all()                 # measured: te = 0.283 (5% of DLA)
    torch.testing.assert_close(n["te"], (1 - planted.ERASE_FRACTION) * n["dla"], atol=2e-3, rtol=0)
    assert (n["pr"] < -0.8).all()                                  # measured: -0.95
    torch.testing.assert_close(n["pr"], torch.full_like(n["pr"], -planted.ERASE_FRACTION),
                               atol=1e-4, rtol=0)


def test_erasure_control_total_effect_matches_dla(numbers):
    n = numbers["erasure_control"]
    assert (n["dla"] > 5.0).all()
    assert ((n["te"] - n["dla"]).abs() < 0.2 * n["dla"]).all()
    assert ((n["te"] - n["dla"]).abs() < 0.01 * n["dla"]).all()   # measured: ~1e-3 relative
    assert (n["pr"].abs() < 0.2).all()                            # measured: 0 (orthogonal output)
    assert (n["eraser_norm"] > 0.9).all()  # the control's eraser slot is active, not dead


def test_backup_head_compensates(numbers):
    n = numbers["backup"]
    assert (n["ablated_primary_norm"] == 0).all()
    torch.testing.assert_close(n["de_p"], torch.full_like(n["de_p"], DE_BACKUP), atol=1e-3, rtol=0)
    assert (n["de_q"].abs() < 0.05 * n["de_p"]).all()    # silent while the primary is present
    assert (n["delta"] > 0.3 * n["de_p"]).all()          # measured: 0.6 x DE(P)
    torch.testing.assert_close(n["delta"], planted.BACKUP_FRACTION * n["de_p"], atol=0, rtol=0.02)
    # self-repair: the primary's total effect is well below its direct effect
    torch.testing.assert_close(n["te_p"], (1 - planted.BACKUP_FRACTION) * n["de_p"], atol=0, rtol=0.05)


def test_backup_control_does_not_compensate(numbers):
    n = numbers["backup_control"]
    assert (n["ablated_primary_norm"] == 0).all()
    assert (n["de_q"] > 0.5 * n["de_p"]).all()            # the backup slot has a direct effect ...
    assert (n["delta"].abs() < 0.05 * n["de_p"]).all()    # ... that does not change: no compensation
    torch.testing.assert_close(n["te_p"], n["de_p"], atol=0, rtol=0.05)


def test_answer_does_not_depend_on_the_prompt(numbers):
    for name, n in numbers.items():
        lg = n["logits"]
        torch.testing.assert_close(lg, lg[:1].expand_as(lg), atol=1e-4, rtol=1e-4, msg=name)


def test_builders_deterministic_and_shipped_files_fresh(tmp_path):
    for name, build in planted.BUILDERS.items():
        a, b = build(tmp_path / "a" / name), build(tmp_path / "b" / name)
        fresh = (a / "model.safetensors").read_bytes()
        assert fresh == (b / "model.safetensors").read_bytes(), f"{name}: builder is not deterministic"
        assert len(fresh) <= 1 << 20
        shipped = DATA / name
        assert (shipped / "model.safetensors").read_bytes() == fresh, (
            f"tests/data/planted/{name} is stale: rerun scripts/make_planted.py")
        for f in ("PLANTED.json", "tokenizer.json"):
            assert (shipped / f).read_text() == (a / f).read_text(), f"{name}/{f} is stale"
