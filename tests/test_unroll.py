"""The differentiable truncated unroll (agents/unroll.py) that the meta-trainers share."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from agents.unroll import Carry, run_truncations, start, unroll
from optenv.policy import PolicyState, StepPolicy, rollout
from optenv.problems.base import CoordinateGroup
from optenv.problems.quadratic import QuadraticFamily, QuadraticOptimizee
from optenv.registry import task_for


class MomentumNet(nn.Module, StepPolicy):
    """Δ = −η (a·g + b·m), m ← β m + g: a tiny differentiable policy with state."""

    features = "gradient"

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.02, 0.01, 0.5], dtype=dtype))  # η·a, η·b, β

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {"m": torch.zeros(batch, n, dtype=self.w.dtype)}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = features[..., 0].to(self.w.dtype)
        m = self.w[2] * state["m"] + g
        return -(self.w[0] * g + self.w[1] * m), {"m": m}


class TinyLSTM(nn.Module, StepPolicy):
    """A coordinatewise LSTM cell (the shape of L2L's optimizer), for the memory test."""

    features = "l2l"

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.cell = nn.LSTMCell(2, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.2, 0.2, generator=gen)
        self.hidden = hidden

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        z = torch.zeros(batch, n, self.hidden)
        return {"h": z, "c": z.clone()}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        B, n, k = features.shape
        h, c = self.cell(features.reshape(B * n, k),
                         (state["h"].reshape(B * n, -1), state["c"].reshape(B * n, -1)))
        return 0.1 * self.head(h).reshape(B, n), {"h": h.reshape(B, n, -1),
                                                   "c": c.reshape(B, n, -1)}


def quadratic64(B: int = 3, d: int = 4, seed: int = 0) -> tuple[QuadraticOptimizee, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    prob = QuadraticFamily(dim=d).sample(gen, B)
    prob = QuadraticOptimizee(prob.instance_data["W"].double(), prob.instance_data["y"].double(),
                              0.0)
    return prob, torch.randn(B, d, generator=gen, dtype=torch.float64)


def fixed_carry(policy: StepPolicy, prob, x0: Tensor, carry_steps: int = 0):
    """The (detached) carry after ``carry_steps`` steps and the minibatch generator's state."""
    gen = torch.Generator().manual_seed(1)
    carry = start(policy, prob, x0, gen)
    if carry_steps:
        carry = unroll(policy, prob, carry, carry_steps, generator=gen).carry
    return carry, gen.get_state()


def meta_value(policy: StepPolicy, prob, fixed, steps: int, **opts) -> Tensor:
    """Summed meta-loss of one truncation of ``steps`` from the fixed carry."""
    carry, gen_state = fixed
    gen = torch.Generator()
    gen.set_state(gen_state)
    return unroll(policy, prob, carry, steps, generator=gen, **opts).meta_loss.sum()


def finite_difference(policy: MomentumNet, fn, eps: float = 1e-6) -> Tensor:
    grads = torch.zeros_like(policy.w)
    with torch.no_grad():
        for i in range(policy.w.numel()):
            old = policy.w[i].item()
            policy.w[i] = old + eps
            up = fn()
            policy.w[i] = old - eps
            down = fn()
            policy.w[i] = old
            grads[i] = (up - down) / (2 * eps)
    return grads


@pytest.mark.parametrize("meta_loss", ["minibatch", "objective"])
@pytest.mark.parametrize("weighting", ["sum", "final"])
def test_one_truncation_meta_gradient_matches_finite_differences(meta_loss, weighting):
    # with second_order=True the unroll is the exact derivative of the whole computation
    policy, (prob, x0) = MomentumNet(), quadratic64()
    opts = {"meta_loss": meta_loss, "weighting": weighting, "second_order": True}
    fixed = fixed_carry(policy, prob, x0, 3)
    (grad,) = torch.autograd.grad(meta_value(policy, prob, fixed, 5, **opts), policy.w)
    fd = finite_difference(policy, lambda: meta_value(policy, prob, fixed, 5, **opts))
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_first_order_drops_exactly_the_gradient_edges():
    # K = 1: the only gradient is ∇f(θ_t) from the detached carry, so both orders agree
    # with finite differences; K = 4: first order differs from the full derivative
    policy, (prob, x0) = MomentumNet(), quadratic64()
    fixed = fixed_carry(policy, prob, x0)
    fd1 = finite_difference(policy, lambda: meta_value(policy, prob, fixed, 1, second_order=True))
    for order in (False, True):
        (g,) = torch.autograd.grad(meta_value(policy, prob, fixed, 1, second_order=order), policy.w)
        torch.testing.assert_close(g, fd1, rtol=1e-6, atol=1e-8)
    fd4 = finite_difference(policy, lambda: meta_value(policy, prob, fixed, 4, second_order=True))
    (g1,) = torch.autograd.grad(meta_value(policy, prob, fixed, 4, second_order=False), policy.w)
    (g2,) = torch.autograd.grad(meta_value(policy, prob, fixed, 4, second_order=True), policy.w)
    torch.testing.assert_close(g2, fd4, rtol=1e-6, atol=1e-8)
    assert (g1 - fd4).abs().max() > 1e-3 * fd4.abs().max()
    # first order = the derivative with ∇ held fixed: check it by a hand-written unroll
    def manual(w: Tensor) -> Tensor:
        x, m, total = x0.clone(), torch.zeros_like(x0), 0.0
        g = prob.analytic_grad(x)
        for _ in range(4):
            m = w[2] * m + g
            x = x - (w[0] * g + w[1] * m)
            total = total + prob.loss(x).sum()
            g = prob.analytic_grad(x).detach()
        return total
    (g_manual,) = torch.autograd.grad(manual(policy.w), policy.w)
    torch.testing.assert_close(g1, g_manual, rtol=1e-10, atol=1e-12)


def test_weighting_and_losses():
    policy, (prob, x0) = MomentumNet(), quadratic64()
    gen = torch.Generator().manual_seed(0)
    carry = start(policy, prob, x0, gen)
    before = (carry.x.clone(), {k: v.clone() for k, v in carry.feature_state.items()},
              {k: v.clone() for k, v in carry.policy_state.items()})
    summed = unroll(policy, prob, carry, 6, generator=torch.Generator().manual_seed(0))
    final = unroll(policy, prob, carry, 6, generator=torch.Generator().manual_seed(0),
                   weighting="final")
    assert summed.losses.shape == (3, 6) and not summed.losses.requires_grad
    torch.testing.assert_close(summed.meta_loss.detach(), summed.losses.sum(1))
    torch.testing.assert_close(final.meta_loss.detach(), final.losses[:, -1])
    torch.testing.assert_close(summed.losses, final.losses)
    # the input carry is untouched and the output carry holds no graph
    assert carry.t == 0 and summed.carry.t == 6
    torch.testing.assert_close(carry.x, before[0], rtol=0, atol=0)
    for now, then in ((carry.feature_state, before[1]), (carry.policy_state, before[2])):
        assert now.keys() == then.keys()
        for key in now:
            torch.testing.assert_close(now[key], then[key], rtol=0, atol=0)
    for c in (summed.carry,):
        assert not c.x.requires_grad
        assert not any(v.requires_grad for v in (*c.policy_state.values(),
                                                  *c.feature_state.values()))
    with pytest.raises(ValueError, match="weighting"):
        unroll(policy, prob, carry, 2, generator=gen, weighting="mean")
    with pytest.raises(ValueError, match="meta_loss"):
        unroll(policy, prob, carry, 2, generator=gen, meta_loss="test")
    with pytest.raises(ValueError, match="steps"):
        unroll(policy, prob, carry, 0, generator=gen)


def test_transform_maps_each_step_loss_on_both_paths():
    """``transform`` (a log here) applies to every step's ℓ before the weighting; on the
    minibatch path it reuses the step's forward pass and matches the objective path."""
    policy, (prob, x0) = MomentumNet(), quadratic64()  # deterministic: f̂ = f
    carry = start(policy, prob, x0, torch.Generator().manual_seed(0))
    plain = unroll(policy, prob, carry, 5, generator=torch.Generator().manual_seed(0))
    runs = [unroll(policy, prob, carry, 5, generator=torch.Generator().manual_seed(0),
                   meta_loss=m, transform=torch.log) for m in ("minibatch", "objective")]
    grads = []
    for res in runs:
        torch.testing.assert_close(res.losses, plain.losses.log())
        torch.testing.assert_close(res.meta_loss.detach(), plain.losses.log().sum(1))
        (g,) = torch.autograd.grad(res.meta_loss.sum(), policy.w)
        grads.append(g)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="transform must be a callable or None, got 'log'"):
        unroll(policy, prob, carry, 2, generator=torch.Generator().manual_seed(0),
               transform="log")


def test_truncations_reproduce_rollout_on_a_stochastic_problem():
    # same minibatch seed -> the unroll visits the iterates rollout visits
    family, _ = task_for("optenv/MLP-Sigmoid-Digits-v0")
    policy = MomentumNet(torch.float32)
    from optenv.policy import make_problem
    prob, x0 = make_problem(family, [3, 4])
    ref = rollout(policy, prob, 12, x0=x0, minibatch_seed=7)
    res = run_truncations(policy, prob, x0, 12, 5, generator=torch.Generator().manual_seed(7),
                          meta_loss="objective")
    assert [r.losses.shape[1] for r in res] == [5, 5, 2]
    torch.testing.assert_close(torch.cat([r.losses for r in res], 1), ref.objective[:, 1:])
    torch.testing.assert_close(res[-1].carry.x, ref.x)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_is_flat_across_truncations():
    """Peak RSS after 50 truncations is within 10% of the peak after 5.

    torch's CPU allocator is invisible to tracemalloc, so this reads the kernel's peak
    resident set (VmHWM, reset through /proc/self/clear_refs). A control that keeps every
    truncation's graph alive shows the measurement does see growth.
    """
    torch.manual_seed(0)
    policy = TinyLSTM()
    opt = torch.optim.SGD(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    prob = QuadraticFamily(dim=64).sample(gen, 48)
    x0 = prob.init(gen)

    def truncations(count: int, keep: list | None = None) -> None:
        carry: Carry = start(policy, prob, x0, gen)
        for _ in range(count):
            res = unroll(policy, prob, carry, 10, generator=gen)
            opt.zero_grad()
            loss = res.meta_loss.mean()
            if keep is None:
                loss.backward()
            else:
                keep.append(loss)  # leak: the graph stays alive
            opt.step()
            carry = res.carry

    truncations(2)  # warm up allocator and caches
    gc.collect()
    if not _reset_peak():
        pytest.skip("cannot reset the peak RSS counter")
    truncations(5)
    after5 = _rss_kb("VmHWM")
    truncations(50)
    after50 = _rss_kb("VmHWM")
    print(f"peak RSS: {after5} kB after 5, {after50} kB after 50 truncations")
    assert after50 <= 1.1 * after5, (after5, after50)
    # control: keeping each of as many truncations' graphs alive is seen as growth beyond
    # 10% (20 kept graphs, ~90 MB, were not when earlier tests had grown the process)
    kept: list = []
    truncations(50, keep=kept)
    leaked = _rss_kb("VmHWM")
    print(f"control keeping 50 graphs: {leaked} kB")
    assert leaked > 1.1 * after50, (after50, leaked)
    del kept
