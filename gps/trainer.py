"""The GPS outer loop: one iteration as in DESIGN.md's "Data flow of one GPS iteration".

Per iteration (Li & Malik 2017, §3.4–3.6):

1. **Sample** M rollouts of ψ, the per-coordinate linear-Gaussian controllers (one per
   coordinate group, batch dim ``G``), in ``gym.make_vec(env_id, num_envs=M,
   return_state=True, layout="coords", max_episode_steps=T)``: per coordinate
   a_t = K_t s_t + k_t + chol(Σ_t)·ε with s_t the 76-dim state (x_t, Φ_t). The env
   clips a to [-1, 1] (Δx = step_scale·a); the clipped actions are recorded. Recorded,
   for the n' = G·``coords`` coordinates the fits use (step 2): states
   ``(M, T+1, n', 76)``, π's observations ``(M, T+1, n', k)`` (Ψ, k = 3, or Φ with
   ``pi_features``), actions ``(M, T, n')``,
   costs ``(M, T+1)`` (the true objective f(x_t) = ``info["loss"]``). An instance that
   diverges is frozen from then on (its state, Ψ and cost stay those of the step it
   diverged on; the env's autoreset is not recorded).
   With ``noise_correlation`` ρ > 0, ε of the coordinates of one group at one step
   share a common component of variance ρ (a GPSConfig option, not the paper's).
   Iteration 0's ψ is a hand-made controller a = −``init_gain``·(gradient feature of Φ,
   column 26 of s) with variance ``init_var``.
2. **Per group** g, ``coords`` coordinates are drawn before sampling (without
   replacement, or with it when the group is smaller) and pooled as N = M·coords samples: states
   ``(G, N, T+1, 76)``, actions ``(G, N, T, 1)``. Then, batched over groups:
   dynamics (fit_dynamics with a global_prior), the cost (``cost``: fit_taylor_cost on
   f or on log f, or §3.4's fit_quadratic_cost with ``form="diag"``), and
   ``badmm_iters`` rounds of [ψ-update (psi_update against π̃ = fit_linear_policy of
   π's mean actions at the sampled states; trust region to the sampling ψ), S-step
   (s_step on all groups' sampled observation sequences, targets E_ψ[a|s] = K s + k of
   the new ψ, precision G⁻¹ = ψ's ``inv_cov``), dual_update], then adapt_nu on the
   sample estimate of E_ψ[KL(ψ‖π)]. An iteration whose fits admit no ψ-update at any
   η keeps ψ (``psi_skipped`` in its metrics) instead of ending the run.

   With ``psi_update="pi2-gain"`` (an option, not the paper's; gps.pi2) the ψ-update is
   instead a path-integral update of ψ's gradient gain per block of steps from the
   rollouts' own outcomes (each rollout perturbs that schedule, ``gain_noise`` in its
   record; rollouts that diverged count as the worst, from ``diverged_at``); no dynamics
   or cost is fitted, π's S-step and the dual updates are as above,
   and ``time_lqg`` times that update.

   *Cost choice*: the objective f(x_t) is one number per instance, shared by all its
   coordinates. ``"fit"`` gives each coordinate sample its instance's cost and
   regresses f on one coordinate's state (§3.4–3.5); ``"taylor"`` (default) and
   ``"taylor-log"`` charge each coordinate its share of f(x_{t+1}) (or log f) from a
   second-order expansion in its action (gps.cost.fit_taylor_cost). The LQG horizon is
   T: with ``"fit"`` the cost of step t is that of f(x_t) (t = 0..T-1) and f(x_T) is
   only reported; with the Taylor costs step t is charged the change its action makes
   to f(x_{t+1}).

   *Diverged rollouts* are left out of every fit (their frozen, sanitized records would
   otherwise enter the dynamics, the cost's gradient scale and the S-step as constant
   ±1e6 states); with fewer than two finite rollouts the iteration keeps ψ
   (``psi_skipped``). The dual search's warnings (η at its bound, no bracket within
   its iterations) are counted in ``psi_warnings`` rather than printed every iteration.
3. **Metrics** (one JSON line in ``out/metrics.jsonl``) and an atomic **checkpoint**
   (``out/checkpoint.pt``); with ``save_policies`` also this iteration's π as an agent
   file (``POLICY_FILE``), for choosing π afterwards on more validation seeds.
   Randomness of iteration i (env seeds, exploration noise, subsampling, S-step
   minibatches) comes from generators seeded by (seed, i), so a resumed run reproduces
   an uninterrupted one.

Float64 inside fits and LQG; float32 in π and in ψ's actions during sampling (the
precision of the env's states and actions).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from gps.badmm import (
    BADMMState,
    adapt_nu,
    dual_update,
    fit_linear_policy,
    psi_update,
    sample_kl,
)
from gps.cost import fit_quadratic_cost, fit_taylor_cost, step_curvature
from gps.dynamics import fit_dynamics, global_prior, joint_moments
from gps.lqg import LQGError
from gps.pi2 import costs_to_go, pi2_update, rank_divergences
from gps.policy import GRADIENT_COLUMNS, OBSERVATIONS, CoordinatewiseLSTMPolicy, s_step
from gps.types import LinearGaussianController, QuadraticCost
from optenv.features import check_grad_scale
from optenv.problems.base import check_seed

__all__ = ["EVAL_STATS", "METRIC_KEYS", "POLICY_FILE", "GPSConfig", "GPSTrainer",
           "config_changes", "evaluation_cost"]

_F64 = torch.float64
#: column of the gradient feature ḡ(t)/(|ḡ(t-5)|+1) in the 76-dim state (x, Φ)
GRAD_COLUMN = 1 + GRADIENT_COLUMNS["li_malik_state"][0]

#: GPSConfig.cost: the Taylor share of f(x_{t+1}) or of log f(x_{t+1}) per coordinate
#: (gps.cost.fit_taylor_cost), or §3.4's quadratic fit of f on the state
COSTS = ("taylor", "taylor-log", "fit")
#: GPSConfig.psi_update: §3.4's LQG, or gps.pi2's path-integral update of the gain schedule
PSI_UPDATES = ("lqg", "pi2-gain")
#: π's evaluation statistics (GPSConfig.eval_stat), and the floor of "log_mean"
EVAL_STATS = ("mean", "median", "log_mean")
LOG_FLOOR = 1e-45


def evaluation_cost(final: Tensor, stat: str) -> float:
    """π's evaluation cost (``GPSConfig.eval_stat``) from the final objectives of its
    evaluation runs (inf where a run diverged): their mean (inf if any diverged), median
    (inf if half did) or "log_mean", the mean of log10 max(f, LOG_FLOOR) (inf if any
    diverged)."""
    if stat not in EVAL_STATS:
        raise ValueError(f"stat must be one of {EVAL_STATS}, got {stat!r}")
    final = final.double()
    if stat == "mean":
        return float(final.mean())
    if stat == "median":
        return float(final.median())
    return float(final.clamp_min(LOG_FLOOR).log10().mean())


#: where ``save_policies`` puts iteration i's π, relative to the run folder
POLICY_FILE = "policies/iteration_{:04d}.pt"

#: keys of every line of metrics.jsonl
METRIC_KEYS = (
    "iteration", "psi_final_cost", "psi_log_cost", "psi_diverged", "psi_skipped", "psi_warnings",
    "pi_final_cost",
    "pi_eval_cost", "pi_diverged", "pi_best_cost", "kl_psi_prev",
    "kl_psi_pi", "eta", "nu_mean", "lam_norm", "mean_action_gap", "s_step_loss",
    "time_sample", "time_dynamics", "time_cost", "time_lqg", "time_s_step", "time_eval",
    "time_total", "env_steps",
)


@dataclass
class GPSConfig:
    """Settings of a GPS run (JSON-able)."""

    env_id: str = "optenv/Quadratic-v0"
    iterations: int = 10
    samples: int = 8  # M: ψ rollouts per iteration
    horizon: int | None = None  # T (default: the env's)
    coords: int = 64  # coordinates per group used for the fits
    epsilon: float = 1.0  # KL step Σ_t KL(ψ ‖ ψ')
    badmm_iters: int = 1
    alpha: float = 0.1
    nu0: float = 0.01
    nu_kl_target: float = 0.1  # per-step target of E_ψ[KL(ψ‖π)] in adapt_nu
    prior_strength: float = 1.0
    dyn_ridge: float = 1e-6
    cost_ridge: float = 1e-3
    # "taylor" (gps.cost.fit_taylor_cost on f), "taylor-log" (the same on log f: every
    # step's relative decrease counts alike, so late progress at small f is not ignored)
    # or "fit" (§3.4's state fit)
    cost: str = "taylor"
    # the Taylor costs' curvature h: one for all steps (None) or one per block of this many
    # steps (gps.cost.step_curvature); and the floor under f in "taylor-log" (f = 0 after
    # float32 underflow: with 1e-30 one such step outweighs every other in h's fit)
    curvature_window: int | None = None
    log_floor: float = 1e-30
    init_gain: float = 1.0
    init_var: float = 0.05
    # correlation ρ of ψ's exploration noise between the coordinates of a group in one
    # rollout step (each coordinate's noise keeps its variance Σ_t): a change of ψ moves
    # all of a group's coordinates together, but with independent noise (ρ = 0, the
    # paper's) the per-coordinate fits see one coordinate's effect on the shared
    # objective, about 1/n of it; with ρ > 0 they also see the group's common move
    noise_correlation: float = 0.0
    # the ψ-update: the LQG of §3.4 ("lqg"), or a path-integral update of ψ's gain on its
    # gradient feature, one gain per block of ``pi2_block`` steps ("pi2-gain", gps.pi2;
    # not the paper's): each rollout perturbs the schedule by pi2_sigma·z (z ~ N(0, I),
    # shared by every coordinate), and the gains move to the mean of z weighted by
    # exp(−S/η), S the rollout's mean log10 f from the block on, η such that the weights
    # are within ``pi2_kl`` of uniform. No dynamics or cost fit is made.
    psi_update: str = "lqg"
    pi2_block: int = 100
    pi2_sigma: float = 0.1
    pi2_kl: float = 1.0
    keep: str = "best"  # the agent's policy: "best" π by evaluation cost, or the "last"
    # also save every iteration's π as an agent file, out/policies/iteration_NNNN.pt, so
    # that π can be chosen afterwards on more validation seeds (benchmarks/gps_select.py)
    save_policies: bool = False
    # the evaluation cost over eval_seeds of f at eval_steps: "mean", "median" (over ~10
    # validation seeds it picks π the way the bench's median reports it) or "log_mean",
    # the mean of log10 max(f, 1e-45) (it ranks policies whose medians tie at an
    # underflowed f = 0, and weighs every seed's order of magnitude alike)
    eval_stat: str = "mean"
    s_steps: int = 50
    s_lr: float = 1e-3
    # S-step loss weights: None, the paper's (every step's squared error in ψ's precision),
    # or a block length B: each block of B steps' loss is divided by the block's mean
    # square of ψ's target action, times the mean square over all steps, so every phase of
    # the run weighs alike in π's fit although the steps shrink with t (with AdaGrad's
    # normalization E[f²] falls ~1000× from the first to the last 100 of 400 steps, so the
    # paper's loss weighs the first block most)
    s_block_norm: int | None = None
    s_batch: int | None = 256
    hidden: int = 128  # π's LSTM cells, as the paper (§4); the shipped gps-psd has 32
    share: str = "all"
    pi_variance: float = 1e-2
    # π's Ψ (grad_scale) and ψ's Φ (state_grad_scale) read the raw gradient ("paper"),
    # the gradient over its RMS per instance ("instance_rms": scale-free, so the features
    # keep the direction near a minimum) or over the root of each coordinate's running
    # sum of squares ("adagrad": then ψ₀ with init_gain c is a smoothed AdaGrad of lr
    # c·step_scale)
    grad_scale: str = "paper"
    state_grad_scale: str = "paper"
    # what π reads: Ψ ("li_malik_obs", the paper's) or ψ's Φ ("li_malik_state"), and
    # whether π adds a linear path from its features to the action (gps.policy), and
    # whether π also reads the step index t/T (``time_scale=T``: ψ's K_t vary in time)
    pi_features: str = "li_malik_obs"
    pi_skip: bool = False
    pi_time: bool = False
    pi_gain_head: bool = False  # the linear path's gain read from π's state (needs pi_skip)
    eval_seeds: list[int] = field(default_factory=lambda: [10_000, 10_001])
    eval_steps: int | None = None  # π's evaluation rollouts (default: T)
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.eval_steps is not None and int(self.eval_steps) < 1:
            raise ValueError(f"eval_steps must be >= 1 or None, got {self.eval_steps!r}")
        for name in ("iterations", "samples", "coords", "badmm_iters", "s_steps", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.s_block_norm is not None and (
                isinstance(self.s_block_norm, bool) or not isinstance(self.s_block_norm, int)
                or self.s_block_norm < 1):
            raise ValueError(f"s_block_norm must be a positive int or None, "
                             f"got {self.s_block_norm!r}")
        if self.horizon is not None and int(self.horizon) < 1:
            raise ValueError(f"horizon must be >= 1 or None, got {self.horizon!r}")
        if self.curvature_window is not None and (
                isinstance(self.curvature_window, bool)
                or not isinstance(self.curvature_window, int) or self.curvature_window < 1):
            raise ValueError(f"curvature_window must be a positive int or None, "
                             f"got {self.curvature_window!r}")
        if not (isinstance(self.log_floor, (int, float)) and 0 < self.log_floor < 1):
            raise ValueError(f"log_floor must be in (0, 1), got {self.log_floor!r}")
        if not (isinstance(self.noise_correlation, (int, float))
                and not isinstance(self.noise_correlation, bool)
                and 0 <= self.noise_correlation <= 1):
            raise ValueError(f"noise_correlation must be in [0, 1], "
                             f"got {self.noise_correlation!r}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon!r}")
        if self.psi_update not in PSI_UPDATES:
            raise ValueError(f"psi_update must be one of {PSI_UPDATES}, "
                             f"got {self.psi_update!r}")
        if isinstance(self.pi2_block, bool) or not isinstance(self.pi2_block, int) \
                or self.pi2_block < 1:
            raise ValueError(f"pi2_block must be a positive int, got {self.pi2_block!r}")
        for name in ("pi2_sigma", "pi2_kl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.eval_stat not in EVAL_STATS:
            raise ValueError(f"eval_stat must be one of {EVAL_STATS}, got {self.eval_stat!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        check_seed("seed", self.seed)
        for name in ("grad_scale", "state_grad_scale"):
            check_grad_scale(getattr(self, name), name)
        if self.pi_features not in OBSERVATIONS:
            raise ValueError(f"pi_features must be one of {OBSERVATIONS}, "
                             f"got {self.pi_features!r}")
        for name in ("pi_skip", "pi_time", "pi_gain_head", "save_policies"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.pi_gain_head and not self.pi_skip:
            raise ValueError("pi_gain_head=True needs pi_skip=True (it sets the linear "
                             "path's gain)")
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")


def config_changes(saved: str, config: GPSConfig, ignore: tuple[str, ...] = ()) -> str:
    """How ``config`` differs from a checkpoint's JSON config, outside ``ignore``.

    ``"a=1, b='x'; now a=2, b='y'"``, or ``""`` when they agree. Options added after the
    checkpoint was written count as run at their defaults.
    """
    now = json.loads(json.dumps(asdict(config)))
    then = {**json.loads(json.dumps(asdict(GPSConfig()))), **json.loads(saved)}
    changed = sorted(k for k in then.keys() | now.keys()
                     if k not in ignore and then.get(k) != now.get(k))
    if not changed:
        return ""
    return (", ".join(f"{k}={then.get(k)!r}" for k in changed) + "; now "
            + ", ".join(f"{k}={now.get(k)!r}" for k in changed))


class Draw(NamedTuple):
    """One iteration's samples (:meth:`GPSTrainer.draw`)."""

    diverged: Tensor  # (M,) bool
    live: dict[str, Tensor]  # the rollouts the fits use
    pool: dict[str, Tensor]  # their recorded coordinates, grouped
    fit_ok: bool  # at least two rollouts stayed finite
    data: dict[str, Tensor]  # every rollout


