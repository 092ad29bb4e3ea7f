import pytest
import torch

from castlib.vectors import SteeringVector


def make(layers=(1, 3), hidden=8, seed=0, **meta):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        layers={layer: torch.randn(hidden, generator=g) for layer in layers},
        model_id="tiny",
        hidden_size=hidden,
        n_layers=4,
        method=meta.pop("method", "cast"),
        params=meta.pop("params", {"alpha": 2.0, "layers": [1, 3]}),
    )


def test_save_load_roundtrip_exact(tmp_path):
    v = make()
    path = v.save(tmp_path / "v.safetensors")
    w = SteeringVector.load(path)
    assert w == v
    assert w.metadata() == v.metadata()
    for layer in v.layer_ids:
        assert torch.equal(w[layer], v[layer])


def test_arithmetic():
    a, b = make(seed=0), make(layers=(3,), seed=1)
    s = a + b
    assert torch.equal(s[1], a[1]) and torch.equal(s[3], a[3] + b[3])
    d = a - b
    assert torch.equal(d[3], a[3] - b[3])
    assert torch.equal((2 * a)[1], a[1] * 2.0) and torch.equal((a * 2)[3], a[3] * 2.0)
    assert torch.equal((-a)[1], -a[1])
    assert a.select(3).layer_ids == [3]


def test_mismatches_fail_clearly(tmp_path):
    a = make()
    other = SteeringVector(layers={0: torch.ones(4)}, model_id="m", hidden_size=4, n_layers=4)
    with pytest.raises(ValueError, match="different shapes"):
        a + other
    with pytest.raises(ValueError, match="expected"):
        SteeringVector(layers={0: torch.ones(5)}, model_id="m", hidden_size=4, n_layers=4)
    with pytest.raises(IndexError):
        SteeringVector(layers={7: torch.ones(4)}, model_id="m", hidden_size=4, n_layers=4)
    with pytest.raises(ValueError, match="non-finite"):
        SteeringVector(
            layers={0: torch.tensor([float("nan")] * 4)}, model_id="m", hidden_size=4, n_layers=4
        )


def test_load_onto_wrong_model_fails(tmp_path, lm):
    v = make(hidden=lm.hidden_size + 1)
    with pytest.raises(ValueError, match="cannot be applied"):
        SteeringVector.load(v.save(tmp_path / "v.safetensors")).check_compatible(lm)


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ValueError, match="not a castlib steering vector"):
        SteeringVector.load(tmp_path / "f.safetensors")
