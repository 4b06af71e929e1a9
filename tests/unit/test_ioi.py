"""IOI: the prompt builder, every per-head score against raw TransformerLens hooks, the
planted IOI model and its control (tests/data/planted/ioi*, scripts/train_ioi.py), the
compensation machinery on the planted backup model, not-applicable tokenizers, bad input,
and GPT-2-architecture and grouped-query tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_circuits import (ActivationStore, CircuitsError, MeasurementError, NoOpInterventionWarning, PromptSet,
                             PromptSetError, planted)
from pytest_circuits.components import MLP, Head
from pytest_circuits.scores import ComponentScores
from pytest_circuits.tasks.ioi import (CORRUPTIONS, NAMES, ORDERS, TEMPLATES, TooFewNamesError, from_rows,
                                       ioi, usable_names, vocabulary)
from pytest_circuits.techniques import ioi as I

DATA = Path(__file__).resolve().parent.parent / "data" / "planted"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ioi-cache")


@pytest.fixture(scope="module")
def planted_ioi(cache):
    from pytest_circuits import load_model

    return load_model(str(DATA / "ioi"), device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def planted_control(cache):
    from pytest_circuits import load_model

    return load_model(str(DATA / "ioi_control"), device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def truth():
    return json.loads((DATA / "ioi" / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def ps(planted_ioi):
    return ioi(planted_ioi, n=64, seed=0)


@pytest.fixture(scope="module")
def store():
    return ActivationStore()


def _tiny(tmp_path_factory, cache, **kw):
    from pytest_circuits import load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ioi-tiny") / "ckpt", words=vocabulary(), seed=3, **kw)
    return load_model(str(path), device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def gpt2_tiny(tmp_path_factory, cache):
    return _tiny(tmp_path_factory, cache, arch="gpt2", n_layers=3, n_heads=4, d_model=64, d_mlp=128)


@pytest.fixture(scope="module")
def gqa_tiny(tmp_path_factory, cache):
    return _tiny(tmp_path_factory, cache, n_layers=3, n_heads=4, n_kv_heads=2, d_model=64, d_mlp=128)


# ----------------------------------------------------------------------------- raw hooks
@torch.no_grad()
def _raw(model, ps):
    """Attention from END to IO/S1/S2, each head's DE on IO - S and LD, with raw hooks only."""
    logits, cache = model.run_with_cache(ps.tokens)
    n = len(ps)
    rows = torch.arange(n)
    end = torch.tensor(ps.lengths) - 1
    io, s = torch.tensor(ps.answer_ids), torch.tensor(ps.foil_ids)
    w = (model.W_U[:, io] - model.W_U[:, s]).T.double()
    scale = cache["ln_final.hook_scale"][rows, end].double().reshape(-1)
    L, nh = model.cfg.n_layers, model.cfg.n_heads
    out = {k: torch.zeros(L, nh, n, dtype=torch.float64)
           for k in ("attn_io", "attn_s1", "attn_s2", "de", "attn_sink", "abc_de")}
    _, ccache = model.run_with_cache(ps.corrupted.tokens)
    cscale = ccache["ln_final.hook_scale"][rows, end].double().reshape(-1)
    for l in range(L):
        pat = cache[f"blocks.{l}.attn.hook_pattern"][rows, :, end]                  # [n, H, k]
        for key, meta in (("attn_io", "io_pos"), ("attn_s1", "s1_pos"), ("attn_s2", "s2_pos")):
            out[key][l] = pat[rows, :, torch.tensor(ps.meta[meta])].double().T
        out["attn_sink"][l] = pat[rows, :, 0].double().T
        out["de"][l] = _head_de(model, cache[f"blocks.{l}.attn.hook_z"][rows, end], l, w, scale).T
        # the same heads' direct effect on the clean IO - S in the ABC prompt's run
        out["abc_de"][l] = _head_de(model, ccache[f"blocks.{l}.attn.hook_z"][rows, end], l, w, cscale).T
    ld = (logits[rows, end, io] - logits[rows, end, s]).double()
    return out, ld, scale, w


