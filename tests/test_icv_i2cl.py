"""ICV (Liu et al. 2024) and I2CL (Li et al. 2025) as their papers and the authors' code define
them: the joint in-context direction, the norm-preserving shift, the injection sites and the
noisy self-calibration."""

import math

import pytest
import torch

from castlib.hooks import hidden_of
from castlib.methods.i2cl import I2CL, SITES, I2CLInjection, lr_factor, residual_sites
from castlib.methods.icv import ICV, icv_direction, icv_shift, icv_steering
from castlib.methods.steering import make_vector
from castlib.testing import FAMILIES, tiny_model
from tests.conftest import make_task
from tests.test_adapters import logits


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float(a @ b / (a.norm() * b.norm()))


def _hook_count(lm) -> int:
    return sum(
        len(m._forward_hooks) for block in lm.blocks for m in (block, *residual_sites(block))
    )


# -- ICV: the direction ---------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["uncentred", "component_plus_mean"])
def test_icv_direction_follows_a_strong_common_mean(direction):
    g = torch.Generator().manual_seed(0)
    n, n_layers, hidden = 24, 4, 32
    mean = torch.randn(n_layers, hidden, generator=g) * 5
    deltas = mean + 0.3 * torch.randn(n, n_layers, hidden, generator=g)
    vec = icv_direction(deltas, direction)
    assert vec.shape == (n_layers, hidden)
    assert _cos(vec, mean) > 0.99
    # the sign follows the mean whatever the data's sign
    assert _cos(icv_direction(-deltas, direction), -mean) > 0.99


def test_icv_direction_is_taken_jointly_across_layers():
    """One SVD over the flattened [layers x hidden] rows: a layer whose shifts are small gets
    a small slice (a per-layer direction would give every layer a unit slice)."""
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(3, 16, generator=g)
    mean[0] *= 0.01
    mean[2] *= 10
    deltas = mean + 0.01 * torch.randn(20, 3, 16, generator=g)
    vec = icv_direction(deltas)
    assert float(vec.reshape(-1).norm()) == pytest.approx(1.0, abs=1e-6)  # a unit direction
    norms, want = vec.norm(dim=1), mean.norm(dim=1) / mean.norm()
    torch.testing.assert_close(norms, want, atol=2e-3, rtol=1e-2)


def test_icv_direction_uncentred_differs_from_centred_pca():
    """With a strong mean and a larger spread along another axis, the centred first component
    follows the spread; the uncentred direction (the default) stays with the mean."""
    g = torch.Generator().manual_seed(2)
    mean = torch.zeros(2, 8)
    mean[0, 0] = 10.0
    spread = torch.zeros(2, 8)
    spread[1, 3] = 1.0
    deltas = mean + torch.randn(40, 1, 1, generator=g) * 3 * spread
    assert _cos(icv_direction(deltas), mean) > 0.95
    centred = icv_direction(deltas, "component_plus_mean") - deltas.mean(0)
    assert abs(_cos(centred, spread)) > 0.99


def test_icv_direction_bad_input():
    with pytest.raises(ValueError, match="direction"):
        icv_direction(torch.ones(3, 2, 4), "centred")
    with pytest.raises(ValueError, match="n_layers, hidden"):
        icv_direction(torch.ones(3, 4))
    with pytest.raises(ValueError, match="direction"):
        ICV(direction="mean")
    with pytest.raises(ValueError, match="norm_preserving"):
        ICV(norm_preserving=False)


# -- ICV: the norm-preserving shift ---------------------------------------------------------
def test_icv_shift_is_the_authors_formula_and_preserves_the_norm():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 5, 16, generator=g) * 7
    v = torch.randn(16, generator=g)
    u = v / v.norm()
    alpha = 0.3
    out = icv_shift(h, u, alpha)
    # by hand, in float64
    hd, ud = h.double(), u.double()
    norm = hd.norm(dim=-1, keepdim=True)
    cos_neg = -(hd @ ud)[..., None] / norm
    y = hd / norm + alpha * (1 + cos_neg.clamp_min(0)) * ud
    want = y / y.norm(dim=-1, keepdim=True) * norm
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1), atol=1e-5, rtol=1e-6)
    # a state orthogonal to v: ||h|| (h/||h|| + alpha u) / sqrt(1 + alpha^2), s = 1
    w = torch.zeros(16)
    w[0], w[1] = 1.0, 0.0
    uu = torch.zeros(16)
    uu[1] = 1.0
    got = icv_shift(3 * w, uu, alpha)
    torch.testing.assert_close(got, 3 * (w + alpha * uu) / math.sqrt(1 + alpha**2))
    # a state against v gets twice the step (s = 2)
    got = icv_shift(-2 * uu + 2 * w, uu, 0.25)
    x = (-uu + w) / math.sqrt(2)
    y = x + 0.25 * (1 + 1 / math.sqrt(2)) * uu
    torch.testing.assert_close(got, y / y.norm() * math.sqrt(8))
    assert icv_shift(h.bfloat16(), u, alpha).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt", "gpt_neox"])
