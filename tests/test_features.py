"""Tests for optenv.features: every feature set against a literal reference.

The references below loop over time and apply the papers' formulas one term at a
time in numpy float64, independently of the ring-buffer/gather implementation.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from optenv.features import (
    FEATURES,
    FeatureSet,
    LiMalikState,
    feature_names,
    make_features,
)
from optenv.inner import sanitize_features

ALL = ["li_malik_obs", "li_malik_state", "gradient", "l2l", "adam", "momentum"]
DIMS = {"li_malik_obs": 3, "li_malik_state": 75, "gradient": 1, "l2l": 2, "adam": 2,
        "momentum": 7}


# ----------------------------------------------------------------------------- helpers


def sequence(T: int, B: int = 2, n: int = 3, seed: int = 0,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """Random iterates (T, B, n), gradients (T, B, n) and losses (T, B).

    Losses have random signs and |f| in [0.5, 2], so relative changes are well defined.
    """
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, B, n, generator=gen, dtype=torch.float64).cumsum(0) * 0.3
    gs = torch.randn(T, B, n, generator=gen, dtype=torch.float64)
    mags = 0.5 + 1.5 * torch.rand(T, B, generator=gen, dtype=torch.float64)
    signs = torch.where(torch.rand(T, B, generator=gen) < 0.2, -1.0, 1.0).double()
    return xs.to(dtype), gs.to(dtype), (mags * signs).to(dtype)


def run(fs: FeatureSet, xs: torch.Tensor, gs: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """Features at every step: (T, B, n, dim)."""
    state = fs.init(xs[0], gs[0], ls[0])
    out = [fs.compute(state)]
    for t in range(1, xs.shape[0]):
        state = fs.update(state, xs[t], gs[t], ls[t])
        out.append(fs.compute(state))
    return torch.stack(out)


def ref_psi(xs: np.ndarray, gs: np.ndarray, fs: np.ndarray) -> np.ndarray:
    T, B, n = xs.shape
    out = np.zeros((T, B, n, 3))
    for t in range(T):
        if t >= 1:
            out[t, :, :, 0] = ((fs[t] - fs[t - 1]) / fs[t - 1])[:, None]
            out[t, :, :, 2] = (np.abs(xs[max(t - 1, 1)] - xs[max(t - 2, 0)])
                               / (np.abs(xs[t] - xs[t - 1]) + 0.1))
        out[t, :, :, 1] = gs[t] / (np.abs(gs[max(t - 1, 0)]) + 1)
    return out


def ref_phi(xs: np.ndarray, gs: np.ndarray, fs: np.ndarray) -> np.ndarray:
    T, B, n = xs.shape

    def avg(seq: np.ndarray, i: int) -> np.ndarray:
        assert i >= 0
        return seq[max(i - 2, 0):i + 1].mean(0)

    out = np.zeros((T, B, n, 75))
    for t in range(T):
        col = 0
        for i in range(25):
            if t - 5 * (i + 1) >= 0:
                fb = avg(fs, t - 5 * (i + 1))
                out[t, :, :, col] = ((avg(fs, t - 5 * i) - fb) / fb)[:, None]
            col += 1
        for i in range(26):
            if t - 5 * i >= 0:
                ref = avg(gs, max(t - 5 * (i + 1), t % 5))
                out[t, :, :, col] = avg(gs, t - 5 * i) / (np.abs(ref) + 1)
            col += 1
        for i in range(24):
            if t - 5 * (i + 1) >= 0:
                num = np.abs(avg(xs, max(t - 5 * (i + 1), t % 5 + 5))
                             - avg(xs, max(t - 5 * (i + 2), t % 5)))
                den = np.abs(avg(xs, t - 5 * i) - avg(xs, t - 5 * (i + 1))) + 0.1
                out[t, :, :, col] = num / den
            col += 1
        assert col == 75
    return out


def ref_l2l_scalar(g: float, p: float = 10.0) -> tuple[float, float]:
    if abs(g) >= math.exp(-p):
        return math.log(abs(g)) / p, float(np.sign(g))
    return -1.0, math.exp(p) * g


def ref_adam(gs: np.ndarray, b1: float = 0.95, b2: float = 0.95,
             eps: float = 1e-8) -> np.ndarray:
    m = np.zeros_like(gs[0])
    v = np.zeros_like(gs[0])
    out = []
    for t in range(gs.shape[0]):
        k = t + 1  # Adam's step count: the gradient at t = 0 is update 1
        m = b1 * m + (1 - b1) * gs[t]
        v = b2 * v + (1 - b2) * gs[t] ** 2
        m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
        out.append(np.stack([m_hat / (np.sqrt(v_hat) + eps),
                             gs[t] / (np.sqrt(v_hat) + eps)], -1))
    return np.stack(out)


def ref_momentum(xs: np.ndarray, gs: np.ndarray, decays: tuple[float, ...]) -> np.ndarray:
    emas = [np.zeros_like(gs[0]) for _ in decays]
    out = []
    for t in range(gs.shape[0]):
        emas = [b * a + (1 - b) * gs[t] for b, a in zip(decays, emas, strict=True)]
        out.append(np.stack([gs[t], xs[t], *emas], -1))
    return np.stack(out)


def np64(*ts: torch.Tensor) -> list[np.ndarray]:
    return [t.double().numpy() for t in ts]


# ---------------------------------------------------------------------------- registry


def test_registry_names_and_dims() -> None:
    assert feature_names() == ALL
    assert set(FEATURES) == set(ALL)
    for name in ALL:
        fs = make_features(name)
        assert isinstance(fs, FeatureSet)
        assert fs.name == name
        assert fs.dim == DIMS[name]


def test_make_features_unknown_name() -> None:
    with pytest.raises(ValueError, match="no_such_features") as info:
        make_features("no_such_features")
    for name in ALL:  # the error lists the known names
        assert name in str(info.value)


def test_constructor_kwargs_and_validation() -> None:
    assert make_features("l2l", p=5.0).p == 5.0
    assert make_features("momentum", decays=(0.9, 0.99)).dim == 4
    fs = make_features("adam", beta1=0.9, beta2=0.999, eps=1e-6)
    assert (fs.beta1, fs.beta2, fs.eps) == (0.9, 0.999, 1e-6)
    with pytest.raises(ValueError, match="p must be"):
        make_features("l2l", p=0.0)
    with pytest.raises(ValueError, match="decays"):
        make_features("momentum", decays=())
    with pytest.raises(ValueError, match="beta1"):
        make_features("adam", beta1=1.0)


def test_bad_input_shapes() -> None:
    fs = make_features("li_malik_obs")
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="grad"):
        fs.init(x, torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="loss"):
        fs.init(x, torch.zeros(2, 3), torch.zeros(3))


# --------------------------------------------------------------------- shapes, dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_state(name: str, dtype: torch.dtype) -> None:
    B, n = 2, 5
    fs = make_features(name)
    xs, gs, ls = sequence(8, B, n, dtype=dtype)
    # loss given in another dtype is cast to x's dtype
    state = fs.init(xs[0], gs[0], ls[0].float())
    for t in range(1, 8):
        state = fs.update(state, xs[t], gs[t], ls[t])
        out = fs.compute(state)
        assert out.shape == (B, n, fs.dim)
        assert out.dtype == dtype
    assert state["t"].dtype == torch.long
    assert_close(state["t"], torch.full((B,), 7))
    for key, value in state.items():
        assert isinstance(value, torch.Tensor), key
        assert value.shape[0] == B, key


@pytest.mark.parametrize("name", ALL)
def test_float32_matches_float64(name: str) -> None:
    fs = make_features(name)
    xs, gs, ls = sequence(40, 2, 3, seed=3)
    ls = ls.abs()  # keep relative loss changes well conditioned
    out64 = run(fs, xs, gs, ls)
    out32 = run(fs, xs.float(), gs.float(), ls.float())
    assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_state_survives_serialization(name: str) -> None:
    """State is plain tensors: a torch.save/torch.load round trip continues identically."""
    fs = make_features(name)
    xs, gs, ls = sequence(12, seed=4)
    state = fs.init(xs[0], gs[0], ls[0])
    for t in range(1, 6):
        state = fs.update(state, xs[t], gs[t], ls[t])
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    for t in range(6, 12):
        state = fs.update(state, xs[t], gs[t], ls[t])
        loaded = fs.update(loaded, xs[t], gs[t], ls[t])
    assert_close(fs.compute(loaded), fs.compute(state), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_compute_is_new_means_unshared(name: str) -> None:
    """A set that promises fresh outputs (they are sanitized in place) shares no memory
    with its state or with its previous output; the others are sanitized on a copy."""
    fs = make_features(name)
    xs, gs, ls = sequence(4, seed=5)
    state = fs.init(xs[0], gs[0], ls[0])
    for t in range(1, 4):
        state = fs.update(state, xs[t], gs[t], ls[t])
    first, second = fs.compute(state), fs.compute(state)
    held = [v.untyped_storage().data_ptr() for v in state.values()]
    # the flag is False only where it must be: compute() hands out a view of the state
    assert fs.compute_is_new == (first.untyped_storage().data_ptr() not in held)
    if not fs.compute_is_new:
        return
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    before = {k: v.clone() for k, v in state.items()}
    sanitize_features(first.fill_(float("nan")), inplace=True)
    assert torch.all(first == 0)
    for key, value in state.items():
        assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)
    assert_close(fs.compute(state), second, rtol=0, atol=0)


# ------------------------------------------------------------------ Li & Malik Psi


def test_psi_hand_computed() -> None:
    # one instance, one coordinate: x = 1, 1.5, 1.25; g = 2, -1, 0.5; f = 4, 2, 3
    x = torch.tensor([1.0, 1.5, 1.25], dtype=torch.float64).view(3, 1, 1)
    g = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64).view(3, 1, 1)
    f = torch.tensor([4.0, 2.0, 3.0], dtype=torch.float64).view(3, 1)
    out = run(make_features("li_malik_obs"), x, g, f)[:, 0, 0]
    expected = torch.tensor([
        [0.0, 2 / 3, 0.0],                  # t=0: 2/(|2|+1); t-1 undefined -> 0
        [-0.5, -1 / 3, 0.5 / 0.6],          # t=1: (2-4)/4, -1/(|2|+1), |x1-x0|/(|x1-x0|+.1)
        [0.5, 0.25, 0.5 / 0.35],            # t=2: (3-2)/2, .5/(|-1|+1), |x1-x0|/(|x2-x1|+.1)
    ], dtype=torch.float64)
    assert_close(out, expected)


def test_psi_matches_reference() -> None:
    xs, gs, ls = sequence(15, seed=1)
    out = run(make_features("li_malik_obs"), xs, gs, ls)
    assert_close(out, torch.from_numpy(ref_psi(*np64(xs, gs, ls))))
    # zero rule at t = 0
    assert torch.all(out[0, :, :, 0] == 0) and torch.all(out[0, :, :, 2] == 0)
    assert torch.all(out[1:, :, :, 2] != 0)


# ------------------------------------------------------------------ Li & Malik Phi


def test_phi_hand_computed() -> None:
    # x^s = s, g^s = 1, f^s = s + 1 on one coordinate, checked at t = 5 and t = 6.
    T = 7
    s = torch.arange(T, dtype=torch.float64)
    out = run(make_features("li_malik_state"), s.view(T, 1, 1), torch.ones(T, 1, 1,
              dtype=torch.float64), (s + 1).view(T, 1))[:, 0, 0]
    for t, obj0, it0 in [
        # f̄(5) = 5, f̄(0) = 1; x̄(5) = 4, x̄(0) = 0 -> |4 - 0| / (|4 - 0| + .1)
        (5, (5 - 1) / 1, 4 / 4.1),
        # f̄(6) = 6, f̄(1) = 1.5; x̄(6) = 5, x̄(1) = .5 -> |x̄(6) - x̄(1)| / (|x̄(6) - x̄(1)| + .1)
        (6, (6 - 1.5) / 1.5, 4.5 / 4.6),
    ]:
        expected = torch.zeros(75, dtype=torch.float64)
        expected[0] = obj0
        expected[25] = expected[26] = 0.5  # ḡ = 1: 1 / (1 + 1) for i = 0, 1
        expected[51] = it0
        assert_close(out[t], expected)
    expected0 = torch.zeros(75, dtype=torch.float64)
    expected0[25] = 0.5
    assert_close(out[0], expected0)


def test_phi_matches_reference_long() -> None:
    # 280 steps: every look-back (up to t - 130) is exercised and the 131-slot ring
    # buffers wrap around twice.
    xs, gs, ls = sequence(280, seed=2)
    out = run(make_features("li_malik_state"), xs, gs, ls)
    assert_close(out, torch.from_numpy(ref_phi(*np64(xs, gs, ls))))


@pytest.mark.parametrize("t", [0, 1, 2, 4, 5, 6, 9, 10, 11, 124, 125, 129, 130, 131, 140])
def test_phi_zero_pattern(t: int) -> None:
    xs, gs, ls = sequence(t + 1, seed=5)
    out = run(make_features("li_malik_state"), xs, gs, ls)[t]
    obj = torch.tensor([t - 5 * (i + 1) >= 0 for i in range(25)])
    grad = torch.tensor([t - 5 * i >= 0 for i in range(26)])
    it = torch.tensor([t - 5 * (i + 1) >= 0 for i in range(24)])
    defined = torch.cat([obj, grad, it])
    assert torch.all(out[..., ~defined] == 0)
    assert torch.all(out[..., defined] != 0)


def test_phi_ring_buffer_slot() -> None:
    """The average at time t sits in slot t mod H (ring buffer, no shifting)."""
    fs = make_features("li_malik_state")
    H = LiMalikState.HISTORY
    assert H >= 131
    xs, gs, ls = sequence(H + 10, seed=6)
    state = fs.init(xs[0], gs[0], ls[0])
    for t in range(1, H + 10):
        before = state["x_avg"].clone()
        state = fs.update(state, xs[t], gs[t], ls[t])
        changed = (state["x_avg"] != before).any(-1).any(0)
        assert changed.nonzero().flatten().tolist() in ([t % H], [])
        assert_close(state["x_avg"][:, t % H], xs[max(t - 2, 0):t + 1].mean(0))


# ----------------------------------------------------------------- gradient-based sets


def test_gradient_matches_input() -> None:
    xs, gs, ls = sequence(6, seed=7)
    assert_close(run(make_features("gradient"), xs, gs, ls), gs.unsqueeze(-1))


def test_l2l_hand_computed() -> None:
    g = torch.tensor([[1.0, -math.exp(-5), 1e-6, 0.0, math.exp(2), -1e-6]],
                     dtype=torch.float64)
    fs = make_features("l2l")
    out = fs.compute(fs.init(torch.zeros_like(g), g, torch.zeros(1, dtype=torch.float64)))
    expected = torch.tensor([[[0.0, 1.0], [-0.5, -1.0], [-1.0, 0.022026465794806716],
                              [-1.0, 0.0], [0.2, 1.0], [-1.0, -0.022026465794806716]]],
                            dtype=torch.float64)
    assert_close(out, expected)


def test_l2l_matches_reference() -> None:
    xs, gs, ls = sequence(5, 2, 4, seed=8)
    # magnitudes from 1e-9 to 1e3 so both branches are used
    scale = torch.logspace(-9, 3, 8, dtype=torch.float64).view(1, 2, 4)
    gs = gs * scale
    out = run(make_features("l2l"), xs, gs, ls)
    ref = [[[ref_l2l_scalar(v) for v in row] for row in step] for step in gs.tolist()]
    assert_close(out, torch.tensor(ref, dtype=torch.float64))


@settings(max_examples=60, derandomize=True, deadline=None)
@given(g=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
       p=st.sampled_from([1.0, 3.0, 10.0]))
def test_l2l_property(g: float, p: float) -> None:
    fs = make_features("l2l", p=p)
    gt = torch.tensor([[g]], dtype=torch.float64)
    out = fs.compute(fs.init(torch.zeros_like(gt), gt, torch.zeros(1, dtype=torch.float64)))
    assert_close(out[0, 0], torch.tensor(ref_l2l_scalar(g, p), dtype=torch.float64))


def test_adam_hand_computed() -> None:
    # g = 2 then -1, beta = 0.95: m = .1, v = .2 (t'=1) -> m̂ = 2, v̂ = 4;
    # m = .045, v = .24 (t'=2) -> m̂ = .045/.0975, v̂ = .24/.0975
    g = torch.tensor([2.0, -1.0], dtype=torch.float64).view(2, 1, 1)
    out = run(make_features("adam"), torch.zeros_like(g), g,
              torch.zeros(2, 1, dtype=torch.float64))[:, 0, 0]
    root = math.sqrt(0.24 / 0.0975) + 1e-8
    expected = torch.tensor([[2 / (2 + 1e-8), 2 / (2 + 1e-8)],
                             [0.045 / 0.0975 / root, -1 / root]], dtype=torch.float64)
    assert_close(out, expected)
    assert_close(out[1], torch.tensor([0.294174200832276, -0.6373774351365983],
                                      dtype=torch.float64))


@pytest.mark.parametrize("betas", [(0.95, 0.95), (0.9, 0.999)])
def test_adam_matches_reference(betas: tuple[float, float]) -> None:
    xs, gs, ls = sequence(60, seed=9)
    fs = make_features("adam", beta1=betas[0], beta2=betas[1])
    out = run(fs, xs, gs, ls)
    assert_close(out, torch.from_numpy(ref_adam(gs.numpy(), *betas)))


@pytest.mark.parametrize("decays", [(0.5, 0.9, 0.99, 0.999, 0.9999), (0.0, 0.7)])
def test_momentum_matches_reference(decays: tuple[float, ...]) -> None:
    xs, gs, ls = sequence(40, seed=10)
    out = run(make_features("momentum", decays=decays), xs, gs, ls)
    assert out.shape[-1] == 2 + len(decays)
    assert_close(out, torch.from_numpy(ref_momentum(xs.numpy(), gs.numpy(), decays)))
    # t = 0, no bias correction: the averages are (1 - beta) g^0
    assert_close(out[0, ..., 2], (1 - decays[0]) * gs[0])


# ----------------------------------------------------------------------- reset_where


@pytest.mark.parametrize(("name", "kwargs"), [(name, {}) for name in ALL] + [
    ("li_malik_obs", {"grad_scale": "adagrad"}), ("li_malik_state", {"grad_scale": "adagrad"})])
def test_reset_where_restarts_only_masked(name: str, kwargs: dict) -> None:
    B, n, T1, T2 = 3, 4, 137, 12
    fs = make_features(name, **kwargs)
    xs, gs, ls = sequence(T1 + T2, B, n, seed=11)
    rx, rg, rl = sequence(T2, B, n, seed=12)  # the restarted instance's new episode
    full = run(fs, xs, gs, ls)  # uninterrupted run of all instances
    fresh = run(fs, rx[:, 1:2], rg[:, 1:2], rl[:, 1:2])  # instance 1 started afresh

    state = fs.init(xs[0], gs[0], ls[0])
    for t in range(1, T1):
        state = fs.update(state, xs[t], gs[t], ls[t])
    before = {k: v.clone() for k, v in state.items()}
    mask = torch.tensor([False, True, False])
    state = fs.reset_where(state, mask, rx[0], rg[0], rl[0])

    assert state["t"].tolist() == [T1 - 1, 0, T1 - 1]
    for key, value in state.items():
        assert_close(value[~mask], before[key][~mask], rtol=0, atol=0)
    for k in range(T2):
        if k > 0:
            x = torch.where(mask[:, None], rx[k], xs[T1 - 1 + k])
            g = torch.where(mask[:, None], rg[k], gs[T1 - 1 + k])
            f = torch.where(mask, rl[k], ls[T1 - 1 + k])
            state = fs.update(state, x, g, f)
        out = fs.compute(state)
        assert_close(out[~mask], full[T1 - 1 + k][~mask])
        assert_close(out[mask], fresh[k])


def test_li_malik_state_lockstep_path_equals_the_per_instance_path() -> None:
    """Instances at one step take compute()'s lockstep path; a batch whose instances
    are at different steps takes the general one. Both give the same numbers."""
    fs = make_features("li_malik_state")
    xs, gs, ls = sequence(160, B=1, n=4, seed=11)
    states, alone = {}, {}
    state = fs.init(xs[0], gs[0], ls[0])
    for t in range(1, 160):
        state = fs.update(state, xs[t], gs[t], ls[t])
        if t in (1, 4, 5, 9, 57, 126, 131, 159):
            states[t] = {k: v.clone() for k, v in state.items()}
            alone[t] = fs.compute(state)  # one instance: lockstep
    for pair in [(1, 57), (4, 131), (5, 159), (9, 126)]:
        mixed = {k: torch.cat([states[u][k] for u in pair]) for k in states[pair[0]]}
        out = fs.compute(mixed)
        for b, u in enumerate(pair):
            assert torch.equal(out[b], alone[u][0]), (pair, u)


# ------------------------------------------------------------------- degenerate input


@pytest.mark.parametrize("name", ALL)
def test_finite_with_zero_loss_and_zero_gradients(name: str) -> None:
    T, B, n = 20, 2, 3
    fs = make_features(name)
    xs = torch.ones(T, B, n)  # no movement: zero iterate changes
    gs = torch.zeros(T, B, n)
    zero_loss = torch.zeros(T, B)
    jumpy_loss = torch.tensor([0.0, 5.0, 0.0, -3.0, 0.0]).repeat(4)[:, None].expand(T, B)
    for ls in (zero_loss, jumpy_loss):
        out = run(fs, xs, gs, ls)
        assert torch.isfinite(out).all()
    out = run(fs, xs, gs, zero_loss)
    if name in ("li_malik_obs", "li_malik_state", "gradient", "adam"):
        # 0 / floor, 0 / (0 + 1), 0 / (0 + 0.1), 0 / (0 + eps): all exactly zero
        assert torch.all(out == 0)


def test_zero_loss_relative_change_keeps_sign() -> None:
    """0 -> 5 -> 0 -> -3: finite, with the sign of the change (floor is +tiny at 0)."""
    fs = make_features("li_malik_obs")
    ls = torch.tensor([0.0, 5.0, 0.0, -3.0], dtype=torch.float64).view(4, 1)
    out = run(fs, torch.zeros(4, 1, 1, dtype=torch.float64),
              torch.zeros(4, 1, 1, dtype=torch.float64), ls)[:, 0, 0, 0]
    assert out[0] == 0
    assert out[1] > 1e9 and out[3] < -1e9  # divided by the tiny floor, sign kept
    assert_close(out[2], torch.tensor(-1.0, dtype=torch.float64))


# ------------------------------------------------------------ scale-free gradient option


def _instance_rms(gs: torch.Tensor) -> torch.Tensor:
    """The gradient each step over its RMS across the instance's coordinates."""
    return gs / gs.square().mean(-1, keepdim=True).sqrt()


