"""Batching by token budget (issue #25, item 1): the store sizes each forward by rows x
positions, not a fixed number of rows. Which rows share a forward must change no number
beyond float rounding: the same prompt set measured at several budgets (one row per forward,
a few rows, everything in one forward) gives equal values within 1e-5 relative, for clean
runs, ablations, suffix resumes and stacked sweeps, on the tiny models; and each forward
holds what the budget allows (checked on the rows each forward actually ran)."""

from __future__ import annotations

import warnings

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits import forwards as F
from pytest_circuits import store as S
from pytest_circuits.errors import CircuitsError

TEXTS = ["the cat sat", "the dog sat on the mat", "a king went to the city of Rome",
         "the queen said", "when John and Mary went to the store", "the cat",
         "a dog ran to the old house by the river", "the king of France", "she said that",
         "the cat sat on the mat and the dog sat on the rug"]


def clean_names(L):
    return [H.LOGITS_LAST, H.TOKEN_LOSS, H.resid_post(1), H.pattern(1), H.last(H.z(L)), H.mlp_out(0)]


def intervened_names(L):
    return [H.LOGITS_LAST, H.logprobs_last([3, 5], back=1), H.last(H.z(L)), H.mlp_out(L), H.resid_post(L)]


BUDGETS = [1, 23, 70, 100_000]


@pytest.fixture(scope="module", params=["tiny", "gpt2", "gqa"])
def model(request, tiny_dir, arch_model, tmp_path_factory):
    if request.param == "tiny":
        from pytest_circuits.models import load_model

        return load_model(str(tiny_dir), cache_dir=tmp_path_factory.mktemp("budget-cache"), device="cpu")
    return arch_model(request.param, seed=5, n_layers=3)


@pytest.fixture(scope="module")
def ps(model):
    return PromptSet.build(model, TEXTS, corrupted=list(reversed(TEXTS)), align=False, name="varied")


def _close(a, b, what):
    a, b = a.double(), b.double()
    assert a.shape == b.shape, what
    scale = float(b.abs().max()) if b.numel() else 0.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= 1e-5 * max(scale, 1.0), f"{what}: {err:.2e} (scale {scale:.2e})"


