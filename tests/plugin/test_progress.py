"""A long run of claims says where it is, with an estimate of the time left, under ``-q``
too (issue #23, item 8): ``_progress.Heartbeat``, checked with a fake clock, and through
pytester on claims that take longer than a (shortened) beat."""

from __future__ import annotations

import textwrap

import pytest

from pytest_circuits import _progress as P


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_line_counts_and_estimates_from_the_tests_finished():
    clock, out = Clock(), []
    beat = P.Heartbeat(10, every=60, write=out.append, clock=clock)
    beat.started("a.py::test_1")
    clock.t += 30
    assert not beat.beat() and out == []                 # under a minute: nothing
    assert beat.line() == ("pytest-circuits: 0/10 tests done in 30 s; no estimate before the first test "
                           "finishes; running a.py::test_1 for 30 s")
    clock.t += 90                                         # test_1 took 2 minutes
    beat.finished("a.py::test_1")
    beat.started("a.py::test_2")
    clock.t += 15
    assert beat.beat() and len(out) == 1
    # 1 of 10 done in 2 min 15 s: about 9 x 2 min 15 s = 20 min 15 s left
    assert out[0] == ("pytest-circuits: 1/10 tests done in 2 min 15 s; about 20 min 15 s left (at 2 min 15 s "
                      "a test so far); running a.py::test_2 for 15 s")
    assert not beat.beat()                                # the next line comes a minute later
    clock.t += 60
    assert beat.beat() and len(out) == 2
    beat.finished("never started")                        # not counted
    assert beat.done == 1


def test_no_estimate_from_the_first_few_of_many_tests():
    """A run of 1,587 tests whose first one loads a model: no estimate until 80 (a twentieth)
    have finished, then the mean of those."""
    clock = Clock()
    beat = P.Heartbeat(1587, clock=clock)
    beat.started("first")
    clock.t += 60
    beat.finished("first")
    assert beat.line() == ("pytest-circuits: 1/1587 tests done in 1 min 00 s; no estimate before 80 tests finish "
                           "(the first load models and fill caches)")
    for i in range(79):
        beat.started(str(i))
        clock.t += 1
        beat.finished(str(i))
    # 80 done in 139 s: about 1507 x 1.74 s = 43 min 38 s left
    assert beat.line() == ("pytest-circuits: 80/1587 tests done in 2 min 19 s; about 43 min 38 s left (at 2 s a "
                           "test so far)")


def test_several_running_at_once_name_the_longest_running():
    clock = Clock()
    beat = P.Heartbeat(3, clock=clock)
    beat.started("x")
    clock.t += 5
    beat.started("y")
    clock.t += 5
    assert beat.line().endswith("running x for 10 s")
    for name in ("x", "y"):
        beat.finished(name)
    beat.started("z")
    beat.finished("z")
    assert beat.line() == "pytest-circuits: 3/3 tests done in 10 s"


def test_durations():
    assert [P._duration(s) for s in (0, 59.4, 60, 3599, 3600, 7322)] == [
        "0 s", "59 s", "1 min 00 s", "59 min 59 s", "1 h 00 min", "2 h 02 min"]


CLAIMS = textwrap.dedent("""
    import time
    import pytest
    from pytest_circuits import Measurement

    @pytest.mark.claim(source="test", finding="slow")
    @pytest.mark.parametrize("i", [0, 1])
    def test_slow(i):
        time.sleep(1.0)
        Measurement.from_values("x", [1.0, 1.1, 1.2], model="synthetic").assert_above(0.0)
""")


def test_a_quiet_run_of_claims_beats(pytester, monkeypatch):
    monkeypatch.setattr(P, "HEARTBEAT_SECONDS", 0.2)
    pytester.makepyfile(test_claims=CLAIMS)
    r = pytester.runpytest("-q", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=2)
    lines = [line for line in r.outlines if line.startswith("pytest-circuits: ")]
    assert lines and all(" tests done in " in line for line in lines)
    assert any("running test_claims.py::test_slow[" in line for line in lines)
    assert any(line.startswith("pytest-circuits: 1/2 tests done") and " left (at " in line for line in lines)


def test_a_run_without_claims_never_beats(pytester, monkeypatch):
    monkeypatch.setattr(P, "HEARTBEAT_SECONDS", 0.05)
    pytester.makepyfile(test_plain="import time\n\ndef test_a():\n    time.sleep(0.5)\n")
    r = pytester.runpytest("-q", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    assert not [line for line in r.outlines + r.errlines if line.startswith("pytest-circuits")]


CAPTURING = textwrap.dedent("""
    import time
    import pytest
    from pytest_circuits import Measurement

    @pytest.mark.claim(source="test", finding="captures")
    def test_capture_is_whole(capsys):
        i, end = 0, time.monotonic() + 1.5
        while time.monotonic() < end:
            print(f"line {i}")
            i += 1
        out = capsys.readouterr().out.splitlines()
        assert out == [f"line {j}" for j in range(i)], "lines went astray"
        Measurement.from_values("x", [1.0, 1.1, 1.2], model="synthetic").assert_above(0.0)
""")


@pytest.mark.parametrize("capture", ["fd", "sys"])
def test_the_heartbeat_leaves_capture_alone(pytester, capture):
    """The heartbeat's thread writes past capture without suspending it: a test's captured
    output is whole while the heartbeat beats (every 10 ms here), and the beats still reach the
    terminal."""
    pytester.makeconftest("import pytest_circuits._progress as P\nP.HEARTBEAT_SECONDS = 0.01\n")
    pytester.makepyfile(test_claims=CAPTURING)
    r = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", f"--capture={capture}")
    r.assert_outcomes(passed=1)
    assert any(line.startswith("pytest-circuits: 0/1 tests done") for line in r.outlines)
