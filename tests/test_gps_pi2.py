"""gps/pi2.py: path-integral weights under a KL bound, costs-to-go, the gain update."""

from __future__ import annotations

import math

import pytest
import torch

from gps.pi2 import costs_to_go, pi2_update, pi2_weights, rank_divergences

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


def test_masked_samples_get_no_weight_and_m_counts_the_valid_ones() -> None:
    costs = torch.tensor([[1.0, 2.0, 3.0, math.nan], [4.0, 0.0, 1.0, 2.0]], dtype=F64)
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    w, got = pi2_weights(costs, 0.2, valid=valid)
    assert float(w[0, 3]) == 0.0 and float(got[0]) == pytest.approx(0.2, rel=1e-6)
    want, _ = pi2_weights(costs[0, :3], 0.2)  # the same as without the invalid sample
    assert torch.allclose(w[0, :3], want)
    assert torch.equal(w[1], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)) and got[1] == 0
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \(2, 4\)"):
        pi2_weights(costs, 0.2, valid=valid[:, :3])


def test_update_is_centred_so_cost_blind_weights_do_not_move_the_gain() -> None:
    z = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)  # mean 2: a plain Σ w z would move
    delta, kl = pi2_update(z, torch.zeros(3, 1, dtype=F64), sigma=0.5, kl=1.0)
    assert float(delta) == 0.0 and float(kl) == 0.0
    # the worst sample pushes away: only its cost differs, the others' mean is what it left
    delta, _ = pi2_update(z, torch.tensor([[0.0], [0.0], [9.0]], dtype=F64), 0.5, 10.0)
    assert float(delta) == pytest.approx(0.5 * (1.5 - 2.0))


def test_divergence_ranks_worst_on_the_blocks_it_reached_only() -> None:
    # 3 blocks of 4 steps, T = 10; rollout 1 looked cheapest but diverged at step 6
    S = torch.tensor([[-3.0, -2.0, -1.0], [-30.0, -30.0, -30.0], [-5.0, -4.0, -6.0]],
                     dtype=F64)
    at = torch.tensor([11, 6, 11])
    ranked, valid = rank_divergences(S, at, block=4, steps=10)
    assert torch.equal(valid, torch.tensor([[True] * 3, [True, True, False], [True] * 3]))
    assert ranked[1, :2].tolist() == [-2.0, -1.0]  # a decade above the worst finite run
    assert torch.equal(ranked[[0, 2]], S[[0, 2]])
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=F64)
    delta, _ = pi2_update(z, ranked, 0.1, 0.5, valid)
    assert bool((delta[:2] < 0).all())  # away from the diverging perturbation
    # a divergence at step 1 reached block 0 only; all diverged: no finite run to rank by
    ranked, valid = rank_divergences(S, torch.tensor([1, 1, 1]), 4, 10)
    assert valid[:, 0].all() and not valid[:, 1:].any()
    assert torch.equal(ranked, S.amax(0, keepdim=True).expand(3, 3) + 1)
    with pytest.raises(ValueError, match=r"diverged_at must be \(3,\), got \(2,\)"):
        rank_divergences(S, at[:2], 4, 10)