def _rollouts(data: dict[str, Tensor], which: Tensor) -> dict[str, Tensor]:
    """The rollouts ``which`` (bool ``(M,)``) of :meth:`GPSTrainer.sample`'s record."""
    return {key: value[which] for key, value in data.items()}


def _controller_to_dict(c: LinearGaussianController) -> dict[str, Tensor]:
    return {"K": c.K, "k": c.k, "cov": c.cov, "chol": c.chol, "inv_cov": c.inv_cov}


def _sub(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


class GPSTrainer:
    """Convolutional GPS on one env id (module docstring). ``run()`` trains.

    ``out`` (optional) is the run folder: ``metrics.jsonl``, ``checkpoint.pt``,
    ``config.json``. ``resume=True`` continues from ``out/checkpoint.pt`` if present.
    """

    def __init__(self, config: GPSConfig, out: str | Path | None = None,
                 resume: bool = False) -> None:
        import gymnasium as gym

        import optenv  # noqa: F401  (registers the envs)
        from optenv.registry import task_for

        self.config = config
        self.out = None if out is None else Path(out)
        if config.save_policies and self.out is None:
            raise ValueError("save_policies=True needs a run folder (out)")
        family, horizon = task_for(config.env_id, **config.env_kwargs)
        self.family = family
        self.T = int(config.horizon or horizon)
        if self.T < 1:
            raise ValueError(f"{config.env_id} has no horizon; set horizon")
        self.env = gym.make_vec(config.env_id, num_envs=config.samples, return_state=True,
                                layout="coords", max_episode_steps=self.T,
                                features=config.pi_features,
                                feature_kwargs={"grad_scale": config.grad_scale},
                                state_feature_kwargs={"grad_scale": config.state_grad_scale},
                                **config.env_kwargs)
        self.n = int(self.env.n)
        self.groups = tuple(self.env.groups)
        self.G = len(self.groups)
        self.step_scale = float(self.env.loop.step_scale)  # the env's, registered or given
        self.ds = 76
        self.policy = CoordinatewiseLSTMPolicy(
            num_groups=self.G, hidden=config.hidden, share=config.share,  # type: ignore[arg-type]
            step_scale=self.step_scale, variance=config.pi_variance,
            grad_scale=config.grad_scale, seed=config.seed,
            features=config.pi_features, skip=config.pi_skip,
            time_scale=float(self.T) if config.pi_time else None,
            gain_head=config.pi_gain_head)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.s_lr)
        T, G, ds = self.T, self.G, self.ds
        K = torch.zeros(G, T, 1, ds, dtype=_F64)
        K[..., 0, GRAD_COLUMN] = -config.init_gain
        cov = torch.full((G, T, 1, 1), config.init_var, dtype=_F64)
        self.psi = LinearGaussianController.from_cov(K, torch.zeros(G, T, 1, dtype=_F64), cov)
        self.badmm = BADMMState.initial(T, 1, (G,), nu=config.nu0, alpha=config.alpha)
        self.eta = torch.ones(G, dtype=_F64)
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        # π with the lowest evaluation cost so far (BADMM's π can drift away from a good ψ)
        self.best_cost = math.inf
        self.best_policy = {k: v.clone() for k, v in self.policy.state_dict().items()}
        if resume and self.out is not None and (self.out / "checkpoint.pt").is_file():
            self._load(self.out / "checkpoint.pt")

    # ------------------------------------------------------------------ checkpoints

    def final_policy(self) -> CoordinatewiseLSTMPolicy:
        """The policy the run hands over: the best π (``keep="best"``) or the last one."""
        if self.config.keep == "last":
            return self.policy
        best = CoordinatewiseLSTMPolicy(**self.policy.config())
        best.load_state_dict(self.best_policy)
        return best

    def checkpoint(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "config": json.dumps(asdict(self.config)),
            "psi": _controller_to_dict(self.psi),
            "lam": self.badmm.lam, "nu": self.badmm.nu, "alpha": self.badmm.alpha,
            "eta": self.eta,
            "policy_config": self.policy.config(),
            "policy": self.policy.state_dict(),
            "best_cost": self.best_cost,
            "best_policy": self.best_policy,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def _load(self, path: Path) -> None:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        # a resumed run continues the same run: only its length may change
        changed = config_changes(ck["config"], self.config, ignore=("iterations",))
        if changed:
            raise ValueError(
                f"cannot resume {path}: its run was configured with {changed}"
                " (only iterations may change on --resume; start a new --out instead)")
        self.iteration = int(ck["iteration"])
        self.psi = LinearGaussianController(**ck["psi"])
        self.badmm = BADMMState(ck["lam"], ck["nu"], float(ck["alpha"]))
        self.eta = ck["eta"]
        self.policy.load_state_dict(ck["policy"])
        self.best_cost = float(ck["best_cost"])
        self.best_policy = ck["best_policy"]
        self.optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        metrics = self.out / "metrics.jsonl" if self.out is not None else None
        if metrics is not None and metrics.is_file():  # drop lines past the checkpoint
            lines = metrics.read_text().splitlines()[: self.iteration]
            from optenv.runio import atomic_write_text

            atomic_write_text(metrics, "".join(line + "\n" for line in lines))
            self.history = [json.loads(line) for line in lines]

    # ------------------------------------------------------------------ sampling

    def _choose(self, gen: torch.Generator) -> Tensor:
        """``coords`` coordinates per group (global indices, group after group)."""
        c, picks = self.config.coords, []
        for grp in self.groups:
            size = grp.size
            idx = (torch.randperm(size, generator=gen)[:c] if size >= c
                   else torch.randint(0, size, (c,), generator=gen))
            picks.append(idx + grp.slice.start)
        return torch.cat(picks)

    def sample(self, gen: torch.Generator, keep: Tensor | None = None) -> dict[str, Tensor]:
        """M rollouts of ψ: states, obs, clipped actions, costs (module docstring).

        ψ acts on every coordinate, but only the coordinates ``keep`` are recorded
        (all when ``None``): the fits use a subsample, and recording the 76-dim state of
        every coordinate at every step would need gigabytes on a 2842-parameter MLP.
        """
        M, T, n = self.config.samples, self.T, self.n
        rho = float(self.config.noise_correlation)
        keep = torch.arange(n) if keep is None else keep
        obs, info = self.env.reset(seed=_sub(gen) % (2**31))
        # The env's float32 states of every coordinate stay float32 (ψ's mean is computed
        # in float32, the precision of the action the env takes); only the recorded
        # coordinates are widened for the fits. The env sanitizes them: always finite.
        full = torch.as_tensor(info["state"])
        K32, k32 = self.psi.K.float(), self.psi.k.float()
        states = [full[:, keep].double()]
        observations = [torch.as_tensor(obs)[:, keep]]
        costs = [torch.as_tensor(info["loss"], dtype=_F64)]
        grad = torch.as_tensor(info["grad"], dtype=_F64)
        grads = [grad[:, keep]]
        lin, sq = [], []  # gᵀΔx and ‖Δx‖² per rollout and step (all coordinates)
        actions = []
        dead = torch.zeros(M, dtype=torch.bool)
        dead_at = torch.full((M,), T + 1, dtype=torch.long)  # cost index of the divergence
        pi2 = self.config.psi_update == "pi2-gain"
        if pi2:  # one perturbation of the gain schedule per rollout (gps.pi2)
            gain_noise = torch.randn(M, -(-T // self.config.pi2_block), generator=gen,
                                     dtype=_F64)
            dK = (self.config.pi2_sigma * gain_noise).float()  # (M, B)
        for t in range(T):
            a = torch.empty(M, n, dtype=_F64)
            noise = torch.randn(M, n, generator=gen, dtype=_F64)
            if rho > 0:  # one common draw per rollout and group, mixed in at variance ρ
                common = torch.randn(M, self.G, generator=gen, dtype=_F64)
                for g, grp in enumerate(self.groups):
                    noise[:, grp.slice] = (math.sqrt(1.0 - rho) * noise[:, grp.slice]
                                           + math.sqrt(rho) * common[:, g:g + 1])
            for g, grp in enumerate(self.groups):
                mean = full[:, grp.slice] @ K32[g, t, 0] + k32[g, t, 0]  # (M, n_g)
                if pi2:
                    b = t // self.config.pi2_block
                    mean = mean + dK[:, b:b + 1] * full[:, grp.slice, GRAD_COLUMN]
                a[:, grp.slice] = mean + self.psi.chol[g, t, 0, 0] * noise[:, grp.slice]
            a = torch.where(dead[:, None], 0.0, a.clamp(-1.0, 1.0))
            obs, _, terminated, _, info = self.env.step(a.numpy().astype(np.float32))
            actions.append(a[:, keep])
            dx = self.step_scale * a.float().double()  # the step the env applied (float32 a)
            lin.append((grad * dx).sum(1))
            sq.append(dx.square().sum(1))
            grad = torch.where(dead[:, None], grad, torch.as_tensor(info["grad"], dtype=_F64))
            # a diverged instance keeps acting on its frozen state (its action is 0 anyway)
            new = torch.as_tensor(info["state"])
            full = torch.where(dead[:, None, None], full, new) if bool(dead.any()) else new
            s1 = full[:, keep].double()
            o1 = torch.as_tensor(obs)[:, keep]
            c1 = torch.as_tensor(info["loss"], dtype=_F64)
            # A diverged instance is autoreset by the env one step later: freeze its
            # record at the step it diverged on instead (constant state, its last cost).
            states.append(torch.where(dead[:, None, None], states[-1], s1))
            observations.append(torch.where(dead[:, None, None], observations[-1], o1))
            costs.append(torch.where(dead, costs[-1], c1))
            grads.append(torch.where(dead[:, None], grads[-1], grad[:, keep]))
            terminated = torch.as_tensor(terminated)
            dead_at = torch.where(terminated & ~dead, t + 1, dead_at)
            dead |= terminated
        clean = lambda x: torch.nan_to_num(x, nan=0.0, posinf=1e6, neginf=-1e6)  # noqa: E731
        return {
            "states": clean(torch.stack(states, 1)),  # (M, T+1, len(keep), ds)
            "obs": clean(torch.stack(observations, 1).float()),  # (M, T+1, len(keep), k)
            "actions": torch.stack(actions, 1),  # (M, T, len(keep))
            "costs": clean(torch.stack(costs, 1)),  # (M, T+1)
            "grads": clean(torch.stack(grads, 1)),  # (M, T+1, len(keep))
            "lin": torch.stack(lin, 1),  # (M, T)
            "sq": torch.stack(sq, 1),  # (M, T)
            "diverged": dead,  # (M,)
            "diverged_at": dead_at,  # (M,): the step it diverged at, T+1 if it did not
            **({"gain_noise": gain_noise} if pi2 else {}),  # (M, B)
        }

    def _pool(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """Group the recorded coordinates (``_choose``'s layout): (G, N, ...), N = M·coords."""
        c, M, T = self.config.coords, data["costs"].shape[0], self.T
        S, O, A, D = [], [], [], []
        for g in range(self.G):
            idx = torch.arange(g * c, (g + 1) * c)
            S.append(data["states"][:, :, idx].permute(0, 2, 1, 3).reshape(M * c, T + 1, -1))
            D.append(data["grads"][:, :, idx].permute(0, 2, 1).reshape(M * c, T + 1))
            O.append(data["obs"][:, :, idx])  # (M, T+1, c, k)
            A.append(data["actions"][:, :, idx].permute(0, 2, 1).reshape(M * c, T, 1))
        costs = data["costs"][:, None, :].expand(M, c, T + 1).reshape(M * c, T + 1)
        return {"states": torch.stack(S), "obs": O, "actions": torch.stack(A),
                "grads": torch.stack(D), "costs": costs.expand(self.G, M * c, T + 1)}

    def draw(self, gen: torch.Generator) -> Draw:
        """Steps 1–2's samples (:class:`Draw`).

        ``live`` are the rollouts the fits use (those that stayed finite; all of them, and
        ``fit_ok`` False, when fewer than two did), ``pool`` their recorded coordinates
        grouped (``_pool``), ``data`` every rollout (the PI² update ranks the diverged).
        """
        data = self.sample(gen, self._choose(gen))
        diverged = data["diverged"]
        fit_ok = int((~diverged).sum()) >= 2
        live = _rollouts(data, ~diverged) if fit_ok else data
        return Draw(diverged, live, self._pool(live), fit_ok, data)

    def fit_cost(self, live: dict[str, Tensor], pool: dict[str, Tensor]) -> QuadraticCost:
        """The local cost ``config.cost`` fitted to ``draw``'s samples (module docstring)."""
        cfg, T = self.config, self.T
        X = pool["states"][:, :, :T]
        if cfg.cost == "fit":
            return fit_quadratic_cost(X, pool["costs"][:, :, :T], 1, ridge=cfg.cost_ridge,
                                      form="diag")
        f, lin, grads = live["costs"], live["lin"], pool["grads"][:, :, :T]
        if cfg.cost == "taylor-log":
            # ∇log f = ∇f / f: the same expansion with every step's scale divided out
            f_pos = f.clamp_min(cfg.log_floor)
            lin = lin / f_pos[:, :-1]
            grads = grads / pool["costs"][:, :, :T].clamp_min(cfg.log_floor)
            f = f_pos.log()
        h = step_curvature(f[:, 1:] - f[:, :-1], lin, live["sq"], window=cfg.curvature_window)
        return fit_taylor_cost(X, grads, self.step_scale, h, ridge=cfg.cost_ridge)

    def _pi2_update(self, prev: LinearGaussianController,
                    data: dict[str, Tensor]) -> tuple[LinearGaussianController, float]:
        """ψ with its gradient gains moved by gps.pi2 (``psi_update="pi2-gain"``).

        ``data``: every rollout, the diverged ones ranked worst (``rank_divergences``).
        Returns the new controller and the mean over blocks of the weights' KL from
        uniform (what ``pi2_kl`` bounds).
        """
        cfg, T = self.config, self.T
        log_f = data["costs"].clamp_min(LOG_FLOOR).log10()  # (M, T+1)
        S, valid = rank_divergences(costs_to_go(log_f, cfg.pi2_block, T),
                                    data["diverged_at"], cfg.pi2_block, T)
        delta, kl = pi2_update(data["gain_noise"], S, cfg.pi2_sigma, cfg.pi2_kl, valid)
        K = prev.K.clone()
        K[..., 0, GRAD_COLUMN] += delta.repeat_interleave(cfg.pi2_block)[:T]
        return LinearGaussianController(K, prev.k, prev.cov, prev.chol, prev.inv_cov), \
            float(kl.mean())

    def loss_weights(self, target: Tensor) -> Tensor:
        """The S-step's per-step loss weights ``(G, T)`` for ψ's targets ``(G, N, T)``.

        Ones, or with ``s_block_norm`` = B the weight E[a²] / E_b[a²] of block b's steps: a
        block's loss is then its squared error relative to its own action scale.
        """
        B, T = self.config.s_block_norm, self.T
        if B is None:
            return torch.ones(target.shape[0], T, dtype=_F64)
        sq = target.square().mean(1)  # (G, T)
        nb = -(-T // B)
        pad = sq.new_zeros(sq.shape[0], nb * B - T)
        count = torch.full((nb,), float(B), dtype=_F64)
        count[-1] = T - (nb - 1) * B
        per_block = torch.cat([sq, pad], 1).reshape(-1, nb, B).sum(-1) / count  # (G, nb)
        # a block where ψ acts exactly 0 (every f underflowed) has nothing to fit: weight 1
        scale = torch.where(per_block > 0, sq.mean(1, keepdim=True) / per_block.clamp_min(
            torch.finfo(_F64).tiny), torch.ones_like(per_block))
        return scale.repeat_interleave(B, 1)[:, :T]

    def fit_policy(self, psi: LinearGaussianController, pool: dict[str, Tensor],
                   gen: torch.Generator) -> tuple[Tensor, list[float]]:
        """The S-step: ``s_steps`` steps of π towards ψ's mean actions at the pooled samples.

        Returns ψ's targets ``(G, N, T)`` (float64) and the S-step's minibatch losses.
        """
        cfg, T, G = self.config, self.T, self.G
        S = pool["states"][:, :, :T]
        M = S.shape[1] // cfg.coords
        target = (torch.einsum("gtij,gntj->gnti", psi.K, S) + psi.k[:, None])[..., 0]
        weights = self.loss_weights(target)
        tgt = [target[g].reshape(M, cfg.coords, T).permute(0, 2, 1).float() for g in range(G)]
        prec = [(psi.inv_cov[g, :, 0, 0] * weights[g]).float() for g in range(G)]
        lam = [self.badmm.lam[g].float() for g in range(G)]
        nu = [self.badmm.nu[g].float() for g in range(G)]
        losses = s_step(self.policy, [o[:, :T] for o in pool["obs"]], tgt, prec, lam, nu,
                        steps=cfg.s_steps, lr=cfg.s_lr, batch_size=cfg.s_batch,
                        optimizer=self.optimizer, generator=gen)
        return target, losses

    def pi_means(self, obs: list[Tensor]) -> Tensor:
        """π's mean actions at the pooled samples: (G, N, T, 1) float64."""
        with torch.no_grad():
            out = []
            for g, o in enumerate(obs):
                mu = self.policy.mean_actions(o[:, : self.T], g)  # (M, T, c)
                out.append(mu.permute(0, 2, 1).reshape(-1, self.T, 1))
        return torch.stack(out).to(_F64)

    # ------------------------------------------------------------------ one iteration

    def step(self) -> dict[str, Any]:
        """One GPS iteration; returns its metrics (also appended / checkpointed)."""
        cfg, T, G = self.config, self.T, self.G
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + self.iteration)
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        diverged, live, pool, fit_ok, data = self.draw(gen)
        times["sample"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        X, U = pool["states"], pool["actions"]  # (G, N, T+1, ds), (G, N, T, 1)
        lqg = cfg.psi_update == "lqg"  # "pi2-gain" needs neither dynamics nor a cost fit
        if fit_ok and lqg:
            moments = joint_moments(X, U)  # one pass serves the prior and the fit
            prior = global_prior(X, U, strength=cfg.prior_strength, moments=moments)
            dyn = fit_dynamics(X, U, prior, ridge=cfg.dyn_ridge, moments=moments)
        s0 = X[:, :, 0]
        mu0 = s0.mean(1)
        d0 = s0 - mu0[:, None]
        Sigma0 = d0.mT @ d0 / d0.shape[1] + 1e-6 * torch.eye(self.ds, dtype=_F64)
        times["dynamics"] = time.perf_counter() - t1

        t1 = time.perf_counter()
        if fit_ok and lqg:
            cost = self.fit_cost(live, pool)
        times["cost"] = time.perf_counter() - t1

        Sigma_pi = torch.stack([self.policy.variance_of(g).to(_F64) for g in range(G)])
        Sigma_pi = Sigma_pi.reshape(G, 1, 1, 1)
        S = X[:, :, :T]  # (G, N, T, ds)
        prev = self.psi
        times["lqg"] = times["s_step"] = 0.0
        losses: list[float] = []
        sol = None
        psi, eta, kl_prev, skipped = prev, self.eta, 0.0, not fit_ok
        n_warnings = 0
        if not fit_ok:
            warnings.warn(f"GPS iteration {self.iteration + 1}: ψ-update skipped, ψ kept "
                          f"({int(diverged.sum())} of {cfg.samples} rollouts diverged)",
                          RuntimeWarning, stacklevel=2)
        pi_mean = None  # π's mean actions at the samples, as of the last S-step
        updated_by_pi2 = False
        for _ in range(0 if skipped else cfg.badmm_iters):
            t1 = time.perf_counter()
            if lqg:
                if pi_mean is None:
                    pi_mean = self.pi_means(pool["obs"])  # (G, N, T, 1)
                pi_lin = fit_linear_policy(S, pi_mean, Sigma_pi)
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        sol = psi_update(dyn, cost, self.badmm, pi_lin, prev, mu0, Sigma0,
                                         cfg.epsilon, self.eta)
                    n_warnings += len(caught)
                except LQGError as err:
                    # these samples' fits admit no ψ-update at any η: keep ψ (and π) and
                    # draw fresh samples next iteration rather than end a long run here
                    warnings.warn(f"GPS iteration {self.iteration + 1}: ψ-update skipped, ψ "
                                  f"kept ({err})", RuntimeWarning, stacklevel=2)
                    skipped = True
                times["lqg"] += time.perf_counter() - t1
                if skipped:
                    break
                psi, eta = sol.controller, sol.eta.clamp(1e-6, 1e16)
                kl_prev = float(sol.kl.mean())
            elif not updated_by_pi2:  # gps.pi2 from the rollouts' own outcomes: once,
                # as π does not pull ψ here (further BADMM rounds repeat only the S-step)
                psi, kl_prev = self._pi2_update(prev, data)
                updated_by_pi2 = True
                times["lqg"] += time.perf_counter() - t1

            t1 = time.perf_counter()
            target, losses = self.fit_policy(psi, pool, gen)
            pi_mean = self.pi_means(pool["obs"])
            self.badmm = dual_update(self.badmm, target[..., None].mean(1), pi_mean.mean(1))
            times["s_step"] += time.perf_counter() - t1
        if sol is None and not updated_by_pi2:  # skipped before any update: ψ's own
            # targets, π as it is
            target = (torch.einsum("gtij,gntj->gnti", psi.K, S) + psi.k[:, None])[..., 0]
            pi_mean = self.pi_means(pool["obs"]) if pi_mean is None else pi_mean
        kl_pi = sample_kl(psi, S, pi_mean, Sigma_pi)  # (G, T)
        self.badmm = adapt_nu(self.badmm, kl_pi, cfg.nu_kl_target)
        self.psi, self.eta = psi, eta
        gap = (pi_mean.mean(1) - target[..., None].mean(1)).abs().mean()

        t1 = time.perf_counter()
        from optenv.policy import rollout

        ev = rollout(self.policy, self.family, int(cfg.eval_steps or T),
                     seeds=list(cfg.eval_seeds))
        pi_cost = evaluation_cost(ev.final, cfg.eval_stat)
        if pi_cost < self.best_cost:
            self.best_cost = pi_cost
            self.best_policy = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        times["eval"] = time.perf_counter() - t1
        times["total"] = time.perf_counter() - t0

        self.iteration += 1
        record: dict[str, Any] = {
            "iteration": self.iteration,
            # over the rollouts the fits used (all of them when fewer than two stayed finite)
            "psi_final_cost": float(live["costs"][:, -1].mean()),
            # their mean log10 final f: where runs memorize (f → 0) or stall, the mean above
            # is one stalled run's
            "psi_log_cost": evaluation_cost(live["costs"][:, -1], "log_mean"),
            "psi_diverged": int(diverged.sum()),
            "pi_final_cost": float(ev.objective[:, -1].mean()),
            "pi_eval_cost": pi_cost,  # eval_stat of f at eval_steps: what "best" compares
            "pi_diverged": int(ev.diverged.sum()),
            "pi_best_cost": self.best_cost,
            "psi_skipped": int(skipped),
            "psi_warnings": n_warnings,
            "kl_psi_prev": kl_prev,
            "kl_psi_pi": float(kl_pi.sum(-1).mean()),
            "eta": float(torch.as_tensor(eta).mean()),
            "nu_mean": float(self.badmm.nu.mean()),
            "lam_norm": float(self.badmm.lam.norm()),
            "mean_action_gap": float(gap),
            "s_step_loss": float(losses[-1]) if losses else math.nan,
            **{f"time_{k}": v for k, v in times.items()},
            # ψ's rollouts and π's evaluation runs: the iteration's share of training cost
            "env_steps": cfg.samples * T + len(cfg.eval_seeds) * int(cfg.eval_steps or T),
        }
        self.history.append(record)
        if self.out is not None:
            from optenv.runio import append_jsonl, atomic_torch_save

            atomic_torch_save(self.checkpoint(), self.out / "checkpoint.pt")
            append_jsonl(self.out / "metrics.jsonl", record)
            if cfg.save_policies:
                self.policy_agent().save(self.out / POLICY_FILE.format(self.iteration))
        return record

    def policy_agent(self) -> Any:
        """This iteration's π as a :class:`gps.agent.GPSAgent` (a bench-ready agent)."""
        from gps.agent import GPSAgent  # the agent module imports this one

        state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        return GPSAgent.from_run_state(json.loads(json.dumps(asdict(self.config))),
                                       self.iteration, self.policy.config(), state,
                                       self.history)

    def run(self, progress: bool = False) -> list[dict[str, Any]]:
        """Iterate up to ``config.iterations`` (from the resumed iteration); all metrics.

        ``progress`` shows a bar with the latest π cost, KL and η.
        """
        from tqdm.auto import tqdm

        if self.out is not None:
            from optenv.runio import atomic_write_json

            atomic_write_json(self.out / "config.json", asdict(self.config))
        with tqdm(total=self.config.iterations, initial=self.iteration, desc="gps",
                  disable=not progress, leave=False) as bar:
            while self.iteration < self.config.iterations:
                record = self.step()
                shown = ("pi_final_cost", "kl_psi_pi", "nu_mean")
                bar.set_postfix({k: f"{record[k]:.3g}" for k in shown
                                 if isinstance(record.get(k), float)})
                bar.update(1)
        return self.history
