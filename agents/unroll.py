"""Differentiable truncated unrolls of a :class:`~optenv.policy.StepPolicy`: the core that
every gradient-based meta-trainer (L2L, RNNprop, Metz et al.) shares.

Andrychowicz et al., "Learning to learn by gradient descent by gradient descent" (2016),
§2 and Figure 2: the optimizer m with parameters φ runs the optimizee,

    θ_{t+1} = θ_t + g_t,   [g_t, h_{t+1}] = m(∇_t, h_t, φ),   ∇_t = ∇_θ f(θ_t),

and is trained on the meta-loss L(φ) = E_f[Σ_{t=1}^T w_t f(θ_t)] (their eq. 3) by
backpropagation through the unrolled computation. "Gradients along the dashed edges are
dropped" (Figure 2): ∂∇_t/∂φ is not propagated, which avoids second derivatives of f
(``second_order=False``, the default here; ``True`` keeps them).

Long horizons are trained by *truncated* backpropagation through time (§3: "the optimizer
is unrolled for 20 steps", of a 100-step horizon; Lv et al. 2017, §5: "we split the 100
steps into 5 periods of 20 steps"): :func:`unroll` runs ``steps`` steps from a
:class:`Carry`, returns the per-instance meta-loss (differentiable w.r.t. the policy's
tensors) and a *detached* carry for the next truncation. Because nothing that crosses a
truncation boundary holds a graph, memory does not grow with the number of truncations.

Time convention, the same as :func:`optenv.policy.rollout`: :func:`start` draws the
minibatch of step 0 at ``x0`` and initializes the features; every unrolled step then
moves ``x ← x + Δx``, draws one fresh minibatch at the new iterate, and pushes its loss
and gradient to the features. With the same generator seed, an unroll therefore visits
exactly the iterates ``rollout`` visits (rollout adds only divergence freezing).

The meta-loss of a truncation from time t is Σ_{s=1}^{K} w_s ℓ(θ_{t+s}) with ℓ the
minibatch loss f̂ (``meta_loss="minibatch"``, L2L's choice; it reuses the minibatch whose
gradient is the next input) or the true objective f (``"objective"``), and w_s = 1
(``weighting="sum"``, L2L eq. 3 with w_t = 1) or w_K = 1, w_s = 0 otherwise
(``weighting="final"``, RNNprop §5). ℓ(θ_t) at the truncation start is left out: it does
not depend on the policy once the carry is detached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from optenv.inner import sanitize_features
from optenv.policy import StepPolicy
from optenv.problems.base import Optimizee

__all__ = ["Carry", "UnrollResult", "detach_carry", "run_truncations", "start", "unroll"]

MetaLoss = Literal["minibatch", "objective"]
Weighting = Literal["sum", "final"]


@dataclass
class Carry:
    """What crosses a truncation boundary; all tensors detached from any graph.

    ``x`` is the iterate ``(B, n)`` at step ``t``; ``feature_state`` already holds the
    minibatch loss and gradient at ``x`` (so the next step's features are ready);
    ``policy_state`` is the policy's recurrent state; ``t`` counts the steps taken
    since :func:`start`.
    """

    x: Tensor
    policy_state: dict[str, Tensor]
    feature_state: dict[str, Tensor]
    t: int


@dataclass
class UnrollResult:
    """One truncation: ``meta_loss`` ``(B,)`` is differentiable w.r.t. the policy's tensors;
    ``losses`` ``(B, steps)`` are the detached ℓ(θ_{t+1}) .. ℓ(θ_{t+K}) (for logging);
    ``carry`` is detached, ready for the next truncation."""

    meta_loss: Tensor
    losses: Tensor
    carry: Carry


def _detach(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in state.items()}


def detach_carry(carry: Carry) -> Carry:
    """A copy of ``carry`` with every tensor detached (no graph crosses the boundary)."""
    return Carry(carry.x.detach(), _detach(carry.policy_state), _detach(carry.feature_state),
                 int(carry.t))


def _loss_and_grad(problem: Optimizee, x: Tensor, batch: Any, *, keep_graph: bool,
                   second_order: bool) -> tuple[Tensor, Tensor]:
    """Minibatch loss ``(B,)`` and gradient ``(B, n)`` at ``x``.

    ``keep_graph``: the returned loss stays attached to ``x``'s graph (it enters the
    meta-loss). ``second_order``: the gradient is itself differentiable (L2L Fig. 2,
    dashed edges kept); otherwise it is a constant.
    """
    if x.requires_grad and (keep_graph or second_order):
        loss = problem.loss(x, batch)
        # Differentiates only back to x, not through the policy; the loss graph is kept
        # for the meta-loss (retain_graph) and, with second_order, for ∂∇/∂φ.
        (grad,) = torch.autograd.grad(loss.sum(), x, create_graph=second_order,
                                      retain_graph=True)
        return loss, grad
    # The loss is not needed with a graph: a separate graph that is freed at once.
    loss, grad = problem.loss_and_grad(x.detach(), batch)
    return loss, grad


def start(policy: StepPolicy, problem: Optimizee, x0: Tensor,
          generator: torch.Generator) -> Carry:
    """The carry at ``t = 0``: draw step 0's minibatch at ``x0``, init features and state.

    ``generator`` draws the minibatches; pass the same generator to every :func:`unroll`
    of the run (as :func:`optenv.policy.rollout` does with its ``minibatch_seed``).
    """
    if not isinstance(policy, StepPolicy):
        raise ValueError(f"policy must be a StepPolicy, got {type(policy).__name__}")
    B, n = problem.num_instances, problem.n
    if x0.shape != (B, n):
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected ({B}, {n})")
    x0 = x0.detach()
    batch = problem.sample_batch(generator)
    loss, grad = problem.loss_and_grad(x0, batch)
    feature_state = policy.make_features().init(x0, grad, loss)
    policy_state = policy.reset(n, problem.groups, B)
    return Carry(x0.clone(), _detach(policy_state), _detach(feature_state), 0)


def unroll(
    policy: StepPolicy,
    problem: Optimizee,
    carry: Carry,
    steps: int,
    *,
    generator: torch.Generator,
    meta_loss: MetaLoss = "minibatch",
    weighting: Weighting = "sum",
    second_order: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> UnrollResult:
    """Run ``policy`` for ``steps`` steps from ``carry``, keeping the graph for the meta-loss.

    ``transform`` (optional, elementwise, e.g. a log) maps each step's ℓ before the
    weighting; on the minibatch loss it reuses the forward pass that gave the gradient.

    Returns the per-instance meta-loss Σ_s w_s ℓ(θ_{t+s}) (see the module docstring),
    the detached per-step losses and the detached carry at ``t + steps``. The caller
    reduces the meta-loss (e.g. ``.mean()``) and calls ``backward``; gradients reach
    whatever tensors ``policy.step`` used that require grad. Divergence is not handled
    here: a non-finite meta-loss is returned as is for the trainer to deal with.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if meta_loss not in ("minibatch", "objective"):
        raise ValueError(f"meta_loss must be 'minibatch' or 'objective', got {meta_loss!r}")
    if weighting not in ("sum", "final"):
        raise ValueError(f"weighting must be 'sum' or 'final', got {weighting!r}")
    if transform is not None and not callable(transform):
        raise ValueError(f"transform must be a callable or None, got {transform!r}")
    if carry.x.shape != (problem.num_instances, problem.n):
        raise ValueError(f"carry.x has shape {tuple(carry.x.shape)}, expected "
                         f"({problem.num_instances}, {problem.n})")
    features = policy.make_features()
    x = carry.x
    # update() may write ring buffers in place: never touch the caller's carry
    fstate = {k: v.clone() for k, v in carry.feature_state.items()}
    pstate = dict(carry.policy_state)
    terms: list[Tensor] = []
    total: Tensor | None = None
    for s in range(steps):
        delta, pstate = policy.step(sanitize_features(features.compute(fstate)), pstate)
        x = x + delta.to(x.dtype)  # θ_{t+1} = θ_t + g_t (L2L eq. 1)
        counts = weighting == "sum" or s == steps - 1
        batch = problem.sample_batch(generator)
        loss, grad = _loss_and_grad(problem, x, batch,
                                    keep_graph=counts and meta_loss == "minibatch",
                                    second_order=second_order)
        if meta_loss == "minibatch":
            term = loss
        else:  # a step that does not count needs no graph through f
            with torch.set_grad_enabled(counts and torch.is_grad_enabled()):
                term = problem.objective(x)
        if transform is not None:
            term = transform(term)
        terms.append(term.detach())
        if counts:
            total = term if total is None else total + term
        if torch.is_grad_enabled() and any(v.requires_grad for v in fstate.values()):
            # in-place ring-buffer writes would corrupt tensors saved for backward
            fstate = {k: v.clone() for k, v in fstate.items()}
        # x keeps its graph (features that read x, e.g. Metz's, are differentiable in it);
        # the loss fed to the features is a constant unless second_order, like ∇.
        fstate = features.update(fstate, x, grad if second_order else grad.detach(),
                                 loss if second_order else loss.detach())
    assert total is not None
    out = Carry(x.detach(), _detach(pstate), _detach(fstate), carry.t + steps)
    return UnrollResult(total, torch.stack(terms, 1), out)


def run_truncations(policy: StepPolicy, problem: Optimizee, x0: Tensor, horizon: int,
                    truncation: int, *, generator: torch.Generator,
                    **options: Any) -> list[UnrollResult]:
    """All truncations of one ``horizon``-step run, without meta-updates (for tests/eval).

    The last truncation is shorter when ``truncation`` does not divide ``horizon``.
    ``options`` are passed to :func:`unroll`.
    """
    carry, results = start(policy, problem, x0, generator), []
    while carry.t < horizon:
        res = unroll(policy, problem, carry, min(truncation, horizon - carry.t),
                     generator=generator, **options)
        results.append(res)
        carry = res.carry
    return results

