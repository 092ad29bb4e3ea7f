"""KaSA math, reversible module swapping and the shared adapter training loop."""

import pytest
import torch

from castlib.methods.adapters.kasa import KaSAAdapter, KaSAUpdate, orthogonality, truncation
from castlib.methods.adapters.layers import apply_adapter, target_modules, weight_matrix
from castlib.methods.adapters.training import answer_nll, answer_rows, train_adapter
from castlib.prompts import zero_shot
from castlib.scoring import score_prompts
from castlib.testing import FAMILIES, tiny_model
from tests.conftest import make_task

PROMPTS = ["the movie was good and the film great", "a bad review"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a shared, oversubscribed 2-core machine two
    OpenMP threads spin against each other (backward passes 10-100x slower). Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def logits(lm, prompts=PROMPTS):
    batch = lm.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return lm.model(**batch).logits


def snapshot(model):
    """Everything that must be unchanged after an adapter is removed."""
    return {
        "modules": {name: id(m) for name, m in model.named_modules()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "flags": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: p.grad is None for name, p in model.named_parameters()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "attrs": sorted(model.__dict__),
        "training": model.training,
    }


def assert_same_snapshot(a, b):
    assert a["modules"] == b["modules"]
    assert a["flags"] == b["flags"] and a["grads"] == b["grads"]
    assert a["hooks"] == b["hooks"] and a["attrs"] == b["attrs"]
    assert a["training"] == b["training"]
    assert a["params"].keys() == b["params"].keys()
    for name, t in a["params"].items():
        assert torch.equal(t, b["params"][name]), name


def orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def test_truncation_drops_the_smallest_singular_components_hand_made():
    u, v = orthogonal(4, 0), orthogonal(4, 1)
    w = u @ torch.diag(torch.tensor([5.0, 3.0, 2.0, 1.0])) @ v.T
    us, vt = truncation(w, 2)
    assert us.shape == (4, 2) and vt.shape == (2, 4)
    kept = u @ torch.diag(torch.tensor([5.0, 3.0, 0.0, 0.0])) @ v.T
    dropped = u @ torch.diag(torch.tensor([0.0, 0.0, 2.0, 1.0])) @ v.T
    torch.testing.assert_close(us @ vt, dropped, atol=1e-5, rtol=0)
    torch.testing.assert_close(w - us @ vt, kept, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="r < min"):
        truncation(w, 4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_truncated_base_equals_w_minus_its_smallest_components(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    name = target_modules(lm)[0]
    module = lm.model.get_submodule(name)
    w = weight_matrix(module).detach()
    r = 4
    adapter = KaSAAdapter.build(lm.model, [name], r=r, seed=0)
    upd = adapter.update(name)
    _, s, _ = torch.linalg.svd(w)
    k = min(w.shape)
    # W' = W - U_r S_r V_r^T keeps the k - r largest singular values and zeroes the rest
    s_trunc = torch.linalg.svdvals(w - upd.dropped())
    torch.testing.assert_close(s_trunc[: k - r], s[: k - r], atol=1e-5, rtol=1e-5)
    assert float(s_trunc[k - r :].abs().max()) < 1e-5
    torch.testing.assert_close(torch.linalg.svdvals(upd.dropped())[:r], s[k - r :])
    # the wrapped module computes W' x + b (L = 0 at init, so Delta W = 0)
    assert float(upd.L.detach().abs().max()) == 0.0
    x = torch.randn(3, 5, w.shape[1], generator=torch.Generator().manual_seed(0))
    bias = getattr(module, "bias", None)
    expected = x @ (w - upd.dropped()).T + (0 if bias is None else bias.detach())
    with apply_adapter(lm.model, adapter):
        got = lm.model.get_submodule(name)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_regulariser_values_on_hand_made_matrices():
    eye_cols = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # L^T L = I
    assert float(orthogonality(eye_cols, "columns")) == 0.0
    stretched = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # L^T L - I = diag(3, 0)
    assert float(orthogonality(stretched, "columns")) == pytest.approx(9.0)
    r = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # R R^T - I = diag(1, 0)
    assert float(orthogonality(r, "rows")) == pytest.approx(1.0)
    skew = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # R R^T - I = [[0, 1], [1, 0]]
    assert float(orthogonality(skew, "rows")) == pytest.approx(2.0)

    upd = KaSAUpdate(3, 3, 2)
    with torch.no_grad():
        upd.L.copy_(stretched)
        upd.R.copy_(r)
        upd.sigma.copy_(torch.tensor([1.0, 2.0]))
    # beta * 9 + gamma * 1 + sigma_l2 * (1 + 4)
    assert float(upd.regularizer(0.5, 0.25, 0.1).detach()) == pytest.approx(
        0.5 * 9 + 0.25 * 1 + 0.1 * 5
    )
    adapter = KaSAAdapter({"a.b": upd}, alpha=2.0, beta=0.5, gamma=0.25, sigma_l2=0.1)
    assert float(adapter.regularizer().detach()) == pytest.approx(4.75 + 0.5)
    assert adapter.scale == 1.0


def test_gradients_reach_only_adapter_parameters(lm):
    before = snapshot(lm.model)
    adapter = KaSAAdapter.build(lm.model, target_modules(lm), r=4, seed=1)
    with torch.no_grad():  # a non-zero L so that every adapter parameter gets a gradient
        for p in adapter.parameters():
            if p.ndim == 2 and p.abs().max() == 0:
                p.normal_(generator=torch.Generator().manual_seed(2))
    with apply_adapter(lm.model, adapter) as handle:
        batch = lm.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        loss = lm.model(**batch).logits.float().pow(2).mean() + handle.regularizer()
        loss.backward()
        adapter_ids = {id(p) for p in adapter.parameters()}
        for name, p in lm.model.named_parameters():
            if id(p) not in adapter_ids:
                assert p.grad is None and not p.requires_grad, name
        assert set(map(id, handle.parameters())) == adapter_ids
    for p in adapter.parameters():
        assert p.grad is not None and float(p.grad.abs().max()) > 0
    assert_same_snapshot(before, snapshot(lm.model))


@pytest.mark.parametrize("family", FAMILIES)
def test_removal_restores_bit_identical_outputs(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    names = target_modules(lm)
    assert names and all(n.startswith(lm.blocks_path + ".") for n in names)
    before, state = logits(lm), snapshot(lm.model)
    adapter = KaSAAdapter.build(lm.model, names, r=2, seed=0)
    with torch.no_grad():
        for name in names:
            adapter.update(name).L.normal_(generator=torch.Generator().manual_seed(3))
    handle = apply_adapter(lm.model, adapter)
    changed = logits(lm)
    handle.remove()
    handle.remove()  # idempotent
    assert not torch.equal(changed, before)
    assert torch.equal(logits(lm), before)
    assert_same_snapshot(state, snapshot(lm.model))


def test_adapter_made_on_another_model_is_refused(tokenizer):
    small = tiny_model("llama", tokenizer=tokenizer)
    wide = tiny_model("llama", hidden=32, tokenizer=tokenizer)
    adapter = KaSAAdapter.build(small.model, target_modules(small), r=2)
    state = snapshot(wide.model)
    with pytest.raises(ValueError, match="another model"):
        apply_adapter(wide.model, adapter)
    assert_same_snapshot(state, snapshot(wide.model))


def test_answer_nll_is_the_scored_answer_log_prob(lm):
    task = make_task("toy", n_train=4, n_test=0)
    items = [(task, ex) for ex in task.train[:3]]
    rows = answer_rows(lm, items)
    with torch.no_grad():
        nll = float(answer_nll(lm, rows))
    scores, _ = score_prompts(lm, [zero_shot(task, ex) for _, ex in items], task.labels)
    gold = torch.stack([scores[i, ex.label] for i, (_, ex) in enumerate(items)])
    n_tokens = sum(c for _, c in rows)
    assert nll == pytest.approx(float(-gold.sum()) / n_tokens, abs=1e-5)


def test_training_is_deterministic_lowers_the_loss_and_round_trips(lm):
    task = make_task("toy", n_train=8, n_test=0)
    items = [(task, ex) for ex in task.train]
    before = snapshot(lm.model)
    runs = []
    for _ in range(2):
        adapter = KaSAAdapter.build(lm.model, target_modules(lm), r=4, seed=0)
        with apply_adapter(lm.model, adapter) as handle:
            losses = train_adapter(lm, handle, items, steps=6, lr=1e-2, batch_size=4, seed=0)
            out = logits(lm)
        runs.append((losses, adapter, out))
    (l1, a1, o1), (l2, a2, o2) = runs
    assert l1 == l2 and torch.equal(o1, o2)
    assert l1[-1] < l1[0]
    assert_same_snapshot(before, snapshot(lm.model))
    t1 = a1.state_tensors()
    assert all(torch.equal(t, a2.state_tensors()[k]) for k, t in t1.items())
    again = KaSAAdapter.from_tensors(t1, a1.names, alpha=a1.alpha)
    with apply_adapter(lm.model, again):
        assert torch.equal(logits(lm), o1)