def _head_de(model, z_end, layer, w, scale):
    """[n, H] direct effects on IO - S of layer ``layer``'s heads from their END ``hook_z``."""
    o = torch.einsum("nhd,hde->nhe", z_end.double(), model.W_O[layer].double())
    return (o * w.unsqueeze(1)).sum(-1) / scale.unsqueeze(1)


@torch.no_grad()
def _run_z(model, tokens, hooks):
    """Every layer's hook_z under ``hooks`` (raw run_with_hooks)."""
    got = {}

    def keep(t, hook):
        got[int(hook.name.split(".")[1])] = t.detach().clone()

    model.run_with_hooks(tokens, fwd_hooks=hooks + [(f"blocks.{l}.attn.hook_z", keep)
                                                     for l in range(model.cfg.n_layers)])
    return got


def _patch_hook(model, ps, layer, head, end_only):
    """Replace a head's hook_z by its value on the corrupted prompts (at END, or everywhere)."""
    _, ccache = model.run_with_cache(ps.corrupted.tokens)
    src = ccache[f"blocks.{layer}.attn.hook_z"]
    end = torch.tensor(ps.lengths) - 1

    def fn(z, hook):
        z = z.clone()
        if end_only:
            rows = torch.arange(z.shape[0])
            z[rows, end, head] = src[rows, end, head]
        else:
            z[:, :, head] = src[:, :, head]
        return z
    return (f"blocks.{layer}.attn.hook_z", fn)


# ----------------------------------------------------------------------------- the prompt builder
def test_builder_is_seeded_and_balanced(planted_ioi):
    a, b, c = ioi(planted_ioi, n=40, seed=0), ioi(planted_ioi, n=40, seed=0), ioi(planted_ioi, n=40, seed=1)
    assert a.prompts == b.prompts and a.corrupted.prompts == b.corrupted.prompts
    assert a.prompts != c.prompts
    assert a.meta["order"].count("ABBA") == a.meta["order"].count("BABA") == 20
    assert len(set(a.meta["template"])) > 1
    assert ioi(planted_ioi, n=5).meta["order"] == ("ABBA", "BABA", "ABBA", "BABA", "ABBA")


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_positions_names_and_corruption(planted_ioi, corruption):
    ps = ioi(planted_ioi, n=24, seed=2, corruption=corruption)
    usable = {" " + w for w in usable_names(planted_ioi)}
    assert ps.corrupted.lengths == ps.lengths
    tok = planted_ioi.tokenizer
    for i in range(len(ps)):
        t, c = ps.tokens[i].tolist(), ps.corrupted.tokens[i].tolist()
        io, s1, s2, end = (ps.meta[k][i] for k in ("io_pos", "s1_pos", "s2_pos", "end_pos"))
        assert ps.answers[i] in usable and ps.foils[i] in usable and ps.answers[i] != ps.foils[i]
        assert t[io] == ps.answer_ids[i] and t[s1] == t[s2] == ps.foil_ids[i]
        assert end == ps.lengths[i] - 1 and t.count(ps.answer_ids[i]) == 1 and t.count(ps.foil_ids[i]) == 2
        assert (io < s1) == (ps.meta["order"][i] == "ABBA") and s2 > max(io, s1)
        assert [j for j in range(ps.lengths[i]) if t[j] != c[j]] == sorted({io, s1, s2})
        names = {j: tok.decode([c[j]]).strip() for j in (io, s1, s2)}
        assert all(" " + v in usable for v in names.values())
        if corruption == "abc":      # three new names, all different, none of the clean two
            assert len(set(names.values())) == 3
            assert not set(names.values()) & {ps.meta["io"][i], ps.meta["s"][i]}
        else:                        # the first two swapped, the repeated one a third name
            assert c[io] == ps.foil_ids[i] and c[s1] == ps.answer_ids[i]
            assert names[s2] not in (ps.meta["io"][i], ps.meta["s"][i])


