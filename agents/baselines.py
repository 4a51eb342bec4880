"""Hand-designed optimizers as batched StepPolicies, and agents that tune them.

Li & Malik (2017, §4) compare their learned optimizer against seven hand-engineered
algorithms, each with tuned hyperparameters: SGD, momentum, conjugate gradient,
L-BFGS, Adam, AdaGrad and RMSprop. This module has those, plus Nesterov momentum and
Adadelta, in two layers:

* **Policies** (:class:`SGDPolicy` ... :class:`LBFGSPolicy`): update rules over a batch
  of ``B`` problems that read the ``"gradient"`` feature set (features ``(B, n, 1)``,
  the minibatch gradient) and return the step ``Δx`` ``(B, n)`` to *add* to the
  parameters (SGD returns ``−lr·g``). Every hyperparameter is a float or a tensor of
  shape ``(B,)`` (one value per instance, broadcast as ``(B, 1)``), so a learning-rate
  grid runs as one batch. The state is a dict of tensors with leading dimension ``B``
  (``StepPolicy.reset_where`` restarts single instances); it takes the dtype and
  device of the features on the first step. The element-wise rules reproduce
  ``torch.optim`` exactly (same defaults, same formulas, same order of the epsilon).
* **Agents** (:class:`SGDAgent` ... :class:`LBFGSAgent`, base :class:`BaselineAgent`):
  hold the optimizer's hyperparameters; ``train(env_id)`` tunes the learning rate
  with :func:`optenv.tuning.tune_grid` (the whole grid × seeds as one batched run) and
  ``policy()`` returns the tuned policy.

Conjugate gradient and L-BFGS are deterministic, line-search methods. The environments
give one stochastic gradient per step and no function evaluations to search with, so
both are adapted (see their docstrings): a fixed step ``lr`` along the search direction
and curvature pairs from consecutive minibatch gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from optenv.policy import Agent, PolicyState, StepPolicy
from optenv.problems.base import CoordinateGroup, TaskFamily
from optenv.registry import task_for
from optenv.tuning import DEFAULT_GRID, METRICS, TuneResult, tune_grid

__all__ = [
    "AdaGradAgent",
    "AdaGradPolicy",
    "AdadeltaAgent",
    "AdadeltaPolicy",
    "AdamAgent",
    "AdamPolicy",
    "BaselineAgent",
    "ConjugateGradientAgent",
    "ConjugateGradientPolicy",
    "LBFGSAgent",
    "LBFGSPolicy",
    "MomentumAgent",
    "MomentumPolicy",
    "NAGAgent",
    "NAGPolicy",
    "RMSpropAgent",
    "RMSpropPolicy",
    "SGDAgent",
    "SGDPolicy",
]

#: a hyperparameter: one value for all instances, or a tensor ``(B,)`` of per-instance values
Hyper = float | Tensor


# --------------------------------------------------------------------------- helpers
def _hyper(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> Hyper:
    """Validate a hyperparameter: a real number or a 0-d / 1-d tensor, within bounds."""
    if isinstance(value, Tensor):
        if value.dim() > 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(
                f"{name} must be a float or a real tensor of shape (B,), "
                f"got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        checked = value  # not detached: a meta-trainer may differentiate through it
        vals = value.detach().double().reshape(-1)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a float or a tensor of shape (B,), got {value!r}")
    else:
        checked = float(value)
        vals = torch.tensor([checked], dtype=torch.float64)
    low_ok = vals > low if low_open else vals >= low
    high_ok = vals < high if high_open else vals <= high
    if vals.numel() == 0 or not bool((torch.isfinite(vals) & low_ok & high_ok).all()):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        shown = value if not isinstance(value, Tensor) else value.tolist()
        raise ValueError(f"{name} must be finite and in {lo}{low}, {high}{hi}, got {shown!r}")
    return checked


def _per_instance(value: Hyper, g: Tensor, name: str) -> Hyper:
    """``value`` ready to combine with ``g`` ``(B, n)``: a float or a ``(B, 1)`` tensor."""
    if not isinstance(value, Tensor):
        return value
    value = value.to(dtype=g.dtype, device=g.device)
    if value.dim() == 0:
        return value
    if value.shape[0] != g.shape[0]:
        raise ValueError(
            f"{name} has {value.shape[0]} per-instance values, but the features hold "
            f"B={g.shape[0]} instances"
        )
    return value.view(-1, 1)


def _gradient(features: Tensor) -> Tensor:
    """The gradient ``(B, n)`` from ``"gradient"`` features ``(B, n, 1)``."""
    if features.dim() != 3 or features.shape[-1] < 1 or not features.is_floating_point():
        raise ValueError(
            "expected 'gradient' features of shape (B, n, 1), got "
            f"{features.dtype} {tuple(features.shape)}"
        )
    return features[..., 0]


def _like(state: PolicyState, g: Tensor) -> PolicyState:
    """A shallow copy of ``state`` with floating tensors in ``g``'s dtype and device."""
    return {k: v.to(dtype=g.dtype, device=g.device) if v.is_floating_point()
            else v.to(device=g.device) for k, v in state.items()}


