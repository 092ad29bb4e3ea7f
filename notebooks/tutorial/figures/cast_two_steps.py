"""Draw CAST's two steps (selection, then contrastive steering) as cast_two_steps.png beside this
script: ``python notebooks/tutorial/figures/cast_two_steps.py``.

The left panel is a toy selection on 2-D points (seeded): candidates, target queries, and the
samples a greedy coverage-minus-redundancy step picks (the objective of tutorial 3, with the
influence of a candidate on a query taken as exp(-distance / 0.3) instead of graph diffusion). The
right panel is the contrastive pair and the steered zero-shot run (tutorials 2 and 3).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_name("cast_two_steps.png")
SOURCE, TARGET, PICKED = "#7f7f7f", "#d55e00", "#0072b2"


def toy_selection(m: int = 3, gamma: float = 0.05, seed: int = 0):
    """Candidates, queries and the greedy pick of ``m`` candidates maximising
    F(S + u) - F(S) - gamma * max_{s in S} sim(u, s) (sim = the same kernel as influence)."""
    rng = np.random.default_rng(seed)
    candidates = rng.uniform(0.0, 1.0, size=(40, 2))
    queries = np.concatenate(
        [rng.normal((0.3, 0.7), 0.07, size=(5, 2)), rng.normal((0.72, 0.3), 0.07, size=(5, 2))]
    )
    influence = np.exp(-np.linalg.norm(queries[:, None] - candidates[None], axis=2) / 0.3)
    similarity = np.exp(-np.linalg.norm(candidates[:, None] - candidates[None], axis=2) / 0.3)
    picked: list[int] = []
    best = np.zeros(len(queries))
    for _ in range(m):
        gain = np.maximum(influence, best[:, None]).mean(0) - best.mean()
        penalty = similarity[:, picked].max(1) if picked else np.zeros(len(candidates))
        score = gain - gamma * penalty
        score[picked] = -np.inf
        u = int(score.argmax())
        picked.append(u)
        best = np.maximum(best, influence[:, u])
    return candidates, queries, picked


def _box(ax, xy, text, colour, width=3.0, height=0.8) -> None:
    x, y = xy
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.05",
            facecolor=colour,
            edgecolor="black",
            alpha=0.9,
            linewidth=0.8,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=9)


def _arrow(ax, start, end, text: str = "") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "linewidth": 1.2})
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.1, (start[1] + end[1]) / 2, text, fontsize=8)


def draw() -> Figure:
    """The two-panel figure."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12.0, 4.6), gridspec_kw={"width_ratios": [1.0, 1.5]}
    )
    candidates, queries, picked = toy_selection()
    for q in queries:
        near = np.argsort(np.linalg.norm(candidates - q, axis=1))[:2]
        for c in near:
            left.plot(*zip(q, candidates[c], strict=True), color=TARGET, alpha=0.3, linewidth=0.8)
    left.scatter(*candidates.T, s=22, color=SOURCE, label="source candidates (labelled)")
    left.scatter(*queries.T, s=40, marker="x", color=TARGET, label="target queries (no labels)")
    left.scatter(
        *candidates[picked].T,
        s=160,
        facecolors="none",
        edgecolors=PICKED,
        linewidths=2.0,
        label=f"selected S (m = {len(picked)})",
    )
    left.set_title("Step 1: select influential, diverse source samples", fontsize=11)
    left.text(
        0.5,
        -0.03,
        "influential: S covers the target queries, F(S)\n"
        "diverse: each pick pays gamma * its largest similarity to S",
        transform=left.transAxes,
        ha="center",
        va="top",
        fontsize=9,
    )
    left.legend(loc="upper right", fontsize=8, framealpha=0.9)
    left.set_xticks([])
    left.set_yticks([])
    left.set_xlim(-0.05, 1.05)
    left.set_ylim(-0.05, 1.25)

    right.set_xlim(0, 12)
    right.set_ylim(0, 6)
    right.axis("off")
    right.set_title("Step 2: contrastive steering", fontsize=11)
    _box(right, (2.2, 5.0), "few-shot  Pk(s; S \\ {s})", "#cfe2f3")
    _box(right, (2.2, 3.6), "zero-shot  P0(s)", "#eeeeee")
    _box(
        right,
        (6.6, 4.3),
        "delta_l(s) = h_l(Pk) - h_l(P0)\n(block l, last real token)",
        "#fff2cc",
        3.6,
        1.1,
    )
    _box(right, (10.5, 4.3), "v_l = mean over s in S", "#fff2cc", 2.8)
    _arrow(right, (3.75, 5.0), (4.8, 4.55))
    _arrow(right, (3.75, 3.6), (4.8, 4.05))
    _arrow(right, (8.4, 4.3), (9.2, 4.3))
    _box(right, (2.2, 1.2), "target input x, zero-shot  P0(x)", "#fde0cf", 3.5)
    _box(right, (6.6, 1.2), "block l output  + alpha * v_l", "#d9ead3", 3.6)
    _box(right, (10.5, 1.2), "answer", "#eeeeee", 2.0)
    _arrow(right, (3.95, 1.2), (4.8, 1.2))
    _arrow(right, (8.4, 1.2), (9.5, 1.2))
    _arrow(right, (10.5, 3.75), (7.6, 1.65), "the vector, at layer l")
    right.text(
        6.0,
        0.15,
        "no target label, no extra prompt tokens; (l, alpha) chosen on held-out source rows",
        ha="center",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    figure = draw()
    figure.savefig(OUT, dpi=110, bbox_inches="tight")
    print(f"wrote {OUT.name}")