def test_from_rows_and_custom_templates(planted_ioi):
    ps = from_rows(planted_ioi, [(0, "ABBA", "Mary", "John", ("Tom", "Anna", "Paul"), "store", "drink")])
    assert ps.prompts == ("When Mary and John went to the store, John gave a drink to",)
    assert ps.corrupted.prompts[0].startswith("When Tom and Anna") and ps.answers == (" Mary",)
    own = ioi(planted_ioi, n=4, templates=["Then {A} and {B} went to the {place}, {S} gave it to"],
              names=["Mary", "John", "Tom", "Anna", "Paul", "Laura", "Mark", "Lisa", "Nobodyname"])
    assert all(p.startswith("Then ") for p in own.prompts)
    assert "Nobodyname" not in set(own.meta["io"]) | set(own.meta["s"])


def test_builder_bad_input(planted_ioi, tiny):
    for kw in (dict(n=0), dict(n=1), dict(n=True), dict(seed="0"), dict(corruption="abb"),
               dict(templates="When {A} and {B}, {S} gave to"), dict(templates=[]),
               dict(templates=["{A} and {B} went, {S} gave to"]),        # a name first: no leading space
               dict(templates=["When {B} and {A} went, {A} gave to {S}"]),
               dict(templates=["When {A} and {B} went to {where}, {S} gave to"]),
               dict(names="Mary John"), dict(places=[]), dict(objects=[" drink"])):
        with pytest.raises(PromptSetError):
            ioi(planted_ioi, **kw)
    with pytest.raises(PromptSetError):
        from_rows(planted_ioi, [(0, "ABBA", "Mary", "Mary", ("Tom", "Anna", "Paul"), "store", "drink")])
    with pytest.raises(PromptSetError):
        from_rows(planted_ioi, [(99, "ABBA", "Mary", "John", ("Tom", "Anna", "Paul"), "store", "drink")])
    with pytest.raises(TooFewNamesError, match="at least 8 names"):
        ioi(tiny, n=4)                    # the tiny test tokenizer knows two names: John, Mary
    assert issubclass(TooFewNamesError, PromptSetError)
    assert {"ABBA", "BABA"} == set(ORDERS) and len(NAMES) >= 50 and len(TEMPLATES) >= 4


def _layered(sc, key):
    """``[L, H, n]`` of one of the head scores' quantities (the raw-hook layout below)."""
    L, nh = sc.shape
    if key == "attn_sink":
        return sc.attention["sink"].reshape(L, nh, -1)
    if key == "abc_de":
        return sc.abc_de.reshape(L, nh, -1)
    return sc.quantity(key).values.reshape(L, nh, -1)


# ----------------------------------------------------------------------------- scores vs raw hooks
def test_head_scores_match_raw_hooks(planted_ioi, ps, store):
    sc = I.head_scores(planted_ioi, ps, activations=store)
    raw, ld, _, _ = _raw(planted_ioi, ps)
    for key in ("attn_io", "attn_s1", "attn_s2", "de", "attn_sink", "abc_de"):
        assert torch.allclose(_layered(sc, key), raw[key], atol=1e-4, rtol=1e-4), key
    off = 1 - raw["attn_sink"][1, 0]
    assert torch.allclose(sc.quantity("share_io").of("L1H0"), raw["attn_io"][1, 0] / off, atol=1e-4)
    assert torch.allclose(sc.quantity("share_preference").of("L1H0"),
                          (raw["attn_io"][1, 0] - raw["attn_s1"][1, 0] - raw["attn_s2"][1, 0]) / off, atol=1e-4)
    assert torch.allclose(sc.quantity("abc_drop").of("L1H0"), raw["de"][1, 0] - raw["abc_de"][1, 0], atol=1e-4)
    assert torch.allclose(sc.logit_diff, ld, atol=1e-3, rtol=1e-4)
    m = I.logit_diff(planted_ioi, ps, activations=store)
    assert abs(m.mean - float(ld.mean())) < 1e-3 and m.name == "ioi logit diff (IO - S)"
    assert sc.measure("L1H0").mean == pytest.approx(float(raw["de"][1, 0].mean()), abs=1e-4)
    assert sc.measure("L1H0").name == "DE(IO - S) L1H0"
    assert sc.quantity("attn_io").measure("L1H0").name == "attention END->IO L1H0"
    pref = sc.quantity("io_preference").of(Head(1, 0))
    assert torch.allclose(pref, raw["attn_io"][1, 0] - raw["attn_s1"][1, 0] - raw["attn_s2"][1, 0], atol=1e-5)
    assert sc.grid().shape == (2, 4) and sc.quantity("de").grid().shape == (2, 4)


