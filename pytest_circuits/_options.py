"""The plugin's options and markers: declared (``add_options``), parsed and checked once when
the run is configured (``settings``: a bad value is a usage error, exit 4, before any claim
runs), and the header that shows them. Marker arguments are checked here too.

Nothing heavy is imported at module import time: the plugin loads in every pytest run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from . import _session as S
from ._session import CHECKUP_PATH
from ._session import option as opt
from ._stash import (CHECKS_KEY, CLAIM_COUNT_KEY, EXPECTED_CHANGE_KEY, MODEL_PROBLEMS_KEY, SESSION_KEY,
                     SHARD_KEY)

_MARKERS = (
    "claim(source=None, finding=None): a stated interpretability finding; `finding` is the "
    "sentence the claim checks, `source` where it comes from (e.g. 'arXiv:2305.00586')",
    "model(*names, optional=None): the model(s) a claim is asserted against (overridden by "
    "--circuits-model); optional='why' declares that these models may be missing here: the claim "
    "is then reported as not checked instead of failing under --circuits-require-models",
    "baseline(tolerance='3se'): the drift tolerance of this claim's measurements against their "
    "baseline: one spec ('3se', 'abs:0.05', 'rel:0.1') or {metric: spec}",
    "expect_change(model, reason): this claim's assertion is expected to fail on the named model "
    "(a strict xfail on AssertionError only: it fails if the claim still holds there, and any other "
    "exception is a failure)",
)



#: each ini key's default (filled by :func:`add_options`): a run "asks for" the plugin when a
#: setting differs from it (:func:`asked_for`)
_INI_DEFAULTS: dict[str, Any] = {}


def add_options(parser: pytest.Parser) -> None:
    g = parser.getgroup("circuits", "pytest-circuits: interpretability claims on language models")

    def add(flag: str, ini: str, help: str, default: Any = None, type: str = "string", **kw: Any) -> None:
        g.addoption(flag, dest=ini, default=None, help=f"{help} [ini: {ini}]", **kw)
        parser.addini(ini, help=help, type=type, default=default)
        _INI_DEFAULTS[ini] = default

    add("--circuits-model", "circuits_model", "model to run claims against (repeatable): a registered "
        "name such as smollm2-135m, a checkpoint directory, or a cached Hugging Face name; "
        "overrides @pytest.mark.model", default=[], type="linelist", action="append")
    add("--circuits-device", "circuits_device", "auto|cpu|cuda|cuda:N (default auto)", default="auto")
    add("--circuits-device-map", "circuits_device_map", "spread each model over devices with Hugging Face's "
        "device_map: auto|balanced|balanced_low_0|sequential, a JSON object {module: device} or @file.json "
        "(default none: one device; needs --circuits-device auto)", default="")
    add("--circuits-dtype", "circuits_dtype", "float32|bfloat16|float16|float64 (default float32)",
        default="float32")
    add("--circuits-cache-dir", "circuits_cache_dir", "where converted weights and activations are "
        "cached (default $PYTEST_CIRCUITS_CACHE_DIR or ~/.cache/pytest-circuits)", default="")
    add("--circuits-no-cache", "circuits_no_cache", "keep activations in memory only (no disk cache)",
        default=False, type="bool", action="store_true")
    add("--circuits-clear-cache", "circuits_clear_cache", "delete cached activations before the run "
        "(converted weights are kept)", default=False, type="bool", action="store_true")
    add("--circuits-batch-size", "circuits_batch_size", "at most this many rows per forward pass (default: "
        "no limit but the token budget): prompts, or prompts x interventions when a sweep stacks several "
        "interventions into one forward", default="none")
    add("--circuits-token-budget", "circuits_token_budget", "rows x positions per forward pass (default: "
        "$PYTEST_CIRCUITS_TOKEN_BUDGET, else 4096 on a CPU, chosen from free memory on CUDA)", default="auto")
    add("--circuits-seed", "circuits_seed", "seed for torch, numpy and random, reset for every claim "
        "(default 0)", default="0")
    add("--circuits-require-models", "circuits_require_models", "fail, instead of skip, claims whose "
        "model cannot be loaded", default=False, type="bool", action="store_true")
    add("--circuits-baseline", "circuits_baseline", "compare every claim's measurements with its "
        "baseline (a missing baseline is written and the claim fails)", default=False, type="bool",
        action="store_true")
    add("--circuits-baseline-dir", "circuits_baseline_dir", "folder of baseline files, one JSON per "
        "model (default claims/baselines beside the ini file, or where pytest was started without one; "
        "a relative path: to where pytest was started, or to the ini file's folder when set there; "
        "giving it turns baselines on)", default="")
    add("--circuits-update-baselines", "circuits_update_baselines", "rewrite the baselines of the "
        "claims that run (others are kept)", default=False, type="bool", action="store_true")
    add("--circuits-baseline-of", "circuits_baseline_of", "compare every model with this model's "
        "baseline file (e.g. a new checkpoint against the released model's baselines); nothing is "
        "written for the other models", default="")
    add("--circuits-baseline-tolerance", "circuits_baseline_tolerance", "default drift tolerance: "
        "'3se' (standard errors), 'abs:X' or 'rel:X' (default 3se)", default="3se")
    add("--circuits-familywise", "circuits_familywise", "family-wise error control over the claims "
        "of the run: 'bonferroni' widens every measurement's interval to level 1 - 0.05/m (m = claims "
        "collected) so that all the run's verdicts hold together at 95%%; 'none' (default): each "
        "claim at 95%%", default="none")
    add("--circuits-report", "circuits_report", "write the results ledger as JSON to this path",
        default="")
    add("--circuits-markdown", "circuits_markdown", "write a Markdown claims x models table "
        "(e.g. for a CI job summary)", default="")
    add("--circuits-html", "circuits_html", "write an HTML report with plots across models", default="")
    add("--circuits-shard", "circuits_shard", "run only shard K of N (e.g. 2/4): the collected items are split "
        "deterministically by model and claim over N jobs (docs/release-gate.md); merge the jobs' "
        "--circuits-report files with `pytest-circuits merge`", default="")
    add("--circuits-checkup", "circuits_checkup", "run the mechanism checkup (induction, IOI, successor "
        "heads, copy suppression, greater-than, factual recall) as claims on every --circuits-model; "
        "with no paths given, only the checkup runs", default=False, type="bool", action="store_true")
    add("--circuits-checks", "circuits_checks", "which checkup checks to run: 'all' (default) or a comma "
        "list", default="all")
    add("--circuits-update-failing", "circuits_update_failing", "with --circuits-update-baselines, also record "
        "the baselines of claims that fail (they still fail): the released model's values are what they are",
        default=False, type="bool", action="store_true")



def add_markers(config: pytest.Config) -> None:
    """Register the plugin's markers (and xdist's group marker when xdist is absent)."""
    for m in _MARKERS:
        config.addinivalue_line("markers", m)
    if not config.pluginmanager.hasplugin("xdist"):
        # Claims carry xdist_group(...) so `--dist loadgroup` keeps a model on one worker;
        # register it when xdist is absent so --strict-markers stays clean.
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist grouping (xdist not installed)")


def path_option(config: pytest.Config, name: str) -> Path | None:
    """A folder or file option as an absolute path (None when not given): relative to the folder
    pytest was started in when given on the command line, to the ini file's folder when given
    there. Never to pytest's rootdir, which a path in the command line can move."""
    raw = opt(config, name)
    if raw is None or not str(raw).strip():
        return None
    path = Path(str(raw).strip()).expanduser()
    if path.is_absolute():
        return path
    base = Path(str(config.invocation_params.dir)) if config.getoption(name) is not None else S.claims_root(config)
    return base / path