class _Spy:
    """Records (rows, positions run) of each forward of ``store``."""

    def __init__(self, store, monkeypatch):
        self.forwards: list[tuple[int, int]] = []
        real = store._run_batch
        nested = [0]      # compute of forwards run inside a forward (an intervention's own reads)

        def run(model, prompts, plan, iv, clean, rows, firsts):
            before, inner = store.counters.block_position_passes, nested[0]
            out = real(model, prompts, plan, iv, clean, rows, firsts)
            mine = store.counters.block_position_passes - before - (nested[0] - inner)
            nested[0] = inner + store.counters.block_position_passes - before
            blocks = (plan.stop or plan.n_layers) - plan.start
            self.forwards.append((len(rows), mine // (blocks * len(rows))))
            return out

        monkeypatch.setattr(store, "_run_batch", run)


def _ivs(model, ps):
    L = model.cfg.n_layers - 1
    return [I.ablate(model, "L1H0", "zero", positions="last"),
            I.ablate(model, "mlp1", "mean", positions=None, reference=ps),
            I.patch(model, f"attn{L}", positions="last"),
            I.ablate(model, "L1H1", "zero", positions=None),
            I.ablate(model, f"L{L}H1", "resample", positions="last", seed=3)]


def _measure(model, ps, budget, monkeypatch):
    store = ActivationStore(token_budget=budget)
    spy = _Spy(store, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L = model.cfg.n_layers - 1
        clean = store.get(model, ps, clean_names(L))
        one = [store.get(model, ps, intervened_names(L), iv) for iv in _ivs(model, ps)]
        stacked_store = ActivationStore(token_budget=budget)
        spy_stacked = _Spy(stacked_store, monkeypatch)
        stacked = stacked_store.get_many(model, ps, [H.LOGITS_LAST, H.last(H.z(L))],
                                         [I.ablate(model, f"L{l}H{h}", "zero", positions="last")
                                          for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)])
    return clean, one, stacked, spy.forwards + spy_stacked.forwards, store


def test_values_do_not_depend_on_the_budget(model, ps, monkeypatch):
    runs = {b: _measure(model, ps, b, monkeypatch) for b in BUDGETS}
    ref_clean, ref_one, ref_stacked, _, _ = runs[BUDGETS[-1]]
    counts = {b: len(r[3]) for b, r in runs.items()}
    # the budgets really batch differently: one row per forward at the smallest
    assert counts[1] > counts[23] > counts[BUDGETS[-1]], counts
    assert all(rows == 1 for rows, _ in runs[1][3])
    for b in BUDGETS[:-1]:
        clean, one, stacked, _, _ = runs[b]
        L = model.cfg.n_layers - 1
        for name in clean_names(L):
            _close(clean[name], ref_clean[name], f"budget {b}, clean {name}")
        for k, (got, want) in enumerate(zip(one, ref_one)):
            for name in intervened_names(L):
                _close(got[name], want[name], f"budget {b}, intervention {k}, {name}")
        for k, (got, want) in enumerate(zip(stacked, ref_stacked)):
            for name in got:
                _close(got[name], want[name], f"budget {b}, stacked {k}, {name}")


@pytest.mark.parametrize("budget", [23, 70, 400])
def test_each_forward_holds_what_the_budget_allows(model, ps, budget, monkeypatch):
    """rows x positions of every forward is within the budget (unless one row alone exceeds
    it), and a forward that could have taken the next row did not stop early."""
    _, _, _, forwards, store = _measure(model, ps, budget, monkeypatch)
    assert forwards
    for rows, positions in forwards:
        assert rows == 1 or rows * positions <= budget, (rows, positions, budget)
    # suffix forwards (one position per row at the last position) pack more rows than the
    # clean forwards of the same prompts
    widest = max(ps.lengths)
    suffix_rows = max(rows for rows, positions in forwards if positions == 1)
    assert suffix_rows > budget // widest or suffix_rows >= len(ps)


def test_a_row_cap_still_applies(model, ps, monkeypatch):
    store = ActivationStore(token_budget=100_000, batch_size=3)
    spy = _Spy(store, monkeypatch)
    store.get(model, ps, [H.LOGITS_LAST])
    assert [r for r, _ in spy.forwards] == [3, 3, 3, 1]


def test_the_budget_is_chosen_per_device_and_settable(model, monkeypatch):
    monkeypatch.delenv(S.TOKEN_BUDGET_ENV, raising=False)
    assert ActivationStore().budget(model).tokens == S.CPU_TOKEN_BUDGET
    assert ActivationStore(token_budget=77).budget(model).tokens == 77
    monkeypatch.setenv(S.TOKEN_BUDGET_ENV, "123")
    assert ActivationStore().budget(model).tokens == 123
    assert ActivationStore(token_budget=77).budget(model).tokens == 77      # the option wins
    for bad in ("0", "-5", "many", "1.5"):
        monkeypatch.setenv(S.TOKEN_BUDGET_ENV, bad)
        with pytest.raises(CircuitsError, match=S.TOKEN_BUDGET_ENV):
            ActivationStore().budget(model)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(CircuitsError, match="token_budget"):
            ActivationStore(token_budget=bad)
        with pytest.raises(CircuitsError, match="batch_size"):
            ActivationStore(batch_size=bad)


def test_a_suffix_forward_keeps_the_clean_keys_and_values_it_reads_under_the_cap(model, ps, monkeypatch):
    """A suffix forward of one position per row still reads every earlier position's clean
    keys and values at every block it runs: those rows x positions x blocks are capped too."""
    cfg = model.cfg
    kv = 2 * (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * cfg.d_head
    longest = max(ps.lengths)
    entries = 3 * longest * kv * cfg.n_layers          # room for 3 rows resumed at block 0
    store = ActivationStore(token_budget=100_000)
    store.get(model, ps, [H.LOGITS_LAST])             # the clean run first
    store._budgets[(str(model.cfg.device), id(model))] = F._Budget(100_000, entries, "test")
    seen = []
    real = store._run_batch

    def run(model_, prompts, plan, iv, clean, rows, firsts):
        blocks = (plan.stop or plan.n_layers) - plan.start
        seen.append((len(rows), len(rows) * max(prompts.lengths[int(r)] for r in rows) * kv * blocks,
                     firsts is not None))
        return real(model_, prompts, plan, iv, clean, rows, firsts)

    monkeypatch.setattr(store, "_run_batch", run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = store.get(model, ps, [H.LOGITS_LAST], I.ablate(model, "L0H1", "zero", positions="last"))
    want = ActivationStore(resume=False).get(model, ps, [H.LOGITS_LAST], I.ablate(model, "L0H1", "zero", positions="last"))
    _close(got[H.LOGITS_LAST], want[H.LOGITS_LAST], "capped suffix forward")
    assert seen and all(suffix for _, _, suffix in seen)
    assert all(rows == 1 or held <= entries for rows, held, _ in seen), (seen, entries)
    assert len(seen) >= len(ps) // 4                  # the cap binds: not one forward for all rows
