"""Heatmaps are written and refuse mismatched labels."""

import numpy as np
import pytest

from pytest_circuits import CircuitsError, plots

pytest.importorskip("matplotlib")


def test_heatmap_writes_a_png(tmp_path):
    v = np.array([[0.1, -0.4, np.nan], [0.0, 0.9, -0.2]])
    out = plots.heatmap(v, tmp_path / "sub" / "h.png", title="t", xlabels=["a", "b", "c"], ylabels=["0", "1"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_checks_the_labels(tmp_path):
    with pytest.raises(CircuitsError, match="do not match"):
        plots.heatmap(np.zeros((2, 3)), tmp_path / "h.png", title="t", xlabels=["a"], ylabels=["0", "1"])