def test_s_inhibition_score_matches_raw_hooks(planted_ioi, ps, store):
    sc = I.head_scores(planted_ioi, ps, activations=store)
    movers = ["L1H0", "L1H3"]
    si = I.s_inhibition(planted_ioi, ps, movers, sc, activations=store)
    raw, _, scale, w = _raw(planted_ioi, ps)
    share_s2 = raw["attn_s2"] / (1 - raw["attn_sink"])
    assert set(si.candidates) == {Head(l, h) for l in range(1) for h in range(4)
                                  if float(share_s2[l, h].mean()) >= I.MIN_ATTENTION}
    rows, end = torch.arange(len(ps)), torch.tensor(ps.lengths) - 1
    assert isinstance(si.scores, ComponentScores) and si.scores.components == si.candidates
    grid = si.scores.grid()
    for c in si.scores.components:
        z = _run_z(planted_ioi, ps.tokens, [_patch_hook(planted_ioi, ps, c.layer, c.head, True)])
        after = _head_de(planted_ioi, z[1][rows, end], 1, w, scale)[:, [0, 3]].sum(1)
        want = raw["de"][1, 0] + raw["de"][1, 3] - after
        assert torch.allclose(si.scores.of(c), want, atol=1e-3, rtol=1e-4)
        m = si.scores.measure(c, record=False)
        assert m.name == f"S-inhibition score {c}" and m.values == tuple(si.scores.of(c).tolist())
        assert grid[c.layer, c.head] == pytest.approx(float(want.detach().mean()), abs=1e-3)
    assert int(np.isnan(grid).sum()) == 8 - len(si.candidates)           # a head not scored: NaN, not 0
    for x in si.heads:                                                    # the located heads' scores: the same rows
        assert x.score.values == tuple(si.scores.of(x.head).tolist()) and x.score.name == f"S-inhibition score {x.head}"


def test_compensation_matches_raw_hooks(gqa_tiny, store):
    """Ablating two layer-1 heads of a random 3-layer GQA model (patched from ABC at every
    position): each later head's ΔDE on IO - S, the lost direct effect and the change of LD."""
    ps = ioi(gqa_tiny, n=16, seed=3)
    comp = I.compensation(gqa_tiny, ps, ["L1H0", "L1H2"], activations=store)
    raw, ld, scale, w = _raw(gqa_tiny, ps)
    hooks = [_patch_hook(gqa_tiny, ps, 1, 0, False), _patch_hook(gqa_tiny, ps, 1, 2, False)]
    z = _run_z(gqa_tiny, ps.tokens, hooks)
    rows, end = torch.arange(len(ps)), torch.tensor(ps.lengths) - 1
    for l in range(3):
        delta = _head_de(gqa_tiny, z[l][rows, end], l, w, scale).T - raw["de"][l]      # [H, n]
        for h in range(4):
            if Head(l, h) in (Head(1, 0), Head(1, 2)):
                continue
            got = comp.repair.delta_scores.of(f"L{l}H{h}")
            assert torch.allclose(got, delta[h], atol=1e-4, rtol=1e-4), (l, h)
            assert torch.equal(comp.delta_scores.of(Head(l, h)), got)
            assert comp.delta_scores.grid()[l, h] == pytest.approx(float(delta[h].mean()), abs=1e-4)
    own = _head_de(gqa_tiny, z[1][rows, end], 1, w, scale).T - raw["de"][1]             # [H, n]
    assert torch.allclose(comp.repair.lost, -own[[0, 2]].sum(0), atol=1e-4)
    logits = gqa_tiny.run_with_hooks(ps.tokens, fwd_hooks=hooks)
    io, s = torch.tensor(ps.answer_ids), torch.tensor(ps.foil_ids)
    after = (logits[rows, end, io] - logits[rows, end, s]).double()
    assert torch.allclose(torch.tensor(comp.total.values, dtype=torch.float64), after - ld, atol=1e-3)
    # the ablated name movers have no row: NaN in the grid, and the detection's heatmap shows 0 there
    g = comp.delta_scores.grid()
    assert g.shape == (3, 4) and np.isnan(g[1, 0]) and np.isnan(g[1, 2]) and int(np.isnan(g).sum()) == 2
    assert Head(1, 0) not in comp.delta_scores.components and MLP(1) in comp.delta_scores.components
    assert I._unscored_zero(g)[1, 0] == 0 and I._unscored_zero(g)[2, 3] == g[2, 3]


