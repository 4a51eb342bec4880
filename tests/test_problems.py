"""Optimizee families: a shared smoke test every family passes, plus exact checks of
each family against a plain torch reference (nn.Sequential, nn.Conv2d, nn.LSTM)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from optenv.data import Dataset
from optenv.problems import (
    CNNTask,
    ConvexCombination,
    LogisticRegressionFamily,
    LSTMSineFamily,
    MLPTask,
    QuadraticFamily,
    RandomScaling,
    RobustLinearRegressionFamily,
    TaskFamily,
    unflatten,
)
from optenv.problems.cnn import parse_arch

B = 3


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Factories, so that collecting the tests builds nothing.
FAMILIES = {
    "quadratic": lambda: QuadraticFamily(dim=6),
    "quadratic_uniform": lambda: QuadraticFamily(dim=4, data_dist="uniform"),
    "logistic": lambda: LogisticRegressionFamily(),
    "logistic_minibatch": lambda: LogisticRegressionFamily(batch_size=16),
    "robust": lambda: RobustLinearRegressionFamily(),
    "robust_minibatch": lambda: RobustLinearRegressionFamily(batch_size=8),
    "mlp": lambda: MLPTask(),
    "mlp_sigmoid_rnnprop": lambda: MLPTask(hidden=(20,), activation="sigmoid",
                                           batch_size=128, init_scale=0.1),
    "mlp_deep_subset": lambda: MLPTask(hidden=(8, 8), activation="tanh", class_subset=3),
    "mlp_linear": lambda: MLPTask(hidden=(), dim=12),
    "cnn": lambda: CNNTask(channels=4, batch_size=16),
    "cnn_deep_subset": lambda: CNNTask(arch="c-c-p-c-c-p-f-f", channels=2, hidden=6,
                                       batch_size=8, class_subset=4, activation="elu"),
    "lstm": lambda: LSTMSineFamily(batch_size=16, eval_size=32),
    "lstm_2layer": lambda: LSTMSineFamily(hidden=5, num_layers=2, batch_size=4, eval_size=8),
    "scaled_quadratic": lambda: RandomScaling(QuadraticFamily(dim=5), L=3.0),
    "scaled_mlp": lambda: RandomScaling(MLPTask(hidden=(8,)), L=3.0),
    "convex_mlp": lambda: ConvexCombination(MLPTask(hidden=(8,)), dim=7),
    "rnnprop_mlp": lambda: ConvexCombination(
        RandomScaling(MLPTask(hidden=(20,), activation="sigmoid", init_scale=0.1), 3.0),
        dim=20, scale_L=1.0),
    "convex_lstm": lambda: ConvexCombination(RandomScaling(LSTMSineFamily(batch_size=4,
                                                                          eval_size=8), 1.0)),
}


def build(name: str, seed: int = 0, num: int = B):
    family = FAMILIES[name]()
    assert isinstance(family, TaskFamily)
    g = gen(seed)
    opt = family.sample(g, num)
    params = opt.init(g)
    batch = opt.sample_batch(g)
    return opt, params, batch


def assert_same_batch(a, b) -> None:
    if a is None or b is None:
        assert a is None and b is None
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_smoke(name: str) -> None:
    opt, params, batch = build(name)
    n = opt.n
    assert opt.num_instances == B
    assert params.shape == (B, n) and params.dtype == torch.float32

    # groups tile [0, n) contiguously and each matches its shape
    start = 0
    for g in opt.groups:
        assert g.slice.start == start and g.size == math.prod(g.shape)
        start = g.slice.stop
    assert start == n
    assert len({g.name for g in opt.groups}) == len(opt.groups)
    views = unflatten(params, opt.groups)
    assert all(views[g.name].shape == (B, *g.shape) for g in opt.groups)

    loss, grad = opt.loss_and_grad(params, batch)
    assert loss.shape == (B,) and grad.shape == (B, n)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert (grad.abs().sum(1) > 0).all()
    objective = opt.objective(params)
    assert objective.shape == (B,) and torch.isfinite(objective).all()
    test = opt.test_objective(params)
    assert test is None or (test.shape == (B,) and torch.isfinite(test).all())
    for t in opt.instance_data.values():
        assert t.shape[0] == B

    # same seed -> same numbers; another seed -> other numbers
    opt2, params2, batch2 = build(name)
    assert torch.equal(params, params2)
    assert_same_batch(batch, batch2)
    assert torch.equal(opt2.loss(params2, batch2), loss.detach())
    assert torch.equal(opt2.objective(params2), objective)
    _, params3, _ = build(name, seed=1)
    assert not torch.equal(params, params3)

    # instances are independent: perturbing instance 0 changes only instance 0
    bumped = params.clone()
    bumped[0] += 0.5 * torch.randn(n, generator=gen(7)) + 0.1
    for fn in (lambda p: opt.loss(p, batch), opt.objective):
        before, after = fn(params).detach(), fn(bumped).detach()
        assert after[0] != before[0]
        assert torch.equal(after[1:], before[1:])
    # ... and the gradient of instance i's loss lives in row i only
    p = params.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(opt.loss(p, batch)[1], p)
    assert g1[1].abs().sum() > 0 and g1[0].abs().sum() == 0 and g1[2].abs().sum() == 0


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_splice_matches_single_instance(name: str) -> None:
    """Instance i of a batch equals a one-instance optimizee spliced into row i, and
    splicing leaves the other rows alone."""
    opt, params, _ = build(name, seed=0)
    single, p_single, _ = build(name, seed=3, num=1)
    before = opt.objective(params)
    mask = torch.tensor([False, True, False])
    opt.splice(mask, single)  # `single` holds mask.sum() == 1 instances
    params = params.clone()
    params[1] = p_single[0]
    after = opt.objective(params)
    assert torch.equal(after[[0, 2]], before[[0, 2]])
    torch.testing.assert_close(after[1:2], single.objective(p_single), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["quadratic", "logistic", "robust", "mlp_deep_subset",
                                  "lstm", "scaled_quadratic", "rnnprop_mlp"])
def test_splice_full_batch_other(name: str) -> None:
    opt, params, _ = build(name, seed=0, num=4)
    other, _, _ = build(name, seed=1, num=4)
    before, theirs = opt.objective(params), other.objective(params)
    mask = torch.tensor([True, False, True, False])
    opt.splice(mask, other)
    after = opt.objective(params)
    assert not torch.equal(before[mask], theirs[mask])  # the splice is visible
    assert torch.equal(after[mask], theirs[mask])
    assert torch.equal(after[~mask], before[~mask])


def test_splice_rejects_other_family() -> None:
    opt, _, _ = build("scaled_quadratic")
    other, _, _ = build("convex_mlp")
    with pytest.raises(ValueError, match="different families"):
        opt.splice(torch.ones(B, dtype=torch.bool), other)


# -- quadratic ---------------------------------------------------------------------------

def test_quadratic_gradient_is_analytic() -> None:
    opt, params, batch = build("quadratic")
    _, grad = opt.loss_and_grad(params, batch)
    W, y = opt.instance_data["W"], opt.instance_data["y"]
    expected = 2 * torch.einsum("bji,bj->bi", W.double(), torch.einsum(
        "bij,bj->bi", W.double(), params.double()) - y.double())
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(opt.analytic_grad(params), grad, rtol=1e-5, atol=1e-5)
    value = ((W @ params.unsqueeze(2)).squeeze(2) - y).square().sum(1)
    torch.testing.assert_close(opt.objective(params), value)
    assert opt.sample_batch(gen(0)) is None
    assert (opt.objective(opt.minimizer()) < 1e-5 * value).all()


def test_quadratic_init_is_small_normal() -> None:
    opt = QuadraticFamily(dim=10).sample(gen(0), 64)
    std = opt.init(gen(1)).std().item()
    assert 0.008 < std < 0.012  # reference code: N(0, 0.01²)


# -- regression --------------------------------------------------------------------------

def test_logistic_regression_formula() -> None:
    fam = LogisticRegressionFamily(dim=3, num_points=10, l2=0.1)
    opt = fam.sample(gen(0), 2)
    params = opt.init(gen(1))
    x, y = opt.instance_data["x"], opt.instance_data["y"]
    assert x.shape == (2, 10, 3) and set(y.unique().tolist()) == {0.0, 1.0}
    for b in range(2):
        w, bias = params[b, :3], params[b, 3]
        prob = torch.sigmoid(x[b] @ w + bias)
        nll = -(y[b] * prob.log() + (1 - y[b]) * (1 - prob).log()).mean()
        torch.testing.assert_close(opt.objective(params)[b], nll + 0.05 * w.square().sum())


def test_robust_regression_formula_and_minibatch() -> None:
    fam = RobustLinearRegressionFamily(num_clusters=2, points_per_cluster=5, c=2.0, batch_size=4)
    opt = fam.sample(gen(0), 2)
    params = opt.init(gen(1))
    x, y = opt.instance_data["x"], opt.instance_data["y"]
    assert x.shape == (2, 10, 3)
    r = y - (x @ params[:, :3].unsqueeze(2)).squeeze(2) - params[:, 3:]
    torch.testing.assert_close(opt.objective(params), (r**2 / (4.0 + r**2)).mean(1))
    idx = opt.sample_batch(gen(2))
    assert idx.shape == (2, 4)
    rows = torch.arange(2).unsqueeze(1)
    expected = (r[rows, idx] ** 2 / (4.0 + r[rows, idx] ** 2)).mean(1)
    torch.testing.assert_close(opt.loss(params, idx), expected)
    full = RobustLinearRegressionFamily().sample(gen(0), 2)
    p = full.init(gen(1))
    assert full.sample_batch(gen(0)) is None
    assert torch.equal(full.loss(p, None), full.objective(p))


# -- augment -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["scaled_quadratic", "scaled_mlp"])
def test_random_scaling(name: str) -> None:
    opt, _, batch = build(name)
    c = opt.instance_data["scale"]
    assert c.shape == (B, opt.n)
    assert c.min() >= math.exp(-3.0) and c.max() <= math.exp(3.0)
    assert c.log().std() > 1.0  # log c ~ U(-3, 3), std √3
    theta0 = opt.inner.init(gen(5))
    start = opt.init(gen(5))  # same draws: c⁻¹ θ₀
    torch.testing.assert_close(start, theta0 / c)
    torch.testing.assert_close(opt.objective(start), opt.inner.objective(theta0))
    torch.testing.assert_close(opt.loss(start, batch), opt.inner.loss(theta0, batch))
    # chain rule: ∇f_c(θ) = c ⊙ ∇f(c ⊙ θ)
    _, g_outer = opt.loss_and_grad(start, batch)
    _, g_inner = opt.inner.loss_and_grad(start * c, batch)
    torch.testing.assert_close(g_outer, c * g_inner, rtol=1e-4, atol=1e-6)


def test_convex_combination_adds_exactly_the_convex_term() -> None:
    fam = ConvexCombination(MLPTask(hidden=(8,)), dim=7, scale_L=1.0)
    opt = fam.sample(gen(0), B)
    params = opt.init(gen(1))
    batch = opt.sample_batch(gen(2))
    n_in = opt.inner.n
    assert opt.n == n_in + 7
    group = opt.groups[-1]
    assert group.name == "convex" and group.slice == slice(n_in, n_in + 7)
    v, c = opt.instance_data["convex.v"], opt.instance_data["convex.scale"]
    assert v.abs().max() <= 1 and (c >= math.exp(-1) - 1e-6).all() and (c <= math.e).all()
    x = params[:, n_in:]
    assert (x * c).abs().max() <= 1 + 1e-6  # x₀ ~ U[-1, 1], started at c⁻¹ x₀
    term = ((c * x - v) ** 2).sum(1) / 7
    torch.testing.assert_close(opt.objective(params), opt.inner.objective(params[:, :n_in]) + term)
    torch.testing.assert_close(opt.loss(params, batch),
                               opt.inner.loss(params[:, :n_in], batch) + term)
    # gradient on the convex block is 2 c (c x - v) / d
    _, grad = opt.loss_and_grad(params, batch)
    torch.testing.assert_close(grad[:, n_in:], 2 * c * (c * x - v) / 7)
    assert set(opt.instance_data) == {"convex.v", "convex.scale"}


def test_wrapper_instance_data_is_prefixed_and_shared() -> None:
    opt, _, _ = build("rnnprop_mlp")
    keys = set(opt.instance_data)
    assert keys == {"convex.v", "convex.scale", "inner.scale"}
    assert opt.instance_data["inner.scale"] is opt.inner.instance_data["scale"]


# -- MLP ---------------------------------------------------------------------------------

def reference_mlp(opt, params: torch.Tensor, b: int, act: nn.Module) -> nn.Sequential:
    p = unflatten(params, opt.groups)
    layers: list[nn.Module] = []
    for i in range(opt.num_layers):
        w = p[f"fc{i}.weight"][b]
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(p[f"fc{i}.bias"][b])
        layers += [lin, act] if i < opt.num_layers - 1 else [lin]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("activation,module", [("relu", nn.ReLU()), ("sigmoid", nn.Sigmoid()),
                                               ("elu", nn.ELU()), ("tanh", nn.Tanh())])
def test_mlp_matches_nn_sequential(activation: str, module: nn.Module) -> None:
    task = MLPTask(hidden=(48, 16), activation=activation, init_scale=0.3)
    opt = task.sample(gen(0), B)
    params = opt.init(gen(1))
    idx = opt.sample_batch(gen(2))
    assert idx.shape == (B, 64)
    assert not torch.equal(idx[0], idx[1])  # independent minibatches
    data = task.data
    loss, objective, test = opt.loss(params, idx), opt.objective(params), opt.test_objective(params)
    for b in range(B):
        net = reference_mlp(opt, params, b, module)
        with torch.no_grad():
            ref = F.cross_entropy(net(data.train_x[idx[b]]), data.train_y[idx[b]])
            ref_obj = F.cross_entropy(net(data.train_x), data.train_y)
            ref_test = F.cross_entropy(net(data.test_x), data.test_y)
        torch.testing.assert_close(loss[b], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(objective[b], ref_obj, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(test[b], ref_test, rtol=1e-5, atol=1e-5)


def test_mlp_gradient_matches_nn_sequential() -> None:
    task = MLPTask()
    opt = task.sample(gen(0), B)
    params = opt.init(gen(1))
    idx = opt.sample_batch(gen(2))
    _, grad = opt.loss_and_grad(params, idx)
    g = unflatten(grad, opt.groups)
    net = reference_mlp(opt, params, 2, nn.ReLU())
    F.cross_entropy(net(task.data.train_x[idx[2]]), task.data.train_y[idx[2]]).backward()
    torch.testing.assert_close(g["fc0.weight"][2], net[0].weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g["fc1.bias"][2], net[2].bias.grad, rtol=1e-4, atol=1e-6)


def test_mlp_defaults_follow_li_malik() -> None:
    task = MLPTask()
    opt = task.sample(gen(0), 1)
    assert [g.shape for g in opt.groups] == [(48, 48), (48,), (10, 48), (10,)]
    assert opt.batch_size == 64 and task.data.input_dim == 48
    p = opt.init(gen(0))
    views = unflatten(p, opt.groups)
    assert torch.equal(views["fc0.bias"], torch.zeros(1, 48))  # fan-in init, zero biases
    assert 0.15 < views["fc0.weight"].std() < 0.26  # √(2/48) ≈ 0.204


def test_mlp_class_subset() -> None:
    task = MLPTask(hidden=(8,), class_subset=3, batch_size=200)
    opt = task.sample(gen(0), B)
    class_map = opt.instance_data["class_map"]
    assert class_map.shape == (B, 10)
    assert ((class_map >= 0).sum(1) == 3).all()
    assert opt.groups[-1].shape == (3,)
    params = opt.init(gen(1))
    idx = opt.sample_batch(gen(2))
    labels = task.data.train_y[idx]
    for b in range(B):
        members = (class_map[b] >= 0).nonzero().squeeze(1)
        assert torch.isin(labels[b], members).all()
        assert len(labels[b].unique()) == 3
        net = reference_mlp(opt, params, b, nn.ReLU())
        keep = torch.isin(task.data.train_y, members)
        with torch.no_grad():
            ref_obj = F.cross_entropy(net(task.data.train_x[keep]),
                                      class_map[b, task.data.train_y[keep]])
            ref = F.cross_entropy(net(task.data.train_x[idx[b]]), class_map[b, labels[b]])
        torch.testing.assert_close(opt.objective(params)[b], ref_obj, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(opt.loss(params, idx)[b], ref, rtol=1e-5, atol=1e-5)


def test_mlp_objective_size_and_chunking() -> None:
    task = MLPTask(hidden=(8,), objective_size=300)
    opt = task.sample(gen(0), B)
    params = opt.init(gen(1))
    assert opt._obj_x.shape == (300, 48)
    full = MLPTask(hidden=(8,)).sample(gen(0), B)
    reference = full.objective(params)
    full._chunk_floats = 1000  # many small chunks must give the same mean
    torch.testing.assert_close(full.objective(params), reference, rtol=1e-5, atol=1e-6)


def test_mlp_objective_without_autograd_reuses_one_buffer() -> None:
    """The no-grad objective writes its first layer into a kept buffer: the values equal
    the autograd path's, across calls and chunk sizes; pickles leave it out."""
    opt = MLPTask(hidden=(16, 8)).sample(gen(0), B)
    p1, p2 = opt.init(gen(1)), opt.init(gen(2))
    ref1, ref2 = opt.objective(p1), opt.objective(p2)  # autograd on: no buffer
    assert "_buffer" not in opt.__dict__
    with torch.no_grad():
        first, second, again = opt.objective(p1), opt.objective(p2), opt.objective(p1)
        buffer = opt._buffer
        opt._chunk_floats = 1000  # chunks of 62 and a shorter last one share the block
        chunked = opt.objective(p2)
        assert opt._buffer is buffer
    for got, want in ((first, ref1), (second, ref2), (again, ref1), (chunked, ref2)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert "_buffer" not in pickle.loads(pickle.dumps(opt)).__dict__
    # with autograd on, the objective stays differentiable (meta-losses on f use it)
    leaf = p1.clone().requires_grad_(True)
    opt.objective(leaf).sum().backward()
    net = reference_mlp(opt, p1, 1, nn.ReLU())
    F.cross_entropy(net(opt.data.train_x), opt.data.train_y).backward()
    g = unflatten(leaf.grad, opt.groups)
    torch.testing.assert_close(g["fc0.weight"][1], net[0].weight.grad, rtol=1e-4, atol=1e-6)


# -- CNN ---------------------------------------------------------------------------------

def reference_cnn(opt, params: torch.Tensor, b: int, tokens, act) -> nn.Sequential:
    p = unflatten(params, opt.groups)
    layers: list[nn.Module] = []
    convs = fcs = 0
    n_f = tokens.count("f")
    for tok in tokens:
        if tok == "c":
            w = p[f"conv{convs}.weight"][b]
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(p[f"conv{convs}.bias"][b])
            layers += [conv, act]
            convs += 1
        elif tok == "p":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            if fcs == 0:
                layers.append(nn.Flatten())
            w = p[f"fc{fcs}.weight"][b]
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(p[f"fc{fcs}.bias"][b])
            layers.append(lin)
            if fcs < n_f - 1:
                layers.append(act)
            fcs += 1
    return nn.Sequential(*layers)


def odd_images() -> Dataset:
    """3-channel 5x5 images: pools of odd sizes exercise ceil_mode ('SAME')."""
    g = gen(11)
    return Dataset(torch.randn(40, 75, generator=g), torch.randint(0, 4, (40,), generator=g),
                   torch.randn(10, 75, generator=g), torch.randint(0, 4, (10,), generator=g),
                   num_classes=4, image_shape=(3, 5, 5), name="odd")


@pytest.mark.parametrize("dataset,arch,act", [
    ("digits", "c-c-p-f", "relu"),
    ("digits", "c-c-p-c-c-p-f-f", "tanh"),
    ("odd", "c-p-c-p-f-f", "sigmoid"),
    ("odd", "p-f", "relu"),
    ("odd", "f-f", "elu"),
])
def test_cnn_matches_nn_modules(dataset: str, arch: str, act: str) -> None:
    data = odd_images() if dataset == "odd" else dataset
    task = CNNTask(data, arch=arch, channels=3, hidden=5, activation=act, batch_size=6,
                   init_scale=0.2)
    opt = task.sample(gen(0), B)
    params = opt.init(gen(1))
    idx = opt.sample_batch(gen(2))
    d = task.data
    modules = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "elu": nn.ELU()}
    loss, objective = opt.loss(params, idx), opt.objective(params)
    for b in range(B):
        net = reference_cnn(opt, params, b, parse_arch(arch), modules[act])
        images = d.train_x.reshape(-1, *d.image_shape)
        with torch.no_grad():
            ref = F.cross_entropy(net(images[idx[b]]), d.train_y[idx[b]])
            ref_obj = F.cross_entropy(net(images), d.train_y)
        torch.testing.assert_close(loss[b], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(objective[b], ref_obj, rtol=1e-5, atol=1e-5)


def test_cnn_defaults_follow_rnnprop() -> None:
    task = CNNTask()
    opt = task.sample(gen(0), 1)
    shapes = {g.name: g.shape for g in opt.groups}
    assert shapes["conv0.weight"] == (16, 1, 3, 3) and shapes["conv1.weight"] == (16, 16, 3, 3)
    assert shapes["fc0.weight"] == (10, 16 * 4 * 4)
    deep = CNNTask(arch="c-c-p-c-c-p-f-f").sample(gen(0), 1)
    shapes = {g.name: g.shape for g in deep.groups}
    assert shapes["conv2.weight"] == (32, 16, 3, 3)
    assert shapes["fc0.weight"] == (64, 32 * 2 * 2) and shapes["fc1.weight"] == (10, 64)


# -- LSTM --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_matches_nn_lstm(num_layers: int) -> None:
    fam = LSTMSineFamily(hidden=6, num_layers=num_layers, batch_size=5, eval_size=7)
    opt = fam.sample(gen(0), B)
    params = opt.init(gen(1))
    x, y = opt.sample_batch(gen(2))
    assert x.shape == (B, 5, 10) and y.shape == (B, 5)
    loss, objective = opt.loss(params, (x, y)), opt.objective(params)
    p = unflatten(params, opt.groups)
    for b in range(B):
        lstm = nn.LSTM(1, 6, num_layers=num_layers, batch_first=True)
        out = nn.Linear(6, 1)
        with torch.no_grad():
            for k in range(num_layers):
                getattr(lstm, f"weight_ih_l{k}").copy_(p[f"lstm{k}.weight_ih"][b])
                getattr(lstm, f"weight_hh_l{k}").copy_(p[f"lstm{k}.weight_hh"][b])
                getattr(lstm, f"bias_ih_l{k}").copy_(p[f"lstm{k}.bias"][b])
                getattr(lstm, f"bias_hh_l{k}").zero_()
            out.weight.copy_(p["out.weight"][b])
            out.bias.copy_(p["out.bias"][b])

            def mse(xs, ys, lstm=lstm, out=out):
                h, _ = lstm(xs.unsqueeze(2))
                return (out(h[:, -1]).squeeze(1) - ys).square().mean()

            ref = mse(x[b], y[b])
            ref_obj = mse(opt.instance_data["eval_x"][b], opt.instance_data["eval_y"][b])
        torch.testing.assert_close(loss[b], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(objective[b], ref_obj, rtol=1e-5, atol=1e-5)


def test_lstm_sequences_are_sines() -> None:
    fam = LSTMSineFamily(noise_std=0.0, batch_size=256)
    opt = fam.sample(gen(0), 2)
    x, y = opt.sample_batch(gen(1))
    f = torch.cat([x, y.unsqueeze(2)], dim=2).double()  # f(0..10), noiseless
    assert f.abs().max() <= 10
    # a sampled sinusoid satisfies f(k+1) + f(k-1) = 2 cos(ω) f(k) for one ω per sequence
    ratio = (f[..., 2:] + f[..., :-2]) / f[..., 1:-1]
    ok = f[..., 1:-1].abs().min(-1).values > 0.5  # avoid dividing by near-zeros
    spread = ratio[ok].max(-1).values - ratio[ok].min(-1).values
    assert ok.sum() > 100 and spread.max() < 1e-3
    assert ratio[ok].mean(-1).min() >= -1e-3  # 2 cos ω >= 0 for ω in [0, π/2]
    noisy, _ = LSTMSineFamily().sample(gen(0), 1).sample_batch(gen(1))
    assert noisy.shape == (1, 128, 10)


# -- bad arguments -----------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: MLPTask(activation="swish"), "swish"),
    (lambda: MLPTask(hidden=(0,)), "hidden"),
    (lambda: MLPTask(batch_size=0), "batch_size"),
    (lambda: MLPTask(class_subset=11), "class_subset"),
    (lambda: MLPTask(dataset="imagenet"), "imagenet"),
    (lambda: MLPTask(dataset=3), "dataset"),
    (lambda: CNNTask(arch="c-x-f"), "c-x-f"),
    (lambda: CNNTask(arch="f-c"), "f-c"),
    (lambda: CNNTask(arch="c-c-p"), "c-c-p"),
    (lambda: CNNTask(arch=""), "arch"),
    (lambda: CNNTask(channels=-1), "channels"),
    (lambda: CNNTask(activation="gelu"), "gelu"),
    (lambda: CNNTask(dataset="mnist1d"), "image"),
    (lambda: QuadraticFamily(dim=0), "dim"),
    (lambda: QuadraticFamily(data_dist="cauchy"), "cauchy"),
    (lambda: LogisticRegressionFamily(dim=-2), "dim"),
    (lambda: RobustLinearRegressionFamily(c=0.0), "c must"),
    (lambda: LSTMSineFamily(hidden=0), "hidden"),
    (lambda: LSTMSineFamily(noise_std=-1.0), "noise_std"),
    (lambda: RandomScaling(QuadraticFamily(), L=-1.0), "L"),
    (lambda: ConvexCombination(QuadraticFamily(), dim=0), "dim"),
    (lambda: RandomScaling("mlp"), "TaskFamily"),
    (lambda: QuadraticFamily().sample(gen(0), 0), "num_instances"),
    (lambda: MLPTask().sample(gen(0), -1), "num_instances"),
])
def test_bad_arguments(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# -- select: a grid of copies of the same problems ------------------------------------------
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_select_repeats_instances_exactly(name):
    family = FAMILIES[name]()
    gen = torch.Generator().manual_seed(0)
    problem = family.sample(gen, 3)
    x = problem.init(gen)
    index = torch.tensor([2, 0, 2, 1])
    chosen = problem.select(index)
    assert chosen.num_instances == 4 and problem.num_instances == 3
    torch.testing.assert_close(chosen.objective(x[index]), problem.objective(x)[index])
    with pytest.raises(ValueError, match="out of range"):
        problem.select(torch.tensor([3]))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_concat_of_per_seed_draws_matches_each_draw(name):
    family = FAMILIES[name]()
    parts = [family.sample(torch.Generator().manual_seed(s), 1) for s in (5, 6, 7)]
    xs = [p.init(torch.Generator().manual_seed(s)) for p, s in zip(parts, (5, 6, 7), strict=True)]
    joined = parts[0].concat(parts[1:])
    assert joined.num_instances == 3
    expected = torch.cat([p.objective(x) for p, x in zip(parts, xs, strict=True)])
    torch.testing.assert_close(joined.objective(torch.cat(xs)), expected)