@pytest.mark.parametrize("name", ["li_malik_obs", "li_malik_state"])
def test_instance_rms_features_do_not_depend_on_gradient_scale(name: str) -> None:
    # each instance and step gets its own factor between 1e-9 and 1e3: features stay put,
    # while the paper's features shrink towards 0 with the gradient
    xs, gs, ls = sequence(40, B=3, seed=8)
    gen = torch.Generator().manual_seed(0)
    factor = 10.0 ** (-9 + 12 * torch.rand(40, 3, 1, generator=gen, dtype=torch.float64))
    scaled = make_features(name, grad_scale="instance_rms")
    assert_close(run(scaled, xs, gs * factor, ls), run(scaled, xs, gs, ls))
    paper = make_features(name)
    tiny = run(paper, xs, gs * 1e-9, ls)
    assert not torch.allclose(tiny, run(paper, xs, gs, ls))


def _adagrad(gs: torch.Tensor) -> torch.Tensor:
    """Each gradient over the root of its coordinate's running sum of squares (T, B, n)."""
    return gs / gs.square().cumsum(0).sqrt()


@pytest.mark.parametrize(("grad_scale", "scaled"), [("instance_rms", _instance_rms),
                                                    ("adagrad", _adagrad)])
@pytest.mark.parametrize(("name", "ref", "T"), [("li_malik_obs", ref_psi, 15),
                                                ("li_malik_state", ref_phi, 140)])