# ----------------------------------------------------------------------------- planted and control
def test_planted_ground_truth_is_found(planted_ioi, ps, truth, store):
    d = I.detect_ioi(planted_ioi, activations=store)
    print(d.summary())
    assert d.applicable and d.found and d.check == "ioi"
    movers = {m.head for m in I.name_movers(I.head_scores(planted_ioi, ps, activations=store))}
    assert {str(h) for h in movers} == set(truth["name_movers"]) == {"L1H0", "L1H1", "L1H2", "L1H3"}
    mover_de = sum(truth["heads"][h]["de"] for h in truth["name_movers"])
    gt_sinh = {h for h, v in truth["s_inhibition_scores"].items() if v > I.MIN_S_INHIBITION * mover_de}
    assert gt_sinh == {"L0H1"}
    names = [c for c, _ in d.components]
    assert set(names) == set(truth["name_movers"]) | gt_sinh          # no backups: nothing is downstream
    assert d.measurement("S-inhibition score L0H1").mean == pytest.approx(truth["s_inhibition_scores"]["L0H1"],
                                                                          rel=1e-3)
    ld = d.measurement("ioi logit diff (IO - S)")
    assert ld.mean == pytest.approx(truth["logit_diff"], rel=1e-3) and ld.lower > 10
    assert d.measurement("ioi logit diff change, name movers ablated").upper < -5
    assert d.measurement("backup restored fraction").mean == 0
    assert set(d.heatmaps) >= {"name-mover score: DE(IO - S)", "S-inhibition score",
                               "backup increase: ΔDE(IO - S) with the name movers ablated"}
    assert all(v.shape == (2, 4) for v in d.heatmaps.values())


@pytest.mark.parametrize("name", ["ioi", "ioi_control"])
def test_shipped_ground_truth_matches_the_model_and_the_detector(name, cache, store):
    """ground_truth.json was computed (scripts/train_ioi.py, raw hooks on prompts tokenized
    by the bridge) on exactly the shipped weights, and its per-head numbers are the
    detector's head scores."""
    import hashlib

    from pytest_circuits import load_model

    folder = DATA / name
    truth = json.loads((folder / "ground_truth.json").read_text())
    training = json.loads((folder / "TRAINING.json").read_text())
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert truth["model_safetensors_sha256"] == training["model_safetensors_sha256"] == sha
    model = load_model(str(folder), device="cpu", cache_dir=cache)
    sc = I.head_scores(model, ioi(model, n=64, seed=0), activations=store)
    for head, want in truth["heads"].items():
        h = Head(int(head[1:].split("H")[0]), int(head.split("H")[1]))
        for key in ("attn_io", "attn_s1", "attn_s2", "de"):
            assert float(sc.quantity(key).of(h).mean()) == pytest.approx(want[key], abs=1e-4), (head, key)
    assert float(sc.logit_diff.mean()) == pytest.approx(truth["logit_diff"], abs=1e-3)


