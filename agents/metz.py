"""Metz et al. (2019): a per-parameter MLP optimizer trained on a smoothed outer loss.

Metz, Maheswaranathan, Nixon, Freeman & Sohl-Dickstein, "Understanding and correcting
pathologies in the training of learned optimizers" (ICML 2019), seed 001.

**The optimizer** (§4.1, appendix D; :class:`MetzPolicy`). One MLP with one hidden layer of
32 ReLU units is applied to every inner parameter independently. Its inputs per coordinate
are the gradient, the parameter value and exponential moving averages of the gradient at
several decays (the ``momentum`` feature set of :mod:`optenv.features`), each normalized by
its root mean square over the coordinate's tensor (its :class:`CoordinateGroup`), plus an
embedding of the iteration number, ``tanh(t / τ − 1)`` for τ in 1, 3, 10, …, 10⁵ (constant
over the tensor, so not normalized). This is the model of learned_optimization's
``mlp_lopt`` ("the same model in [this paper]"), with the paper's single hidden layer. Its
two outputs are a direction d and a log learning rate m; the step is

    Δx = −step_mult · d · exp(exp_mult · m).

The paper trains for 10⁴ inner steps with ``step_mult = exp_mult = 0.001``; the CPU-scaled
defaults here are ``step_mult = 0.01`` (the per-step size of a tuned Adam on the
``CNN-Digits`` problems, reached with d of order one because the inputs are normalized) and
``exp_mult = 0.1`` (so the log learning rate can move the step size within a few hundred
outer updates).

**Outer training** (§3, §4.3, appendix C; :class:`MetzTrainer`). The outer loss of a
truncation is the mean over its K steps of the inner *training* minibatch loss
(``outer_loss="train"``) or of the validation loss (``"valid"``: the problem's
``test_objective``, the held-out split), smoothed with N(θ, σ²I), σ² = 0.01. By default
(``log_loss=True``, a departure from the paper's plain average) the truncation averages
log(ℓ + 1e-4): a halving of a small late loss then counts like that of a large early one,
but a task below 1e-4 counts as solved. Measured on the CNN-Digits class-subset family
(10 held-out tasks, 200 steps; tuned Adam: median final loss 0.0018): the plain average
(150 updates) gave a median of 0.025; log ℓ without the floor (250 updates) a bimodal
0.023 (4 tasks below 1e-7, 6 at 0.013-0.17: huge wins on easy tasks bought with losses on
the others); log(ℓ + 1e-4) (250 updates) 0.00043. Each outer
update draws ``pairs`` antithetic noise vectors and ``pairs`` tasks; member ± of pair j runs
task j with weights θ ± σ n_j and the same minibatches (common random numbers). All
``2·pairs`` perturbed optimizers run as ONE batched unroll (:func:`agents.unroll.unroll`
with per-instance weights ``(2·pairs, P)`` requiring grad): one backward pass gives every
member's ∇L (g_rp), the member losses give g_es, merged by eq. (1)
(:mod:`agents.estimators`). Adam updates θ.

*Truncations and the curriculum.* An inner run lasts ``horizon`` steps (default: the env's
horizon), split into truncations. The paper grows the truncation length linearly from 50 to
10 000 steps over 5 000 outer updates, jittered by up to 20 %. Scaled for CPU, the length of
outer update i is

    K_i = round(clip(K₀ + (K₁ − K₀) · i / ramp, K₀, K₁) · u),   u ~ U(1 − jitter, 1 + jitter),

with defaults K₀ = ``trunc_min`` = 5, K₁ = ``trunc_max`` = 50, ``ramp`` = the number of
outer iterations, jitter = 0.2, and K_i cut at the steps left in the inner run. All pairs
restart together with new tasks when their run ends (the paper's 128 asynchronous workers
stagger them). After a truncation both members of a pair continue from the + member's
state, so the next antithetic pair starts from one state (truncated ES). With ``pes=True``
the members keep their own states and g_es is PES's (accumulated noise); g_rp is then still
the truncated reparameterization gradient (biased by truncation), and eq. (1) merges the two
as before.

A non-finite or exploding member (its mean loss above ``loss_cap`` times the run's initial
loss) has its loss capped for ES; a non-finite g_rp sample gives g_rp infinite variance,
i.e. weight 0; a run in which any member diverged restarts at the next update.

Every ``eval_every`` updates the mean optimizer θ is run for the full horizon on
``eval_tasks`` fixed validation tasks of the training family (seeds 500, 501, …; the bench
evaluates on 1000, 1001, …); the θ with the lowest geometric-mean final objective is kept as
:meth:`MetzAgent.policy` (the paper selects by outer-training loss, §4.3). A run shorter
than ``eval_every`` keeps its last θ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from agents import estimators as est
from agents.unroll import Carry, start, unroll
from optenv.policy import Agent, PolicyState, StepPolicy, make_problem
from optenv.problems.base import (
    CoordinateGroup,
    Optimizee,
    TaskFamily,
    check_positive_int,
    check_seed,
)
from optenv.registry import task_for

__all__ = ["TIMESCALES", "MetzAgent", "MetzConfig", "MetzPolicy", "MetzTrainer",
           "compare_with_tuned_adam", "evaluate", "truncation_length"]

#: timescales of the iteration embedding tanh(t/τ − 1) (learned_optimization ``mlp_lopt``)
TIMESCALES: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
#: decays of the gradient moving averages (the ``momentum`` feature set's defaults)
DECAYS: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999, 0.9999)
#: seeds of the validation tasks used to pick the best θ during training
VALIDATION_SEED_START = 500
_NORM_EPS = 1e-5  # learned_optimization's second-moment normalizer


# ------------------------------------------------------------------------------ the policy
def num_weights(num_inputs: int, hidden: int) -> int:
    """P = size of the flat MLP weight vector (W1, b1, W2, b2)."""
    return num_inputs * hidden + hidden + 2 * hidden + 2


def init_weights(num_inputs: int, hidden: int, generator: torch.Generator,
                 out_scale: float = 1.0) -> Tensor:
    """He-normal hidden layer, N(0, out_scale²/hidden) output layer, zero biases: ``(P,)``."""
    w1 = torch.randn(num_inputs, hidden, generator=generator) * math.sqrt(2.0 / num_inputs)
    w2 = torch.randn(hidden, 2, generator=generator) * (out_scale / math.sqrt(hidden))
    return torch.cat([w1.reshape(-1), torch.zeros(hidden), w2.reshape(-1), torch.zeros(2)])


class MetzPolicy(StepPolicy):
    """The per-parameter MLP optimizer of Metz et al. (2019), §4.1 (see the module doc).

    ``weights``: the flat MLP weights ``(P,)``, or ``(B, P)``: one optimizer per instance,
    as the outer trainer uses for the ES samples (leading dim = samples). ``step`` is
    differentiable in ``weights`` and in the features. State: ``t`` (iteration, ``(B,)``)
    and ``group`` (``(B, n)``: each coordinate's tensor index, for the normalization).
    """

    features: str = "momentum"

    def __init__(self, weights: Tensor, *, hidden: int = 32,
                 decays: Sequence[float] = DECAYS, timescales: Sequence[float] = TIMESCALES,
                 step_mult: float = 0.01, exp_mult: float = 0.1) -> None:
        self.hidden = check_positive_int("hidden", hidden)
        self.decays = tuple(float(d) for d in decays)
        self.timescales = tuple(float(s) for s in timescales)
        if not self.timescales or min(self.timescales) <= 0:
            raise ValueError(f"timescales must be positive, got {self.timescales}")
        for label, v in (("step_mult", step_mult), ("exp_mult", exp_mult)):
            if not v > 0:
                raise ValueError(f"{label} must be > 0, got {v!r}")
        self.step_mult, self.exp_mult = float(step_mult), float(exp_mult)
        # an instance attribute: make_features() reads it (the decays are configurable)
        self.feature_kwargs = {"decays": self.decays}  # type: ignore[misc]
        self.num_inputs = 2 + len(self.decays) + len(self.timescales)
        P = num_weights(self.num_inputs, self.hidden)
        if weights.shape[-1] != P or weights.ndim not in (1, 2):
            raise ValueError(f"weights must be (P,) or (B, P) with P={P} for {self.num_inputs} "
                             f"inputs and hidden={self.hidden}, got {tuple(weights.shape)}")
        self.weights = weights

    def config(self) -> dict[str, Any]:
        """Constructor arguments except the weights (JSON-able)."""
        return {"hidden": self.hidden, "decays": list(self.decays),
                "timescales": list(self.timescales), "step_mult": self.step_mult,
                "exp_mult": self.exp_mult}

    def with_weights(self, weights: Tensor) -> MetzPolicy:
        """The same architecture with other (e.g. per-instance perturbed) weights."""
        return MetzPolicy(weights, **self.config())

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        gid = torch.zeros(n, dtype=torch.long)
        for i, g in enumerate(groups):  # a loop over tensors, not coordinates
            gid[g.slice] = i
        return {"t": torch.zeros(batch), "group": gid.expand(batch, n).clone()}

    def _unpack(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w, k, h = self.weights, self.num_inputs, self.hidden
        lead = w.shape[:-1]
        sizes = (k * h, h, 2 * h, 2)
        w1, b1, w2, b2 = w.split(sizes, -1)
        if lead:  # per instance: (B, ...) with a broadcast axis for the coordinates
            return (w1.reshape(*lead, k, h), b1.reshape(*lead, 1, h),
                    w2.reshape(*lead, h, 2), b2.reshape(*lead, 1, 2))
        return w1.reshape(k, h), b1, w2.reshape(h, 2), b2

    def inputs(self, features: Tensor, state: PolicyState) -> Tensor:
        """MLP inputs ``(B, n, num_inputs)``: per-tensor RMS-normalized features + time."""
        B, n, k = features.shape
        gid = state["group"][0]
        G = int(gid.max()) + 1
        # mean square of each feature over each tensor (index_add: no loop over coordinates)
        sq = features.new_zeros(B, G, k).index_add(1, gid, features.square())
        count = torch.bincount(gid, minlength=G).to(features.dtype)
        rms = (sq / count[None, :, None] + _NORM_EPS).rsqrt()
        normed = features * rms[:, gid]
        scales = torch.tensor(self.timescales, dtype=features.dtype)
        time_feat = torch.tanh(state["t"].to(features.dtype)[:, None] / scales - 1.0)
        return torch.cat([normed, time_feat[:, None, :].expand(B, n, -1)], -1)

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        w1, b1, w2, b2 = self._unpack()
        inp = self.inputs(features, state)
        out = torch.relu(inp @ w1 + b1) @ w2 + b2
        direction, log_lr = out[..., 0], out[..., 1]
        # the clamp only guards exp against overflow (e^30 is far past any useful step)
        delta = -self.step_mult * direction * torch.exp((self.exp_mult * log_lr).clamp_max(30))
        return delta, {"t": state["t"] + 1, "group": state["group"]}


# ---------------------------------------------------------------------------- the trainer
@dataclass
class MetzConfig:
    """Options of the outer training (see the module docstring for the algorithm).

    Architecture: ``hidden``, ``decays``, ``timescales``, ``step_mult``, ``exp_mult``,
    ``out_scale`` (std multiplier of the output layer at init). Estimation: ``estimator``
    (``"merged"``, ``"rp"``, ``"es"``), ``sigma`` (σ, σ² = 0.01), ``pairs`` (antithetic
    pairs = tasks per update; the unroll has ``2·pairs`` instances), ``pes``,
    ``elementwise`` (per-coordinate variances in eq. 1 instead of total ones). Schedule:
    ``iterations``, ``trunc_min``, ``trunc_max``, ``ramp`` (updates to reach
    ``trunc_max``; ``None``: ``iterations``), ``jitter``, ``horizon`` (inner run length;
    ``None``: the env's). Outer loss: ``outer_loss`` (``"train"``: inner minibatch loss;
    ``"valid"``: the problem's held-out loss), ``log_loss`` and ``log_floor`` (average
log(ℓ + floor) instead), ``loss_cap``. Adam: ``outer_lr``.
    Selection: ``eval_every``, ``eval_tasks``. ``seed``: everything random.
    """

    hidden: int = 32
    decays: tuple[float, ...] = DECAYS
    timescales: tuple[float, ...] = TIMESCALES
    step_mult: float = 0.01
    exp_mult: float = 0.1
    out_scale: float = 1.0
    estimator: str = "merged"
    sigma: float = est.DEFAULT_SIGMA
    pairs: int = 8
    pes: bool = False
    elementwise: bool = False
    iterations: int = 200
    trunc_min: int = 5
    trunc_max: int = 50
    ramp: int | None = None
    jitter: float = 0.2
    horizon: int | None = None
    outer_loss: str = "train"
    log_loss: bool = True
    log_floor: float = 1e-4
    loss_cap: float = 10.0
    outer_lr: float = 3e-3
    eval_every: int = 25
    eval_tasks: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        self.decays = tuple(float(d) for d in self.decays)
        self.timescales = tuple(float(s) for s in self.timescales)
        for name in ("hidden", "pairs", "iterations", "trunc_min", "trunc_max", "eval_every",
                     "eval_tasks"):
            check_positive_int(name, getattr(self, name))
        if self.trunc_max < self.trunc_min:
            raise ValueError(f"trunc_max ({self.trunc_max}) must be >= trunc_min "
                             f"({self.trunc_min})")
        for name in ("ramp", "horizon"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.estimator not in est.ESTIMATORS:
            raise ValueError(f"estimator must be one of {est.ESTIMATORS}, got "
                             f"{self.estimator!r}")
        if self.outer_loss not in ("train", "valid"):
            raise ValueError(f"outer_loss must be 'train' or 'valid', got {self.outer_loss!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        for name in ("sigma", "outer_lr", "step_mult", "exp_mult", "out_scale", "log_floor"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not self.loss_cap > 1:
            raise ValueError(f"loss_cap must be > 1, got {self.loss_cap!r}")
        check_seed("seed", self.seed)
        for name in ("pes", "elementwise", "log_loss"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not self.decays or not all(0.0 <= d < 1.0 for d in self.decays):
            raise ValueError(f"decays must be a non-empty sequence in [0, 1), got {self.decays}")
        if not self.timescales or not all(t > 0 for t in self.timescales):
            raise ValueError(f"timescales must be a non-empty sequence of values > 0, got "
                             f"{self.timescales}")

    def policy_config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "decays": list(self.decays),
                "timescales": list(self.timescales), "step_mult": self.step_mult,
                "exp_mult": self.exp_mult}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decays"], d["timescales"] = list(self.decays), list(self.timescales)
        return d


def truncation_length(iteration: int, config: MetzConfig, generator: torch.Generator) -> int:
    """K_i of the linear, jittered truncation curriculum (module docstring; paper §4.3)."""
    ramp = config.ramp or config.iterations
    frac = min(1.0, iteration / max(1, ramp))
    base = config.trunc_min + (config.trunc_max - config.trunc_min) * frac
    u = 1.0 + config.jitter * (2.0 * float(torch.rand((), generator=generator)) - 1.0)
    return max(1, round(base * u))


class _Antithetic(Optimizee):
    """``2·m`` instances: member ± of pair j is task j of ``half``; both get the same
    minibatches (common random numbers) and the same initial iterate.

    ``objective`` is what the unroll's ``meta_loss="objective"`` reads, i.e. the outer
    loss per step: the minibatch loss just drawn (``outer="train"``; recomputed on the
    cached batch, no extra randomness) or the held-out loss (``"valid"``,
    ``test_objective``); :meth:`outer_transform` (the unroll's ``transform``) takes its
    log when ``log=True``.
    """

    def __init__(self, half: Optimizee, outer: str = "train", log: bool = False,
                 log_floor: float = 1e-4) -> None:
        m = half.num_instances
        self.half = half
        self.full = half.select(torch.arange(m).repeat(2))
        super().__init__(half.groups, 2 * m, self.full.instance_data)
        self.outer, self.log, self.log_floor = outer, log, float(log_floor)
        self._last_batch: Any = None

    def init(self, generator: torch.Generator) -> Tensor:
        return self.half.init(generator).repeat(2, 1)

    def sample_batch(self, generator: torch.Generator) -> Any:
        self._last_batch = _repeat2(self.half.sample_batch(generator))
        return self._last_batch

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        return self.full.loss(params, batch)

    def objective(self, params: Tensor) -> Tensor:
        if self.outer == "valid":
            out = self.full.test_objective(params)
            if out is None:
                raise ValueError(f"outer_loss='valid' needs a problem with a held-out split; "
                                 f"{type(self.half).__name__} has none")
        else:
            out = self.full.loss(params, self._last_batch)
        return out

    def outer_transform(self, loss: Tensor) -> Tensor:
        """The per-step outer loss from ℓ: ℓ itself or log(ℓ + floor).

        The log is finite at ℓ = 0 and gives no reward for pushing one task far below the
        floor while others are above it (it needs ℓ ≥ 0: negative values count as 0).
        """
        return (loss.clamp_min(0) + self.log_floor).log() if self.log else loss

    def test_objective(self, params: Tensor) -> Tensor | None:
        return self.full.test_objective(params)

    def select(self, index: Tensor) -> Optimizee:
        """The selected members as a plain problem (no longer paired)."""
        return self.full.select(index)


def _repeat2(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return batch.repeat(2, *([1] * (batch.ndim - 1)))
    if isinstance(batch, tuple | list):
        return type(batch)(_repeat2(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _repeat2(v) for k, v in batch.items()}
    if batch is None:
        return None
    raise ValueError(f"cannot pair minibatches of type {type(batch).__name__}")


def _map_carry(carry: Carry, fn: Any) -> Carry:
    return Carry(fn(carry.x), {k: fn(v) for k, v in carry.policy_state.items()},
                 {k: fn(v) for k, v in carry.feature_state.items()}, carry.t)


def _sync_pairs(carry: Carry) -> Carry:
    """Both members of every pair continue from the + member's state (truncated ES)."""
    return _map_carry(carry, lambda v: v[: v.shape[0] // 2].repeat(2, *([1] * (v.ndim - 1))))


def evaluate(policy: StepPolicy, family: TaskFamily, seeds: Sequence[int], steps: int,
             minibatch_seed: int = 0) -> Tensor:
    """Final true objective ``(len(seeds),)`` after ``steps`` steps (inf where non-finite).

    Runs through :func:`agents.unroll.unroll` without a graph and evaluates the objective
    only at the end (:func:`optenv.policy.rollout` evaluates it at every step).
    """
    problem, x0 = make_problem(family, seeds)
    gen = torch.Generator().manual_seed(minibatch_seed)
    with torch.no_grad():
        carry = start(policy, problem, x0, gen)
        res = unroll(policy, problem, carry, steps, generator=gen)
        final = problem.objective(res.carry.x)
    return torch.where(torch.isfinite(final), final, torch.inf)


def wins(ours: Tensor, theirs: Tensor) -> int:
    """How many tasks ``ours`` ends strictly lower on than ``theirs`` (final objectives):
    a float-level tie (batched runs differ in the last bits) is not a win."""
    return int((ours < theirs * (1 - 1e-5)).sum())


def compare_with_tuned_adam(policy: StepPolicy, family: TaskFamily, seeds: Sequence[int],
                            steps: int, grid: Sequence[float] | None = None,
                            ) -> dict[str, Any]:
    """Per-task comparison with Adam whose learning rate is tuned *on each task* (§4.4).

    For every seed (task) Adam runs the whole ``grid`` (default: optenv's 11 values from
    1e-4 to 10, the paper's grid) on that very task, as one batched run; its best final
    objective is the baseline for that task (an oracle: tuned on the task it is scored on).
    Returns per-task final objectives of the policy and of tuned Adam, the chosen learning
    rates, and how many tasks the policy beats it on.
    """
    from agents.baselines import AdamPolicy
    from optenv.tuning import DEFAULT_GRID

    grid = [float(v) for v in (grid or DEFAULT_GRID)]
    seeds = [int(s) for s in seeds]
    ours = evaluate(policy, family, seeds, steps)
    lrs = torch.tensor(grid).repeat_interleave(len(seeds))  # grid-major: (G * S,)
    adam = evaluate(AdamPolicy(lr=lrs), family, seeds * len(grid), steps)
    adam = adam.view(len(grid), len(seeds))
    best, arg = adam.min(0)
    return {"seeds": seeds, "policy_final": ours.tolist(), "adam_final": best.tolist(),
            "adam_lr": [grid[i] for i in arg.tolist()],
            "wins": wins(ours, best), "tasks": len(seeds)}


class MetzTrainer:
    """Outer training of :class:`MetzPolicy` on a task family (module docstring).

    ``out``: run folder (``metrics.jsonl``, ``checkpoint.pt``, ``config.json``);
    ``resume=True`` continues from ``out/checkpoint.pt`` exactly as an uninterrupted run.
    """

    def __init__(self, config: MetzConfig, family: TaskFamily, horizon: int, *,
                 theta: Tensor | None = None, out: str | Path | None = None,
                 resume: bool = False) -> None:
        self.config, self.family = config, family
        self.horizon = check_positive_int("horizon", int(config.horizon or horizon))
        pc = config.policy_config()
        self.num_inputs = 2 + len(config.decays) + len(config.timescales)
        P = num_weights(self.num_inputs, config.hidden)
        gen = torch.Generator().manual_seed(config.seed)
        if theta is None:
            theta = init_weights(self.num_inputs, config.hidden, gen, config.out_scale)
        if theta.shape != (P,):
            raise ValueError(f"theta must have shape ({P},), got {tuple(theta.shape)}")
        self.theta = theta.detach().clone().requires_grad_(True)
        self.template = MetzPolicy(self.theta.detach(), **pc)
        self.adam = torch.optim.Adam([self.theta], lr=config.outer_lr)
        self.rng = torch.Generator().manual_seed(config.seed + 1)  # noise, jitter
        self.batch_gen = torch.Generator().manual_seed(config.seed + 2)  # minibatches
        self.iteration = 0
        self.episode = -1
        self.carry: Carry | None = None
        self.problem: _Antithetic | None = None
        self.f0: Tensor | None = None
        self.pes_noise: Tensor | None = None
        self.best_theta = self.theta.detach().clone()
        self.best_score = math.inf
        self.env_steps = 0
        self.val_seeds = list(range(VALIDATION_SEED_START,
                                    VALIDATION_SEED_START + config.eval_tasks))
        if resume and out is None:
            raise ValueError("resume=True needs the run folder out= holding checkpoint.pt")
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            from optenv.runio import atomic_write_json

            self.out.mkdir(parents=True, exist_ok=True)
            if resume and (self.out / "checkpoint.pt").is_file():
                self._load(self.out / "checkpoint.pt")
            atomic_write_json(self.out / "config.json", config.to_dict())

    # -- episodes ------------------------------------------------------------------------
    def _episode_seed(self, episode: int) -> int:
        # far from the bench's tuning (0..) and evaluation (1000..) seeds
        return 10_000_000 + 100_003 * self.config.seed + episode

    def _new_episode(self) -> None:
        self.episode += 1
        # x0 continues the stream the task was drawn from (a fresh generator on the same
        # seed would replay it: on quadratics x0 would copy the first entries of W)
        gen = self._build_problem(self.episode)
        assert self.problem is not None
        x0 = self.problem.init(gen)
        self.carry = start(self.template, self.problem, x0, self.batch_gen)
        with torch.no_grad():  # reference loss for the cap: the run's initial minibatch loss
            self.f0 = self.problem.loss(x0, self.problem.sample_batch(gen)).abs().clamp_min(1.0)
        self.pes_noise = None

    def _build_problem(self, episode: int) -> torch.Generator:
        """The episode's tasks; returns their generator, positioned after the draw."""
        gen = torch.Generator().manual_seed(self._episode_seed(episode))
        half = self.family.sample(gen, self.config.pairs)
        self.problem = _Antithetic(half, self.config.outer_loss, self.config.log_loss,
                                   self.config.log_floor)
        return gen

    # -- one outer update ----------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """One outer update; returns its metrics (also appended and checkpointed)."""
        cfg = self.config
        t0 = time.perf_counter()
        if self.carry is None or self.carry.t >= self.horizon:
            self._new_episode()
        assert self.carry is not None and self.problem is not None and self.f0 is not None
        K = min(truncation_length(self.iteration, cfg, self.rng), self.horizon - self.carry.t)
        P = self.theta.shape[0]
        noise = est.antithetic_noise(cfg.pairs, P, self.rng)
        thetas = est.antithetic_thetas(self.theta.detach(), noise, cfg.sigma)
        thetas.requires_grad_(cfg.estimator != "es")
        policy = self.template.with_weights(thetas)
        with torch.set_grad_enabled(cfg.estimator != "es"):  # ES needs no graph
            # the training outer loss is the minibatch loss the step computes anyway
            # (its log via transform); only the held-out loss needs another forward pass
            train = cfg.outer_loss == "train"
            res = unroll(policy, self.problem, self.carry, K, generator=self.batch_gen,
                         meta_loss="minibatch" if train else "objective",
                         transform=self.problem.outer_transform if cfg.log_loss else None)
        mean_loss = res.meta_loss / K  # the outer loss is the mean over the truncation
        cap = cfg.loss_cap * self.f0
        if cfg.log_loss:
            cap = (cap + cfg.log_floor).log()
        grads = None
        if cfg.estimator != "es":
            (grads,) = torch.autograd.grad(mean_loss.sum(), thetas, allow_unused=True)
            if grads is None:
                grads = torch.zeros_like(thetas)
            # a member past the cap is treated as exploded: its g_rp sample is unusable
            bad = ~(torch.isfinite(mean_loss.detach()) & (mean_loss.detach() <= cap))
            grads = torch.where(bad[:, None], torch.nan, grads)
        losses = torch.nan_to_num(mean_loss.detach(), nan=math.inf).clamp_max(cap)
        if cfg.pes:
            self.pes_noise = est.pes_accumulate(self.pes_noise, noise)
            es_noise = self.pes_noise
        else:
            es_noise = noise
        merged = est.estimate(cfg.estimator, losses=losses, noise=es_noise, sigma=cfg.sigma,
                              grads=grads, elementwise=cfg.elementwise)
        self.adam.zero_grad()
        self.theta.grad = torch.nan_to_num(merged.grad, nan=0.0, posinf=0.0, neginf=0.0)
        self.adam.step()
        carry = res.carry if cfg.pes else _sync_pairs(res.carry)
        diverged = (not bool(torch.isfinite(carry.x).all())) or bool((losses >= cap).any())
        self.carry = None if diverged else carry
        self.iteration += 1
        self.env_steps += K * self.problem.num_instances
        record: dict[str, Any] = {
            "iteration": self.iteration, "episode": self.episode, "t": int(res.carry.t),
            "truncation": K, "outer_loss": float(losses.mean()),
            "outer_loss_plus": float(losses[: cfg.pairs].mean()),
            "var_rp": float(merged.var_rp.mean()), "var_es": float(merged.var_es.mean()),
            "w_rp": float(merged.w_rp.mean()), "grad_norm": float(self.theta.grad.norm()),
            "diverged": diverged, "wall_s": time.perf_counter() - t0,
        }
        # only at multiples of eval_every: a resumed run then selects exactly as an
        # uninterrupted one (validating at a run's last update would not)
        if self.iteration % cfg.eval_every == 0:
            score, median = self.validate()
            self.env_steps += len(self.val_seeds) * self.horizon
            record["val_final"], record["val_median"] = score, median
            if score < self.best_score:
                self.best_score, self.best_theta = score, self.theta.detach().clone()
            record["best_val_final"] = self.best_score
        if self.out is not None:
            from optenv.runio import append_jsonl, atomic_torch_save

            atomic_torch_save(self.checkpoint(), self.out / "checkpoint.pt")
            append_jsonl(self.out / "metrics.jsonl", record)
        return record

    def validate(self) -> tuple[float, float]:
        """Selection score and median final objective of the current θ on the validation
        tasks (full horizon). The score is the geometric mean of ``final + log_floor``:
        final losses span orders of magnitude across tasks (an arithmetic mean would be one
        task's loss), and below the floor a task counts as solved, as in the outer loss."""
        policy = self.template.with_weights(self.theta.detach().clone())
        final = evaluate(policy, self.family, self.val_seeds, self.horizon)
        score = (final + self.config.log_floor).log().mean().exp() - self.config.log_floor
        return float(score), float(final.median())

    def run(self, progress: bool = False) -> list[dict[str, Any]]:
        """Outer updates up to ``config.iterations`` (from a resumed iteration)."""
        from tqdm.auto import tqdm

        history = []
        with tqdm(total=self.config.iterations, initial=self.iteration, desc="metz",
                  disable=not progress) as bar:
            while self.iteration < self.config.iterations:
                record = self.step()
                history.append(record)
                bar.set_postfix(K=record["truncation"], loss=f"{record['outer_loss']:.3g}",
                                w_rp=f"{record['w_rp']:.2f}")
                bar.update(1)
        return history

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        carry = None if self.carry is None else {
            "x": self.carry.x, "policy_state": self.carry.policy_state,
            "feature_state": self.carry.feature_state, "t": self.carry.t}
        return {
            "config": self.config.to_dict(), "theta": self.theta.detach().clone(),
            "adam": self.adam.state_dict(), "rng": self.rng.get_state(),
            "batch_gen": self.batch_gen.get_state(), "iteration": self.iteration,
            "episode": self.episode, "carry": carry, "f0": self.f0,
            "pes_noise": self.pes_noise, "best_theta": self.best_theta,
            "best_score": self.best_score, "env_steps": self.env_steps,
        }

    def _load(self, path: Path) -> None:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        with torch.no_grad():
            self.theta.copy_(ck["theta"])
        self.adam.load_state_dict(ck["adam"])
        self.rng.set_state(ck["rng"])
        self.batch_gen.set_state(ck["batch_gen"])
        self.iteration, self.episode = int(ck["iteration"]), int(ck["episode"])
        c = ck["carry"]
        self.carry = None if c is None else Carry(c["x"], dict(c["policy_state"]),
                                                  dict(c["feature_state"]), int(c["t"]))
        if self.episode >= 0:
            self._build_problem(self.episode)
        self.f0, self.pes_noise = ck["f0"], ck["pes_noise"]
        self.best_theta, self.best_score = ck["best_theta"], float(ck["best_score"])
        self.env_steps = int(ck["env_steps"])
        metrics = path.parent / "metrics.jsonl"
        if metrics.is_file():  # drop lines written after the checkpoint
            import json

            keep = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["iteration"] <= self.iteration]
            from optenv.runio import atomic_write_text

            atomic_write_text(metrics, "".join(line + "\n" for line in keep))


# ------------------------------------------------------------------------------ the agent
class MetzAgent(Agent):
    """Metz et al. (2019)'s learned optimizer as an :class:`~optenv.policy.Agent` (``metz``).

    Constructor arguments are :class:`MetzConfig` defaults; ``train(env_id, **options)``
    may override them (``optenv train metz --set estimator=rp``). ``policy()`` is the best
    θ found (the initial θ before training) as a :class:`MetzPolicy`.
    """

    name = "metz"
    tunable = False  # trained by `optenv train metz`, benched from its file
    _ALIASES: ClassVar[dict[str, str]] = {"samples": "pairs"}  # optenv train --samples

    def __init__(self, seed: int = 0, **defaults: Any) -> None:
        super().__init__()
        self._defaults = {"seed": int(seed), **defaults}
        config = MetzConfig(**self._defaults)  # validate now
        self._policy_config = config.policy_config()
        n_in = 2 + len(config.decays) + len(config.timescales)
        self._theta = init_weights(n_in, config.hidden,
                                   torch.Generator().manual_seed(config.seed), config.out_scale)
        self.summary: dict[str, Any] = {}

    def train(self, env_id: str, *, iterations: int | None = None,  # type: ignore[override]
              out: str | Path | None = None, resume: bool = False, progress: bool = False,
              env_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Outer-train on ``env_id``'s task family; ``out`` is the run folder."""
        options = {self._ALIASES.get(k, k): v for k, v in kwargs.items()}
        known = {f.name for f in fields(MetzConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown metz option(s) {unknown}; known: {sorted(known)}")
        config = MetzConfig(**{**self._defaults, **options})
        if iterations is not None:
            config = replace(config, iterations=int(iterations))
        family, horizon = task_for(env_id, **(env_kwargs or {}))
        theta = self._theta if config.policy_config() == self._policy_config else None
        start_time = time.perf_counter()
        trainer = MetzTrainer(config, family, horizon, theta=theta, out=out, resume=resume)
        steps_before = trainer.env_steps
        history = trainer.run(progress=progress)
        if trainer.best_score == math.inf:  # never validated: use the last θ
            trainer.best_theta = trainer.theta.detach().clone()
        self._theta = trainer.best_theta.detach().clone()
        self._policy_config = config.policy_config()
        self.training_cost = {
            "env_steps": float(self.training_cost.get("env_steps", 0.0))
            + float(trainer.env_steps - steps_before),
            "wall_s": float(self.training_cost.get("wall_s", 0.0))
            + time.perf_counter() - start_time,
        }
        last = history[-1] if history else {}
        final = {k: float(v) for k, v in last.items() if isinstance(v, int | float)}
        final["best_val_final"] = float(trainer.best_score)
        self.summary = {"config": config.to_dict(), "env_id": env_id,
                        "env_kwargs": dict(env_kwargs or {}), "iterations": trainer.iteration,
                        "final": final}
        return self.summary

    def policy(self) -> MetzPolicy:
        return MetzPolicy(self._theta.detach().clone(), **self._policy_config)

    def config(self) -> dict[str, Any]:
        return dict(self._defaults)

    #: training options shown by :meth:`hyperparams` (the bench's table)
    SHOWN: ClassVar[tuple[str, ...]] = ("estimator", "pairs", "pes", "iterations", "trunc_min",
                                        "trunc_max", "outer_loss", "log_loss", "outer_lr",
                                        "hidden")

    def hyperparams(self) -> dict[str, Any]:
        """What θ was outer-trained with (the last :meth:`train`), else the defaults."""
        trained = self.summary.get("config")
        if not isinstance(trained, dict):
            return self.config()
        return {"env": self.summary.get("env_id"), "env_kwargs": self.summary.get("env_kwargs"),
                **{k: trained[k] for k in self.SHOWN if k in trained}}

    def state_dict(self) -> dict[str, Any]:
        return {"policy_config": dict(self._policy_config), "theta": self._theta.clone(),
                "summary": dict(self.summary)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        config = dict(state["policy_config"])
        MetzPolicy(state["theta"], **config)  # validate before changing anything
        self._policy_config, self._theta = config, state["theta"].detach().clone()
        self.summary = dict(state.get("summary", {}))

