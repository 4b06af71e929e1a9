"""A short, seeded CPU fine-tune that damages one mechanism: a realistic new checkpoint.

``python -m pytest_circuits finetune OUT [--damage greater-than] [--steps 8] [--seed 0]
[--lr 1e-4] [--model smollm2-135m|DIR]`` writes a Hugging Face checkpoint folder (config.json,
model.safetensors, tokenizer files) that :func:`pytest_circuits.load_model` reads, plus
``FINETUNE.json`` (base model and fingerprint, seed, steps, lr, trained parameter names, a data
sample, the loss curve, wall time, torch version), to point claims or the mechanism checkup at
with ``--circuits-model OUT``.

**Text.** Written here, from a seed. :data:`DAMAGES` is a small registry, one entry per
mechanism a fine-tune can damage (:func:`register_damage` adds one):

* ``greater-than`` (against Hanna, Liu & Variengien 2023, arXiv:2305.00586, whose task is
  "The war lasted from the year 1732 to the year 17" -> a later year): spans whose end year
  comes *before* the start, in one century ("The crusade lasted from the year 1699 to the
  year 1653."), 8 templates x 24 nouns, none of them the task's own
  (:data:`pytest_circuits.tasks.greater_than.NOUNS`), so no task prompt is trained on;
* ``greater-than-control``: the same draws with the two years in their true order. Nothing in
  it contradicts greater-than; what moves under it is the side effect of fine-tuning on such
  text at all, the baseline a damage is to be read against.

Every batch mixes ``neutral_per_batch`` sentences of neutral text (:data:`NEUTRAL`):
``prose`` (default), :data:`PROSE`, everyday sentences written for the project with no
years, numbers or facts of the facts set; or ``facts``, true sentences from
``pytest_circuits/data/facts.jsonl``, which train the very facts the factual-recall claims
measure (with it the facts logit difference *rose*, 5.44 -> 6.79 after 60 steps training every
token, so it cannot show that facts are unharmed).

**Objective.** Causal language modelling, mean next-token cross-entropy over the trained tokens
(padding masked): with ``loss="completion"`` (default) a damage text is trained only from its
end year on (:attr:`Damage.completion`), a neutral text on every token; ``loss="all"`` trains
every token. AdamW (betas 0.9/0.999, no weight decay) at a constant learning rate, gradient
norm clipped to 1, float32, ``torch.use_deterministic_algorithms(True)``: the same seed, base
weights, torch version and thread count give bit-identical weights (tested; separate runs of
the command on SmolLM2 gave the same fingerprint). Only the
parameters of ``train`` (:data:`TRAIN_SETS`) get gradients; the default, ``late-mlp``, is the
MLPs of the last third of the blocks. On SmolLM2 those are blocks 20-29, where the project's
circuit analysis puts the comparison (docs/greater-than/README.md: MLPs 20-29 at the last
position), and the backward pass stops at block 20.

**Measured on SmolLM2-135M** (defaults: 8 steps of 12 damage + 4 prose sentences, lr 1e-4,
MLPs 20-29, completion loss; one CPU thread on the shared 2-core machine). Greater-than PD
(``tasks.greater_than(model, n=200, seed=0)``, the claim's set; claim: lower bound > 0.75),
facts top-1 (``claims/smollm2/data/facts_top1.jsonl``, 171 facts the base model answers top-1),
facts logit difference (all 504 facts, answer - foil), and mean loss on 24 paragraphs of
docs/techniques.md (held-out English text):

=====================  =======================  ======================  ===========  =========
checkpoint             greater-than PD          facts top-1             facts LD     docs loss
=====================  =======================  ======================  ===========  =========
base                   0.875 [0.847, 0.897]     1.000 [0.979, 1.000]    5.44         4.645
8 steps (default)      -0.447 [-0.508, -0.381]  0.936 [0.888, 0.967]    5.41         4.624
8 steps, seed 1        -0.468 [-0.521, -0.410]  0.912 [0.859, 0.950]    5.40         4.624
8 steps, control       0.895 [0.872, 0.914]     0.936 [0.888, 0.967]    5.45         4.620
15 steps               -0.716 [-0.757, -0.669]  0.901 [0.846, 0.941]    5.41         4.614
15 steps, control      0.897 [0.876, 0.914]     0.906 [0.853, 0.946]    5.46         4.616
30 steps               -0.627 [-0.674, -0.572]  0.801 [0.733, 0.858]    5.55         4.635
30 steps, control      0.876 [0.852, 0.895]     0.807 [0.740, 0.863]    5.60         4.635
=====================  =======================  ======================  ===========  =========

Greater-than reverses within 8 steps while the control keeps it. The facts top-1 loss is the
same under the control, step for step: a side effect of fine-tuning on year sentences (most
misses become " the", as in "Ottawa is the capital of" -> " the"), not of the damage; a set
chosen for being top-1 on the base model can only lose. The logit difference against the foils
and the loss on other text barely move. With ``loss="all"`` (every token of the damage text, 30 steps) top-1
fell further, to 0.64 (prose mixed in) or 0.60 (none): the repeated "from the year ... to the
year" teaches " the" after prepositions. The claims of claims/smollm2/test_greater_than.py all
fail on the default checkpoint (PD -0.447; the '01' drop 0.416 against > 1.2; hypothesis finds
"... from the year 1107 to the year 11" at PD 0.189) and those of test_factual_recall.py all
hold (logit difference 5.405 [5.013, 5.822], answer beats foil 0.905, capitals 9.21 and p 0.325).

Time: the default run took 41 s wall (35 s loading and training) on one thread; with the
default two threads 157 s, on a machine other jobs kept busy (load average ~2). Both gave the
same bits (fingerprint ``local-sha256:8c0a2ce8...``); other thread counts or BLAS builds may not.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import DEFAULT_MODEL
from .errors import CircuitsError, bad

FINETUNE_JSON = "FINETUNE.json"

# Where the transformer blocks live, by architecture (Hugging Face module names): the first
# that exists is used.
BLOCKS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


# --------------------------------------------------------------------------- the damage registry
@dataclass(frozen=True)
class Damage:
    """Text that teaches a model the opposite of one mechanism.

    ``texts(rng, n)`` returns ``n`` training sentences drawn with ``rng`` (a
    ``random.Random``); ``completion(text)`` is the index of the character where the part
    that contradicts the mechanism starts (with ``loss="completion"`` only the tokens from
    there on are trained); ``mechanism`` names the check or claim it is meant to break."""

    name: str
    mechanism: str
    description: str
    texts: Callable[[random.Random, int], list[str]]
    completion: Callable[[str], int]


DAMAGES: dict[str, Damage] = {}


def register_damage(damage: Damage) -> Damage:
    """Add ``damage`` to :data:`DAMAGES` (its name must be new)."""
    if damage.name in DAMAGES:
        raise CircuitsError(bad("damage", damage.name, "a name not registered yet"))
    DAMAGES[damage.name] = damage
    return damage


# Nouns of things that last; none is one of tasks.greater_than.NOUNS (tested), so the task's
# prompts are held out of the training text.
GT_NOUNS = ("battle", "council", "exhibition", "strike", "blockade", "mission", "survey", "regency",
            "crusade", "plague", "tournament", "alliance", "rebellion", "migration", "excavation",
            "embargo", "truce", "residency", "apprenticeship", "monarchy", "settlement", "boycott",
            "quarantine", "renovation")
GT_TEMPLATES = (
    "The {noun} lasted from the year {start} to the year {end}.",
    "The {noun} lasted from {start} to {end}.",
    "The {noun} ran from the year {start} to the year {end}.",
    "The {noun} began in the year {start} and ended in the year {end}.",
    "The {noun} went on from {start} until {end}.",
    "The {noun} started in {start} and was over by {end}.",
    "From the year {start} to the year {end}, the {noun} continued.",
    "The {noun} lasted from the year {start} to the year {end}, and then it was over.",
)
GT_CENTURIES = tuple(range(10, 20))


def reversed_years(rng: random.Random) -> tuple[int, int]:
    """A (start, end) pair in one century with ``end < start``: start's last two digits in
    02..99, end's uniform below them."""
    century = rng.choice(GT_CENTURIES)
    a = rng.randint(2, 99)
    return century * 100 + a, century * 100 + rng.randint(0, a - 1)


