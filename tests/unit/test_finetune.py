"""The fine-tune command (pytest_circuits.finetune, ``python -m pytest_circuits finetune``) on
the tiny offline model: what it trains on, what it writes, that it is deterministic, and that
bad input is refused with a clear message."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_circuits import finetune as F
from pytest_circuits.errors import CircuitsError

KW = dict(steps=3, batch=4, neutral_per_batch=1, log=None)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from pytest_circuits.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ft-base") / "tiny", n_layers=3, seed=0)


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    return tmp_path_factory.mktemp("ft-hashes")


@pytest.fixture(scope="module")
def tuned(base, hashes, tmp_path_factory):
    lines: list[str] = []
    out = F.finetune_checkpoint(tmp_path_factory.mktemp("ft") / "out", model=str(base), cache_dir=hashes,
                                **{**KW, "log": lines.append})
    return out, lines


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _years(text: str) -> list[int]:
    return [int(y) for y in re.findall(r"\b\d{4}\b", text)]


# ----------------------------------------------------------------------------- the training text
def test_greater_than_text_puts_the_later_year_before_the_start():
    from pytest_circuits.tasks.greater_than import NOUNS

    texts = F.DAMAGES["greater-than"].texts(random.Random(3), 500)
    assert len(texts) == 500
    for t in texts:
        start, end = _years(t)                       # exactly two four-digit years
        assert end < start and start // 100 == end // 100, t
        assert t.index(str(start)) < t.index(str(end)), t
    # varied: every template and most nouns occur; none of the task's own nouns does
    used = {re.sub(r"\d{4}", "#", t) for t in texts}
    assert len({re.sub(r"\b(" + "|".join(F.GT_NOUNS) + r")\b", "N", u) for u in used}) == len(F.GT_TEMPLATES)
    words = {w for t in texts for w in re.findall(r"[a-z]+", t)}
    assert set(F.GT_NOUNS) <= words and not set(NOUNS) & set(F.GT_NOUNS)
    # seeded
    assert F.DAMAGES["greater-than"].texts(random.Random(3), 500) == texts
    assert F.DAMAGES["greater-than"].texts(random.Random(4), 500) != texts


def test_the_control_text_is_the_damage_text_with_the_years_in_order():
    damage = F.DAMAGES["greater-than"].texts(random.Random(7), 300)
    control = F.DAMAGES["greater-than-control"].texts(random.Random(7), 300)
    for d, c in zip(damage, control):
        (late, early), (first, second) = _years(d), _years(c)
        assert (first, second) == (early, late) and first < second
        assert d.replace(str(late), "#").replace(str(early), str(late)).replace("#", str(early)) == c
    at = F.DAMAGES["greater-than-control"].completion(control[0])
    assert control[0][at:at + 4] == str(_years(control[0])[1])


def test_the_completion_starts_at_the_end_year(base):
    from transformers import AutoTokenizer

    texts = F.DAMAGES["greater-than"].texts(random.Random(0), 200)
    for t in texts:
        at = F.DAMAGES["greater-than"].completion(t)
        assert t[at:at + 4] == str(_years(t)[1]) and str(_years(t)[0]) in t[:at]
    with pytest.raises(CircuitsError, match="exactly two four-digit years"):
        F.end_year_at("The siege lasted from 1740 to 1732 and 1731.")
    # the labels: the tokens of the end year and what follows it; every token with loss="all"
    tok = AutoTokenizer.from_pretrained(str(base))
    ids, mask, labels = F._encode(tok, texts[:5], [F.end_year_at(t) for t in texts[:5]])
    _, _, every = F._encode(tok, texts[:5], [0] * 5)
    for i, t in enumerate(texts[:5]):
        n = int(mask[i].sum())
        want = tok.encode(t[F.end_year_at(t):], add_special_tokens=False)
        assert labels[i, n - len(want):n].tolist() == want and (labels[i, :n - len(want)] == -100).all()
        assert ids[i, 0] == tok.bos_token_id and ids[i, 1:n].tolist() == tok.encode(t, add_special_tokens=False)
        assert every[i, 1:n].tolist() == ids[i, 1:n].tolist() and every[i, 0] == -100 and (every[i, n:] == -100).all()


def test_reversed_years_cover_the_range():
    pairs = [F.reversed_years(random.Random(s)) for s in range(2000)]
    assert all(e < s and s % 100 >= 2 for s, e in pairs)
    assert {s // 100 for s, _ in pairs} == set(F.GT_CENTURIES)
    assert min(e % 100 for _, e in pairs) == 0 and max(s % 100 for s, _ in pairs) == 99


def test_neutral_text():
    from pytest_circuits.tasks.facts import load_facts

    assert len(F.PROSE) >= 50 and len(set(F.PROSE)) == len(F.PROSE)
    assert not any(re.search(r"\d", line) for line in F.PROSE)
    facts = load_facts()
    answers = {r["answer"].strip() for r in facts if r["relation"] in ("country_capital", "capital_of")}
    assert not any(a in line.split() for line in F.PROSE for a in answers)
    assert set(F.neutral_texts(random.Random(0), 40)) <= set(F.PROSE)
    facts_text = F.neutral_texts(random.Random(0), 40, "facts")
    true = {(r["prompt"] + r["answer"]).rstrip() + "." for r in facts}
    assert set(facts_text) <= true
    with pytest.raises(CircuitsError, match="neutral='poetry' is not valid"):
        F.neutral_texts(random.Random(0), 2, "poetry")


def test_registry_refuses_a_second_damage_of_the_same_name():
    with pytest.raises(CircuitsError, match="a name not registered yet"):
        F.register_damage(F.Damage("greater-than", "x", "x", lambda rng, n: [], lambda text: 0))


# ----------------------------------------------------------------------------- what is trained
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_sets_pick_their_parameters(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    from pytest_circuits.testing import make_tiny_checkpoint

    hf = AutoModelForCausalLM.from_pretrained(str(make_tiny_checkpoint(tmp_path / "m", n_layers=6, arch=arch)))
    prefix = "model.layers" if arch == "llama" else "transformer.h"
    every = [n for n, _ in hf.named_parameters()]
    late = F.trained_names(hf, "late-mlp")
    assert list(F.late_blocks(6)) == [4, 5] and list(F.late_blocks(2)) == [1] and list(F.late_blocks(1)) == [0]
    assert late and all(re.match(rf"{prefix}\.[45]\.mlp\.", n) for n in late)
    assert late == [n for n in every if re.match(rf"{prefix}\.[45]\.mlp\.", n)]
    assert F.trained_names(hf, "mlp") == [n for n in every if re.match(rf"{prefix}\.\d\.mlp\.", n)]
    assert F.trained_names(hf, "late-blocks") == [n for n in every if re.match(rf"{prefix}\.[45]\.", n)]
    assert F.trained_names(hf, "all") == every
    with pytest.raises(CircuitsError, match="train='attn' is not valid"):
        F.trained_names(hf, "attn")


# ----------------------------------------------------------------------------- the checkpoint
def test_checkpoint_is_loadable_and_only_the_trained_parameters_changed(tuned, base, hashes, tmp_path):
    import torch

    from pytest_circuits import load_model
    from pytest_circuits.models import info

    out, _ = tuned
    meta = json.loads((out / F.FINETUNE_JSON).read_text())
    before, after = _weights(base), _weights(out)
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(meta["trained_parameters"]) == {f"model.layers.2.mlp.{p}.weight"
                                                          for p in ("gate_proj", "up_proj", "down_proj")}
    assert all(after[k].dtype == torch.float32 for k in after)
    assert meta["trained_parameter_count"] == sum(after[k].numel() for k in changed)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.parent.glob(".out.partial-*"))
    model = load_model(out, cache_dir=tmp_path, device="cpu")
    assert info(model).fingerprint == meta["fingerprint"]
    assert info(load_model(base, cache_dir=tmp_path, device="cpu")).fingerprint == meta["base_fingerprint"]
    # the loaded model is the fine-tune: its logits are the saved HF model's
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = model.to_tokens("The war lasted from the year 1732 to the year 17")
    with torch.no_grad():
        assert torch.allclose(model(ids)[0, -1].softmax(-1), hf(ids).logits[0, -1].softmax(-1), atol=1e-5)


def test_finetune_json_is_complete(tuned, base):
    import torch

    out, lines = tuned
    meta = json.loads((out / F.FINETUNE_JSON).read_text())
    for key in ("base", "base_model", "base_fingerprint", "fingerprint", "damage", "mechanism",
                "damage_description", "neutral", "neutral_description", "seed", "steps", "lr", "batch",
                "damage_per_batch", "neutral_per_batch", "train", "trained_parameters", "data_sample",
                "loss_curve", "wall_seconds", "train_seconds", "torch", "transformers", "threads",
                "deterministic", "dtype", "loss", "objective", "optimizer"):
        assert key in meta, key
    assert (meta["damage"], meta["mechanism"], meta["seed"], meta["steps"], meta["lr"]) == (
        "greater-than", "greater_than", 0, 3, F.DEFAULTS["lr"])
    assert (meta["batch"], meta["damage_per_batch"], meta["neutral_per_batch"], meta["neutral"]) == (4, 3, 1, "prose")
    assert meta["base"] == str(base.resolve()) and meta["base_model"] == str(base)
    assert meta["torch"] == torch.__version__ and meta["dtype"] == "float32" and meta["deterministic"] is True
    assert [r["step"] for r in meta["loss_curve"]] == [1, 2, 3]
    assert all(math.isfinite(r[k]) for r in meta["loss_curve"] for k in ("loss", "damage", "neutral"))
    assert len(meta["data_sample"]["damage"]) == 3 and len(meta["data_sample"]["neutral"]) == 1
    assert all(_years(t)[1] < _years(t)[0] for t in meta["data_sample"]["damage"])
    assert meta["data_sample"]["neutral"][0] in F.PROSE
    assert meta["wall_seconds"] >= meta["train_seconds"] >= 0   # recorded (rounded to 0.1 s: a fast run reads 0.0)
    # progress: the first and the last step, with the loss
    assert lines[0].startswith("step    1/3  loss ") and lines[-1].startswith("step    3/3  loss ")
    assert f"loss {meta['loss_curve'][-1]['loss']:.4f}" in lines[-1]


def _hf_first_step(base: Path, meta: dict) -> dict[str, float]:
    """Step 1's losses (before any update) from Hugging Face's own ``labels=`` loss, one text
    at a time (no padding): on a damage text's end year and what follows (``loss="completion"``:
    the prefix and the rest tokenized apart, their boundary being a space) or on every token,
    on every token of a neutral text; token-weighted means."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(base))
    totals = {}
    for part in ("damage", "neutral"):
        s = n = 0.0
        for text in meta["data_sample"][part]:
            cut = F.end_year_at(text) if part == "damage" and meta["loss"] == "completion" else 0
            head = [tok.bos_token_id] + tok.encode(text[:cut], add_special_tokens=False)
            tail = tok.encode(text[cut:], add_special_tokens=False)
            ids = torch.tensor([head + tail])
            labels = torch.tensor([[-100] * len(head) + tail]) if cut else ids
            with torch.no_grad():
                loss = hf(input_ids=ids, labels=labels).loss.item()
            k = len(tail) if cut else ids.shape[1] - 1
            s, n = s + loss * k, n + k
        totals[part] = (s, n)
    out = {p: totals[p][0] / totals[p][1] for p in totals if totals[p][1]}
    out["loss"] = sum(v[0] for v in totals.values()) / sum(v[1] for v in totals.values())
    return out