def add_checkup(config: pytest.Config) -> None:
    """``--circuits-checkup``: collect the checkup's claims (alone when no paths were given).
    Nothing is imported otherwise: the plugin loads in every pytest run of the environment."""
    if not opt(config, "circuits_checkup"):
        if config.getoption("circuits_checks") not in (None, "all"):
            # Given on the command line without the checkup: it would select nothing, silently.
            raise pytest.UsageError("pytest-circuits: --circuits-checks selects the checkup's checks; add "
                                    "--circuits-checkup to run them")
        return
    from .checkup import select
    from .errors import CircuitsError

    try:
        checks = select(str(opt(config, "circuits_checks")))
    except CircuitsError as e:
        raise pytest.UsageError(f"pytest-circuits: --circuits-checks: {e}") from None
    config.stash[CHECKS_KEY] = checks
    explicit = getattr(config, "args_source", None) == pytest.Config.ArgsSource.ARGS
    here = str(CHECKUP_PATH)
    config.args[:] = ([a for a in config.args if a != here] if explicit else []) + [here]


def _models(config: pytest.Config) -> tuple[list[str], bool]:
    """The models asked for on the command line (repeatable) or in the ini file, and
    whether they came from the command line."""
    cli = [m for group in (config.getoption("circuits_model") or []) for m in
           (group if isinstance(group, list) else [group])]
    return (cli, True) if cli else (list(config.getini("circuits_model")), False)


