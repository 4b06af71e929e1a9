"""Every ``pytest.StashKey`` of the plugin, in one place: what the run keeps on its
``config`` (and each claim on its ``item``) between hooks, and which module writes it.

Nothing but pytest is imported: the plugin loads in every pytest run of the environment.
"""

from __future__ import annotations

from typing import Any

import pytest

# --- on the config: the run ----------------------------------------------------------------
#: the run's lazily built session (``plugin._LazySession``: settings now, Session on first use)
SESSION_KEY = pytest.StashKey[Any]()
#: the checkup's checks selected by --circuits-checks (``_options.add_checkup``)
CHECKS_KEY = pytest.StashKey[list]()
#: (index, count) of --circuits-shard (``_options.settings``)
SHARD_KEY = pytest.StashKey["tuple[int, int]"]()
#: per model name a marker gives: (pickled-checkpoint problem, missing-model problem)
MODEL_PROBLEMS_KEY = pytest.StashKey[dict]()
#: how many claims were collected (family-wise control; the summary)
CLAIM_COUNT_KEY = pytest.StashKey[int]()
#: the node ids of the suite's claims before sharding (the ledger's "collected")
COLLECTED_KEY = pytest.StashKey[list]()
#: node id -> {"claim", "model", "finding"}, from the claims' reports (xdist's controller has no items)
CLAIM_INFO_KEY = pytest.StashKey[dict]()
#: xdist worker id -> its store counters and model loads (``Session.worker_summary``)
WORKERS_KEY = pytest.StashKey[dict]()
#: id(fixturedef) -> (fixturedef, measurements made while it was set up)
FIXTURE_MEASUREMENTS_KEY = pytest.StashKey[dict]()
#: the run's progress heartbeat (``_progress.Heartbeat``)
HEARTBEAT_KEY = pytest.StashKey[Any]()
#: the ledger records (:class:`~pytest_circuits.ledger.LedgerRecord`) of the claims that measured
RESULTS_KEY = pytest.StashKey[list]()
#: the checkup's cards: (node id, outcome, card or None, reason)
CARDS_KEY = pytest.StashKey[list]()
#: node id -> (verdict, reason) of every claim item this process ran or skipped
CLAIMS_KEY = pytest.StashKey[dict]()
#: the working tree the run started from (``report.worktree``), when a report is asked
WORKTREE_KEY = pytest.StashKey[Any]()

# --- on an item: one claim -----------------------------------------------------------------
#: the Measurements the claim recorded (its fixtures' first)
MEASUREMENTS_KEY = pytest.StashKey[list]()
#: the interval assertions it made (assert_above / assert_below / assert_within)
ASSERTIONS_KEY = pytest.StashKey[list]()
#: the figures a claim attached (pytest_circuits.figures.Figure), in order
FIGURES_KEY = pytest.StashKey[list]()
#: the rows of the claim's baseline verdict (``baselines.Row``; ``_verdicts.check_baseline``)
BASELINE_ROWS_KEY = pytest.StashKey[list]()
#: metric -> the baseline entry it was compared with (``_verdicts.check_baseline``)
BASELINE_ENTRIES_KEY = pytest.StashKey[dict]()
#: the version changes since the baseline was recorded, as lines (``_verdicts.check_baseline``)
VERSION_CHANGES_KEY = pytest.StashKey[list]()
#: the reason of an expect_change marker that applies to this item's model
EXPECTED_CHANGE_KEY = pytest.StashKey[str]()
