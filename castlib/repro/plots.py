"""Seaborn figures for the reproduction notebooks.

Every helper takes a tidy `pandas.DataFrame` (one row per observation), draws one figure with
seaborn and returns the matplotlib `Figure`. Figures are created through pyplot so that a notebook
shows them inline; save them with `castlib.repro.nbtools.save_figure` and close them with
``plt.close(fig)`` in long scripts. Titles and labels come from the caller; nothing here reads
global state besides the seaborn theme set by `set_theme`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["set_theme", "bar", "lines", "facet_lines", "heatmaps", "scatter"]


def set_theme() -> None:
    """The notebooks' seaborn theme (white grid, notebook context, colour-blind palette)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")


def _order(values: pd.Series) -> list[Any]:
    """Distinct values in order of first appearance (stable legends and axes)."""
    return list(dict.fromkeys(values.dropna().tolist()))


def bar(
    data: pd.DataFrame,
    x: str,
    y: str = "accuracy",
    hue: str | None = None,
    title: str | None = None,
    errorbar: str | None = "sd",
    ylim: tuple[float, float] | None = (0.0, 1.0),
    width: float | None = None,
) -> Figure:
    """Bars of the mean of ``y`` per ``x`` (and ``hue``), with ``errorbar`` (default: the
    standard deviation over the rows of a group, e.g. over seeds)."""
    n_x = max(1, data[x].nunique())
    n_hue = max(1, data[hue].nunique()) if hue else 1
    fig, ax = plt.subplots(figsize=(width or min(16.0, max(5.0, 0.45 * n_x * n_hue + 2.5)), 4.0))
    sns.barplot(
        data=data,
        x=x,
        y=y,
        hue=hue,
        order=_order(data[x]),
        hue_order=_order(data[hue]) if hue else None,
        errorbar=errorbar,
        ax=ax,
    )
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    if n_x > 5:
        ax.tick_params(axis="x", labelrotation=30)
    if hue:
        ax.legend(title=hue, bbox_to_anchor=(1.01, 1.0), loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


def lines(
    data: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    style: str | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    logx: bool = False,
    errorbar: str | None = "sd",
) -> Figure:
    """``y`` against a numeric ``x`` as lines with markers, one per ``hue``/``style`` level."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    # with a style column seaborn varies the markers; without one, mark every point (so a
    # series with a single point is still visible)
    marks: dict[str, Any] = {"markers": True, "dashes": True} if style else {"marker": "o"}
    sns.lineplot(
        data=data,
        x=x,
        y=y,
        hue=hue,
        style=style,
        hue_order=_order(data[hue]) if hue else None,
        errorbar=errorbar,
        ax=ax,
        **marks,
    )
    if logx:
        ax.set_xscale("log", base=2)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if hue or style:
        ax.legend(bbox_to_anchor=(1.01, 1.0), loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


def facet_lines(
    data: pd.DataFrame,
    x: str,
    y: str,
    col: str,
    hue: str | None = None,
    title: str | None = None,
    col_wrap: int = 4,
    reference: float | None = None,
) -> Figure:
    """One small line plot of ``y`` against ``x`` per ``col`` level, each with its own x axis
    (e.g. accuracy against each swept parameter); ``reference`` draws a dotted horizontal line
    (e.g. zero-shot accuracy). Points are marked; a level with one x value shows one marker."""
    panels = _order(data[col])
    if not panels:
        raise ValueError(f"no values in column {col!r}")
    cols = min(col_wrap, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 1.2, 3.0 * rows), squeeze=False)
    for i, (ax, panel) in enumerate(zip(axes.flat, panels, strict=False)):
        part = data[data[col] == panel].sort_values(x)
        sns.lineplot(
            data=part,
            x=x,
            y=y,
            hue=hue,
            hue_order=_order(data[hue]) if hue else None,
            marker="o",
            errorbar=None,
            ax=ax,
            legend=bool(hue) and i == len(panels) - 1,
        )
        if reference is not None:
            ax.axhline(reference, color="0.4", linestyle=":", linewidth=1)
        ax.set_title(str(panel))
        ax.set_xlabel(str(panel))
        labels = [str(v) for v in part[x].unique()]
        if not pd.api.types.is_numeric_dtype(part[x]) and sum(map(len, labels)) > 24:
            ax.tick_params(axis="x", labelrotation=30)  # category names would overlap
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmaps(
    matrices: Mapping[str, pd.DataFrame],
    title: str | None = None,
    vmin: float = -1.0,
    vmax: float = 1.0,
    cmap: str = "vlag",
    annot: bool = True,
    ncols: int = 4,
) -> Figure:
    """One annotated heatmap per named square matrix (e.g. task x task cosine per layer), on a
    shared colour scale."""
    names = list(matrices)
    if not names:
        raise ValueError("no matrices to draw")
    cols = min(ncols, len(names))
    rows = -(-len(names) // cols)
    size = max(3.6, 0.7 * max(len(m) for m in matrices.values()) + 2.2)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        sns.heatmap(
            matrices[name],
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            annot=annot,
            annot_kws={"fontsize": 8},
            fmt=".2f",
            square=True,
            cbar=False,
            ax=ax,
        )
        ax.set_title(name)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def scatter(
    data: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    style: str | None = None,
    title: str | None = None,
    fit: bool = False,
    label: str | None = None,
    facet: str | None = None,
    facet_order: Sequence[Any] | None = None,
) -> Figure:
    """Points of ``y`` against ``x``; ``fit`` adds a least-squares line over all points,
    ``label`` writes that column next to each point, ``facet`` draws one panel per level."""
    panels = list(facet_order) if facet_order is not None else None
    if facet and panels is None:
        panels = _order(data[facet])
    n = len(panels) if panels else 1
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 1.5, 4.2), squeeze=False)
    for i, ax in enumerate(axes.flat):
        part = data if not panels else data[data[facet] == panels[i]]
        sns.scatterplot(
            data=part,
            x=x,
            y=y,
            hue=hue,
            style=style,
            hue_order=_order(data[hue]) if hue else None,
            ax=ax,
            legend=i == n - 1,
        )
        if fit and len(part) >= 2 and part[x].nunique() >= 2:
            slope, intercept = np.polyfit(part[x].astype(float), part[y].astype(float), 1)
            xs = np.linspace(float(part[x].min()), float(part[x].max()), 50)
            ax.plot(xs, slope * xs + intercept, color="0.3", linestyle="--", linewidth=1)
        if label:
            for _, row in part.iterrows():
                ax.annotate(str(row[label]), (row[x], row[y]), fontsize=7, alpha=0.8)
        if panels:
            ax.set_title(str(panels[i]))
        if (hue or style) and i == n - 1:
            ax.legend(bbox_to_anchor=(1.01, 1.0), loc="upper left", frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