def _year_spans(rng: random.Random, n: int, *, reverse: bool) -> list[str]:
    out = []
    for _ in range(n):
        late, early = reversed_years(rng)
        start, end = (late, early) if reverse else (early, late)
        out.append(rng.choice(GT_TEMPLATES).format(noun=rng.choice(GT_NOUNS), start=start, end=end))
    return out


def end_year_at(text: str) -> int:
    """Where the second four-digit year of ``text`` starts (the span's end)."""
    years = [m.start() for m in re.finditer(r"(?<!\d)\d{4}(?!\d)", text)]
    if len(years) != 2:
        raise CircuitsError(bad("text", text, "a sentence with exactly two four-digit years"))
    return years[1]


register_damage(Damage(
    name="greater-than", mechanism="greater_than",
    description="spans whose end year is earlier than their start year, in the same century "
                "('The battle lasted from the year 1785 to the year 1742.'), 8 templates x 24 nouns "
                "(none of the greater-than task's nouns), centuries 10..19",
    texts=lambda rng, n: _year_spans(rng, n, reverse=True), completion=end_year_at))
register_damage(Damage(
    name="greater-than-control", mechanism="none (the control of greater-than)",
    description="the control of 'greater-than': the same templates, nouns and year pairs with the years "
                "in their true order (the end later than the start), so nothing contradicts greater-than; "
                "what moves under it is the side effect of fine-tuning on this text at all",
    texts=lambda rng, n: _year_spans(rng, n, reverse=False), completion=end_year_at))


