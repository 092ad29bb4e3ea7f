"""castlib.repro.plots: the figures the notebooks draw (structure, not pixels)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from castlib.repro import plots  # noqa: E402


def _frame() -> pd.DataFrame:
    rows = [
        {"ablation": "selection", "variant": v, "accuracy": a}
        for v, a in (("cast", 0.35), ("diversity", 0.33), ("influence", 0.27), ("random", 0.31))
    ]
    rows += [
        {"ablation": "layer_window", "variant": w, "accuracy": a} for w, a in ((1, 0.3), (3, 0.2))
    ]
    return pd.DataFrame(rows)


def test_facet_lines_one_panel_per_level_with_reference() -> None:
    frame = _frame()
    fig = plots.facet_lines(
        frame[frame["ablation"] == "layer_window"],
        "variant",
        "accuracy",
        "ablation",
        reference=0.25,
    )
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert ax.get_title() == "layer_window"
    assert any(list(line.get_ydata()) == [0.25, 0.25] for line in ax.get_lines())
    assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())  # numbers: no rotation


def test_facet_lines_rotates_long_category_names() -> None:
    frame = _frame()
    part = frame[frame["ablation"] == "selection"].astype({"variant": str})
    fig = plots.facet_lines(part, "variant", "accuracy", "ablation")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "cast",
        "diversity",
        "influence",
        "random",
    ]
    assert all(t.get_rotation() == 30 for t in ax.get_xticklabels())


def test_facet_lines_without_panels_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values in column"):
        plots.facet_lines(_frame().iloc[:0], "variant", "accuracy", "ablation")
