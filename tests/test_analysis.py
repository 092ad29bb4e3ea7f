"""Tests for castlib.analysis (pure tensor code, CPU, no model)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from castlib.analysis import (
    cosine_matrix,
    expected_abs_cosine,
    first_principal_direction,
    matrix_entropy,
    pca_2d,
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
