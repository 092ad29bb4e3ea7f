"""ICV (Liu et al. 2024) and I2CL (Li et al. 2025) as the authors' code runs them: the joint
in-context direction, the norm-preserving shift of every MLP output, the injection sites, the
noisy self-calibration with stratified demonstrations, the labelled-target transfer and the
choice against the unsteered model."""

import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import castlib.methods as methods
from castlib.architectures import MLP_NAMES
from castlib.hooks import hidden_of
from castlib.methods.function_vector import mlp_module
from castlib.methods.i2cl import I2CL, SITES, I2CLInjection, lr_factor, residual_sites
from castlib.methods.icv import (
    ICV,
    authors_component,
    icv_direction,
    icv_shift,
    icv_steering,
)
from castlib.methods.labelled_rows import choose_steering, stratified_sample
from castlib.methods.steering import make_vector
from castlib.testing import FAMILIES, tiny_model
from tests.conftest import make_task
from tests.test_adapters import logits


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float(a @ b / (a.norm() * b.norm()))


def _hook_count(lm) -> int:
    return sum(
        len(m._forward_hooks)
        for block in lm.blocks
        for m in {block, mlp_module(block), *residual_sites(block)}
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
    vec = icv_direction(deltas, "uncentred")
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
    assert _cos(icv_direction(deltas, "uncentred"), mean) > 0.95
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


class _AuthorsICVLayer(nn.Module):
    """The authors' ``nn.Sequential(mlp, ICVLayer(icv, [lam]))`` with one vector, written out:
    o = mlp(x); s = 1 + max(0, cos(o, -v)); o' = ||o|| unit(unit(o) + lam s unit(v))."""

    def __init__(self, mlp: nn.Module, v: torch.Tensor, lam: float) -> None:
        super().__init__()
        self.mlp, self.v, self.lam = mlp, v, lam

    def forward(self, *args, **kwargs):
        o = self.mlp(*args, **kwargs)
        x = o.float()
        norm = torch.norm(x, p=2, dim=-1, keepdim=True)
        cos = F.cosine_similarity(x, -self.v.expand_as(x), dim=-1)
        s = 1.0 + torch.clamp(cos, min=0.0).unsqueeze(-1)
        y = self.lam * s * F.normalize(self.v, dim=-1)
        return (F.normalize(F.normalize(x, p=2, dim=-1) + y, p=2, dim=-1) * norm).to(o.dtype)


def _mlp_name(block: nn.Module) -> str:
    return next(n for n in MLP_NAMES if isinstance(getattr(block, n, None), nn.Module))


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt", "gpt_neox", "falcon"])
def test_icv_equals_the_authors_layer_at_every_mlp_output(family, tokenizer):
    """Our hooks on every block's MLP give the logits of the authors' module replacement,
    their formula computed by hand; nothing else in the block changes; hooks removed."""
    lm = tiny_model(family, tokenizer=tokenizer)
    g = torch.Generator().manual_seed(4)
    vector = make_vector(lm, torch.randn(lm.n_layers, lm.hidden_size, generator=g), "icv", {})
    before, hooks = logits(lm), _hook_count(lm)
    lam = 0.3
    with icv_steering(lm, vector, lam):
        assert _hook_count(lm) == hooks + lm.n_layers  # one per MLP, none on the blocks
        ours = logits(lm)
    assert _hook_count(lm) == hooks and torch.equal(logits(lm), before)
    originals = [getattr(block, _mlp_name(block)) for block in lm.blocks]
    try:
        for layer, (block, mlp) in enumerate(zip(lm.blocks, originals, strict=True)):
            setattr(block, _mlp_name(block), _AuthorsICVLayer(mlp, vector[layer].float(), lam))
        theirs = logits(lm)
    finally:
        for block, mlp in zip(lm.blocks, originals, strict=True):
            setattr(block, _mlp_name(block), mlp)
    assert torch.equal(logits(lm), before)
    assert not torch.allclose(ours, before, atol=1e-3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_icv_rewrites_the_mlp_output_with_icv_shift_and_removes_its_hooks(tokenizer):
    lm = tiny_model("llama", tokenizer=tokenizer)
    vector = make_vector(lm, torch.randn(lm.n_layers, lm.hidden_size), "icv", {})
    mlp = mlp_module(lm.blocks[1])
    raw, steered = [], []
    spy = mlp.register_forward_hook(lambda m, a, out: raw.append(hidden_of(out).clone()))
    try:
        with icv_steering(lm, vector, 0.2):  # registered after the first spy: rewrites its view
            late = mlp.register_forward_hook(lambda m, a, o: steered.append(hidden_of(o).clone()))
            try:
                logits(lm)
            finally:
                late.remove()
        with icv_steering(lm, vector, 0.0):  # lambda 0: nothing installed
            assert _hook_count(lm) == 1  # the spy only
        with pytest.raises(RuntimeError, match="boom"), icv_steering(lm, vector, 0.2):
            raise RuntimeError("boom")
    finally:
        spy.remove()
    unit = vector[1] / vector[1].norm()
    torch.testing.assert_close(steered[0], icv_shift(raw[0], unit, 0.2))
    torch.testing.assert_close(steered[0].norm(dim=-1), raw[0].norm(dim=-1))
    assert _hook_count(lm) == 0


def test_icv_defaults_are_the_authors():
    p = ICV().params
    assert p.direction == "component_plus_mean"
    assert p.alpha_range == (0.1, 0.8)  # README/demo 0.1 ... common.py's default 0.8
    assert (p.positions, p.norm_preserving, p.layers) == ("all", True, None)


def test_authors_component_has_their_svd_flip_sign():
    g = torch.Generator().manual_seed(6)
    flat = torch.randn(9, 12, generator=g, dtype=torch.float64)
    comp = authors_component(flat)
    centred = flat - flat.mean(0)
    scores = centred @ comp
    assert float(comp.norm()) == pytest.approx(1.0)
    assert scores[scores.abs().argmax()] > 0  # the largest-magnitude score is positive
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    assert abs(float(comp @ vh[0])) == pytest.approx(1.0)  # the first component, up to sign
    deltas = flat.reshape(9, 3, 4).float()
    want = (comp + flat.mean(0)).reshape(3, 4).float()
    torch.testing.assert_close(icv_direction(deltas), want)


def test_icv_fit_records_the_direction(lm):
    source = make_task("src", n_train=40, n_test=4, seed=1)
    target = make_task("tgt", n_train=12, n_test=6, seed=2)
    # a steered choice is forced (include_unsteered=False) so the steered record can be checked
    icv = ICV(
        batch_size=8,
        n_tune=4,
        alphas=(0.05, 0.1),
        include_unsteered=False,
        k=2,
        n_samples=6,
        direction="uncentred",
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
    method = I2CL(batch_size=8, demos_per_class=3, n_tune=4, epochs=3, lr=0.05, progress=False)
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
    method = I2CL(batch_size=8, demos_per_class=4, n_tune=4, epochs=12, lr=0.05, progress=False)
    method.fit(lm, [source], target, seed=0)
    losses = method.info["calib_epoch_losses"]
    assert len(losses) == 12
    assert method.info["calib_loss_last"] < method.info["calib_loss_first"] - 0.05


def test_i2cl_steps_caps_the_calibration(lm):
    source = make_task("src", n_train=30, n_test=2, seed=1)
    target = make_task("tgt", n_train=4, n_test=2, seed=2)
    method = I2CL(batch_size=8, n_demos=6, n_tune=4, epochs=100, steps=4, progress=False)
    method.fit(lm, [source], target, seed=0)
    assert method.info["calib_steps"] == 4 and len(method.info["calib_epoch_losses"]) == 2
    with pytest.raises(ValueError, match="demonstrations"):
        I2CL(n_demos=100, n_tune=4, steps=1).fit(lm, [source], target)


@pytest.mark.parametrize(
    ("progress", "steps", "bar"), [(None, 5, True), (None, 4, False), (False, 5, False)]
)
def test_i2cl_calibration_shows_its_progress_when_it_is_long(lm, capsys, progress, steps, bar):
    # a batch's kernel writes no terminal: a long calibration shows its bar all the same
    source = make_task("src", n_train=30, n_test=2, seed=1)
    target = make_task("tgt", n_train=4, n_test=2, seed=2)
    method = I2CL(batch_size=2, n_demos=6, n_tune=4, epochs=100, steps=steps, progress=progress)
    method.fit(lm, [source], target, seed=0)
    err = capsys.readouterr().err
    # the bar is drawn (its final refresh depends on tqdm's timing, so only its total is checked)
    assert (f"/{steps} [" in err) is bar, err


# -- I2CL: stratified demonstrations, the labelled-target transfer, the unsteered choice -----
def _label_counts(task, ids):
    by_id = {f"{task.name}:{ex.id}": ex.label for ex in task.train}
    counts = [0] * len(task.labels)
    for i in ids:
        counts[by_id[i]] += 1
    return counts


def test_stratified_sample_counts_and_errors():
    import random

    task = make_task("strat", n_train=40, seed=5)
    per = stratified_sample(task, task.train, random.Random(0), per_class=3)
    assert sorted(ex.label for ex in per) == [0, 0, 0, 1, 1, 1]
    total = stratified_sample(task, task.train, random.Random(0), total=5)
    assert sorted(sum(ex.label == c for ex in total) for c in (0, 1)) == [2, 3]
    short = [ex for ex in task.train if ex.label == 0][:2] + [
        ex for ex in task.train if ex.label == 1
    ]
    with pytest.raises(ValueError, match=r"demos_per_class=3 needs 3 row\(s\) of label 'negative'"):
        stratified_sample(task, short, random.Random(0), per_class=3, param="demos_per_class")
    with pytest.raises(ValueError, match="exactly one"):
        stratified_sample(task, task.train, random.Random(0))


def test_i2cl_demonstrations_are_stratified_and_outside_the_tuning_rows(lm):
    source = make_task("src", n_train=40, n_test=2, seed=1)
    target = make_task("tgt", n_train=4, n_test=2, seed=2)
    method = I2CL(batch_size=8, demos_per_class=3, n_tune=4, epochs=1, progress=False)
    method.fit(lm, [source], target, seed=0)
    info = method.info
    assert _label_counts(source, info["selected_ids"]) == [3, 3]
    assert info["calib_ids"] == info["selected_ids"]  # self-calibration on the demonstrations
    assert len(info["tuning_ids"]) == 4 and not set(info["tuning_ids"]) & set(info["selected_ids"])
    assert [g["steered"] for g in info["choice_grid"]] == [False, True]
    assert isinstance(info["steered"], bool) and info["protocol"] == "source"
    with pytest.raises(ValueError, match="demos_per_class=30 needs 30"):
        I2CL(demos_per_class=30, epochs=1, progress=False).fit(lm, [source], target)


def test_i2cl_target_dev_is_the_authors_transfer(lm):
    source = make_task("src", n_train=40, n_test=2, seed=1)
    target = make_task("tgt", n_train=30, n_test=6, seed=2)
    preset = methods.preset("i2cl_target_dev")
    assert preset is not None and preset.method == "i2cl"
    assert dict(preset.params) == {"protocol": "target_dev"}
    params = {"batch_size": 8, "demos_per_class": 2, "epochs": 2, "n_target": 9, "progress": False}
    dev = I2CL(**params, protocol="target_dev").fit(lm, [source], target, seed=0)
    src = I2CL(**params).fit(lm, [source], target, seed=0)
    info = dev.info
    assert dev.uses_target_labels and not src.uses_target_labels
    assert dev.fit_reads_target and not src.fit_reads_target
    # context vectors: the source fit's, each times its source context coefficient
    torch.testing.assert_close(dev.context, src.context * src.coef[:, :, :1])
    assert info["source_coefficients"] == src.info["coefficients"]
    assert info["selected_ids"] == src.info["selected_ids"]
    # calibration on 2 labelled target rows per label; the choice on the other 9 - 4 rows
    assert all(i.startswith("tgt:") for i in info["calib_ids"] + info["tuning_ids"])
    assert _label_counts(target, info["calib_ids"]) == [2, 2]
    assert len(info["tuning_ids"]) == 5 and not set(info["tuning_ids"]) & set(info["calib_ids"])
    test_ids = {f"tgt:{ex.id}" for ex in target.test}
    assert not test_ids & set(info["calib_ids"] + info["tuning_ids"])
    rec = dev.evaluate(lm, target)
    assert rec["uses_target_labels"] is True and rec["protocol"] == "target_dev"
    with pytest.raises(ValueError, match=r"demos_per_class=2 gives 4 calibration rows.*n_target=4"):
        I2CL(**{**params, "n_target": 4}, protocol="target_dev").fit(lm, [source], target)
    with pytest.raises(ValueError, match="n_target"):
        I2CL(n_target=33, protocol="target_dev")


def test_i2cl_keeps_the_unsteered_model_unless_the_injection_is_better(lm):
    target = make_task("tgt", n_train=12, n_test=6, seed=2)
    rows = [(target, ex) for ex in target.train]
    tie = choose_steering(lm, rows, nullcontext)  # the same scores: the unsteered model
    assert (
        tie["steered"] is False
        and tie["choice_grid"][0]["accuracy"] == (tie["choice_grid"][1]["accuracy"])
    )
    source = make_task("src", n_train=40, n_test=2, seed=1)
    method = I2CL(batch_size=8, demos_per_class=2, n_tune=4, epochs=1, progress=False)
    method.fit(lm, [source], target, seed=0)
    zero = methods.get("zero_shot")().fit(lm, [source], target).evaluate(lm, target)
    method.info["steered"] = False  # as if the unsteered model had won: no hook at all
    rec = method.evaluate(lm, target)
    assert rec["predictions"] == zero["predictions"]
    method.info["steered"] = True
    with method.applied(lm):
        assert _hook_count(lm) == 2 * lm.n_layers
    assert _hook_count(lm) == 0