def settings(config: pytest.Config) -> Any:
    """Parse and check every option (each also an ini key); a bad value is a UsageError."""
    from ._session import DTYPES, FAMILYWISE, Settings, check_device, check_model_name
    from .config import MAX_SEED, cache_location, is_url

    c = config

    def usage(msg: str) -> pytest.UsageError:
        return pytest.UsageError(f"pytest-circuits: {msg}")

    def integer(name: str, flag: str, low: int, high: int | None = None) -> int:
        raw = opt(c, name)
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise usage(f"{flag}={raw!r} is not valid: an integer") from None
        if value < low or (high is not None and value > high):
            raise usage(f"{flag}={value} is not valid: an integer >= {low}"
                        + (f" and <= {high:,}" if high is not None else ""))
        return value

    for name, flag in _TEXT_OPTIONS:
        given = c.getoption(name)
        if isinstance(given, str) and not given.strip():
            # e.g. --circuits-report=$REPORT with the variable unset: never a silent default
            raise usage(f"{flag}= is empty: give a value, or leave the option out")
    models, from_cli = _models(c)
    for name in models:
        problem = check_model_name(name) or pickled_checkpoint(name)
        if problem:
            raise usage(problem + ("" if from_cli else " (from the ini option circuits_model)"))
    _check_outputs(c, usage)
    dtype = str(opt(c, "circuits_dtype")).strip()
    if dtype not in DTYPES:
        raise usage(f"--circuits-dtype={dtype!r} is not valid: one of {', '.join(DTYPES)}")
    device = str(opt(c, "circuits_device")).strip()
    problem = check_device(device)
    if problem:
        raise usage(problem)
    device_map = _device_map(c, device, models, usage)
    familywise = str(opt(c, "circuits_familywise")).strip().lower()
    if familywise not in FAMILYWISE:
        raise usage(f"--circuits-familywise={familywise!r} is not valid: one of {', '.join(FAMILYWISE)}")
    cache = opt(c, "circuits_cache_dir")
    cache = cache.strip() if isinstance(cache, str) else cache
    cache_dir = (cache if is_url(cache) else path_option(c, "circuits_cache_dir")) if cache else cache_location()
    use_disk = not opt(c, "circuits_no_cache")
    from .cachekey import key_problem

    problem = key_problem()         # the team key (docs/trust.md): set means usable; never echoed
    if problem:
        raise usage(problem)
    if is_url(cache_dir):
        # A remote cache (an fsspec URL, docs/remote-cache.md): its protocol's package is
        # checked always, and (unless --circuits-no-cache) a probe object is written, read and
        # deleted there, so a missing bucket or package is a usage error before any claim.
        from .blobs import describe_url, location_problem

        problem = location_problem(cache_dir, probe=use_disk)
        if problem:
            raise usage(f"--circuits-cache-dir={describe_url(cache_dir)!r} cannot be used: {problem}. "
                        "Pass a reachable location or a writable folder with --circuits-cache-dir (or "
                        "$PYTEST_CIRCUITS_CACHE_DIR)")
    # A cache folder the user chose is checked now (the plugin loads in every pytest run of
    # the environment, so the default one is not: if it cannot be written, the store warns
    # once and keeps activations in memory).
    elif use_disk and (cache or os.environ.get("PYTEST_CIRCUITS_CACHE_DIR")):
        from .store import cache_dir_problem

        problem = cache_dir_problem(cache_dir)
        if problem:
            raise usage(f"--circuits-cache-dir={str(cache_dir)!r} cannot be used: {problem}. Pass a "
                        "writable folder with --circuits-cache-dir (or $PYTEST_CIRCUITS_CACHE_DIR), or "
                        "--circuits-no-cache to keep activations in memory only")
    tolerance = opt(c, "circuits_baseline_tolerance")
    from .baselines import BaselineError, Tolerance

    try:
        Tolerance.parse(tolerance)
    except BaselineError as e:
        raise usage(f"--circuits-baseline-tolerance: {e}") from None
    bdir = opt(c, "circuits_baseline_dir")
    baseline = bool(opt(c, "circuits_baseline")) or bool(bdir) or bool(opt(c, "circuits_baseline_of"))
    where = path_option(c, "circuits_baseline_dir") if bdir else S.claims_root(c) / "claims" / "baselines"
    if baseline and not hasattr(c, "workerinput"):
        # baselines are written into it (a missing one, or obtained values on drift)
        from .config import output_problem

        problem = output_problem(where, folder=True)
        if problem:
            raise usage(f"--circuits-baseline-dir={str(bdir or where)!r} cannot be used: {problem}")
    shard = str(opt(c, "circuits_shard") or "").strip()
    if shard:
        from .shards import parse_shard

        try:
            c.stash[SHARD_KEY] = parse_shard(shard)
        except ValueError as e:
            raise usage(f"--circuits-shard: {e}") from None
    return Settings(
        models=models or Settings().models, models_from_cli=from_cli, models_named=bool(models),
        clear_cache=bool(opt(c, "circuits_clear_cache")),
        device=device if device_map is not None else worker_device(device), device_map=device_map,
        dtype=dtype, cache_dir=cache_dir, use_disk_cache=use_disk,
        batch_size=None if str(opt(c, "circuits_batch_size")).strip().lower() == "none"
        else integer("circuits_batch_size", "--circuits-batch-size", 1),
        token_budget=None if str(opt(c, "circuits_token_budget")).strip().lower() == "auto"
        else integer("circuits_token_budget", "--circuits-token-budget", 1),
        seed=integer("circuits_seed", "--circuits-seed", 0, MAX_SEED),
        require_models=bool(opt(c, "circuits_require_models")),
        baseline=baseline,
        baseline_dir=where,
        update_baselines=bool(opt(c, "circuits_update_baselines")),
        baseline_of=opt(c, "circuits_baseline_of") or None,
        baseline_tolerance=tolerance, familywise=familywise)


