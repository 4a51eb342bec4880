"""The nonlinear policy π of guided policy search and its supervised θ-update (S-step).

Li & Malik 2017, §3.3–3.5: π(a_t | o_t; θ) = N(μ^π_ω(o_t), Σ^π), θ = (ω, Σ^π), where
μ^π is "a recurrent neural net fragment that corresponds to a single time step, which
takes the observation features Ψ(·) and the previous memory state as input and outputs
the step to take" (§3.3), its parameters shared across the coordinates of a coordinate
group (§3.5), and Σ^π block-diagonal with the entries of a group shared (§3.5). Here
the action is one scalar a per coordinate (the env's action, Δx = step_scale · a), so
Σ^π is one variance per group.

The θ-update of §3.4 with Σ^π fixed is supervised learning with a Mahalanobis loss,

    min_ω  Σ_t E_ψ[ λ_tᵀ μ^π_ω(o_t) + ν_t/2 (μ^π_ω(o_t) − E_ψ[a_t|s_t])ᵀ G_t⁻¹
                                               (μ^π_ω(o_t) − E_ψ[a_t|s_t]) ]

(the terms ν_t/2 (tr(G_t⁻¹Σ^π) − log|Σ^π|) do not depend on ω): :func:`s_step`.
Completing the square, for each sample λμ + ν/2·P(μ − y)² = ν/2·P(μ − y')² + const with
the shifted target y' = y − λ/(νP) (P = G⁻¹): the dual variable moves π's target
away from ψ's mean, as the reference GPS code's ``_update_policy`` does.

Contents:

* :class:`CoordinatewiseLSTMPolicy` — π itself: one LSTM + linear head per coordinate
  group (``share="group"``) or one for all groups (``share="all"``), a
  :class:`optenv.policy.StepPolicy` reading ``li_malik_obs`` (Ψ).
* :class:`LinearStatePolicy`, :class:`TimeVaryingLinearPolicy` — linear policies over
  per-coordinate state features for tests of the S-step and of BADMM.
* :func:`s_step` — the θ-update by Adam over minibatches of per-coordinate sequences.
* :func:`optimal_variance` — the closed-form θ-update of Σ^π when it is not kept fixed.

Shapes: a group's data are ``obs`` ``(N, T, n_g, k)`` (N rollouts, n_g coordinates,
k features per coordinate), mean actions ``(N, T, n_g)``. Every policy here exposes
``mean_actions(obs, group) -> (N, T, n_g)``, which is all :func:`s_step` needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from optenv.features import LiMalikState, check_grad_scale, make_features
from optenv.policy import PolicyState, StepPolicy
from optenv.problems.base import CoordinateGroup

__all__ = [
    "CoordinatewiseLSTMPolicy",
    "InitialControllerPolicy",
    "LinearStatePolicy",
    "MeanActionPolicy",
    "TimeVaryingLinearPolicy",
    "optimal_variance",
    "s_step",
]


class MeanActionPolicy(Protocol):
    """What :func:`s_step` trains: an ``nn.Module`` with teacher-forced mean actions."""

    def mean_actions(self, obs: Tensor, group: int = 0) -> Tensor:
        """μ^π(o_t) ``(N, T, n_g)`` for a group's observation sequences ``(N, T, n_g, k)``."""
        ...

    def parameters(self) -> Any: ...


def _check_obs(obs: Tensor, k: int, name: str = "obs") -> None:
    if obs.dim() != 4 or obs.shape[-1] != k:
        raise ValueError(f"{name} must be (N, T, n_g, {k}), got {tuple(obs.shape)}")


def _layout(n: int, groups: tuple[CoordinateGroup, ...]) -> list[int]:
    """Group sizes, after checking that the groups tile [0, n) in order."""
    start = 0
    for g in groups:
        if g.slice.start != start:
            raise ValueError(
                f"coordinate groups must be contiguous and in order; group {g.name!r} "
                f"starts at {g.slice.start}, expected {start}"
            )
        start = g.slice.stop
    if start != n:
        raise ValueError(f"coordinate groups cover {start} coordinates, expected n={n}")
    return [g.size for g in groups]


