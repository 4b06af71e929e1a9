"""Heatmaps of patching results (matplotlib, installed with the ``dev`` or ``plots`` extra).

    from pytest_circuits import plots
    plots.component_heatmap(model, sweep, "docs/x.png", title="activation patching")

Values are shown on a diverging scale centred at 0 and symmetric, so the colour of an
effect means the same in every figure of one kind; NaN cells (not measured) stay blank.

Every text in every figure of the package (titles, labels, tick labels, legends) is drawn
literally: :func:`literal` turns off matplotlib's mathtext and TeX for a figure's texts, so a
metric named ``cost $5`` or ``a_b^c \\ <x> & y`` is shown as written, never parsed (an odd
number of ``$`` would otherwise end the report in a ValueError after every claim has run).
The report's forest plot and the checkup's heatmaps call it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import CircuitsError


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        raise CircuitsError("plots need matplotlib: pip install 'pytest-circuits[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def literal(fig: Any) -> Any:
    """Draw every text of ``fig`` as written: no mathtext (``$...$``) and no TeX (``usetex``),
    whatever the rc settings. Call it once the texts are set, before ``tight_layout`` or
    ``savefig`` (which lay them out). The numbers a numeric axis writes itself (its tick
    labels and offset) keep their mathtext (a formatter may write ``$10^{3}$``); only TeX is
    turned off there. Returns ``fig``."""
    from matplotlib.text import Text
    from matplotlib.ticker import LogFormatter, ScalarFormatter

    numeric: set[int] = set()      # the texts of axes whose numbers a formatter writes
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), (ScalarFormatter, LogFormatter)):
                ticks = axis.get_major_ticks() + axis.get_minor_ticks()
                numeric.update(id(t) for tick in ticks for t in (tick.label1, tick.label2))
                numeric.add(id(axis.offsetText))
    for t in fig.findobj(Text):
        t.set_usetex(False)
        if id(t) not in numeric:
            t.set_parse_math(False)
    return fig


def heatmap(values: np.ndarray, path: str | Path, *, title: str, xlabels: Sequence[str],
            ylabels: Sequence[str], xlabel: str = "", ylabel: str = "", cbar: str = "",
            limit: float | None = None) -> Path:
    """Write a diverging heatmap of ``values`` ``[rows, cols]`` to ``path`` (PNG)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape != (len(ylabels), len(xlabels)):
        raise CircuitsError(f"heatmap: values of shape {values.shape} do not match "
                            f"{len(ylabels)} row and {len(xlabels)} column labels")
    plt = _plt()
    finite = values[np.isfinite(values)]
    lim = limit if limit is not None else (float(np.abs(finite).max()) if finite.size else 1.0) or 1.0
    h = max(3.0, 0.22 * values.shape[0] + 1.2)
    w = max(4.0, 0.42 * values.shape[1] + 2.2)
    fig, ax = plt.subplots(figsize=(w, h), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(xlabels)), labels=list(xlabels), fontsize=7, rotation=0)
    ax.set_yticks(range(len(ylabels)), labels=list(ylabels), fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.04)
    bar.set_label(cbar, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    literal(fig)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def component_heatmap(model: Any, grid: np.ndarray, path: str | Path, *, title: str,
                      cbar: str = "effect / corruption's effect", limit: float | None = None) -> Path:
    """Heads (columns ``H0..``) and the MLP (last column) per layer (rows)."""
    n_heads = model.cfg.n_heads
    return heatmap(grid, path, title=title, xlabels=[f"H{h}" for h in range(n_heads)] + ["MLP"],
                   ylabels=[str(layer) for layer in range(model.cfg.n_layers)], xlabel="head",
                   ylabel="layer", cbar=cbar, limit=limit)