# Options whose value is text: given empty on the command line, each would silently mean
# "not given" (no report, no sharding, the default cache): a usage error instead.
_TEXT_OPTIONS = (("circuits_cache_dir", "--circuits-cache-dir"), ("circuits_report", "--circuits-report"),
                 ("circuits_markdown", "--circuits-markdown"), ("circuits_html", "--circuits-html"),
                 ("circuits_baseline_dir", "--circuits-baseline-dir"),
                 ("circuits_baseline_of", "--circuits-baseline-of"), ("circuits_shard", "--circuits-shard"),
                 ("circuits_device_map", "--circuits-device-map"), ("circuits_device", "--circuits-device"),
                 ("circuits_dtype", "--circuits-dtype"), ("circuits_seed", "--circuits-seed"),
                 ("circuits_batch_size", "--circuits-batch-size"), ("circuits_familywise", "--circuits-familywise"),
                 ("circuits_token_budget", "--circuits-token-budget"),
                 ("circuits_baseline_tolerance", "--circuits-baseline-tolerance"),
                 ("circuits_checks", "--circuits-checks"))


_OUTPUTS = (("circuits_report", "--circuits-report"), ("circuits_markdown", "--circuits-markdown"),
            ("circuits_html", "--circuits-html"))


def _check_outputs(c: pytest.Config, usage: Any) -> None:
    """Every file the run writes at its end (--circuits-report/-markdown/-html, --junitxml) can
    be written there: a usage error now, not a crash after every claim has run. Two outputs
    at one path are refused too (one would overwrite the other). xdist workers write none."""
    if hasattr(c, "workerinput"):
        return
    from .config import output_problem

    wanted = [(flag, str(opt(c, name)).strip()) for name, flag in _OUTPUTS if opt(c, name)]
    junit = getattr(c.option, "xmlpath", None)
    if junit:
        wanted.append(("--junitxml", str(junit)))
    seen: dict[Path, str] = {}
    for flag, raw in wanted:
        where = Path(raw).expanduser().resolve()
        if where in seen:
            raise usage(f"{flag}={raw!r} and {seen[where]} name the same file: one would overwrite the other")
        seen[where] = f"{flag}={raw!r}"
        problem = output_problem(where)
        if problem:
            raise usage(f"{flag}={raw!r} cannot be written at the end of the run: {problem}")


