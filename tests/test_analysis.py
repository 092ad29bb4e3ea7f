"""Tests for castlib.analysis (pure tensor code, CPU, no model)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from castlib.analysis import (
    cosine_matrix,
    expected_abs_cosine,
    first_principal_direction,
    matrix_entropy,
    most_predicted_share,
    pair_cosines,
    pca_2d,
    placebo_comparison,
    random_floor,
    split_half_ceiling,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# matrix entropy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_entropy_orthogonal_rows_is_log_n(n: int) -> None:
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=_gen(n), dtype=torch.float64))
    z = q[:n]  # orthonormal rows
    assert matrix_entropy(z) == pytest.approx(math.log(n), abs=1e-10)
    assert matrix_entropy(z, normalize_rows=False) == pytest.approx(math.log(n), abs=1e-10)
    # unequal norms: normalised rows still give log n, raw rows give less
    scaled = z * torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    assert matrix_entropy(scaled) == pytest.approx(math.log(n), abs=1e-10)
    if n > 1:
        assert matrix_entropy(scaled, normalize_rows=False) < math.log(n) - 1e-3


def test_entropy_identity_float32() -> None:
    assert matrix_entropy(torch.eye(8)) == pytest.approx(math.log(8), abs=1e-10)


def test_entropy_rank_one_is_zero() -> None:
    v = torch.randn(20, generator=_gen(0))
    coeffs = torch.tensor([1.0, -2.0, 0.5, 3.0, -0.1, 7.0])
    z = coeffs[:, None] * v[None, :]
    assert matrix_entropy(z) == pytest.approx(0.0, abs=1e-10)
    assert matrix_entropy(z, normalize_rows=False) == pytest.approx(0.0, abs=1e-10)
    assert matrix_entropy(z, center=True) == pytest.approx(0.0, abs=1e-10)


def test_entropy_bounds_and_centering() -> None:
    z = torch.randn(10, 40, generator=_gen(1))
    h = matrix_entropy(z)
    assert 0.0 < h <= math.log(10) + 1e-12
    # centred orthonormal rows lose one dimension
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=_gen(2), dtype=torch.float64))
    hc = matrix_entropy(q[:6], center=True, normalize_rows=False)
    assert hc == pytest.approx(math.log(5), abs=1e-10)


def test_entropy_errors() -> None:
    with pytest.raises(ValueError, match="zero"):
        matrix_entropy(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        matrix_entropy(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="dimension"):
        matrix_entropy(torch.ones(4))


# ------------------------------------------------------------------------------------------------
# cosine matrix, ceiling and floor
# ------------------------------------------------------------------------------------------------


def test_cosine_matrix() -> None:
    vecs = {
        "sst2": torch.tensor([1.0, 0.0, 0.0]),
        "agnews": torch.tensor([1.0, 1.0, 0.0]),
        "boolq": torch.tensor([-3.0, 0.0, 0.0]),
    }
    df = cosine_matrix(vecs)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == list(df.columns) == ["sst2", "agnews", "boolq"]
    for name in vecs:
        assert df.loc[name, name] == pytest.approx(1.0)
    assert df.loc["sst2", "agnews"] == pytest.approx(1 / math.sqrt(2))
    assert df.loc["agnews", "sst2"] == pytest.approx(1 / math.sqrt(2))
    assert df.loc["sst2", "boolq"] == pytest.approx(-1.0)
    assert cosine_matrix({}).empty


def test_cosine_matrix_random_diagonal_and_errors() -> None:
    vecs = {f"t{i}": torch.randn(64, generator=_gen(i)) for i in range(5)}
    df = cosine_matrix(vecs)
    assert (df.to_numpy().diagonal() == 1.0).all()
    assert (df.to_numpy() == df.to_numpy().T).all()
    with pytest.raises(ValueError, match="zero"):
        cosine_matrix({"a": torch.ones(3), "b": torch.zeros(3)})
    with pytest.raises(ValueError, match="same dimension"):
        cosine_matrix({"a": torch.ones(3), "b": torch.ones(4)})


def test_split_half_ceiling() -> None:
    same = torch.ones(10, 5)
    mean, std = split_half_ceiling(same)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    signal = torch.randn(32, generator=_gen(0))
    strong = signal + 0.1 * torch.randn(40, 32, generator=_gen(1))
    noise = torch.randn(40, 32, generator=_gen(2))
    assert split_half_ceiling(strong)[0] > 0.95
    assert split_half_ceiling(noise)[0] < 0.5
    assert split_half_ceiling(noise, seed=3) == split_half_ceiling(noise, seed=3)
    assert split_half_ceiling(noise, seed=3) != split_half_ceiling(noise, seed=4)
    assert split_half_ceiling(noise, n_splits=1)[1] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        split_half_ceiling(torch.ones(1, 5))


def test_random_floor() -> None:
    for d in (2, 3, 64, 1024):
        mean, std = random_floor(d, n_pairs=4000)
        assert mean == pytest.approx(expected_abs_cosine(d), rel=0.05)
        assert std > 0
    assert expected_abs_cosine(2) == pytest.approx(2 / math.pi)
    assert expected_abs_cosine(3) == pytest.approx(0.5)
    signed_mean, signed_std = random_floor(256, n_pairs=4000, absolute=False)
    assert abs(signed_mean) < 0.01
    assert signed_std == pytest.approx(1 / math.sqrt(256), rel=0.1)
    assert random_floor(16, seed=1) == random_floor(16, seed=1)
    with pytest.raises(ValueError):
        random_floor(0)


# ------------------------------------------------------------------------------------------------
# PCA
# ------------------------------------------------------------------------------------------------


def test_pca_2d_recovers_plane() -> None:
    n, d = 50, 12
    coords = torch.randn(n, 2, generator=_gen(0), dtype=torch.float64) * torch.tensor([5.0, 2.0])
    basis, _ = torch.linalg.qr(torch.randn(d, 2, generator=_gen(1), dtype=torch.float64))
    offset = torch.randn(d, generator=_gen(2), dtype=torch.float64) * 10
    x = coords @ basis.T + offset
    y = pca_2d(x)
    assert y.shape == (n, 2)
    centred = coords - coords.mean(0)
    # an isometry of the plane: all pairwise distances are kept
    torch.testing.assert_close(torch.cdist(y, y), torch.cdist(centred, centred))
    # and the scores are an orthogonal transform of the true plane coordinates
    rot = torch.linalg.lstsq(centred, y).solution
    torch.testing.assert_close(rot.T @ rot, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(centred @ rot, y)
    # first component carries the larger variance
    assert y[:, 0].var() > y[:, 1].var()


def test_pca_2d_sign_convention_and_shapes() -> None:
    x = torch.randn(30, 6, generator=_gen(4))
    y = pca_2d(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(pca_2d(x), y)
    # flipping the data flips the scores (the axes are sign-normalised, not the scores)
    torch.testing.assert_close(pca_2d(-x), -y, atol=1e-5, rtol=1e-5)
    assert pca_2d(torch.randn(7, 1, generator=_gen(5))).shape == (7, 2)
    assert torch.all(pca_2d(torch.randn(1, 4)) == 0)


def test_first_principal_direction() -> None:
    d = 8
    u = torch.nn.functional.normalize(torch.randn(d, generator=_gen(0), dtype=torch.float64), dim=0)
    t = torch.randn(100, 1, generator=_gen(1), dtype=torch.float64) * 4
    x = t * u + 0.05 * torch.randn(100, d, generator=_gen(2), dtype=torch.float64)
    v = first_principal_direction(x, align_with=u)
    assert v.norm() == pytest.approx(1.0)
    assert float(v @ u) > 0.99
    v_neg = first_principal_direction(x, align_with=-u)
    torch.testing.assert_close(v_neg, -v)
    # without a reference the sign is deterministic: largest-magnitude entry positive
    v0 = first_principal_direction(x)
    assert v0[v0.abs().argmax()] > 0
    torch.testing.assert_close(first_principal_direction(-x), v0)


def test_first_principal_direction_center_flag() -> None:
    d = 6
    mean_dir = torch.zeros(d, dtype=torch.float64)
    mean_dir[0] = 1.0
    spread_dir = torch.zeros(d, dtype=torch.float64)
    spread_dir[1] = 1.0
    t = torch.randn(200, 1, generator=_gen(3), dtype=torch.float64)
    x = 10.0 * mean_dir + t * spread_dir  # big common offset, variance along spread_dir
    centred = first_principal_direction(x, align_with=spread_dir)
    assert float(centred @ spread_dir) > 0.999
    uncentred = first_principal_direction(x, align_with=mean_dir, center=False)
    assert float(uncentred @ mean_dir) > 0.99
    with pytest.raises(ValueError, match="dimension"):
        first_principal_direction(x, align_with=torch.ones(d + 1))
    with pytest.raises(ValueError, match="no variation"):
        first_principal_direction(torch.ones(5, d))


# ------------------------------------------------------------------------------------------------
# placebo comparison (notebook 01) and collapse share (notebook 05)
# ------------------------------------------------------------------------------------------------


def test_pair_cosines_by_hand() -> None:
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    r = 2**-0.5
    assert pair_cosines(v).tolist() == pytest.approx([r, 0.0, -r], abs=1e-15)
    # extra dimensions between the task and the feature axis are kept: [T, L, d] -> [P, L]
    stacked = torch.stack([v, -v], dim=1)
    expected = torch.tensor([[r, r], [0.0, 0.0], [-r, -r]], dtype=torch.float64)
    assert torch.allclose(pair_cosines(stacked), expected, atol=1e-15, rtol=0)
    assert pair_cosines(torch.zeros(2, 3)).tolist() == [0.0]


def _tasks(n_tasks: int, n: int, d: int, shift: torch.Tensor, noise: float, seed: int):
    """Per-task deltas [n, 1, d]: a task's own random direction + ``shift`` + noise."""
    g = _gen(seed)
    out = []
    for _ in range(n_tasks):
        own = torch.randn(d, generator=g, dtype=torch.float64)
        rows = own + shift + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
        out.append(rows[:, None])
    return out


