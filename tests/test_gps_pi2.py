"""gps/pi2.py: path-integral weights under a KL bound, costs-to-go, the gain update."""

from __future__ import annotations

import math

import pytest
import torch

from gps.pi2 import costs_to_go, pi2_update, pi2_weights

F64 = torch.float64


def _kl(w: torch.Tensor) -> torch.Tensor:
    return (w * (w.shape[-1] * w).log()).sum(-1)


@pytest.mark.parametrize("kl", [0.01, 0.3, 1.0, 2.0])
def test_weights_meet_the_kl_bound_and_favour_cheap_samples(kl: float) -> None:
    costs = torch.randn(3, 40, generator=torch.Generator().manual_seed(0), dtype=F64) * 7 + 3
    w, got = pi2_weights(costs, kl)
    assert torch.allclose(w.sum(-1), torch.ones(3, dtype=F64))
    assert torch.allclose(got, _kl(w))
    assert torch.allclose(got, torch.full((3,), kl, dtype=F64), rtol=1e-6)
    order = costs.argsort(-1)
    assert bool((w.gather(-1, order).diff(dim=-1) <= 1e-15).all())  # cheaper: heavier


def test_weights_are_uniform_for_equal_costs_and_greedy_past_log_m() -> None:
    w, got = pi2_weights(torch.full((5,), 2.0, dtype=F64), 1.0)
    assert torch.allclose(w, torch.full((5,), 0.2, dtype=F64)) and float(got) == 0.0
    # KL from uniform is at most log M: a larger bound puts all weight on the cheapest
    w, got = pi2_weights(torch.tensor([3.0, 1.0, 2.0, 5.0], dtype=F64), 2 * math.log(4))
    assert w.argmax() == 1 and float(w[1]) > 0.999
    assert float(got) <= math.log(4) + 1e-12


def test_weights_name_bad_input() -> None:
    with pytest.raises(ValueError, match="kl must be > 0, got 0"):
        pi2_weights(torch.ones(3), 0)
    with pytest.raises(ValueError, match=r"M >= 2, got \(1,\)"):
        pi2_weights(torch.ones(1), 1.0)
    with pytest.raises(ValueError, match="costs must be finite"):
        pi2_weights(torch.tensor([1.0, math.inf]), 1.0)


def test_costs_to_go_are_the_mean_log_cost_after_each_block_starts() -> None:
    log_f = torch.randn(4, 11, generator=torch.Generator().manual_seed(1), dtype=F64)
    got = costs_to_go(log_f, 4, 10)  # blocks of actions 0-3, 4-7, 8-9
    want = torch.stack([log_f[:, 1:].mean(1), log_f[:, 5:].mean(1), log_f[:, 9:].mean(1)], 1)
    assert torch.allclose(got, want)
    with pytest.raises(ValueError, match=r"log_costs must be \(M, 11\), got \(4, 10\)"):
        costs_to_go(log_f[:, :10], 4, 10)


def test_update_moves_each_block_towards_its_cheaper_perturbations() -> None:
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4000, 3, generator=gen, dtype=F64)
    target = torch.tensor([1.0, -1.0, 0.0], dtype=F64)
    costs = (z - target).square()  # per block: cheapest at z = target
    delta, kl = pi2_update(z, costs, sigma=0.5, kl=0.5)
    assert delta[0] > 0.1 and delta[1] < -0.1 and abs(float(delta[2])) < 0.05
    assert torch.allclose(kl, torch.full((3,), 0.5, dtype=F64), rtol=1e-6)
    with pytest.raises(ValueError, match=r"noise \(4000, 3\) and costs \(4000, 2\) differ"):
        pi2_update(z, costs[:, :2], 0.5, 0.5)