_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def pickled_checkpoint(name: str) -> str | None:
    """Why a checkpoint folder cannot be used because its weights are pickled (and there are
    no safetensors), or None: a clear refusal with the way out, never "model unavailable"."""
    path = Path(str(name)).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    pickled = sorted(p.name for pattern in _PICKLED for p in path.glob(pattern))
    if not pickled:
        return None
    return (f"model {name!r}: {path} holds pickled weights ({', '.join(pickled[:3])}) and no *.safetensors; "
            "pickled checkpoints are never loaded (unpickling can run code). If you trust the file, convert it "
            "once, e.g. python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{path}').save_pretrained('{path}-safetensors')\", copy the tokenizer files "
            "next to it, and pass the new folder")


def _device_map(c: pytest.Config, device: str, models: list[str], usage: Any) -> Any:
    """``--circuits-device-map`` parsed and checked against ``--circuits-device``, this
    machine's devices and (a dict) the modules of every model named with --circuits-model,
    so a bad map is a usage error before any claim runs. With no model named, the claims'
    markers choose (not known yet): each model's load checks the map against it (a misfit
    fails its claims), and the embedded model is not converted for a check no claim may
    need. An ``@file`` given on the command line is read relative to where pytest was
    started, one in the ini file to the rootdir."""
    from_cli = c.getoption("circuits_device_map") is not None
    raw = opt(c, "circuits_device_map")
    if not str(raw or "").strip():
        return None
    from .devices import DeviceMapError, device_conflict, missing_devices, parse_device_map
    from .errors import ModelUnavailable
    from .models import device_map_problem

    try:
        device_map = parse_device_map(raw, base=c.invocation_params.dir if from_cli else c.rootpath)
    except DeviceMapError as e:
        raise usage(str(e)) from None
    problem = device_conflict(device, device_map) or missing_devices(device_map)
    cache = opt(c, "circuits_cache_dir")
    for name in ([] if problem else models):
        try:
            where = (cache if "://" in str(cache) else str(path_option(c, "circuits_cache_dir"))) if cache else None
            problem = device_map_problem(name, device_map, where)
        except ModelUnavailable:   # e.g. the embedded model is not installed: its claims say so
            continue
        if problem:
            problem = f"model {name!r}: {problem}"
            break
    if problem:
        raise usage(problem)
    return device_map