def test_placebo_comparison_point_estimates_match_cosine_matrix() -> None:
    real = _tasks(4, 6, 5, torch.zeros(5, dtype=torch.float64), 1.0, seed=0)
    plac = _tasks(4, 6, 5, torch.zeros(5, dtype=torch.float64), 1.0, seed=1)
    table = placebo_comparison(real, plac, n_boot=20)
    off = ~np.eye(4, dtype=bool)

    def mean_cos(deltas):
        mat = cosine_matrix({str(t): x[:, 0].mean(0) for t, x in enumerate(deltas)})
        return mat.to_numpy()[off].mean()

    assert table["real"].iloc[0] == pytest.approx(mean_cos(real), abs=1e-12)
    assert table["placebo"].iloc[0] == pytest.approx(mean_cos(plac), abs=1e-12)
    assert table["difference"].iloc[0] == pytest.approx(mean_cos(real) - mean_cos(plac), 1e-12)
    assert table["n_pairs"].iloc[0] == 6
    assert list(table.columns) == [
        "layer",
        "real",
        "placebo",
        "difference",
        "low",
        "high",
        "n_pairs",
    ]


def test_identical_placebo_gives_zero() -> None:
    real = _tasks(3, 5, 4, torch.zeros(4, dtype=torch.float64), 1.0, seed=2)
    table = placebo_comparison(real, [x.clone() for x in real], n_boot=50)
    assert (table[["difference", "low", "high"]].to_numpy() == 0).all()