def test_icv_steering_every_block_and_removal(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    g = torch.Generator().manual_seed(4)
    vector = make_vector(lm, torch.randn(lm.n_layers, lm.hidden_size, generator=g), "icv", {})
    before, hooks = logits(lm), _hook_count(lm)
    seen: list[torch.Tensor] = []
    spy = lm.blocks[0].register_forward_hook(
        lambda m, a, out: seen.append(hidden_of(out).detach().clone())
    )
    try:
        logits(lm)
        with icv_steering(lm, vector, 0.2):  # registered after the spy: the spy sees h
            inside = logits(lm)
        with icv_steering(lm, vector, 0.0):  # alpha 0: nothing installed
            assert torch.equal(logits(lm), before)
        with pytest.raises(RuntimeError, match="boom"), icv_steering(lm, vector, 0.2):
            raise RuntimeError("boom")
    finally:
        spy.remove()
    assert not torch.allclose(inside, before, atol=1e-4)
    assert torch.equal(logits(lm), before) and _hook_count(lm) == hooks
    # block 0's input is untouched, so its steered output is icv_shift of the plain one
    plain = seen[0]
    unit = vector[0] / vector[0].norm()
    with icv_steering(lm, vector, 0.2):
        steered: list[torch.Tensor] = []
        spy = lm.blocks[0].register_forward_hook(
            lambda m, a, out: steered.append(hidden_of(out).detach().clone())
        )
        try:
            logits(lm)
        finally:
            spy.remove()
    torch.testing.assert_close(steered[0], icv_shift(plain, unit, 0.2))
    torch.testing.assert_close(steered[0].norm(dim=-1), plain.norm(dim=-1))


def test_icv_fit_records_the_direction(lm):
    source = make_task("src", n_train=40, n_test=4, seed=1)
    target = make_task("tgt", n_train=12, n_test=6, seed=2)
    # a steered choice is forced (include_unsteered=False) so the steered record can be checked
    icv = ICV(
        batch_size=8, n_tune=4, alphas=(0.05, 0.1), include_unsteered=False, k=2, n_samples=6
    ).fit(lm, [source], target, seed=0)
    assert icv.info["layer"] == "all" and icv.info["direction"] == "uncentred"
    assert icv.info["steered_layers"] == list(range(lm.n_layers))
    assert icv.info["vector_norm"] == pytest.approx(1.0, abs=1e-5)  # one joint unit direction
    assert 0 < icv.info["direction_second_moment_share"] <= 1
    assert {g["alpha"] for g in icv.info["tuning_grid"]} == {0.05, 0.1}


# -- I2CL: injection sites ------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_i2cl_injection_at_attention_and_mlp_outputs(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    g = torch.Generator().manual_seed(5)
    context = torch.randn(lm.n_layers, len(SITES), lm.hidden_size, generator=g)
    keep = torch.tensor([0.0, 1.0]).repeat(lm.n_layers, len(SITES), 1)  # context 0, query 1
    before, hooks = logits(lm), _hook_count(lm)
    with I2CLInjection(lm, keep, context):
        assert _hook_count(lm) == hooks + 2 * lm.n_layers  # one per attention and MLP site
        assert torch.equal(logits(lm), before)  # 0 * c + 1 * o = o exactly
    for site in range(len(SITES)):  # each site alone changes the output
        coef = keep.clone()
        coef[:, site, 0] = 0.5
        with I2CLInjection(lm, coef, context):
            assert not torch.allclose(logits(lm), before, atol=1e-4), SITES[site]
    with pytest.raises(RuntimeError, match="boom"), I2CLInjection(lm, coef, context):
        raise RuntimeError("boom")
    assert _hook_count(lm) == hooks and torch.equal(logits(lm), before)


def test_i2cl_injection_casts_to_the_activation_dtype(tokenizer):
    lm = tiny_model("llama", tokenizer=tokenizer, dtype=torch.bfloat16)
    context = torch.randn(lm.n_layers, 2, lm.hidden_size)  # float32, CPU
    coef = torch.tensor([0.1, 1.0]).repeat(lm.n_layers, 2, 1)
    before = logits(lm)
    with I2CLInjection(lm, coef, context):
        inside = logits(lm)
    assert inside.dtype == before.dtype == torch.bfloat16
    assert not torch.equal(inside, before)
    with pytest.raises(ValueError, match="refit"):
        I2CLInjection(lm, coef[:-1], context[:-1])


# -- I2CL: calibration ----------------------------------------------------------------------
def test_lr_factor_is_warmup_then_cosine():
    assert [lr_factor(s, 100, 5) for s in (0, 1, 5)] == [0.0, 0.2, 1.0]
    assert lr_factor(50, 100, 5) == pytest.approx(0.5)
    assert lr_factor(100, 100, 5) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 10, 0) == 1.0


