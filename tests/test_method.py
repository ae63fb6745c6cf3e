"""Stage-level checks of Scissorhands on a tiny real model and real digits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

import kernels
from orchestrator.data import ForgetSpec, load_mnist5k, split_forget
from orchestrator.methods.scissorhands import ScissorhandsConfig, sensitivity, trim
from orchestrator.methods.shared import init_specs, matching
from orchestrator.models import build_model
from orchestrator.training import augment

LATE = ("layer3", "fc")


@pytest.fixture(scope="module")
def data():
    return split_forget(load_mnist5k(), ForgetSpec.parse("class:3"), seed=0)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model("resnet8", 1, 10, width=4)


def test_scores_equal_abs_w_times_summed_abs_grads_by_hand(data):
    cfg = ScissorhandsConfig(score_batches=3, score_batch_size=32)
    model = tiny_model()
    running_mean = model.bn1.running_mean.clone()
    grad_sums = sensitivity(model, data, cfg, torch.Generator().manual_seed(5), backend=None)
    # Train mode, as the reference code scores: batch statistics, running statistics updated.
    assert model.training and not torch.equal(model.bn1.running_mean, running_mean)

    # By hand: replay the same random draws (a shuffled loader's first batch), sum |g| with autograd.
    gen = torch.Generator().manual_seed(5)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(3):
        idx = torch.randperm(len(data.y_forget), generator=gen)[:32]
        x = augment(data.x_forget[idx], False, gen)
        loss = F.cross_entropy(model(x), data.y_forget[idx])
        for e, g in zip(expected, torch.autograd.grad(loss, list(model.parameters()))):
            e += g.abs()
    for got, want, p in zip(grad_sums, expected, model.parameters()):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close((p * got).abs(), (p * want).abs())
    assert any(g.abs().sum() > 0 for g in grad_sums)


def test_threshold_marks_exactly_the_top_share_and_trim_touches_only_marked_eligible(data):
    cfg = ScissorhandsConfig(trim_ratio=0.05, trim_layers=(r"^layer3\.", r"^fc\."))
    model = tiny_model()
    grad_sums = sensitivity(model, data, cfg, torch.Generator().manual_seed(0), backend=None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = [n for n, _ in model.named_parameters()]

    all_scores = torch.cat([(p.detach() * g).abs().flatten() for p, g in zip(model.parameters(), grad_sums)])
    n = all_scores.numel()
    kth = all_scores.kthvalue(int(0.95 * n)).values  # the reference code's cut
    masks = kernels.selection_masks(list(model.parameters()), grad_sums,
                                    kernels.snip_threshold(list(model.parameters()), grad_sums, 0.05))
    assert sum(int(m.sum()) for m in masks) == int((all_scores > kth).sum())
    assert 0.04 * n < int((all_scores > kth).sum()) <= 0.05 * n + 1
    # Every selected score is >= every unselected one (top-k by value).
    flat_mask = torch.cat([m.flatten() for m in masks])
    assert all_scores[flat_mask].min() >= all_scores[~flat_mask].max()

    threshold, trimmed = trim(model, grad_sums, cfg, LATE, torch.Generator().manual_seed(1), backend=None)
    eligible = {n for n, _ in matching(model, cfg.trim_layers)}
    specs = dict(zip(names, init_specs(model, eligible, cfg.init)))
    changed_total = 0
    for (name, p), mask in zip(model.named_parameters(), masks):
        changed = p.detach() != before[name]
        if specs[name] is None:  # not eligible (outside the layers, or BatchNorm): bit-identical
            assert torch.equal(p.detach(), before[name]), name
        else:
            assert not (changed & ~mask).any(), f"{name}: an unmarked entry changed"
            bound = max(abs(specs[name].low), abs(specs[name].high))
            assert (p.detach()[mask].abs() <= bound + 1e-7).all(), f"{name}: fresh values outside the init range"
        changed_total += int(changed.sum())
    assert 0 < changed_total <= trimmed
    assert any("bn" in n for n in names) and all(specs[n] is None for n in names if "bn" in n)


def _qp_coefficient(gr, rr, margin, eps):
    """Solve GEM's dual QP for one memory vector numerically: min 1/2 v^2 (rr+eps) + v*gr, v >= margin."""
    res = minimize_scalar(lambda v: 0.5 * v * v * (rr + eps) + v * gr, bounds=(margin, margin + 1e6),
                          method="bounded", options={"xatol": 1e-10})
    return res.x


@pytest.mark.parametrize("seed", range(8))
def test_projection_closed_form_equals_the_quadratic_program(seed):
    rng = np.random.default_rng(seed)
    margin, eps = float(rng.choice([0.0, 0.1, 0.5])), 1e-3
    shapes = [(3, 4), (5,), (2, 2, 2)]
    g = [torch.from_numpy(rng.normal(size=s)) for s in shapes]
    r = [torch.from_numpy(rng.normal(size=s)) for s in shapes]
    if rng.random() < 0.7:  # make it conflict most of the time
        g = [gi - 2 * ri for gi, ri in zip(g, r)]
    gr = sum(float((a * b).sum()) for a, b in zip(g, r))
    rr = sum(float((b * b).sum()) for b in r)
    g_proj = [t.clone() for t in g]
    coef = kernels.project_(g_proj, r, margin, eps, "global", backend="reference")
    if gr < 0:
        v = _qp_coefficient(gr, rr, margin, eps)
        assert float(coef[0]) == pytest.approx(v, rel=1e-5, abs=1e-6)
        for a, b, c in zip(g_proj, g, r):
            torch.testing.assert_close(a, b + v * c, rtol=1e-4, atol=1e-5)
        # The projected gradient no longer conflicts (up to the eps relaxation of the closed form).
        new_dot = sum(float((a * b).sum()) for a, b in zip(g_proj, r))
        assert new_dot >= gr * eps / (rr + eps) - 1e-9
    else:
        assert float(coef[0]) == 0.0 and all(torch.equal(a, b) for a, b in zip(g_proj, g))


def test_per_layer_projection_fixes_every_conflicting_layer():
    rng = np.random.default_rng(0)
    g = [torch.from_numpy(rng.normal(size=(6,))) for _ in range(4)]
    r = [torch.from_numpy(rng.normal(size=(6,))) for _ in range(4)]
    g[0] = -3 * r[0]
    g_proj = [t.clone() for t in g]
    coef = kernels.project_(g_proj, r, 0.0, 1e-12, "per_layer", backend="reference")
    for i, (a, b) in enumerate(zip(g_proj, r)):
        assert float((a * b).sum()) >= -1e-6
        assert (coef[i] > 0) == (float((g[i] * b).sum()) < 0)