def test_shared_direction_beats_a_placebo_without_it() -> None:
    """The criterion can say yes: real deltas share a direction the placebo's lack."""
    d = 64
    shift = 3 * torch.nn.functional.normalize(
        torch.randn(d, generator=_gen(9), dtype=torch.float64), dim=0
    )
    real = _tasks(5, 16, d, shift * 4, 0.5, seed=3)
    plac = _tasks(5, 16, d, torch.zeros(d, dtype=torch.float64), 0.5, seed=4)
    row = placebo_comparison(real, plac, n_boot=300, seed=0).iloc[0]
    assert row["real"] > 0.6 and abs(row["placebo"]) < 0.3
    assert 0 < row["low"] <= row["difference"] <= row["high"]


def test_a_placebo_with_the_same_shift_is_not_beaten() -> None:
    """The criterion can say no: the placebo adds the same shared shift (any prefix would)."""
    d = 64
    shift = 4 * torch.nn.functional.normalize(
        torch.randn(d, generator=_gen(9), dtype=torch.float64), dim=0
    )
    real = _tasks(5, 16, d, shift, 1.0, seed=5)
    plac = _tasks(5, 16, d, shift, 1.0, seed=6)
    row = placebo_comparison(real, plac, n_boot=300, seed=0).iloc[0]
    assert row["real"] > 0.05 and row["placebo"] > 0.05  # both above a random-direction floor
    assert row["low"] <= 0 <= row["high"]


def test_placebo_comparison_layers_and_2d_input() -> None:
    g = _gen(0)
    real = [torch.randn(4, 3, 6, generator=g) for _ in range(3)]
    plac = [torch.randn(4, 3, 6, generator=g) for _ in range(3)]
    table = placebo_comparison(real, plac, n_boot=10, seed=1)
    assert table["layer"].tolist() == [0, 1, 2]
    one = placebo_comparison([x[:, 1] for x in real], [x[:, 1] for x in plac], n_boot=10, seed=1)
    assert one["real"].iloc[0] == pytest.approx(table["real"].iloc[1], abs=1e-12)
    again = placebo_comparison(real, plac, n_boot=10, seed=1)
    assert again.equals(table)  # seeded


def test_placebo_comparison_bad_input() -> None:
    x = torch.ones(3, 2, 4)
    with pytest.raises(ValueError, match="at least 2"):
        placebo_comparison([x], [x])
    with pytest.raises(ValueError, match="same number of tasks"):
        placebo_comparison([x, x], [x])
    with pytest.raises(ValueError, match=r"task 1: real \(2, 2, 4\)"):
        placebo_comparison([x, x[:2]], [x, x])
    with pytest.raises(ValueError, match="n_boot"):
        placebo_comparison([x, x], [x, x], n_boot=0)
    with pytest.raises(ValueError, match="NaN"):
        placebo_comparison([x, x * float("nan")], [x, x])
    with pytest.raises(ValueError, match="dimensions"):
        placebo_comparison([torch.ones(3)] * 2, [torch.ones(3)] * 2)


def test_most_predicted_share() -> None:
    assert most_predicted_share([0, 0, 1, 0]) == 0.75
    assert most_predicted_share(["neg"] * 10) == 1.0
    assert most_predicted_share([0, 1, 2, 3]) == 0.25
    with pytest.raises(ValueError, match="pred"):
        most_predicted_share([])