def test_i2cl_defaults_are_the_papers():
    p = I2CL().params
    assert (p.demos_per_class, p.epochs, p.lr, p.weight_decay, p.train_batch_size) == (
        5,
        100,
        0.01,
        1e-3,
        2,
    )
    assert (p.init_context, p.init_query, p.noise_scale, p.warmup, p.steps) == (
        0.1,
        1.0,
        0.001,
        0.05,
        None,
    )


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_i2cl_learns_and_records_its_coefficients(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    source = make_task("src", n_train=30, n_test=2, seed=1)
    target = make_task("tgt", n_train=4, n_test=4, seed=2)
    method = I2CL(batch_size=8, demos_per_class=3, epochs=3, lr=0.05, progress=False)
    method.fit(lm, [source], target, seed=0)
    info = method.info
    assert len(info["selected_ids"]) == 6  # 3 per label
    assert info["calib_steps"] == 3 * (6 // 2) and len(info["calib_epoch_losses"]) == 3
    coef = info["coefficients"]
    assert set(coef) == {"attn", "mlp"}
    for site, s in (("attn", 0), ("mlp", 1)):
        for term, t in (("context", 0), ("query", 1)):
            values = torch.tensor(coef[site][term])
            assert values.shape == (lm.n_layers,)
            torch.testing.assert_close(values, method.coef[:, s, t], atol=1e-7, rtol=0)
    init = torch.tensor([0.1, 1.0]).repeat(lm.n_layers, 2, 1)
    assert (method.coef - init).abs().max() > 1e-3  # learned, not left at the initial values
    rec = method.evaluate(lm, target)
    assert rec["coefficients"] == coef and rec["trainable_params"] == 4 * lm.n_layers
    assert rec["coef_init"] == {"context": 0.1, "query": 1.0}
    assert _hook_count(lm) == 0


def test_i2cl_calibration_reduces_its_loss(lm):
    source = make_task("src", n_train=40, n_test=2, seed=3)
    target = make_task("tgt", n_train=4, n_test=2, seed=4)
    method = I2CL(batch_size=8, demos_per_class=4, epochs=12, lr=0.05, progress=False)
    method.fit(lm, [source], target, seed=0)
    losses = method.info["calib_epoch_losses"]
    assert len(losses) == 12
    assert method.info["calib_loss_last"] < method.info["calib_loss_first"] - 0.05


def test_i2cl_steps_caps_the_calibration(lm):
    source = make_task("src", n_train=30, n_test=2, seed=1)
    target = make_task("tgt", n_train=4, n_test=2, seed=2)
    method = I2CL(batch_size=8, n_demos=6, epochs=100, steps=4, progress=False)
    method.fit(lm, [source], target, seed=0)
    assert method.info["calib_steps"] == 4 and len(method.info["calib_epoch_losses"]) == 2
    with pytest.raises(ValueError, match="demonstrations"):
        I2CL(n_demos=100, steps=1).fit(lm, [source], target)