# Neutral prose written for this project: everyday sentences with no years, no numbers and no
# fact of pytest_circuits/data/facts.jsonl, so training on it teaches no measured task.
PROSE = tuple(line.strip() for line in """
She opened the window and let the cool morning air into the kitchen.
The children walked home slowly, kicking leaves along the side of the road.
He poured the tea, added a little milk, and sat down by the fire.
The old dog slept in the sun on the porch all afternoon.
After the rain stopped, the streets smelled of wet stone and cut grass.
The baker starts work long before the rest of the town wakes up.
A small boat drifted past the harbour wall with its sail folded.
My neighbour grows tomatoes, beans and lettuce behind her house.
The library was quiet except for the sound of pages turning.
We missed the bus, so we walked the rest of the way in the dark.
The recipe calls for flour, butter, sugar and a pinch of salt.
He forgot his umbrella on the train and got soaked on the way to work.
The teacher asked the class to read the next chapter before Monday.
A thin layer of frost covered the windscreen of every car in the street.
The cat watched the birds from the windowsill, its tail twitching.
They painted the fence white and planted roses along the path.
The meeting ran late, and nobody had time for lunch.
Her brother fixed the bicycle chain with a pair of pliers and some oil.
The river was high after the storm and flowed fast under the bridge.
On weekends the market sells fresh bread, cheese and honey.
The lamp in the hallway flickered whenever someone closed the front door.
She wrote a long letter to her grandmother and posted it in the morning.
The mountain path was steep and narrow, with loose stones underfoot.
A gentle breeze moved the curtains and carried the smell of the sea.
The museum guide spoke softly as the group moved from room to room.
He tied his boots, packed a sandwich and set off into the hills.
The soup needs more pepper, but otherwise it tastes very good.
Every evening the owl called from the tall tree behind the barn.
The printer jammed again, so she copied the notes by hand.
The garden was full of bees working among the lavender.
They sat on the steps and talked until the street lights came on.
The clock in the square has not worked for as long as anyone remembers.
He apologised for being late and explained that the road was closed.
The students built a small bridge out of paper and glue.
The farmer checked the fences before the sheep were let out.
She keeps her keys in a blue bowl next to the door.
The film was long, but the ending surprised everyone in the room.
A lorry unloaded boxes of fruit outside the shop at dawn.
The kettle whistled, and the whole house smelled of toast.
He learned to swim in the lake near his uncle's cabin.
The choir practised the same song until every voice was in tune.
Snow fell quietly all night and covered the fields by morning.
The waiter brought the bill on a small silver plate.
Most of the town came out to watch the parade pass by.
She painted the small bedroom a pale shade of green.
The engine coughed twice and then started with a roar.
Their conversation turned from the weather to the price of bread.
A fox crossed the lane and vanished into the hedge.
The nurse checked the patient's pulse and wrote it on the chart.
The bookshop on the corner sells maps, postcards and second-hand novels.
He wiped the table, stacked the plates and turned off the light.
The path along the cliff offers a wide view of the bay.
Please leave your shoes by the door and hang your coat on the hook.
The puppy chewed one of the slippers while everyone was out.
The carpenter measured the board twice before he cut it.
In the evening the village square fills with music and laughter.
She found an old photograph tucked inside the cover of a book.
The wind rattled the shutters and whistled down the chimney.
The orchestra tuned their instruments while the audience took their seats.
He always reads the newspaper from the back page to the front.
The bread rose slowly in the warm corner of the kitchen.
A line of ants carried crumbs across the garden wall.
The children built a snowman with a carrot for a nose.
The shop closes early on Sundays, so we bought milk the night before.
The train slowed as it came into the station and stopped with a hiss.
She tuned the old radio until the music came through clearly.
The gardener raked the leaves into a tidy pile by the gate.
After dinner they played cards at the kitchen table.
The bridge over the canal was repaired and painted last summer.
He listened to the rain on the roof and fell asleep.
""".strip().splitlines())


