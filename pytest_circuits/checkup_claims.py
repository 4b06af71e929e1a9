"""The mechanism checkup's claims: collected by ``pytest --circuits-checkup``, one claim per
check (:data:`pytest_circuits.checkup.CHECKS`) per ``--circuits-model``.

Each claim runs its check's detector, attaches the detection to its report (the mechanism
card in the terminal summary and in ``--circuits-report/--circuits-markdown/--circuits-html``),
and then:

* passes when the mechanism is found by the detector's criterion;
* fails when it is not (the card says by how much: the measurements and the criterion);
* is skipped as **not applicable**, with the reason, when the model cannot run the check.

Only the detection's headline measurements are recorded, so ``--circuits-baseline`` gates
on them across checkpoints (claim ids ``checkup::test_<check>``, whatever the install path).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_circuits import checkup

CARD_PROPERTY = "circuits-checkup"


def _claim(check: checkup.Check) -> Any:
    @pytest.mark.claim(source=check.source, finding=check.finding)
    def claim(model: Any, request: pytest.FixtureRequest) -> None:
        __tracebackhide__ = True      # the failure is the card's message, not this function's source
        det = checkup.run(check.name, model)
        request.node.user_properties.append((CARD_PROPERTY, checkup.dumps(det)))
        print(det.summary())
        if not det.applicable:
            pytest.skip(f"not applicable: {det.reason}")
        assert det.found, (f"{det.title} not found on {det.model}: the criterion ({det.criterion}) does "
                           f"not hold\n{det.summary()}")

    claim.__name__ = claim.__qualname__ = f"test_{check.name}"
    claim.__doc__ = f"{check.title} ({check.source}): {check.finding}."
    return claim


for _check in checkup.CHECKS.values():
    globals()[f"test_{_check.name}"] = _claim(_check)
del _check