def test_scaled_gradients_give_the_paper_formula(grad_scale, scaled, name, ref, T) -> None:
    """Each ``grad_scale`` is the paper's formula applied to the scaled gradients."""
    xs, gs, ls = sequence(T, seed=7)
    out = run(make_features(name, grad_scale=grad_scale), xs, gs, ls)
    assert_close(out, torch.from_numpy(ref(*np64(xs, scaled(gs), ls))))


@pytest.mark.parametrize("name", ["li_malik_obs", "li_malik_state"])
def test_adagrad_scale_is_per_coordinate_scale_free_and_bounded(name: str) -> None:
    # a fixed factor per coordinate (1e-9 .. 1e3) cancels in g/√Σg², as AdaGrad's step
    # does not depend on it; the paper's features change
    xs, gs, ls = sequence(40, B=3, seed=10)
    gen = torch.Generator().manual_seed(1)
    factor = 10.0 ** (-9 + 12 * torch.rand(1, 3, gs.shape[-1], generator=gen, dtype=torch.float64))
    fs = make_features(name, grad_scale="adagrad")
    out = run(fs, xs, gs * factor, ls)
    assert_close(out, run(fs, xs, gs, ls))
    assert not torch.allclose(run(make_features(name), xs, gs * factor, ls), out)
    # ĝ_0 = sign(g_0); |ĝ_t| <= 1, so the gradient features stay within [-1, 1]
    col = 1 if name == "li_malik_obs" else LiMalikState.N_OBJECTIVE
    assert_close(out[0, ..., col], torch.sign(gs[0]) / 2)
    grad_cols = out[..., col:col + (1 if name == "li_malik_obs" else LiMalikState.N_GRADIENT)]
    assert grad_cols.abs().max() <= 1.0