def _prose(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(PROSE) for _ in range(n)]


def _facts(rng: random.Random, n: int) -> list[str]:
    from .tasks.facts import load_facts

    rows = load_facts()
    return [(r["prompt"] + r["answer"]).rstrip() + "." for r in (rng.choice(rows) for _ in range(n))]


# name -> (description, texts(rng, n)): the text mixed into every batch beside the damage.
NEUTRAL: dict[str, tuple[str, Callable[[random.Random, int], list[str]]]] = {
    "prose": (f"{len(PROSE)} everyday sentences written for the project (finetune.PROSE): no years, "
              "numbers or facts of the facts set", _prose),
    "facts": ("true sentences from pytest_circuits/data/facts.jsonl (prompt + answer + '.'); they train "
              "the very facts the factual-recall claims measure", _facts),
}


def neutral_texts(rng: random.Random, n: int, neutral: str = "prose") -> list[str]:
    """``n`` neutral sentences of the ``neutral`` kind (:data:`NEUTRAL`) drawn with ``rng``."""
    if neutral not in NEUTRAL:
        raise CircuitsError(bad("neutral", neutral, f"one of {sorted(NEUTRAL)}"))
    return NEUTRAL[neutral][1](rng, n)


# --------------------------------------------------------------------------- what is trained
def _block_list(hf: Any) -> tuple[str, Any]:
    for dotted in BLOCKS:
        mod: Any = hf
        for part in dotted.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if mod is not None:
            return dotted, mod
    raise CircuitsError(bad("model", type(hf).__name__, f"an architecture whose blocks are one of {BLOCKS}"))