def _check_batch(state: PolicyState, g: Tensor) -> None:
    for key, value in state.items():
        if value.shape[0] != g.shape[0] or (value.dim() >= 2 and value.shape[-1] != g.shape[1]
                                            and key not in _NOT_PER_COORD):
            raise ValueError(
                f"policy state {key!r} has shape {tuple(value.shape)}, which does not fit "
                f"features for B={g.shape[0]} instances of n={g.shape[1]} coordinates"
            )


#: state entries whose last dimension is not the coordinate dimension
_NOT_PER_COORD = frozenset({"valid"})


def _clip_norm(step: Tensor, max_step: float | None) -> Tensor:
    """``step`` rescaled per instance so that its Euclidean norm is at most ``max_step``."""
    if max_step is None:
        return step
    norm = step.norm(dim=1, keepdim=True)
    scale = (max_step / norm.clamp_min(torch.finfo(step.dtype).tiny)).clamp(max=1.0)
    return step * scale


def _fmt(value: Hyper) -> str:
    return f"tensor{tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)


class _BaselinePolicy(StepPolicy):
    """Shared plumbing: the ``"gradient"`` feature set and a readable ``repr``."""

    features = "gradient"

    def hyperparams(self) -> dict[str, Any]:
        """The hyperparameters (floats or ``(B,)`` tensors) by name."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- policies
class SGDPolicy(_BaselinePolicy):
    """Stochastic gradient descent: ``Δx = −lr · g`` (``torch.optim.SGD``)."""

    def __init__(self, lr: Hyper = 1e-3) -> None:
        self.lr = _hyper("lr", lr)

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        return -_per_instance(self.lr, g, "lr") * g, {}


class MomentumPolicy(_BaselinePolicy):
    """Heavy-ball momentum, ``torch.optim.SGD(momentum=μ)`` (dampening 0)::

        b ← μ b + g        (b = 0 before the first step, so b_1 = g as in torch)
        Δx = −lr · b
    """

    nesterov: ClassVar[bool] = False

    def __init__(self, lr: Hyper = 1e-3, momentum: Hyper = 0.9) -> None:
        self.lr = _hyper("lr", lr)
        self.momentum = _hyper("momentum", momentum, high=1.0)

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {"buf": torch.zeros(batch, n)}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        st = _like(state, g)
        _check_batch(st, g)
        mu = _per_instance(self.momentum, g, "momentum")
        buf = mu * st["buf"] + g
        direction = g + mu * buf if self.nesterov else buf
        return -_per_instance(self.lr, g, "lr") * direction, {"buf": buf}


class NAGPolicy(MomentumPolicy):
    """Nesterov momentum, ``torch.optim.SGD(momentum=μ, nesterov=True)``::

        b ← μ b + g
        Δx = −lr · (g + μ b)
    """

    nesterov: ClassVar[bool] = True


class AdamPolicy(_BaselinePolicy):
    """Adam (Kingma & Ba 2014), ``torch.optim.Adam`` without weight decay / amsgrad::

        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,   t ← t + 1
        Δx = −lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

    ``t`` is counted per instance, so a restarted instance restarts its bias correction.
    """

    def __init__(self, lr: Hyper = 1e-3, betas: Sequence[Hyper] = (0.9, 0.999),
                 eps: Hyper = 1e-8) -> None:
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.lr = _hyper("lr", lr)
        self.betas = (_hyper("betas[0]", betas[0], high=1.0, high_open=True),
                      _hyper("betas[1]", betas[1], high=1.0, high_open=True))
        self.eps = _hyper("eps", eps)

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {"m": torch.zeros(batch, n), "v": torch.zeros(batch, n),
                "t": torch.zeros(batch, dtype=torch.long)}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        st = _like(state, g)
        _check_batch(st, g)
        b1 = _per_instance(self.betas[0], g, "betas[0]")
        b2 = _per_instance(self.betas[1], g, "betas[1]")
        m = b1 * st["m"] + (1 - b1) * g
        v = b2 * st["v"] + (1 - b2) * g * g
        t = st["t"] + 1
        tf = t.to(g.dtype)[:, None]
        bc1 = 1 - b1 ** tf
        bc2_sqrt = (1 - b2 ** tf).sqrt()
        denom = v.sqrt() / bc2_sqrt + _per_instance(self.eps, g, "eps")
        delta = -(_per_instance(self.lr, g, "lr") / bc1) * (m / denom)
        return delta, {"m": m, "v": v, "t": t}


class RMSpropPolicy(_BaselinePolicy):
    """RMSprop (Tieleman & Hinton 2012), ``torch.optim.RMSprop`` without weight decay::

        s ← α s + (1 − α) g²
        a = √s + ε                     (centered: a = √(s − ḡ²) + ε, ḡ ← α ḡ + (1 − α) g)
        Δx = −lr · g / a               (momentum μ > 0: b ← μ b + g / a, Δx = −lr · b)
    """

    def __init__(self, lr: Hyper = 1e-2, alpha: Hyper = 0.99, eps: Hyper = 1e-8,
                 momentum: Hyper = 0.0, centered: bool = False) -> None:
        self.lr = _hyper("lr", lr)
        self.alpha = _hyper("alpha", alpha, high=1.0)
        self.eps = _hyper("eps", eps)
        self.momentum = _hyper("momentum", momentum, high=1.0)
        if not isinstance(centered, bool):
            raise ValueError(f"centered must be a bool, got {centered!r}")
        self.centered = centered

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum, "centered": self.centered}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {"square_avg": torch.zeros(batch, n), "grad_avg": torch.zeros(batch, n),
                "buf": torch.zeros(batch, n)}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        st = _like(state, g)
        _check_batch(st, g)
        alpha = _per_instance(self.alpha, g, "alpha")
        square_avg = alpha * st["square_avg"] + (1 - alpha) * g * g
        grad_avg = st["grad_avg"]
        if self.centered:
            grad_avg = alpha * grad_avg + (1 - alpha) * g
            avg = (square_avg - grad_avg * grad_avg).sqrt()
        else:
            avg = square_avg.sqrt()
        scaled = g / (avg + _per_instance(self.eps, g, "eps"))
        # momentum 0 leaves buf = g / a, so one formula covers both cases
        buf = _per_instance(self.momentum, g, "momentum") * st["buf"] + scaled
        delta = -_per_instance(self.lr, g, "lr") * buf
        return delta, {"square_avg": square_avg, "grad_avg": grad_avg, "buf": buf}


class AdaGradPolicy(_BaselinePolicy):
    """AdaGrad (Duchi et al. 2011), ``torch.optim.Adagrad`` without weight decay::

        s ← s + g²   (s starts at initial_accumulator_value),   t ← t + 1
        Δx = −lr / (1 + (t − 1) · lr_decay) · g / (√s + ε)
    """

    def __init__(self, lr: Hyper = 1e-2, lr_decay: Hyper = 0.0, eps: Hyper = 1e-10,
                 initial_accumulator_value: Hyper = 0.0) -> None:
        self.lr = _hyper("lr", lr)
        self.lr_decay = _hyper("lr_decay", lr_decay)
        self.eps = _hyper("eps", eps)
        self.initial_accumulator_value = _hyper("initial_accumulator_value",
                                                initial_accumulator_value)

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "lr_decay": self.lr_decay, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        # the accumulator starts at 0 and gets initial_accumulator_value on the first step,
        # in the features' dtype (a float32 buffer here would round the value)
        return {"sum": torch.zeros(batch, n), "t": torch.zeros(batch, dtype=torch.long)}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        st = _like(state, g)
        _check_batch(st, g)
        first = (st["t"] == 0)[:, None]
        init = _per_instance(self.initial_accumulator_value, g, "initial_accumulator_value")
        acc = torch.where(first, st["sum"] + init, st["sum"]) + g * g
        t = st["t"] + 1
        clr = _per_instance(self.lr, g, "lr") / (
            1 + (t.to(g.dtype)[:, None] - 1) * _per_instance(self.lr_decay, g, "lr_decay"))
        delta = -clr * (g / (acc.sqrt() + _per_instance(self.eps, g, "eps")))
        return delta, {"sum": acc, "t": t}


class AdadeltaPolicy(_BaselinePolicy):
    """Adadelta (Zeiler 2012), ``torch.optim.Adadelta`` without weight decay::

        s ← ρ s + (1 − ρ) g²
        u = √(a + ε) / √(s + ε) · g,     a ← ρ a + (1 − ρ) u²
        Δx = −lr · u
    """

    def __init__(self, lr: Hyper = 1.0, rho: Hyper = 0.9, eps: Hyper = 1e-6) -> None:
        self.lr = _hyper("lr", lr)
        self.rho = _hyper("rho", rho, high=1.0)
        self.eps = _hyper("eps", eps)

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "rho": self.rho, "eps": self.eps}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {"square_avg": torch.zeros(batch, n), "acc_delta": torch.zeros(batch, n)}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        st = _like(state, g)
        _check_batch(st, g)
        rho = _per_instance(self.rho, g, "rho")
        eps = _per_instance(self.eps, g, "eps")
        square_avg = rho * st["square_avg"] + (1 - rho) * g * g
        update = (st["acc_delta"] + eps).sqrt() / (square_avg + eps).sqrt() * g
        acc_delta = rho * st["acc_delta"] + (1 - rho) * update * update
        return -_per_instance(self.lr, g, "lr") * update, {"square_avg": square_avg,
                                                            "acc_delta": acc_delta}


class ConjugateGradientPolicy(_BaselinePolicy):
    """Nonlinear conjugate gradient, Polak–Ribière+ with restarts, fixed step size.

    With ``g_k`` the gradient at step ``k`` and ``d`` the search direction::

        β_k = max(0, g_kᵀ(g_k − g_{k−1}) / g_{k−1}ᵀg_{k−1})     (Polak–Ribière+)
        d_k = −g_k + β_k d_{k−1},    Δx = lr · d_k

    ``d_0 = −g_0``; the method restarts (``β = 0``, ``d = −g``) when PR+ clips β to 0,
    every ``restart_every`` steps (default ``n``, the classic restart after n
    conjugate steps), and whenever ``d_k`` is not a descent direction for the current
    gradient (``d_kᵀg_k ≥ 0``).

    Adaptation to one stochastic gradient per step: textbook CG takes an (exact or
    Wolfe) line search along ``d_k``, which needs function and gradient evaluations of
    the same objective. An environment step gives one minibatch gradient and no
    evaluations, so the step length is a fixed ``lr`` (tuned, like SGD's) and ``g_{k−1}``
    is the previous step's minibatch gradient (another minibatch). Without the line
    search consecutive gradients are no longer orthogonal: on a quadratic, a fixed step
    shorter than ``1/λ_max`` makes the PR numerator negative, so PR+ restarts every
    step and CG reduces to SGD; only longer (overshooting) steps take conjugate
    directions. Minibatch noise makes β fluctuate; ``max_step`` (optional) caps
    ``‖Δx‖`` per instance. The tuned ``lr`` decides which regime a task gets. Li & Malik (2017,
    §4) report that CG struggles in this stochastic setting (it diverged on TFD with
    minibatch size 10): that is the behaviour of the method, not of the adaptation.
    """

    def __init__(self, lr: Hyper = 1e-3, restart_every: int | None = None,
                 max_step: float | None = None) -> None:
        self.lr = _hyper("lr", lr)
        if restart_every is not None and (isinstance(restart_every, bool)
                                          or not isinstance(restart_every, int)
                                          or restart_every < 1):
            raise ValueError(f"restart_every must be a positive int or None, got {restart_every!r}")
        self.restart_every = restart_every
        if max_step is not None:
            max_step = float(_hyper("max_step", max_step, low_open=True))
        self.max_step = max_step

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "restart_every": self.restart_every, "max_step": self.max_step}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {"d": torch.zeros(batch, n), "g_prev": torch.zeros(batch, n),
                "k": torch.zeros(batch, dtype=torch.long),
                "has_prev": torch.zeros(batch, dtype=torch.bool)}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        st = _like(state, g)
        _check_batch(st, g)
        g_prev, d_prev, k = st["g_prev"], st["d"], st["k"]
        gg_prev = (g_prev * g_prev).sum(1)
        safe = torch.where(gg_prev > 0, gg_prev, torch.ones_like(gg_prev))
        beta = ((g * (g - g_prev)).sum(1) / safe).clamp_min(0.0)
        restart_every = self.restart_every or g.shape[1]
        keep = st["has_prev"] & (gg_prev > 0) & (k < restart_every) & torch.isfinite(beta)
        beta = torch.where(keep, beta, torch.zeros_like(beta))
        d = -g + beta[:, None] * d_prev
        descent = (d * g).sum(1) < 0
        d = torch.where(descent[:, None], d, -g)
        restarted = ~keep | ~descent | (beta == 0)
        k = torch.where(restarted, torch.ones_like(k), k + 1)
        delta = _clip_norm(_per_instance(self.lr, g, "lr") * d, self.max_step)
        return delta, {"d": d, "g_prev": g.clone(), "k": k,
                       "has_prev": torch.ones_like(st["has_prev"])}


class LBFGSPolicy(_BaselinePolicy):
    """Limited-memory BFGS (Nocedal 1980; Liu & Nocedal 1989) without line search.

    Keeps the last ``history_size`` curvature pairs ``(s_i, y_i)`` and computes
    ``H_k g_k`` with the two-loop recursion, starting from ``H⁰ = γ I`` with
    ``γ = sᵀy / yᵀy`` of the newest pair (``γ = 1`` while the memory is empty, so the
    first step is ``−lr · g``)::

        Δx = −lr · H_k g_k        (optionally rescaled so that ‖Δx‖ ≤ max_step)

    Adaptation to one stochastic gradient per step:

    * no line search: the step length is the fixed ``lr`` (1 is the quasi-Newton
      step; the agent tunes it like any learning rate);
    * ``s_k = Δx_k`` is the policy's own previous step and ``y_k = g_{k+1} − g_k`` the
      difference of two consecutive *minibatch* gradients (two different minibatches:
      the only gradients an environment step provides);
    * since no Wolfe condition guarantees ``sᵀy > 0`` (non-convexity, minibatch noise),
      a pair is **skipped** when ``sᵀy ≤ curvature_eps · ‖s‖ ‖y‖`` (or is not finite),
      which keeps the inverse-Hessian estimate positive definite; ``state["skipped"]``
      counts skipped pairs per instance;
    * if rounding (or a foreign memory) still yields a non-finite or non-descent
      direction, the step falls back to ``−lr · γ g`` (``γ = 1`` unless positive and
      finite).

    The memory is batched over ``B`` with per-instance validity masks: an accepted
    pair is shifted in at the newest slot (``history_size − 1``), so the valid slots of
    an instance are always the newest ones.
    """

    def __init__(self, lr: Hyper = 1.0, history_size: int = 10, curvature_eps: float = 1e-4,
                 max_step: float | None = None) -> None:
        self.lr = _hyper("lr", lr)
        if isinstance(history_size, bool) or not isinstance(history_size, int) \
                or history_size < 1:
            raise ValueError(f"history_size must be a positive int, got {history_size!r}")
        self.history_size = history_size
        self.curvature_eps = float(_hyper("curvature_eps", curvature_eps, high=1.0,
                                          high_open=True))
        if max_step is not None:
            max_step = float(_hyper("max_step", max_step, low_open=True))
        self.max_step = max_step

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "history_size": self.history_size,
                "curvature_eps": self.curvature_eps, "max_step": self.max_step}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        m = self.history_size
        return {
            "s": torch.zeros(batch, m, n),
            "y": torch.zeros(batch, m, n),
            "valid": torch.zeros(batch, m, dtype=torch.bool),
            "prev_step": torch.zeros(batch, n),
            "prev_grad": torch.zeros(batch, n),
            "has_prev": torch.zeros(batch, dtype=torch.bool),
            "skipped": torch.zeros(batch, dtype=torch.long),
        }

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        g = _gradient(features)
        st = _like(state, g)
        _check_batch(st, g)
        S, Y, valid = st["s"], st["y"], st["valid"]
        if S.shape[1] != self.history_size:
            raise ValueError(f"policy state holds {S.shape[1]} memory slots, expected "
                             f"history_size={self.history_size}")
        m = self.history_size

        # 1. the newest curvature pair, accepted only if it keeps H positive definite
        s, y = st["prev_step"], g - st["prev_grad"]
        sy = (s * y).sum(1)
        bound = self.curvature_eps * s.norm(dim=1) * y.norm(dim=1)
        ok = torch.isfinite(sy) & torch.isfinite(bound) & (sy > bound)
        has_prev = st["has_prev"]
        accept = has_prev & ok
        skipped = st["skipped"] + (has_prev & ~ok).long()
        a3 = accept[:, None, None]
        S = torch.where(a3, torch.cat([S[:, 1:], s[:, None]], 1), S)
        Y = torch.where(a3, torch.cat([Y[:, 1:], y[:, None]], 1), Y)
        valid = torch.where(accept[:, None],
                            torch.cat([valid[:, 1:], torch.ones_like(valid[:, :1])], 1), valid)

        # 2. two-loop recursion, batched over instances; invalid slots have rho = 0
        sy_mem = (S * Y).sum(2)
        rho = torch.where(valid, 1.0 / torch.where(valid, sy_mem, torch.ones_like(sy_mem)),
                          torch.zeros_like(sy_mem))
        q = g
        alphas: list[Tensor] = [g.new_zeros(g.shape[0])] * m
        for i in range(m - 1, -1, -1):
            alphas[i] = rho[:, i] * (S[:, i] * q).sum(1)
            q = q - alphas[i][:, None] * Y[:, i]
        yy_last = (Y[:, -1] * Y[:, -1]).sum(1)
        gamma = sy_mem[:, -1] / torch.where(valid[:, -1], yy_last, torch.ones_like(yy_last))
        # accepted pairs have sᵀy > 0; anything else (an empty or foreign memory) -> γ = 1
        gamma = torch.where(valid[:, -1] & torch.isfinite(gamma) & (gamma > 0), gamma,
                            torch.ones_like(gamma))
        r = gamma[:, None] * q
        for i in range(m):
            b = rho[:, i] * (Y[:, i] * r).sum(1)
            r = r + (alphas[i] - b)[:, None] * S[:, i]

        # 3. the step, with a steepest-descent fallback against rounding
        good = torch.isfinite(r).all(1) & ((r * g).sum(1) > 0)
        r = torch.where(good[:, None], r, gamma[:, None] * g)
        delta = _clip_norm(-_per_instance(self.lr, g, "lr") * r, self.max_step)
        return delta, {"s": S, "y": Y, "valid": valid, "prev_step": delta.clone(),
                       "prev_grad": g.clone(), "has_prev": torch.ones_like(has_prev),
                       "skipped": skipped}


# --------------------------------------------------------------------------- agents
class BaselineAgent(Agent):
    """A hand-designed optimizer whose learning rate is tuned on an environment.

    Holds the optimizer's hyperparameters (:meth:`hyperparams`) and the last tuning
    result (:attr:`tuning`). ``lr=None`` means "to be tuned": :meth:`policy` raises
    until :meth:`train` ran. A given ``lr`` is used as is, unless :meth:`train` is
    called, which replaces it by the tuned value. Only the learning rate is tuned
    (Metz et al. 2019, §4; the other hyperparameters keep torch's defaults unless given).

    Args:
        lr: the learning rate, or ``None`` to tune it.
        hyperparams: the optimizer's other hyperparameters (JSON-able values).
        grid: learning rates to try (default :data:`optenv.tuning.DEFAULT_GRID`, 11
            log-spaced values from 1e-4 to 10).
        tune_seeds: problem seeds every grid value is scored on.
        metric: ``"final"`` (objective after the last step) or ``"auc"`` (mean over steps).
    """

    #: display name of the optimizer
    optimizer: ClassVar[str] = ""
    #: the StepPolicy class the agent configures
    policy_class: ClassVar[type[_BaselinePolicy]]
    #: learning rates tried when no grid is given
    default_grid: ClassVar[tuple[float, ...]] = DEFAULT_GRID

    def __init__(self, lr: float | None = None, hyperparams: dict[str, Any] | None = None, *,
                 grid: Sequence[float] | None = None, tune_seeds: Sequence[int] = (0, 1, 2),
                 metric: str = "final") -> None:
        super().__init__()
        if lr is not None:
            lr = float(_hyper("lr", lr))
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if grid is not None:
            grid = [float(v) for v in grid]
            if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
                raise ValueError(f"grid must be non-empty positive finite values, got {grid!r}")
        seeds = [int(s) for s in tune_seeds]
        if not seeds:
            raise ValueError("tune_seeds must not be empty")
        self.lr = lr
        self._hyperparams = dict(hyperparams or {})
        self.grid = grid
        self.tune_seeds = seeds
        self.metric = metric
        self.tuning: TuneResult | None = None
        self.policy_class(lr=1.0, **self._hyperparams)  # validates the hyperparameters now

    # -- hyperparameters ---------------------------------------------------------------
    def hyperparams(self) -> dict[str, Any]:
        """All hyperparameters, the learning rate included (``None``: not tuned yet)."""
        return {"lr": self.lr, **self._hyperparams}

    def policy(self) -> StepPolicy:
        if self.lr is None:
            raise ValueError(
                f"the {self.name!r} agent ({self.optimizer}) has no learning rate: pass "
                f"lr=... or call train(env_id) to tune it first"
            )
        return self.policy_class(lr=self.lr, **self._hyperparams)

    def make_policy(self, lr: Hyper) -> StepPolicy:
        """The policy with these hyperparameters and learning rate ``lr`` (float or ``(B,)``)."""
        return self.policy_class(lr=lr, **self._hyperparams)

    # -- tuning ------------------------------------------------------------------------
    def tune(self, family: TaskFamily, steps: int, *, seeds: Sequence[int] | None = None,
             grid: Sequence[float] | None = None, metric: str | None = None) -> TuneResult:
        """Tune the learning rate on ``family`` over ``steps`` steps; keep the best.

        The whole grid × seeds runs as one batched problem (:func:`optenv.tuning.tune_grid`).
        Adds ``len(grid) · len(seeds) · steps`` environment steps to :attr:`training_cost`.
        """
        grid = list(grid if grid is not None else (self.grid or self.default_grid))
        seeds = list(seeds if seeds is not None else self.tune_seeds)
        metric = metric or self.metric
        start = time.perf_counter()
        result = tune_grid(self.make_policy, family, steps, grid=grid, seeds=seeds,
                           metric=metric, param="lr")
        self.training_cost["env_steps"] = (self.training_cost.get("env_steps", 0.0)
                                           + float(len(result.grid) * len(result.seeds) * steps))
        self.training_cost["wall_s"] = (self.training_cost.get("wall_s", 0.0)
                                        + time.perf_counter() - start)
        self.lr = result.best
        self.tuning = result
        return result

    def train(self, env_id: str, steps: int | None = None,  # type: ignore[override]
              seeds: Sequence[int] | None = None, grid: Sequence[float] | None = None,
              metric: str | None = None, *, out: Any = None, resume: bool = False,
              progress: bool = False, **env_kwargs: Any) -> dict[str, Any]:
        """Tune the learning rate on ``env_id``'s task (``steps`` default: its horizon).

        ``out``, ``resume`` and ``progress`` are accepted for ``optenv train``'s uniform
        call; tuning is one batched run, so there is nothing to resume or show.

        Returns ``{"hyperparams": ..., "tuning": TuneResult.to_dict()}``.
        """
        env_kwargs = {**(env_kwargs.pop("env_kwargs", None) or {}), **env_kwargs}  # CLI form
        family, horizon = task_for(env_id, **env_kwargs)
        steps = int(steps) if steps is not None else horizon
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps!r} (env {env_id} horizon "
                             f"{horizon})")
        result = self.tune(family, steps, seeds=seeds, grid=grid, metric=metric)
        return {"hyperparams": self.hyperparams(), "tuning": result.to_dict()}

    # -- persistence -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {**self.hyperparams(), "grid": self.grid, "tune_seeds": list(self.tune_seeds),
                "metric": self.metric}

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "hyperparams": dict(self._hyperparams),
                "tuning": None if self.tuning is None else self.tuning.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        hyper = dict(state.get("hyperparams", self._hyperparams))
        self.policy_class(lr=1.0, **hyper)  # validate before changing anything
        lr = state.get("lr")
        self.lr = None if lr is None else float(_hyper("lr", lr))
        self._hyperparams = hyper
        tuning = state.get("tuning")
        self.tuning = None if tuning is None else TuneResult(**tuning)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"


def _tuple(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


class SGDAgent(BaselineAgent):
    """SGD with a tuned learning rate."""

    name = "sgd"
    optimizer = "SGD"
    policy_class = SGDPolicy

    def __init__(self, lr: float | None = None, *, grid: Sequence[float] | None = None,
                 tune_seeds: Sequence[int] = (0, 1, 2), metric: str = "final") -> None:
        super().__init__(lr, {}, grid=grid, tune_seeds=tune_seeds, metric=metric)


class MomentumAgent(BaselineAgent):
    """Heavy-ball momentum (μ = 0.9 by default) with a tuned learning rate."""

    name = "momentum"
    optimizer = "Momentum"
    policy_class = MomentumPolicy

    def __init__(self, lr: float | None = None, momentum: float = 0.9, *,
                 grid: Sequence[float] | None = None, tune_seeds: Sequence[int] = (0, 1, 2),
                 metric: str = "final") -> None:
        super().__init__(lr, {"momentum": float(momentum)}, grid=grid, tune_seeds=tune_seeds,
                         metric=metric)


class NAGAgent(MomentumAgent):
    """Nesterov momentum (μ = 0.9 by default) with a tuned learning rate."""

    name = "nag"
    optimizer = "NAG"
    policy_class = NAGPolicy


class AdamAgent(BaselineAgent):
    """Adam with a tuned learning rate (betas, eps: torch's defaults unless given)."""

    name = "adam"
    optimizer = "Adam"
    policy_class = AdamPolicy

    def __init__(self, lr: float | None = None, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, *, grid: Sequence[float] | None = None,
                 tune_seeds: Sequence[int] = (0, 1, 2), metric: str = "final") -> None:
        super().__init__(lr, {"betas": _tuple(betas), "eps": float(eps)}, grid=grid,
                         tune_seeds=tune_seeds, metric=metric)


class RMSpropAgent(BaselineAgent):
    """RMSprop with a tuned learning rate."""

    name = "rmsprop"
    optimizer = "RMSprop"
    policy_class = RMSpropPolicy

    def __init__(self, lr: float | None = None, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False, *,
                 grid: Sequence[float] | None = None, tune_seeds: Sequence[int] = (0, 1, 2),
                 metric: str = "final") -> None:
        super().__init__(lr, {"alpha": float(alpha), "eps": float(eps),
                              "momentum": float(momentum), "centered": centered},
                         grid=grid, tune_seeds=tune_seeds, metric=metric)


class AdaGradAgent(BaselineAgent):
    """AdaGrad with a tuned learning rate."""

    name = "adagrad"
    optimizer = "AdaGrad"
    policy_class = AdaGradPolicy

    def __init__(self, lr: float | None = None, lr_decay: float = 0.0, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0, *,
                 grid: Sequence[float] | None = None, tune_seeds: Sequence[int] = (0, 1, 2),
                 metric: str = "final") -> None:
        super().__init__(lr, {"lr_decay": float(lr_decay), "eps": float(eps),
                              "initial_accumulator_value": float(initial_accumulator_value)},
                         grid=grid, tune_seeds=tune_seeds, metric=metric)


class AdadeltaAgent(BaselineAgent):
    """Adadelta with a tuned learning rate (torch's default lr is 1.0)."""

    name = "adadelta"
    optimizer = "Adadelta"
    policy_class = AdadeltaPolicy
    #: Adadelta's lr multiplies an update that already has the parameters' units (torch's
    #: default is 1.0); the usual 1e-4..10 grid put the optimum at its top edge on every
    #: env of the suite, so its grid spans 1e-3..100 (11 values).
    default_grid: ClassVar[tuple[float, ...]] = tuple(float(v) for v in np.logspace(-3, 2, 11))

    def __init__(self, lr: float | None = None, rho: float = 0.9, eps: float = 1e-6, *,
                 grid: Sequence[float] | None = None, tune_seeds: Sequence[int] = (0, 1, 2),
                 metric: str = "final") -> None:
        super().__init__(lr, {"rho": float(rho), "eps": float(eps)}, grid=grid,
                         tune_seeds=tune_seeds, metric=metric)


class ConjugateGradientAgent(BaselineAgent):
    """Polak–Ribière+ nonlinear CG with a tuned fixed step size (no line search)."""

    name = "cg"
    optimizer = "CG"
    policy_class = ConjugateGradientPolicy

    def __init__(self, lr: float | None = None, restart_every: int | None = None,
                 max_step: float | None = None, *, grid: Sequence[float] | None = None,
                 tune_seeds: Sequence[int] = (0, 1, 2), metric: str = "final") -> None:
        super().__init__(lr, {"restart_every": restart_every, "max_step": max_step},
                         grid=grid, tune_seeds=tune_seeds, metric=metric)


class LBFGSAgent(BaselineAgent):
    """L-BFGS (two-loop recursion, curvature-pair skipping) with a tuned step size."""

    name = "lbfgs"
    optimizer = "L-BFGS"
    policy_class = LBFGSPolicy

    def __init__(self, lr: float | None = None, history_size: int = 10,
                 curvature_eps: float = 1e-4, max_step: float | None = None, *,
                 grid: Sequence[float] | None = None, tune_seeds: Sequence[int] = (0, 1, 2),
                 metric: str = "final") -> None:
        super().__init__(lr, {"history_size": history_size,
                              "curvature_eps": float(curvature_eps), "max_step": max_step},
                         grid=grid, tune_seeds=tune_seeds, metric=metric)
