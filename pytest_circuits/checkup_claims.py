"""The mechanism checkup's claims: collected by ``pytest --circuits-checkup``, one claim per
check (:data:`pytest_circuits.checkup.CHECKS`) per ``--circuits-model``.

Each claim runs its check's detector, attaches the detection to its report (the mechanism
card in the terminal summary and in ``--circuits-report/--circuits-markdown/--circuits-html``),
and then, so that the run's exit status is a gate a team can rely on:

* **found** or **absent**: passes (absence is a finding: a model without successor heads is
  not a broken model), unless ``--circuits-checks`` expects the other verdict
  (``successor:found``, ``induction:absent``);
* **undecided** (an interval straddles the criterion): fails, saying which measurement;
* **not applicable**: skipped with the reason (never passed), unless a verdict was expected
  of it, or the baseline it is compared with has measurements of it;
* a detector that raises: fails (an error row on the card).

With baselines on (``--circuits-baseline``, ``--circuits-baseline-dir``,
``--circuits-baseline-of``), the verdict is recorded as the measurement
:data:`~pytest_circuits.checkup.VERDICT` (compared exactly) beside the headline
measurements (compared within the tolerance), and a verdict that differs from the
baseline's fails here with the two verdicts named (claim ids ``checkup::test_<check>``,
whatever the install path).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_circuits import checkup

CARD_PROPERTY = "circuits-checkup"


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name, None)
    return config.getini(name) if value is None else value


def _expected(config: pytest.Config, name: str) -> str | None:
    """The verdict ``--circuits-checks`` (or the ini option) expects of check ``name``."""
    return checkup.parse(str(_option(config, "circuits_checks") or "all")).get(name)


def _baseline_verdict(request: pytest.FixtureRequest, model: Any) -> tuple[Any, Any] | None:
    """``(verdict entry or None, path)`` of this claim in the baseline file it is compared with;
    None when baselines are off (or being rewritten)."""
    from pytest_circuits import baselines as B
    from pytest_circuits._session import baseline_folder, claim_id
    from pytest_circuits.models import info

    st = request.getfixturevalue("circuits_session").settings
    if not st.baseline or st.update_baselines:
        return None
    directory = baseline_folder(request.config, st)
    path = B.model_file(directory, st.baseline_of or info(model).label)
    try:
        data = B.read(path)
    except B.BaselineError:
        return None          # the session fails the claim on the file, with its own message
    entries = data.claims.get(claim_id(request.node)) if data.exists else None
    if entries is None:
        return None, path
    return entries.get(checkup.VERDICT, {}), path


def _claim(check: checkup.Check) -> Any:
    @pytest.mark.claim(source=check.source, finding=check.finding)
    @pytest.mark.baseline(tolerance={checkup.VERDICT: "abs:0"})   # a verdict either is the baseline's or not
    def claim(model: Any, request: pytest.FixtureRequest) -> None:
        __tracebackhide__ = True      # the failure is the card's message, not this function's source
        det = checkup.run(check.name, model)
        request.node.user_properties.append((CARD_PROPERTY, checkup.dumps(det)))
        print(det.summary())
        expected = _expected(request.config, check.name)
        gate = _baseline_verdict(request, model)
        if not det.applicable:
            if expected is not None:
                pytest.fail(f"{det.title} was expected {expected.upper()} on {det.model} (--circuits-checks), "
                            f"but the check is not applicable there: {det.reason}", pytrace=False)
            if gate is not None and gate[0] is not None:
                pytest.fail(f"{det.title} is not applicable on {det.model} ({det.reason}), but the baseline it "
                            f"is compared with ({gate[1]}) has this check's measurements: the check can no longer "
                            "be made", pytrace=False)
            pytest.skip(f"not applicable: {det.reason}")
        if det.undecided:
            pytest.fail(f"{det.title} on {det.model}: the check could not decide: {det.reason}. Neither found "
                        f"nor absent by its criterion ({det.criterion}); more prompts (or seeds) narrow the "
                        f"intervals\n{det.summary()}", pytrace=False)
        if expected is not None and det.status != expected:
            pytest.fail(f"{det.title} was expected {expected.upper()} on {det.model} (--circuits-checks), and is "
                        f"{det.status.upper()}: the criterion ({det.criterion})\n{det.summary()}", pytrace=False)
        if gate is not None and gate[0] is not None:
            then = gate[0].get("mean") if isinstance(gate[0], dict) else None
            if isinstance(then, (int, float)) and (then >= 0.5) != det.found:
                was, now = ("FOUND", "ABSENT") if then >= 0.5 else ("ABSENT", "FOUND")
                pytest.fail(f"{det.title} {'vanished' if was == 'FOUND' else 'appeared'} on {det.model}: {was} in "
                            f"the baseline ({gate[1]}), {now} here, by the criterion ({det.criterion})\n"
                            f"{det.summary()}", pytrace=False)

    claim.__name__ = claim.__qualname__ = f"test_{check.name}"
    claim.__doc__ = f"{check.title} ({check.source}): {check.finding}."
    claim._circuits_check = check     # type: ignore[attr-defined]  # what sync() compares
    return claim


def sync() -> None:
    """Make this module's claims the registry's checks, as they are now: one claim per check in
    :data:`pytest_circuits.checkup.CHECKS`, none for a check no longer registered, a new one for a
    check registered again under its name. The plugin calls it each time the module is collected:
    the module is imported once per process, and checks registered later (a conftest, a test
    that runs pytest in-process) would otherwise never become claims."""
    space = globals()
    for name in [n for n, v in space.items() if hasattr(v, "_circuits_check")]:
        check = space[name]._circuits_check
        if checkup.CHECKS.get(check.name) is not check:
            del space[name]
    for check in checkup.CHECKS.values():
        if getattr(space.get(f"test_{check.name}"), "_circuits_check", None) is not check:
            space[f"test_{check.name}"] = _claim(check)


sync()