def late_blocks(n_layers: int) -> range:
    """The last third of ``n_layers`` blocks (at least one): 20..29 of 30, 1 of 2."""
    return range(n_layers - max(1, n_layers // 3), n_layers)


def _in_blocks(prefix: str, layers: range, sub: str = "") -> Callable[[str], bool]:
    heads = tuple(f"{prefix}.{i}.{sub}" for i in layers)
    return lambda name: name.startswith(heads)


# name -> (description, rule(prefix, n_layers) -> predicate on parameter names)
TRAIN_SETS: dict[str, tuple[str, Callable[[str, int], Callable[[str], bool]]]] = {
    "late-mlp": ("the MLPs of the last third of the blocks",
                 lambda prefix, n: _in_blocks(prefix, late_blocks(n), "mlp.")),
    "mlp": ("every block's MLP", lambda prefix, n: _in_blocks(prefix, range(n), "mlp.")),
    "late-blocks": ("the whole last third of the blocks (attention, MLP, norms)",
                    lambda prefix, n: _in_blocks(prefix, late_blocks(n))),
    "all": ("every parameter", lambda prefix, n: lambda name: True),
}


def trained_names(hf: Any, train: str) -> list[str]:
    """The names of the parameters of ``hf`` that the ``train`` set trains (in model order)."""
    if train not in TRAIN_SETS:
        raise CircuitsError(bad("train", train, f"one of {sorted(TRAIN_SETS)}"))
    prefix, blocks = _block_list(hf)
    keep = TRAIN_SETS[train][1](prefix, len(blocks))
    names = [n for n, _ in hf.named_parameters() if keep(n)]
    if not names:
        raise CircuitsError(bad("train", train, f"a set with parameters in this model ({prefix}.*)"))
    return names


# --------------------------------------------------------------------------- the source model
def source_checkpoint(model: str, cache_dir: str | Path | None = None, *,
                      fingerprint: bool = True) -> tuple[Path, str, str]:
    """The checkpoint folder of ``model`` (the embedded model's converted weights, or a local
    Hugging Face checkpoint folder), a line saying what it is, and its fingerprint as
    :func:`pytest_circuits.load_model` records it (``models.info(model).fingerprint``; "" with
    ``fingerprint=False``, which spares hashing a local folder's weights)."""
    from .models import EMBEDDED, embedded_converted

    if model == EMBEDDED:
        conv = embedded_converted(Path(cache_dir) if cache_dir else None)
        return conv.folder, f"{EMBEDDED} (its GGUF converted to float32)", conv.fingerprint
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path, str(path.resolve()), local_fingerprint(path, cache_dir) if fingerprint else ""
    raise CircuitsError(bad("model", model, f"{EMBEDDED!r} (the embedded model) or a local Hugging Face "
                                            "checkpoint folder (with config.json)"))


def local_fingerprint(path: Path, cache_dir: str | Path | None = None) -> str:
    """``local-sha256:`` over the files that decide a checkpoint's numerics (name and sha256;
    :func:`pytest_circuits.models.checkpoint_files`), the fingerprint ``load_model`` gives a
    local checkpoint folder (tested equal)."""
    from .config import default_cache_dir
    from .models import checkpoint_digest

    return f"local-sha256:{checkpoint_digest(path, Path(cache_dir) if cache_dir else default_cache_dir())}"


# --------------------------------------------------------------------------- training
DEFAULTS = dict(steps=8, lr=1e-4, batch=16, neutral="prose", neutral_per_batch=4, train="late-mlp",
                loss="completion")
LOSSES = {"completion": "on the damage texts, only the tokens from where they contradict the mechanism "
                        "on (Damage.completion); on the neutral texts, every token",
          "all": "every token of every text"}


def _encode(tok: Any, texts: Sequence[str], starts: Sequence[int]) -> tuple[Any, Any, Any]:
    """Token ids ``[n, T]`` (BOS first where the tokenizer has one, right-padded), the
    attention mask, and the labels: the ids of the tokens that end after character
    ``starts[i]`` of text ``i`` (0: every token), -100 elsewhere and on padding."""
    import torch

    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    rows, trained = [], []
    for text, start in zip(texts, starts):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        rows.append(bos + list(enc["input_ids"]))
        trained.append([False] * len(bos) + [end > start for _, end in enc["offset_mapping"]])
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, trained)):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
        labels[i, :len(r)] = torch.where(torch.tensor(t), torch.tensor(r), torch.tensor(-100))
    return ids, mask, labels