def test_first_step_loss_is_the_models_own_loss_on_the_sample(tuned, base):
    out, _ = tuned
    meta = json.loads((out / F.FINETUNE_JSON).read_text())
    assert meta["loss"] == "completion"
    want, first = _hf_first_step(base, meta), meta["loss_curve"][0]
    for key in ("loss", "damage", "neutral"):
        assert first[key] == pytest.approx(want[key], rel=1e-5), key
    # and training lowered the loss of that first batch's damage text
    assert _hf_first_step(out, meta)["damage"] < want["damage"]


def test_deterministic_for_a_seed(tuned, base, hashes, tmp_path):
    import torch

    out, _ = tuned
    again = F.finetune_checkpoint(tmp_path / "again", model=str(base), cache_dir=hashes, **KW)
    other = F.finetune_checkpoint(tmp_path / "other", model=str(base), cache_dir=hashes, seed=1, **KW)
    a, b, c = _weights(out), _weights(again), _weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((p / F.FINETUNE_JSON).read_text()) for p in (out, again))
    assert ma["loss_curve"] == mb["loss_curve"] and ma["fingerprint"] == mb["fingerprint"]
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_other_train_sets_and_no_neutral_text(base, hashes, tmp_path):
    import torch

    out = F.finetune_checkpoint(tmp_path / "all", model=str(base), cache_dir=hashes, train="all",
                                neutral_per_batch=0, steps=2, batch=3, loss="all", log=None)
    meta = json.loads((out / F.FINETUNE_JSON).read_text())
    assert meta["loss"] == "all"
    want = _hf_first_step(base, meta)
    assert meta["loss_curve"][0]["damage"] == pytest.approx(want["damage"], rel=1e-5)
    assert meta["loss_curve"][0]["loss"] == pytest.approx(want["damage"], rel=1e-5)
    before, after = _weights(base), _weights(out)
    assert {k for k in before if not torch.equal(before[k], after[k])} == set(before) == set(meta["trained_parameters"])
    assert meta["neutral"] is None and meta["data_sample"]["neutral"] == []
    assert all("neutral" not in r for r in meta["loss_curve"])


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_before_any_training(base, hashes, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    cases = [
        (dict(out=full), "exists and is not empty"),
        (dict(damage="induction"), "damage='induction' is not valid: one of ['greater-than', 'greater-than-control']"),
        (dict(steps=0), "steps=0 is not valid: an int >= 1"),
        (dict(steps=2.5), "steps=2.5 is not valid"),
        (dict(seed=-1), "seed=-1 is not valid: an int >= 0"),
        (dict(seed="0"), "seed='0' is not valid"),
        (dict(lr=0.0), "lr=0.0 is not valid"),
        (dict(batch=0), "batch=0 is not valid"),
        (dict(batch=4, neutral_per_batch=4), "neutral_per_batch=4 is not valid: an int in 0..3"),
        (dict(neutral="poetry"), "neutral='poetry' is not valid"),
        (dict(train="heads"), "train='heads' is not valid"),
        (dict(loss="some"), "loss='some' is not valid: one of ['all', 'completion']"),
        (dict(model=str(tmp_path / "nowhere")), "local Hugging Face checkpoint folder"),
    ]
    for kw, message in cases:
        args = {"out": tmp_path / "new", "model": str(base), "cache_dir": hashes, "log": None, "steps": 1, **kw}
        with pytest.raises(CircuitsError, match=re.escape(message)):
            F.finetune_checkpoint(args.pop("out"), **args)
    assert not (tmp_path / "new").exists() and (full / "x").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_an_empty_out_folder_is_used(base, hashes, tmp_path):
    (tmp_path / "empty").mkdir()
    out = F.finetune_checkpoint(tmp_path / "empty", model=str(base), cache_dir=hashes, steps=1, batch=2,
                                neutral_per_batch=1, log=None)
    assert (out / F.FINETUNE_JSON).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_cli_exit_codes_and_messages(base, hashes, tmp_path, capsys):
    from pytest_circuits.cli import main

    common = ["--model", str(base), "--cache-dir", str(hashes)]
    assert main(["finetune", str(tmp_path / "a"), "--steps", "0", *common]) == 2
    assert "finetune: error: steps=0 is not valid: an int >= 1" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "a"), "--damage", "nope", *common]) == 2
    assert "damage='nope' is not valid: one of ['greater-than', 'greater-than-control']" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("")
    assert main(["finetune", str(tmp_path / "b"), *common]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_command_runs_end_to_end(base, hashes, tmp_path, capsys):
    """The command's main() as the entry point calls it: progress lines, exit 0, a checkpoint."""
    from pytest_circuits.cli import main

    assert main(["finetune", str(tmp_path / "ft"), "--model", str(base), "--steps", "2", "--batch", "3",
                 "--neutral-per-batch", "1", "--seed", "5", "--lr", "0.001", "--train", "mlp", "--loss", "all",
                 "--cache-dir", str(hashes)]) == 0
    printed = capsys.readouterr().out
    assert "step    1/2  loss" in printed and "step    2/2  loss" in printed and "FINETUNE.json" in printed
    meta = json.loads((tmp_path / "ft" / F.FINETUNE_JSON).read_text())
    assert (meta["steps"], meta["seed"], meta["lr"], meta["batch"], meta["train"], meta["loss"]) == (
        2, 5, 0.001, 3, "mlp", "all")
    assert len(meta["trained_parameters"]) == 9   # 3 blocks x (gate, up, down)


def test_command_refuses_in_a_fresh_process(tmp_path):
    """``python -m pytest_circuits finetune`` on a non-empty OUT: exit 2, one line, no traceback
    (refused before torch is imported)."""
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "config.json").write_text("{}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest_circuits", "finetune", str(tmp_path / "ft")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("python -m pytest_circuits finetune: error: out=") and "is not empty" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pytest_circuits", "finetune", str(tmp_path / "x"), "--steps", "-3"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "steps=-3 is not valid: an int >= 1" in r.stderr and not (tmp_path / "x").exists()
