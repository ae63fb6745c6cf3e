"""Stage-level checks of Scissorhands on a tiny real model and real digits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

import kernels
from orchestrator.datasets.mnist5k import load_mnist5k
from orchestrator.forget import ForgetSpec, split_forget
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
    specs = dict(zip(names, init_specs(model, eligible, cfg.init, cfg.trim_rule)))
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


def test_init_zeros_sets_every_trimmed_entry_to_zero(data):
    cfg = ScissorhandsConfig(trim_ratio=0.05, init="zeros")
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    grad_sums = sensitivity(model, data, cfg, torch.Generator().manual_seed(0), backend=None)
    _, trimmed = trim(model, grad_sums, cfg, LATE, torch.Generator().manual_seed(1), backend=None)
    changed = [p.detach() != b for p, b in zip(model.parameters(), before)]
    assert 0 < sum(int(c.sum()) for c in changed) <= trimmed
    assert all((p.detach()[c] == 0).all() for p, c in zip(model.parameters(), changed))


def test_score_bn_mode_eval_scores_with_running_statistics(data):
    model = tiny_model()
    running = [b.clone() for b in model.buffers()]
    sensitivity(model, data, ScissorhandsConfig(score_bn_mode="eval"), torch.Generator().manual_seed(0), backend=None)
    assert not model.training and all(torch.equal(a, b) for a, b in zip(model.buffers(), running))


def test_trim_rule_by_name_reinitialises_the_shortcut_batchnorm_as_the_reference():
    from orchestrator.methods.scissorhands import layer_selection

    model = tiny_model()
    by_name = set(layer_selection(model, ScissorhandsConfig(trim_layers=(r"^layer3\.",))
                                  )["trim"])
    by_type = set(layer_selection(model, ScissorhandsConfig(trim_layers=(r"^layer3\.",), trim_rule="by_type"))["trim"])
    # The reference's 'bn' not in name: the shortcut's BatchNorm is trimmed, bn1 / bn2 are not.
    assert by_name - by_type == {"layer3.0.shortcut.1.weight", "layer3.0.shortcut.1.bias"}
    assert not any(".bn" in n for n in by_name)
    specs = dict(zip([n for n, _ in model.named_parameters()],
                     init_specs(model, by_name, "kaiming_uniform", "by_name")))
    assert (specs["layer3.0.shortcut.1.weight"].low, specs["layer3.0.shortcut.1.weight"].high) == (-1.0, 1.0)
    assert (specs["layer3.0.shortcut.1.bias"].low, specs["layer3.0.shortcut.1.bias"].high) == (0.0, 0.0)


def _projection(model, names, **options):
    from orchestrator.methods.shared import GradientProjection

    settings = {"strength": 0.0, "eps": 1e-3, "scope": "global", "every": 1, "backend": "reference",
                "memory_mode": "sum", **options}
    return GradientProjection(model, names, **settings)


def test_memory_sums_its_batches_on_a_copy_in_the_chosen_bn_mode():
    model = tiny_model()
    seen = []

    def forget_grads(frozen, params):
        seen.append((frozen is not model, frozen.training))
        return [torch.ones_like(p) for p in params]

    for train_mode in (False, True):
        projection = _projection(model, ["fc.weight", "fc.bias"])
        projection.remember(forget_grads, 3, train_mode=train_mode)
        [memory] = projection.columns
        assert all(torch.equal(m, torch.full_like(m, -3.0)) for m in memory)  # r = -(sum of 3 grads)
        assert seen[-3:] == [(True, train_mode)] * 3
    # The reference's columns: column j sums the first j batches' r.
    projection = _projection(model, ["fc.weight", "fc.bias"], memory_mode="columns")
    projection.remember(forget_grads, 3, train_mode=False)
    assert [float(column[0].flatten()[0]) for column in projection.columns] == [-1.0, -2.0, -3.0]


def test_project_every_and_projection_eps():
    model = tiny_model()
    names = ["fc.weight", "fc.bias"]
    params = [dict(model.named_parameters())[n] for n in names]

    def conflicting_step(projection, step):
        for p in params:
            p.grad = torch.ones_like(p)  # opposes r = -1 everywhere
        fired = projection(step)["projection_rate"]
        return fired, sum(float((p.grad * -1).sum()) for p in params)  # g . r after the hook

    every = _projection(model, names, every=2)
    every.remember(lambda frozen, ps: [torch.ones_like(p) for p in ps], 1, train_mode=False)
    fired = [conflicting_step(every, step)[0] for step in range(4)]
    assert fired == [1.0, 0.0, 1.0, 0.0]
    dots = {}
    for eps in (1e-6, 100.0):
        projection = _projection(model, names, eps=eps)
        projection.columns = list(every.columns)
        dots[eps] = conflicting_step(projection, 0)[1]
    n = sum(p.numel() for p in params)
    # g.r goes from -n to about -n * eps / (n + eps): a larger eps leaves more of the conflict.
    assert dots[1e-6] == pytest.approx(-n * 1e-6 / (n + 1e-6), abs=1e-4)
    assert dots[100.0] == pytest.approx(-n * 100.0 / (n + 100.0), rel=1e-4)


def test_project_layers_choose_the_projected_parameters():
    from orchestrator.methods.scissorhands import layer_selection

    model = tiny_model()
    assert layer_selection(model, ScissorhandsConfig(project_layers=(r"^fc\.",)))["project"] == ["fc.weight", "fc.bias"]
    assert "layer3.0.bn1.weight" in layer_selection(model, ScissorhandsConfig())["project"]


@pytest.mark.parametrize("name, blocks", [("resnet18", 4), ("resnet20", 3)])
def test_the_larger_built_in_models_build_and_classify(name, blocks):
    model = build_model(name, 3, 10).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    layers = {n.split(".")[0] for n, _ in model.named_parameters() if n.startswith("layer")}
    assert len(layers) == blocks


def test_several_memory_batches_project_against_each_column_unless_summed():
    """memory_batches 3: the reference's three cumulative columns (a QP with three constraints)
    and one summed memory project a conflicting gradient differently; both fire. Fixed
    gradients, not a trained model: whether a repair step conflicts depends on the CPU."""
    model = tiny_model()
    names = ["fc.weight", "fc.bias"]
    params = [dict(model.named_parameters())[n] for n in names]
    draws = iter([1.0, -2.0, 0.5] * 2)

    def forget_grads(frozen, ps):  # batch j's dL_f/dtheta: a different multiple of a fixed pattern
        scale = next(draws)
        return [scale * torch.linspace(-1, 1, p.numel()).view_as(p) + (p.dim() - 1) for p in ps]

    projected = {}
    for mode in ("columns", "sum"):
        projection = _projection(model, names, memory_mode=mode, strength=0.5)
        projection.remember(forget_grads, 3, train_mode=False)
        for p in params:
            p.grad = torch.ones_like(p)
        assert projection(0)["projection_rate"] == 1.0, mode
        projected[mode] = [p.grad.clone() for p in params]
    assert len(projection.columns) == 1
    assert any(not torch.equal(a, b) for a, b in zip(projected["columns"], projected["sum"]))