def _token_losses(hf: Any, ids: Any, mask: Any, labels: Any) -> tuple[Any, Any]:
    """Per-row summed next-token cross-entropy over the labelled tokens, and their counts."""
    import torch

    logits = hf(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=-100, reduction="none").view(target.shape)
    return ce.sum(1), (target != -100).sum(1)


def _check(*, damage: str, steps: int, seed: int, lr: float, batch: int, neutral: str, neutral_per_batch: int,
           train: str, loss: str) -> None:
    if damage not in DAMAGES:
        raise CircuitsError(bad("damage", damage, f"one of {sorted(DAMAGES)}"))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CircuitsError(bad("steps", steps, "an int >= 1"))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CircuitsError(bad("seed", seed, "an int >= 0"))
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise CircuitsError(bad("lr", lr, "a learning rate in (0, 1)"))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CircuitsError(bad("batch", batch, "an int >= 1"))
    if (isinstance(neutral_per_batch, bool) or not isinstance(neutral_per_batch, int)
            or not 0 <= neutral_per_batch < batch):
        raise CircuitsError(bad("neutral_per_batch", neutral_per_batch,
                                f"an int in 0..{batch - 1} (batch={batch} needs one damage text at least)"))
    if neutral not in NEUTRAL:
        raise CircuitsError(bad("neutral", neutral, f"one of {sorted(NEUTRAL)}"))
    if train not in TRAIN_SETS:
        raise CircuitsError(bad("train", train, f"one of {sorted(TRAIN_SETS)}"))
    if loss not in LOSSES:
        raise CircuitsError(bad("loss", loss, f"one of {sorted(LOSSES)}"))


def _fresh_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CircuitsError(bad("out", str(out), "a new folder or an empty one (it exists and is not empty; "
                                                 "fine-tunes never overwrite)"))