def test_adagrad_scale_zero_gradient_state_and_float32() -> None:
    fs = make_features("li_malik_obs", grad_scale="adagrad")
    T, B, n = 6, 2, 3
    gs = torch.randn(T, B, n, generator=torch.Generator().manual_seed(2))
    gs[:, 1, 0] = 0.0  # a coordinate with no gradient yet: zero feature, no NaN
    gs[:3, 0, 2] = 0.0  # ... and one whose gradient starts later: sign at its first
    out = run(fs, torch.zeros(T, B, n), gs, torch.ones(T, B))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.all(out[:, 1, 0, 1] == 0)
    assert out[3, 0, 2, 1] == torch.sign(gs[3, 0, 2])  # ĝ = ±1, previous ĝ was 0
    state = fs.init(torch.zeros(B, n), gs[0], torch.ones(B))
    assert_close(state["g_sq"], gs[0].square())
    assert "g_sq" not in make_features("li_malik_obs").init(torch.zeros(B, n), gs[0],
                                                             torch.ones(B))


def test_instance_rms_zero_gradient_and_validation() -> None:
    fs = make_features("li_malik_obs", grad_scale="instance_rms")
    T, B, n = 5, 2, 3
    gs = torch.randn(T, B, n, generator=torch.Generator().manual_seed(1))
    gs[:, 1] = 0.0  # instance 1 sits at a stationary point: zero features, no NaN
    out = run(fs, torch.zeros(T, B, n), gs, torch.ones(T, B))
    assert torch.all(out[:, 1, :, 1] == 0)
    assert torch.isfinite(out).all()
    assert out[:, 0, :, 1].abs().max() > 0.1
    for name in ("li_malik_obs", "li_malik_state"):
        with pytest.raises(ValueError, match=r"grad_scale must be one of .*'rms'"):
            make_features(name, grad_scale="rms")