# ----------------------------------------------------------------------------- LSTM policy

#: feature sets π can read: the paper's Ψ, or (an option, not the paper's) ψ's Φ
OBSERVATIONS = ("li_malik_obs", "li_malik_state")
#: the gradient features of each, the columns ``skip=True``'s linear path reads: the
#: objective and iterate features are ratios that grow without bound (a relative loss
#: change near f = 0 reaches 1e12), which a linear path would pass straight to the step
_PHI_GRAD = LiMalikState.N_OBJECTIVE  # Φ's columns: objective, gradient, iterate features
GRADIENT_COLUMNS = {"li_malik_obs": (1, 2),
                    "li_malik_state": (_PHI_GRAD, _PHI_GRAD + LiMalikState.N_GRADIENT)}


class CoordinatewiseLSTMPolicy(nn.Module, StepPolicy):
    """π of Li & Malik 2017 (§3.3, §3.5): a coordinatewise LSTM over Ψ.

    Every coordinate j runs the same recurrent cell on its own features Ψ_j (3 per
    coordinate, ``li_malik_obs``) and its own memory (h_j, c_j):

        (h_j, c_j) ← LSTM(Ψ_j(t), (h_j, c_j)),   a_j = w·h_j + b,   Δx_j = step_scale · a_j,

    with (LSTM, w, b) shared by the coordinates of a group (``share="group"``: one set
    per group, so the policy needs the same group layout at deployment) or by all
    coordinates (``share="all"``: one set; the policy runs on any architecture).
    Coordinates are a batch dimension (the cell sees ``(B·n_g, 3)``), so the parameter
    count does not depend on n. The paper uses 128 hidden units.

    ``grad_scale`` is the option of Ψ the policy reads (:mod:`optenv.features`):
    ``"paper"``, or the scale-free ``"instance_rms"`` or ``"adagrad"``.

    Two options that are not the paper's: ``features="li_malik_state"`` makes π read Φ
    (the 75 state features of ψ, without x) instead of Ψ, and ``skip=True`` adds a
    linear path from the gradient features to the action, a_j = w·h_j + b + uᵀΨ_j^grad
    (u starts at 0; :data:`GRADIENT_COLUMNS`). Together they let π represent the part of
    ψ that is stationary and linear in Φ's gradient features exactly, so the S-step can
    match a ψ whose steps an LSTM over Ψ does not imitate closely enough (measured in
    the README: GPS with AdaGrad-sized steps). A third, ``time_scale=T``: the cell also
    reads the step index as t/T (counted in the policy's state, ``"t"``), so π can
    represent ψ's time-varying K_t, e.g. a gain schedule, which neither Ψ nor Φ encodes.
    A fourth, ``gain_head=True`` (with ``skip``): the linear path's weights become
    u + V·h_j (V starts at 0), a gain on the gradient features that π's state sets; the
    LSTM's additive output alone does not make a per-phase gain on features of size 1e-3
    (README, the PI² ψ-update).

    Σ^π is fixed and diagonal: ``variance[g]`` (a buffer) is the variance of a_j for the
    coordinates of group g (``num_groups`` entries; with ``share="all"`` and one entry,
    that entry serves every group, see :meth:`variance_of`).

    As a :class:`~optenv.policy.StepPolicy`, :meth:`reset` returns ``{"h", "c"}`` of
    shape ``(B, n, hidden)`` and remembers the group layout it was given;
    :meth:`step` is deterministic (the mean): GPS samples from ψ, never from π.
    :meth:`mean_actions` runs a whole observation sequence at once (teacher forcing),
    for training; it equals stepping :meth:`step` from a fresh state.

    Parameters are initialized from ``seed`` (PyTorch's default LSTM/Linear ranges, drawn
    from an explicit generator, never the global RNG).
    """

    features = "li_malik_obs"

    def __init__(
        self,
        num_groups: int = 1,
        hidden: int = 128,
        share: Literal["group", "all"] = "group",
        step_scale: float = 0.1,
        variance: float = 1e-2,
        input_dim: int | None = None,
        grad_scale: str = "paper",
        seed: int = 0,
        features: str = "li_malik_obs",
        skip: bool = False,
        time_scale: float | None = None,
        gain_head: bool = False,
    ) -> None:
        super().__init__()
        # the Ψ options this policy was trained on travel with it (env, bench, torch.optim)
        self.feature_kwargs = {"grad_scale": check_grad_scale(grad_scale)}  # type: ignore[misc]
        if features not in OBSERVATIONS:
            raise ValueError(f"features must be one of {OBSERVATIONS}, got {features!r}")
        self.features = features  # type: ignore[misc]
        dim = make_features(features).dim
        if input_dim is None:
            input_dim = dim
        elif input_dim != dim:
            raise ValueError(f"input_dim must be {dim} for features {features!r}, "
                             f"got {input_dim!r}")
        if not isinstance(skip, bool):
            raise ValueError(f"skip must be a bool, got {skip!r}")
        if not isinstance(gain_head, bool):
            raise ValueError(f"gain_head must be a bool, got {gain_head!r}")
        if gain_head and not skip:
            raise ValueError("gain_head=True needs skip=True (it sets the linear path's gain)")
        if time_scale is not None and (isinstance(time_scale, bool)
                                       or not isinstance(time_scale, int | float)
                                       or not (math.isfinite(time_scale) and time_scale > 0)):
            raise ValueError(f"time_scale must be None or a finite number > 0, "
                             f"got {time_scale!r}")
        self.time_scale = None if time_scale is None else float(time_scale)
        if share not in ("group", "all"):
            raise ValueError(f"share must be 'group' or 'all', got {share!r}")
        for name, value in (("num_groups", num_groups), ("hidden", hidden),
                            ("input_dim", input_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (math.isfinite(step_scale) and step_scale > 0):
            raise ValueError(f"step_scale must be finite and > 0, got {step_scale!r}")
        if not (math.isfinite(variance) and variance > 0):
            raise ValueError(f"variance must be finite and > 0, got {variance!r}")
        self.num_groups, self.hidden, self.share = num_groups, hidden, share
        self.input_dim, self.seed = input_dim, seed
        self.step_scale = float(step_scale)
        n_sets = num_groups if share == "group" else 1
        cell_inputs = input_dim + (self.time_scale is not None)  # + t/T
        self.lstms = nn.ModuleList(nn.LSTM(cell_inputs, hidden) for _ in range(n_sets))
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_sets))
        self.skip = skip
        self._skip_cols = GRADIENT_COLUMNS[features]
        width = self._skip_cols[1] - self._skip_cols[0]
        self.skips = nn.ModuleList(nn.Linear(width, 1, bias=False)
                                   for _ in range(n_sets if skip else 0))
        self.gain_head = gain_head  # the linear path's weights also read from h: u + V·h
        self.gains = nn.ModuleList(nn.Linear(hidden, width, bias=False)
                                   for _ in range(n_sets if gain_head else 0))
        self.register_buffer("variance", torch.full((num_groups,), float(variance)))
        self._sizes: list[int] | None = None
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(hidden)  # PyTorch's default for both modules
            for p in [*self.lstms.parameters(), *self.heads.parameters()]:
                p.uniform_(-bound, bound, generator=gen)
            for p in [*self.skips.parameters(), *self.gains.parameters()]:
                p.zero_()  # π starts as the LSTM alone; the S-step learns the linear part

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), to rebuild the module before ``load_state_dict``."""
        return {"num_groups": self.num_groups, "hidden": self.hidden, "share": self.share,
                "step_scale": self.step_scale, "variance": float(self.variance[0]),
                "input_dim": self.input_dim,
                "grad_scale": self.feature_kwargs["grad_scale"], "seed": self.seed,
                "features": self.features, "skip": self.skip, "time_scale": self.time_scale,
                "gain_head": self.gain_head}

    def _set(self, group: int) -> int:
        """Index of the parameter set that serves ``group``."""
        if not 0 <= group < self.num_groups and self.share == "group":
            raise ValueError(f"group must be in [0, {self.num_groups}), got {group}")
        return group if self.share == "group" else 0

    def variance_of(self, group: int) -> Tensor:
        """Σ^π of ``group`` (a scalar tensor); one shared entry serves every group."""
        if self.num_groups == 1:
            return self.variance[0]
        if not 0 <= group < self.num_groups:
            raise ValueError(f"group must be in [0, {self.num_groups}), got {group}")
        return self.variance[group]

    def _run(self, s: int, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Cell ``s`` over ``x`` ``(L, M, k)`` from ``(h, c)`` ``(M, H)``: a ``(L, M)``."""
        out, (h, c) = self.lstms[s](x, (h[None].contiguous(), c[None].contiguous()))
        a = self.heads[s](out)[..., 0]
        if self.skip:
            lo, hi = self._skip_cols
            a = a + self.skips[s](x[..., lo:hi])[..., 0]
            if self.gain_head:  # a gain on the gradient features that the state sets
                a = a + (self.gains[s](out) * x[..., lo:hi]).sum(-1)
        return a, h[0], c[0]

    # -- StepPolicy

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        sizes = _layout(n, tuple(groups))
        if self.share == "group" and len(sizes) != self.num_groups:
            raise ValueError(
                f"this policy has one LSTM per group for {self.num_groups} group(s) "
                f"(share='group'), the problem has {len(sizes)}; use share='all' to run "
                "one policy on any architecture"
            )
        self._sizes = sizes
        w = self.heads[0].weight
        zeros = torch.zeros(batch, n, self.hidden, dtype=w.dtype, device=w.device)
        state = {"h": zeros, "c": zeros.clone()}
        if self.time_scale is not None:
            state["t"] = torch.zeros(batch, dtype=w.dtype, device=w.device)
        return state

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        if self._sizes is None:
            raise ValueError("call reset(n, groups, batch) before step()")
        if features.dim() != 3 or features.shape[-1] != self.input_dim:
            raise ValueError(
                f"features must be (B, n, {self.input_dim}), got {tuple(features.shape)}"
            )
        B, n, k = features.shape
        if n != sum(self._sizes) or state["h"].shape[:2] != (B, n):
            raise ValueError(
                f"features (B={B}, n={n}) do not match the state {tuple(state['h'].shape)} "
                f"and the layout of the last reset (n={sum(self._sizes)})"
            )
        dtype = self.heads[0].weight.dtype
        x, h, c = features.to(dtype), state["h"], state["c"]
        if self.time_scale is not None:
            x = torch.cat([x, (state["t"] / self.time_scale)[:, None, None].expand(B, n, 1)
                           .to(dtype)], -1)
            k += 1
        H = self.hidden
        if self.share == "all":  # one cell for every coordinate: no loop at all
            a, h1, c1 = self._run(0, x.reshape(1, B * n, k), h.reshape(B * n, H),
                                  c.reshape(B * n, H))
            a, h1, c1 = a.reshape(B, n), h1.reshape(B, n, H), c1.reshape(B, n, H)
        else:  # a loop over the few groups; coordinates of a group are one batch
            parts = []
            for g, (xg, hg, cg) in enumerate(zip(x.split(self._sizes, 1), h.split(self._sizes, 1),
                                                 c.split(self._sizes, 1), strict=True)):
                m = xg.shape[1]
                ag, hg, cg = self._run(g, xg.reshape(1, B * m, k), hg.reshape(B * m, H),
                                       cg.reshape(B * m, H))
                parts.append((ag.reshape(B, m), hg.reshape(B, m, H), cg.reshape(B, m, H)))
            a = torch.cat([p[0] for p in parts], 1)
            h1 = torch.cat([p[1] for p in parts], 1)
            c1 = torch.cat([p[2] for p in parts], 1)
        new = {"h": h1, "c": c1}
        if self.time_scale is not None:
            new["t"] = state["t"] + 1
        return (self.step_scale * a).to(features.dtype), new

    # -- training

    def mean_actions(self, obs: Tensor, group: int = 0) -> Tensor:
        """μ^π(o_t) ``(N, T, n_g)`` for a group's Ψ (or Φ) sequences ``(N, T, n_g, k)``.

        Teacher-forced: the memory starts at zero (as after :meth:`reset`) and runs
        through the given observations; the result is the action a, not Δx.
        """
        _check_obs(obs, self.input_dim)
        N, T, m, k = obs.shape
        s = self._set(group)
        dtype = self.heads[0].weight.dtype
        x = obs.to(dtype).permute(1, 0, 2, 3).reshape(T, N * m, k)
        if self.time_scale is not None:  # the step index, as step() counts it
            t = torch.arange(T, dtype=dtype, device=x.device) / self.time_scale
            x = torch.cat([x, t[:, None, None].expand(T, N * m, 1)], -1)
        zeros = x.new_zeros(N * m, self.hidden)
        a, _, _ = self._run(s, x, zeros, zeros)
        return a.reshape(T, N, m).permute(1, 0, 2)