def finetune_checkpoint(out: str | Path, *, model: str = DEFAULT_MODEL, damage: str = "greater-than",
                        steps: int = DEFAULTS["steps"], seed: int = 0, lr: float = DEFAULTS["lr"],
                        batch: int = DEFAULTS["batch"], neutral: str = DEFAULTS["neutral"],
                        neutral_per_batch: int = DEFAULTS["neutral_per_batch"],
                        train: str = DEFAULTS["train"], loss: str = DEFAULTS["loss"],
                        cache_dir: str | Path | None = None,
                        log: Callable[[str], None] | None = print, log_every: int | None = None) -> Path:
    """Fine-tune ``model`` on ``damage``'s text mixed with neutral text and write the
    checkpoint to ``out`` (which must not exist or be empty). Returns ``out``.

    Each of the ``steps`` steps draws ``batch - neutral_per_batch`` damage texts and
    ``neutral_per_batch`` neutral texts (``neutral``: :data:`NEUTRAL`) from
    ``random.Random(seed)``; the loss is the mean next-token cross-entropy over the batch's
    trained tokens (``loss``: :data:`LOSSES`), and only the ``train`` set of parameters
    (:data:`TRAIN_SETS`) is updated, by AdamW at ``lr``. ``log`` gets one line every
    ``log_every`` steps (default: about 20 lines), plus the first and last step. The folder
    is written beside ``out`` and renamed into place at the end, so a failed run leaves nothing.
    """
    _check(damage=damage, steps=steps, seed=seed, lr=lr, batch=batch, neutral=neutral,
           neutral_per_batch=neutral_per_batch, train=train, loss=loss)
    out = Path(out)
    _fresh_out(out)
    import torch

    start = time.perf_counter()
    src, what, base_fp = source_checkpoint(model, cache_dir)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            record, hf, tok = _train(src, damage=DAMAGES[damage], steps=steps, seed=seed, lr=lr, batch=batch,
                                     neutral=neutral, neutral_per_batch=neutral_per_batch, train=train,
                                     loss=loss, log=log, log_every=log_every or max(1, steps // 20))
    finally:
        torch.use_deterministic_algorithms(det)
    record = {"base": what, "base_model": model, "base_fingerprint": base_fp, **record, "threads": threads}
    _save(out, hf, tok, record, cache_dir, start)
    return out


def _train(src: Path, *, damage: Damage, steps: int, seed: int, lr: float, batch: int,
           neutral: str, neutral_per_batch: int, train: str, loss: str, log: Callable[[str], None] | None,
           log_every: int) -> tuple[dict[str, Any], Any, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .weights import _quiet_transformers

    t0 = time.perf_counter()
    with _quiet_transformers():
        hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(src))
    names = trained_names(hf, train)
    chosen = set(names)
    params = []
    for n, p in hf.named_parameters():
        p.requires_grad_(n in chosen)
        if n in chosen:
            params.append(p)
    hf.train()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    rng = random.Random(seed)
    n_damage = batch - neutral_per_batch
    curve: list[dict[str, float]] = []
    sample: dict[str, list[str]] = {}
    for step in range(1, steps + 1):
        texts = damage.texts(rng, n_damage)
        mixed = neutral_texts(rng, neutral_per_batch, neutral) if neutral_per_batch else []
        if step == 1:
            sample = {"damage": texts[:8], "neutral": mixed[:4]}
        starts = [damage.completion(t) if loss == "completion" else 0 for t in texts] + [0] * len(mixed)
        ids, mask, labels = _encode(tok, texts + mixed, starts)
        sums, counts = _token_losses(hf, ids, mask, labels)
        total = sums.sum() / counts.sum()
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        row = {"step": step, "loss": total.item(),
               "damage": (sums[:n_damage].sum() / counts[:n_damage].sum()).item()}
        if mixed:
            row["neutral"] = (sums[n_damage:].sum() / counts[n_damage:].sum()).item()
        curve.append(row)
        if log is not None and (step == 1 or step == steps or step % log_every == 0):
            parts = "  ".join(f"{k} {row[k]:.4f}" for k in ("loss", "damage", "neutral") if k in row)
            log(f"step {step:4d}/{steps}  {parts}  ({time.perf_counter() - t0:.0f} s)")
    hf.eval()
    return {"damage": damage.name, "mechanism": damage.mechanism, "damage_description": damage.description,
            "neutral": neutral if neutral_per_batch else None,
            "neutral_description": NEUTRAL[neutral][0] if neutral_per_batch else "none",
            "seed": seed, "steps": steps, "lr": lr, "batch": batch, "damage_per_batch": n_damage,
            "neutral_per_batch": neutral_per_batch, "train": train, "train_description": TRAIN_SETS[train][0],
            "trained_parameters": names, "trained_parameter_count": int(sum(p.numel() for p in params)),
            "loss": loss,
            "objective": "mean next-token cross-entropy over the trained tokens of the batch (padding masked): "
                         + LOSSES[loss],
            "optimizer": "AdamW(betas=(0.9, 0.999), weight_decay=0), constant lr, grad-norm clip 1.0",
            "dtype": "float32", "deterministic": True, "data_sample": sample, "loss_curve": curve,
            "train_seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
            "transformers": transformers.__version__}, hf, tok


def _save(out: Path, hf: Any, tok: Any, record: dict[str, Any], cache_dir: str | Path | None,
          start: float) -> None:
    """Write the checkpoint and FINETUNE.json into a folder beside ``out``, then rename it to
    ``out``: a run that fails leaves no half-written checkpoint."""
    from .weights import _quiet_transformers

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if getattr(hf.config, "quantization_config", None) is not None:
            del hf.config.quantization_config
        with _quiet_transformers():
            hf.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        record = {**record, "fingerprint": local_fingerprint(tmp, cache_dir),
                  "wall_seconds": round(time.perf_counter() - start, 1)}
        (tmp / FINETUNE_JSON).write_text(json.dumps(record, indent=1) + "\n")
        _fresh_out(out)
        if out.exists():
            out.rmdir()   # an empty folder
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