def worker_device(device: str) -> str:
    """Under xdist with several GPUs, each worker takes its own (``gw0`` -> cuda:0, ...)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if device != "auto" or not worker.startswith("gw"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{int(worker[2:]) % count}" if count > 1 else device


def asked_for(config: pytest.Config) -> bool:
    """Whether the run names this plugin: a ``--circuits-*`` option on the command line, or a
    ``circuits_*`` setting in the ini file other than its default."""
    return any(config.getoption(name) is not None or config.getini(name) != default
               for name, default in _INI_DEFAULTS.items())


def header(config: pytest.Config) -> list[str]:
    from .config import DEFAULT_MODEL

    st = config.stash[SESSION_KEY].settings
    models = (st.models if st.models_named
              else [f"{DEFAULT_MODEL} (default; @pytest.mark.model may choose)"])
    line = (f"circuits: models={', '.join(models)} device={st.device} dtype={st.dtype} seed={st.seed}"
            + (" require-models" if st.require_models else ""))
    if st.familywise != "none":
        line += f" familywise={st.familywise}"
    return [line]


_OUR_MARKERS = ("claim", "model", "baseline", "expect_change")


def check_marker_names(metafunc: pytest.Metafunc) -> None:
    """A misspelt marker of this plugin on a claim (``@pytest.mark.modle("gpt2")``) is a usage
    error: pytest would only warn, and the claim would run on another model, unmarked."""
    import difflib

    registered = {line.split("(")[0].split(":")[0].strip() for line in metafunc.config.getini("markers")}
    for m in metafunc.definition.iter_markers():
        if m.name in registered or m.name in _OUR_MARKERS:
            continue
        close = difflib.get_close_matches(m.name, _OUR_MARKERS, n=1, cutoff=0.75)
        if close:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown marker @pytest.mark.{m.name}; "
                                    f"did you mean @pytest.mark.{close[0]}?")


def marker_model_problem(c: pytest.Config, name: str, *, optional: bool) -> str | None:
    """What is wrong with a model a claim's marker names (once per name and run): a pickled
    checkpoint always; a name that is not registered, not a checkpoint folder and not in the
    local Hugging Face cache (a typo, most likely) unless the marker declares the model
    optional (``optional="why it may be missing here"``)."""
    table = c.stash.setdefault(MODEL_PROBLEMS_KEY, {})
    if name not in table:
        missing = S.check_model_name(name)
        prefix = f"--circuits-model={name!r} is not valid: "
        table[name] = (pickled_checkpoint(name), missing.removeprefix(prefix) if missing else None)
    pickled, missing = table[name]
    if pickled:
        return pickled
    if missing and not optional:
        return (f"{missing}. A claim whose model may be absent on some machines declares it: "
                "@pytest.mark.model(..., optional=\"why it may be missing\")")
    return None



# ----------------------------------------------------------------------------- collection
def claim_models(metafunc: pytest.Metafunc) -> list[str] | None:
    """The models a test function runs on when it uses the plugin's ``model`` fixture (None
    when it does not), its markers checked: a misspelt marker, unknown keywords, a model name
    that is not a string or cannot be a model are usage errors."""
    ours = "model" in metafunc.fixturenames and S.is_ours(metafunc)
    if ours or metafunc.definition.get_closest_marker("claim") is not None:
        check_marker_names(metafunc)
    if not ours:
        return None
    c = metafunc.config
    st = c.stash[SESSION_KEY].settings
    marker = metafunc.definition.get_closest_marker("model")
    if marker is not None:
        unknown = set(marker.kwargs) - {"optional"}
        if unknown:
            raise pytest.UsageError(f"@pytest.mark.model in {metafunc.definition.nodeid} got unknown "
                                    f"keyword(s) {sorted(unknown)}; valid: optional=\"why it may be missing\"")
    if st.models_from_cli:
        names = list(st.models)
    elif marker is not None and marker.args:
        names = list(marker.args)
    else:
        names = list(st.models)
    for n in names:
        if not isinstance(n, str) or not n:
            raise pytest.UsageError(f"@pytest.mark.model({n!r}) in {metafunc.definition.nodeid}: "
                                    "model names are non-empty strings")
    if not st.models_from_cli and marker is not None and marker.args:
        for n in names:
            problem = marker_model_problem(c, n, optional=bool(marker.kwargs.get("optional")))
            if problem:
                raise pytest.UsageError(f"@pytest.mark.model({n!r}) in {metafunc.definition.nodeid}: {problem}")
    return names


def mark_items(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Select the checkup's checks, count the claims, and turn the claims' markers into what pytest
    runs: an xdist group per model, a strict xfail for an expect_change on this model."""
    checks = config.stash.get(CHECKS_KEY, None)
    if checks is not None and any(S.is_checkup(i) for i in items):
        keep = {f"test_{c}" for c in checks}
        dropped = [i for i in items if S.is_checkup(i) and i.originalname not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if i not in set(dropped)]
    config.stash[CLAIM_COUNT_KEY] = sum(1 for item in items if S.is_claim(item))
    for item in items:
        if S.is_checkup(item):
            item.user_properties.append(("circuits-checkup-item", "1"))   # its reports carry the card
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "model" in params and S.is_ours_item(item):
            mid = S.model_id(str(params["model"]))
            # xdist --dist loadgroup: all claims on one model go to one worker (one load).
            item.add_marker(pytest.mark.xdist_group(name=f"circuits-{mid}"))
            for m in item.iter_markers("expect_change"):
                if not m.args or not isinstance(m.args[0], str) or "reason" not in m.kwargs:
                    raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.expect_change(\"model\", "
                                            "reason=\"...\")")
                if m.args[0] in (mid, str(params["model"])):
                    # Only the claim's own assertion failing is the expected change: any other
                    # exception (a crash, a MeasurementError, an unavailable model) fails the item.
                    reason = f"expected change on {m.args[0]}: {m.kwargs['reason']}"
                    item.add_marker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason))
                    item.stash[EXPECTED_CHANGE_KEY] = reason
        for m in item.iter_markers("claim"):
            if m.args:
                raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.claim(finding=..., source=...) "
                                        "with keywords")
            unknown = set(m.kwargs) - {"finding", "source"}
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.claim got unknown keyword(s) "
                                        f"{sorted(unknown)}; valid: finding, source")