# ----------------------------------------------------------------------------- linear policies


class InitialControllerPolicy(StepPolicy):
    """The mean of GPS's iteration-0 controller ψ₀ as an update rule (a reference).

    ψ₀ (gps.trainer) is a = −``gain``·(Φ's first gradient feature ḡ(t)/(|ḡ(t−5)| + 1),
    column 26 of the state s = (x, Φ)); the env clips a to [-1, 1] and steps
    Δx = ``step_scale``·a. This runs that rule without exploration noise, so a GPS
    result can be set beside its own hand-made starting point. ``grad_scale`` is Φ's.
    ``gain`` may also be a schedule, one gain per block of ``block`` steps (the last held
    after): a time-varying K_t in ψ's own class, to measure what GPS could find there.
    """

    features = "li_malik_state"

    def __init__(self, gain: float | Sequence[float] = 1.0, step_scale: float = 0.1,
                 grad_scale: str = "paper", block: int | None = None) -> None:
        gains = [float(g) for g in gain] if isinstance(gain, Sequence) else [float(gain)]
        bad = [g for g in gains if not (math.isfinite(g) and g > 0)]
        if not gains or bad:
            raise ValueError(f"gain must be finite and > 0 (or a non-empty schedule of such), "
                             f"got {gain!r}")
        if not (math.isfinite(step_scale) and step_scale > 0):
            raise ValueError(f"step_scale must be finite and > 0, got {step_scale!r}")
        if len(gains) > 1 and (isinstance(block, bool) or not isinstance(block, int)
                               or block < 1):
            raise ValueError(f"a gain schedule needs block, a positive int of steps; "
                             f"got {block!r}")
        self.gains, self.block, self.step_scale = gains, block, float(step_scale)
        self.feature_kwargs = {"grad_scale": check_grad_scale(grad_scale)}  # type: ignore[misc]

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return {"t": 0}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        dim = LiMalikState.N_OBJECTIVE + LiMalikState.N_GRADIENT + LiMalikState.N_ITERATE
        if features.dim() != 3 or features.shape[-1] != dim:
            raise ValueError(f"features must be Φ (li_malik_state), (B, n, {dim}); got "
                             f"{tuple(features.shape)}")
        t = int(state.get("t", 0))
        gain = self.gains[min(t // self.block, len(self.gains) - 1) if self.block else 0]
        a = (-gain * features[..., GRADIENT_COLUMNS["li_malik_state"][0]]).clamp(-1.0, 1.0)
        return self.step_scale * a, {"t": t + 1}


class LinearStatePolicy(nn.Module):
    """Stationary linear mean over per-coordinate state features: μ(s) = Kᵀs + k.

    A test policy for the S-step (:func:`s_step`): ``K`` ``(state_dim,)`` and ``k`` (a
    scalar) are shared across time, coordinates and groups, so the Mahalanobis
    regression has a unique, known minimizer.
    """

    def __init__(self, state_dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.K = nn.Parameter(torch.zeros(state_dim, dtype=dtype))
        self.k = nn.Parameter(torch.zeros((), dtype=dtype))

    def mean_actions(self, obs: Tensor, group: int = 0) -> Tensor:
        """μ ``(N, T, n_g)`` for states ``(N, T, n_g, state_dim)``; ``group`` is ignored."""
        _check_obs(obs, self.state_dim)
        return obs.to(self.K.dtype) @ self.K + self.k


class TimeVaryingLinearPolicy(nn.Module):
    """Time-indexed linear mean μ_t(s) = K_tᵀs + k_t, ``K`` ``(T, state_dim)``, ``k`` ``(T,)``.

    The policy class of ψ's mean (Li & Malik 2017, §3.4), so it can represent the LQR
    optimum exactly: used to test BADMM, where π must be able to reach ψ. Observations
    are per-coordinate states; parameters are shared across coordinates.
    """

    def __init__(self, T: int, state_dim: int, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.T, self.state_dim = T, state_dim
        self.K = nn.Parameter(torch.zeros(T, state_dim, dtype=dtype))
        self.k = nn.Parameter(torch.zeros(T, dtype=dtype))

    def mean_actions(self, obs: Tensor, group: int = 0) -> Tensor:
        """μ ``(N, T, n_g)`` for states ``(N, T, n_g, state_dim)``; ``group`` is ignored."""
        _check_obs(obs, self.state_dim)
        if obs.shape[1] != self.T:
            raise ValueError(f"obs has T={obs.shape[1]}, the policy has T={self.T}")
        return torch.einsum("ntjd,td->ntj", obs.to(self.K.dtype), self.K) + self.k[:, None]

    @torch.no_grad()
    def solve_s_step(self, obs: Tensor, target_mean: Tensor, precision: Tensor | float,
                     lam: Tensor | float, nu: Tensor | float, ridge: float = 0.0) -> None:
        """The exact minimizer of :func:`s_step`'s loss, written into ``K``, ``k``.

        Per t, weighted least squares of the shifted targets y' = y − λ_t/(ν_t P) on
        [s; 1] with weights ν_t P (module docstring); ``ridge`` (absolute) on K only.
        """
        _check_obs(obs, self.state_dim)
        N, T, m, ds = obs.shape
        y, P, lam_t, nu_t = _prepare(obs, target_mean, precision, lam, nu, self.K.dtype)
        s = obs.to(self.K.dtype).permute(1, 0, 2, 3).reshape(T, N * m, ds)
        y = y.permute(1, 0, 2).reshape(T, N * m)
        w = P.permute(1, 0, 2).reshape(T, N * m) * nu_t[:, None]
        y_shift = y - lam_t[:, None] / w
        X = torch.cat([s, torch.ones_like(s[..., :1])], -1)  # (T, M, ds + 1)
        XtW = X.mT * w[:, None, :]
        G = XtW @ X
        G[:, :ds, :ds] += ridge * torch.eye(ds, dtype=G.dtype)
        coef = torch.linalg.solve(G, (XtW @ y_shift[..., None]))[..., 0]
        self.K.copy_(coef[:, :ds])
        self.k.copy_(coef[:, ds])


# ----------------------------------------------------------------------------- the S-step


def _per_t(name: str, x: Tensor | float, T: int, dtype: torch.dtype) -> Tensor:
    """A scalar, ``(T,)`` or ``(T, 1)`` (da = 1) as a ``(T,)`` tensor."""
    x = torch.as_tensor(x, dtype=dtype)
    if x.dim() == 2 and x.shape[-1] == 1:
        x = x[:, 0]
    if x.dim() > 1 or (x.dim() == 1 and x.shape[0] != T):
        raise ValueError(f"{name} must be a scalar, (T,) or (T, 1) with T={T}; got "
                         f"{tuple(x.shape)}")
    return x.expand(T)


def _prepare(obs: Tensor, target_mean: Tensor, precision: Tensor | float, lam: Tensor | float,
             nu: Tensor | float, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate one group's S-step data: target, precision ``(N, T, n_g)``, λ and ν ``(T,)``."""
    N, T, m = obs.shape[:3]
    if target_mean.shape != (N, T, m):
        raise ValueError(f"target_mean must be (N, T, n_g) = {(N, T, m)}, got "
                         f"{tuple(target_mean.shape)}")
    P = torch.as_tensor(precision, dtype=dtype)
    if P.dim() <= 1:  # a scalar or one precision per t (G_t⁻¹ of ψ, the usual case)
        P = _per_t("precision", P, T, dtype)[None, :, None]
    try:
        P = P.expand(N, T, m)
    except RuntimeError:
        raise ValueError(f"precision of shape {tuple(P.shape)} does not broadcast to "
                         f"(N, T, n_g) = {(N, T, m)}") from None
    lam_t, nu_t = _per_t("lam", lam, T, dtype), _per_t("nu", nu, T, dtype)
    if not bool((P > 0).all()) or not bool((nu_t > 0).all()):
        raise ValueError("precision and nu must be > 0 (the S-step loss is unbounded below "
                         "otherwise)")
    return target_mean.to(dtype), P, lam_t, nu_t


def _as_list(x: Any, n: int | None) -> list[Any]:
    if isinstance(x, (list, tuple)):
        if n is not None and len(x) != n:
            raise ValueError(f"expected {n} per-group entries, got {len(x)}")
        return list(x)
    return [x] * (n or 1)


def s_step(
    policy: MeanActionPolicy,
    obs: Tensor | Sequence[Tensor],
    target_mean: Tensor | Sequence[Tensor],
    precision: Tensor | float | Sequence[Tensor | float],
    lam: Tensor | float | Sequence[Tensor | float],
    nu: Tensor | float | Sequence[Tensor | float],
    *,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int | None = None,
    groups: Sequence[int] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    max_grad_norm: float | None = None,
) -> list[float]:
    """θ-update of BADMM with Σ^π fixed (Li & Malik 2017, §3.4): supervised training of π.

    Minimizes, by ``steps`` Adam steps over minibatches of per-coordinate sequences,

        Σ_t mean_{sequences} [ λ_t μ^π(o_t) + ν_t/2 · P_t (μ^π(o_t) − E_ψ[a_t|s_t])² ],

    the paper's objective per coordinate (da = 1) with P_t = G_t⁻¹ the precision of ψ;
    the constant ν_t/2 (tr(G_t⁻¹Σ^π) − log Σ^π) is dropped. One group: ``obs``
    ``(N, T, n_g, k)``, ``target_mean`` ``(N, T, n_g)`` (ψ's mean K_t s + k_t at the
    sampled states), ``precision`` a scalar, ``(T,)`` or broadcastable to ``(N, T, n_g)``
    (per sample), ``lam`` and ``nu`` scalars, ``(T,)`` or ``(T, 1)``. Several groups:
    sequences of those, one entry per group (``groups`` names the policy's group index of
    each, default 0, 1, ...; λ, ν, P may also be given once for all); every
    (rollout, coordinate) sequence of every group then weighs the same, which is the
    paper's sum over coordinates up to a constant factor.

    A coordinate's sequence is independent of the others' under a coordinatewise policy,
    so minibatches draw ``batch_size`` sequences (default: all) from the pool of
    N·n_g sequences of all groups, each epoch a fresh permutation from ``generator``.
    ``optimizer`` (e.g. to keep Adam's moments across BADMM iterations) defaults to a
    new ``torch.optim.Adam(policy.parameters(), lr)``. Returns the minibatch losses.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    obs_l = list(obs) if isinstance(obs, (list, tuple)) else [obs]
    G = len(obs_l)
    tgt_l = _as_list(target_mean, G)
    prc_l, lam_l, nu_l = _as_list(precision, G), _as_list(lam, G), _as_list(nu, G)
    group_ids = list(groups) if groups is not None else list(range(G))
    if len(group_ids) != G:
        raise ValueError(f"groups has {len(group_ids)} entries for {G} group(s) of data")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    dtype = params[0].dtype

    # Flatten each group to sequences (S_g, T, 1, k): coordinates become sequences.
    seqs, tgts, prcs, lams, nus = [], [], [], [], []
    T = obs_l[0].shape[1]
    for o, y, P, la, n in zip(obs_l, tgt_l, prc_l, lam_l, nu_l, strict=True):
        if o.dim() != 4 or o.shape[1] != T:
            raise ValueError(f"every obs must be (N, T, n_g, k) with T={T}, got {tuple(o.shape)}")
        y, P, la, n = _prepare(o, y, P, la, n, dtype)
        N, _, m, k = o.shape
        seqs.append(o.to(dtype).permute(0, 2, 1, 3).reshape(N * m, T, 1, k))
        tgts.append(y.permute(0, 2, 1).reshape(N * m, T))
        prcs.append(P.permute(0, 2, 1).reshape(N * m, T))
        lams.append(la)
        nus.append(n)
    sizes = [s.shape[0] for s in seqs]
    total = sum(sizes)
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    bs = total if batch_size is None else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    bs = min(bs, total)
    opt = optimizer if optimizer is not None else torch.optim.Adam(params, lr=lr)

    history: list[float] = []
    perm, pos = torch.arange(total), total  # start a fresh epoch at the first step
    for _ in range(steps):
        if bs == total:
            idx = perm
        else:
            if pos + bs > total:
                perm, pos = torch.randperm(total, generator=generator), 0
            idx = perm[pos:pos + bs]
            pos += bs
        loss = torch.zeros((), dtype=dtype)
        for g in range(G):
            sel = idx[(idx >= offsets[g]) & (idx < offsets[g + 1])] - offsets[g]
            if sel.numel() == 0:
                continue
            mu = policy.mean_actions(seqs[g][sel], group_ids[g])[:, :, 0]  # (b, T)
            diff = mu - tgts[g][sel]
            per_t = lams[g] * mu + 0.5 * nus[g] * prcs[g][sel] * diff.square()
            loss = loss + per_t.sum()
        loss = loss / idx.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        history.append(float(loss.detach()))
    return history


def optimal_variance(precision: Tensor, nu: Tensor) -> Tensor:
    """Closed-form θ-update of a time-invariant Σ^π (Li & Malik 2017, §3.4).

    The Σ^π-dependent part of the θ-objective is Σ_t ν_t/2 (tr(G_t⁻¹Σ^π) − log|Σ^π|),
    minimized by Σ^π = (Σ_t ν_t G_t⁻¹ / Σ_t ν_t)⁻¹. For one scalar action per
    coordinate: ``precision`` G_t⁻¹ ``(..., T)`` and ``nu`` ``(..., T)`` give ``(...)``.
    """
    precision, nu = torch.broadcast_tensors(precision, nu)
    return nu.sum(-1) / (nu * precision).sum(-1)