def test_control_yields_nothing(planted_control, store):
    a = I.analyse(planted_control, ioi(planted_control, n=64, seed=0), activations=store)
    assert a.name_movers == () and a.s_inhibition is None and a.compensation is None and a.mover_de is None
    d = I.detect_ioi(planted_control, activations=store)
    print(d.summary())
    assert d.applicable and not d.found and d.components == ()
    truth = json.loads((DATA / "ioi_control" / "ground_truth.json").read_text())
    assert truth["name_movers"] == [] and abs(truth["logit_diff"]) < 0.5
    assert d.measurement("ioi logit diff (IO - S)").upper < 0.5


@pytest.mark.parametrize("name,restores", [("backup", True), ("backup_control", False)])
def test_compensation_on_the_planted_backup(cache, name, restores):
    """tests/data/planted/backup: L1H0 restores 60% of L0H0's direct effect when L0H0 is
    zero-ablated; in the control it does not compensate (1.5%, from RMSNorm)."""
    from pytest_circuits import load_model

    model = load_model(str(DATA / name), device="cpu", cache_dir=cache)
    n = len(planted.PROMPTS)
    ps = PromptSet.build(model, planted.PROMPTS, answers=[" " + planted.ANSWER] * n,
                         foils=[" " + planted.FOIL] * n)
    comp = I.compensation(model, ps, [planted.BACKUP["primary"]], ablation="zero", activations=ActivationStore())
    if restores:
        assert [str(b.head) for b in comp.backups] == [planted.BACKUP["backup"]]
        assert comp.restored.mean == pytest.approx(planted.BACKUP_FRACTION, abs=0.02)
        assert comp.by_role("backup").mean == pytest.approx(planted.BACKUP_FRACTION, abs=0.02)
    else:
        assert comp.backups == () and comp.restored.mean == 0
        assert comp.heads_net.mean < 0.05 and comp.by_role("backup").mean < 0.05
    assert comp.released == () and comp.by_role("released suppression").mean == 0
    with pytest.raises(CircuitsError):
        comp.by_role("amplifier")


# ----------------------------------------------------------------------------- not applicable, bad input
def test_not_applicable_without_single_token_names(tiny):
    d = I.detect_ioi(tiny, n=8)
    assert not d.applicable and not d.found and d.status == "n/a"
    # What the vocabulary lacks, in its own terms (not a usage error: no "pass names=" advice).
    assert d.reason == ("the vocabulary has 2 of the 60 common first names as single tokens (after a space): "
                        "Mary, John; an IOI prompt and its ABC counterpart need at least 8 to draw from")


def test_bad_input(planted_ioi, ps, store):
    for kw in (dict(n=0), dict(n=3), dict(n=2.5), dict(seed=True), dict(min_attention=1.5),
               dict(min_effect=-1), dict(min_backup=float("nan")), dict(ablation="mean"), dict(top=0),
               dict(min_logit_diff="0")):
        with pytest.raises(CircuitsError):
            I.detect_ioi(planted_ioi, activations=store, **kw)
    plain = PromptSet.build(planted_ioi, ["When Mary and John went to the store, John gave a drink to"],
                            answers=[" Mary"], foils=[" John"])
    with pytest.raises(PromptSetError, match="meta"):
        I.head_scores(planted_ioi, plain)
    with pytest.raises(PromptSetError):
        I.head_scores(planted_ioi, "not a prompt set")
    sc = I.head_scores(planted_ioi, ps, activations=store)
    with pytest.raises(CircuitsError):
        sc.of("L5H0")
    with pytest.raises(CircuitsError):
        sc.quantity("de").of("L5H0")
    with pytest.raises(CircuitsError):
        sc.quantity("nonsense")
    with pytest.raises(CircuitsError):
        I.s_inhibition(planted_ioi, ps, [], sc)
    with pytest.raises(CircuitsError):
        I.compensation(planted_ioi, ps, [], activations=store)
    with pytest.raises(CircuitsError):
        I.compensation(planted_ioi, ps, ["mlp1"], activations=store)
    with pytest.raises(PromptSetError):
        I.compensation(planted_ioi, ps.subset([0, 1, 2]), ["L1H0"], activations=store)
    with pytest.raises(CircuitsError):
        I.compensation(planted_ioi, ps, ["L1H0"], ablation="resample", activations=store)


def test_compensation_with_nothing_lost_is_undefined(cache):
    """The planted backup model's L1H1 has all-zero weights: ablating it removes no direct
    effect, so a fraction of it is undefined (an error, never 0 or NaN)."""
    from pytest_circuits import load_model

    model = load_model(str(DATA / "backup"), device="cpu", cache_dir=cache)
    n = len(planted.PROMPTS)
    ps = PromptSet.build(model, planted.PROMPTS, answers=[" " + planted.ANSWER] * n,
                         foils=[" " + planted.FOIL] * n)
    with pytest.raises(MeasurementError, match="undefined"), pytest.warns(NoOpInterventionWarning):
        I.compensation(model, ps, ["L1H1"], ablation="zero", activations=ActivationStore())


# ----------------------------------------------------------------------------- other architectures
@pytest.mark.parametrize("arch", ["gpt2_tiny", "gqa_tiny"])
def test_other_architectures_run_and_match_raw_hooks(arch, request, store):
    model = request.getfixturevalue(arch)
    ps = ioi(model, n=16, seed=1)
    sc = I.head_scores(model, ps, activations=store)
    raw, ld, _, _ = _raw(model, ps)
    for key in ("attn_io", "attn_s1", "attn_s2", "de", "attn_sink", "abc_de"):
        assert torch.allclose(_layered(sc, key), raw[key], atol=1e-4, rtol=1e-4), key
    off = 1 - raw["attn_sink"][1, 0]
    assert torch.allclose(sc.quantity("share_io").of("L1H0"), raw["attn_io"][1, 0] / off, atol=1e-4)
    assert torch.allclose(sc.quantity("share_preference").of("L1H0"),
                          (raw["attn_io"][1, 0] - raw["attn_s1"][1, 0] - raw["attn_s2"][1, 0]) / off, atol=1e-4)
    assert torch.allclose(sc.quantity("abc_drop").of("L1H0"), raw["de"][1, 0] - raw["abc_de"][1, 0], atol=1e-4)
    assert torch.allclose(sc.logit_diff, ld, atol=1e-3, rtol=1e-4)
    d = I.detect_ioi(model, n=16, seed=1, activations=store)
    assert d.applicable and d.measurement("ioi logit diff (IO - S)").n == 16
    assert all(v.shape == (3, 4) for v in d.heatmaps.values())
    si = I.s_inhibition(model, ps, ["L2H1"], sc, min_attention=0.0, activations=store)
    assert len(si.candidates) == 8 and si.scores.n == 16 and si.scores.values.shape == (8, 16)


def test_a_head_in_doubt_is_possible_not_located(planted_ioi, ps, store):
    """A name mover whose direct effect straddles the threshold is not located, but keeps the
    verdict from being "absent": it is listed as possible (what makes the check undecided)."""
    import dataclasses

    sc = I.head_scores(planted_ioi, ps, activations=store)
    de = sc.values.clone()
    noise = torch.linspace(-1.0, 1.0, de.shape[-1], dtype=torch.float64)
    de[sc.components.index(Head(1, 0))] = 0.1 + noise            # mean 0.1: the lower bound is below
    doubtful = dataclasses.replace(sc, values=de)
    movers = {str(m.head) for m in I.name_movers(doubtful)}
    possible = dict(I.possible_name_movers(doubtful))
    assert "L1H0" not in movers and Head(1, 0) in possible and "DE(IO - S) 0.1 [" in possible[Head(1, 0)]
    assert {str(m.head) for m in I.name_movers(sc)} == movers | {"L1H0"}
    assert I.possible_name_movers(sc) == []
