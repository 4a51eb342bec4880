"""The meta-training loop shared by the gradient-trained coordinatewise LSTM optimizers.

L2L (Andrychowicz et al. 2016, §3) and RNNprop (Lv et al. 2017, §5) train the same way:
for every training iteration, sample a batch of optimizees, run the optimizer for a
``horizon`` of steps split into truncations of ``unroll`` steps (L2L: "unrolled for 20
steps" of 100; RNNprop: "5 periods of 20 steps"), and after each truncation take one
Adam step on the optimizer's parameters φ against the truncation's meta-loss (L2L eq. 3).
Every ``val_every`` iterations the optimizer runs on fixed validation problems and the
best weights are kept (L2L §3: "selected the best optimizer ... on a validation set";
RNNprop §5 does the same for DMoptimizer).

This module holds both halves the two agents share:

* :class:`CoordinatewiseLSTMOptimizer` — the optimizer network m: per coordinate, an
  optional input layer, a two-layer LSTM and a linear output; one set of weights for all
  coordinates (L2L §2.1, "coordinatewise"), so it runs on any architecture;
* :class:`MetaTrainedAgent` — the :class:`~optenv.policy.Agent` that trains it with
  :func:`agents.unroll.unroll`, writes ``metrics.jsonl``, atomic resumable checkpoints and
  ``config.json`` to the run folder, and saves/loads through the agent registry.

Subclasses (``agents.l2l``, ``agents.rnnprop``) only choose the network, the meta-loss
weighting and the training family.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.unroll import start, unroll
from optenv.policy import Agent, PolicyState, StepPolicy, make_problem, rollout
from optenv.problems.base import CoordinateGroup, TaskFamily, check_seed
from optenv.registry import task_for
from optenv.runio import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text

__all__ = ["CoordinatewiseLSTMOptimizer", "MetaTrainConfig", "MetaTrainedAgent"]

#: validation problems are drawn with seeds VAL_SEED0, VAL_SEED0 + 1, ...: disjoint from the
#: bench's held-out seeds (1000...) and from training (which samples from per-iteration
#: generators, not per-problem seeds)
VAL_SEED0 = 7_000_000


# ------------------------------------------------------------------------------- network


class CoordinatewiseLSTMOptimizer(nn.Module, StepPolicy):
    """A coordinatewise multi-layer LSTM optimizer (L2L §2.1, Figure 3; RNNprop §4.3).

    For each coordinate i, with features u_i ``(k,)`` of the feature set ``features``:

        z_i = ELU(W_in u_i + b_in)          (only if ``input_width``; RNNprop §4.3)
        (h_i, c_i) ← LSTM_2(LSTM_1(z_i))    (``layers`` stacked cells of ``hidden`` units)
        y_i = w·h_i + b
        Δθ_i = scale · y_i                  (``output="linear"``: L2L's output scaling)
        Δθ_i = scale · tanh(y_i)            (``output="tanh"``: RNNprop eq. (10), α = scale)

    ``gac`` > 0 makes the first ``gac`` cells of each layer *global averaging cells* (L2L
    §2.1, "Information sharing between coordinates"): their outgoing activations h are
    averaged over the coordinates of each problem at every step (as a
    :class:`~optenv.policy.LearnedOptimizer`: over all its parameters), so every coordinate's
    next layer and next step see a statistic of the whole gradient (its norm, say); the
    other cells stay coordinatewise. ``gac = 0`` is the plain coordinatewise LSTM.

    All coordinates share the weights and keep their own memory, so the parameter count does
    not depend on n. Weights are drawn from ``seed`` (PyTorch's default ranges,
    U(−1/√fan, 1/√fan), from an explicit generator). Policy state: ``h`` and ``c``, each
    ``(B, n, layers, hidden)``.
    """

    def __init__(self, *, features: str, input_dim: int, hidden: int = 20, layers: int = 2,
                 input_width: int | None = None, output: Literal["linear", "tanh"] = "linear",
                 scale: float = 0.1, seed: int = 0, forget_bias: float = 0.0,
                 gac: int = 0) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("hidden", hidden), ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if input_width is not None and (isinstance(input_width, bool)
                                        or not isinstance(input_width, int) or input_width < 1):
            raise ValueError(f"input_width must be a positive int or None, got {input_width!r}")
        if output not in ("linear", "tanh"):
            raise ValueError(f"output must be 'linear' or 'tanh', got {output!r}")
        if isinstance(gac, bool) or not isinstance(gac, int) or not 0 <= gac <= hidden:
            raise ValueError(f"gac must be an int in [0, hidden={hidden}], got {gac!r}")
        self.gac = gac
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be finite and > 0, got {scale!r}")
        self.features = features
        self.input_dim, self.hidden, self.layers = input_dim, hidden, layers
        self.input_width, self.output = input_width, output
        self.scale, self.seed = float(scale), seed
        if not (isinstance(forget_bias, int | float) and math.isfinite(forget_bias)):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        self.forget_bias = float(forget_bias)
        self.make_features()  # validates the feature-set name
        width = input_dim
        self.inp = None
        if input_width is not None:
            self.inp = nn.Linear(input_dim, input_width)
            width = input_width
        self.cells = nn.ModuleList(nn.LSTMCell(width if i == 0 else hidden, hidden)
                                   for i in range(layers))
        self.head = nn.Linear(hidden, 1)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.LSTMCell):
                    fan = (module.in_features if isinstance(module, nn.Linear)
                           else module.hidden_size)
                    bound = 1.0 / math.sqrt(fan)
                    for p in module.parameters(recurse=False):
                        p.uniform_(-bound, bound, generator=gen)
            # an open forget gate at the start keeps the cell's memory (Gers et al. 2000);
            # PyTorch's gate order is (input, forget, cell, output)
            for cell in self.cells:
                cell.bias_ih[hidden:2 * hidden] += self.forget_bias

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able): rebuild, then ``load_state_dict``."""
        return {"features": self.features, "input_dim": self.input_dim, "hidden": self.hidden,
                "layers": self.layers, "input_width": self.input_width, "output": self.output,
                "scale": self.scale, "seed": self.seed, "forget_bias": self.forget_bias,
                "gac": self.gac}

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        w = self.head.weight
        zeros = torch.zeros(batch, n, self.layers, self.hidden, dtype=w.dtype, device=w.device)
        return {"h": zeros, "c": zeros.clone()}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        if features.dim() != 3 or features.shape[-1] != self.input_dim:
            raise ValueError(f"features must be (B, n, {self.input_dim}) from feature set "
                             f"{self.features!r}, got {tuple(features.shape)}")
        B, n, k = features.shape
        h, c = state["h"], state["c"]
        if h.shape != (B, n, self.layers, self.hidden):
            raise ValueError(f"state h has shape {tuple(h.shape)}, expected "
                             f"({B}, {n}, {self.layers}, {self.hidden}): call reset() first")
        dtype = self.head.weight.dtype
        # coordinates are a batch dimension of the cells: no loop over coordinates
        z = features.to(dtype).reshape(B * n, k)
        if self.inp is not None:
            z = F.elu(self.inp(z))
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            hi, ci = cell(z, (h[:, :, i].reshape(B * n, -1), c[:, :, i].reshape(B * n, -1)))
            if self.gac:
                hi = hi.reshape(B, n, self.hidden)
                shared = hi[..., :self.gac].mean(1, keepdim=True).expand(B, n, self.gac)
                hi = torch.cat([shared, hi[..., self.gac:]], -1).reshape(B * n, self.hidden)
            hs.append(hi)
            cs.append(ci)
            z = hi
        y = self.head(z).reshape(B, n)
        y = torch.tanh(y) if self.output == "tanh" else y
        new = {"h": torch.stack(hs, 1).reshape(B, n, self.layers, self.hidden),
               "c": torch.stack(cs, 1).reshape(B, n, self.layers, self.hidden)}
        return (self.scale * y).to(features.dtype), new


# ------------------------------------------------------------------------------- trainer


@dataclass
class MetaTrainConfig:
    """Options of :class:`MetaTrainedAgent` (constructor defaults, ``train`` overrides).

    ``iterations`` training iterations, each on ``batch`` fresh problems for ``horizon``
    steps (``None``: the env's) in truncations of ``unroll`` steps, one Adam step (rate
    ``lr``) per truncation, meta-gradient norm clipped at ``clip`` (``None``: off).
    ``meta_loss``, ``weighting``, ``second_order``: see :func:`agents.unroll.unroll`.
    Every ``val_every`` iterations (and after the last) the policy runs ``val_problems``
    fixed validation problems of the *un-augmented* env family for ``horizon`` steps; the
    best by ``val_metric`` (``"sum"``: mean Σ_{t=0}^{T-1} f(θ_t), L2L's figure of merit;
    ``"final"``: mean f(θ_T)) is what :meth:`MetaTrainedAgent.policy` returns.
    ``hidden``: LSTM units; ``forget_bias``: added to the LSTM forget gates' initial bias;
    ``lr_schedule``: ``"constant"`` or ``"cosine"`` (lr · ½(1 + cos(π (i − 1) / iterations))
    at iteration i of ``iterations``: a resumed cosine run must keep ``iterations``);
    ``env_kwargs``: task arguments as in ``gym.make``; ``init``: a saved agent
    (``agent.pt``) whose weights start training (fine-tuning), else ``seed``.
    """

    iterations: int = 200
    horizon: int | None = None
    unroll: int = 20
    batch: int = 32
    lr: float = 1e-3
    lr_schedule: str = "constant"
    clip: float | None = 1.0
    meta_loss: str = "minibatch"
    weighting: str = "sum"
    second_order: bool = False
    val_every: int = 20
    val_problems: int = 32
    val_metric: str = "sum"
    hidden: int = 20
    forget_bias: float = 0.0
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        for name in ("iterations", "unroll", "batch", "val_every", "val_problems", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.horizon is not None and (isinstance(self.horizon, bool)
                                         or not isinstance(self.horizon, int) or self.horizon < 1):
            raise ValueError(f"horizon must be a positive int or None, got {self.horizon!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', "
                             f"got {self.lr_schedule!r}")
        if not (isinstance(self.forget_bias, int | float) and math.isfinite(self.forget_bias)):
            raise ValueError(f"forget_bias must be a finite number, got {self.forget_bias!r}")
        if self.clip is not None and not (isinstance(self.clip, int | float)
                                          and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0 or None, got {self.clip!r}")
        if not isinstance(self.second_order, bool):
            raise ValueError(f"second_order must be True or False, got {self.second_order!r}")
        if self.meta_loss not in ("minibatch", "objective"):
            raise ValueError(f"meta_loss must be 'minibatch' or 'objective', "
                             f"got {self.meta_loss!r}")
        if self.weighting not in ("sum", "final"):
            raise ValueError(f"weighting must be 'sum' or 'final', got {self.weighting!r}")
        if self.val_metric not in ("sum", "final"):
            raise ValueError(f"val_metric must be 'sum' or 'final', got {self.val_metric!r}")
        if self.init is not None and not Path(self.init).is_file():
            raise ValueError(f"init must be the path of a saved agent, got {self.init!r}")
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict, got {self.env_kwargs!r}")


    def lr_at(self, iteration: int) -> float:
        """The learning rate of (1-based) ``iteration``."""
        if self.lr_schedule == "constant":
            return float(self.lr)
        return float(self.lr) * 0.5 * (1.0 + math.cos(math.pi * (iteration - 1) / self.iterations))


class MetaTrainedAgent(Agent):
    """A coordinatewise LSTM optimizer meta-trained by truncated BPTT (base of L2L, RNNprop).

    ``MetaTrainedAgent(seed=0, **defaults)``: ``defaults`` are :class:`MetaTrainConfig`
    fields (subclasses set their own in :attr:`DEFAULTS`); :meth:`train` may override any
    of them. Subclasses implement :meth:`make_policy` and may override
    :meth:`training_family`.

    Run folder (``out``): ``config.json``; ``metrics.jsonl`` (one line per iteration:
    mean meta-loss, mean loss at the last step, the largest pre-clip meta-gradient norm
    over the truncations, skipped updates,
    validation score when measured); ``checkpoint.pt`` (written atomically after every
    iteration: weights, Adam state, best weights, counters), from which
    ``resume=True`` continues exactly: iteration i's problems come from a generator seeded
    by (seed, i), so a resumed run equals an uninterrupted one. A resume may raise
    ``iterations``, except under the cosine schedule, which depends on it.
    """

    #: subclass defaults for :class:`MetaTrainConfig`
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    tunable = False  # trained by `optenv train`, benched from its file

    def __init__(self, seed: int = 0, **defaults: Any) -> None:
        super().__init__()
        self._defaults = {**self.DEFAULTS, **defaults, "seed": int(seed)}
        self._base_config = MetaTrainConfig(**self._defaults)  # validate now
        self._policy = self.make_policy(self._base_config)
        self.summary: dict[str, Any] = {}

    # -- what subclasses choose ---------------------------------------------------------
    def make_policy(self, config: MetaTrainConfig) -> CoordinatewiseLSTMOptimizer:
        """A freshly initialized optimizer network for ``config``."""
        raise NotImplementedError

    def training_family(self, family: TaskFamily, config: MetaTrainConfig) -> TaskFamily:
        """The family training problems come from (validation uses ``family`` itself)."""
        return family

    # -- Agent ----------------------------------------------------------------------------
    def policy(self) -> StepPolicy:
        return self._policy

    def config(self) -> dict[str, Any]:
        # ``init`` (a warm start's file) is how the weights began, not what rebuilds the
        # agent: kept, a saved agent would not load once that file moved
        return {k: v for k, v in self._defaults.items() if k != "init"}

    def _agent_options(self) -> dict[str, Any]:
        """Options of :meth:`config` outside :class:`MetaTrainConfig` (RNNprop's augment)."""
        fields = {f.name for f in dataclasses.fields(MetaTrainConfig)}
        return {k: v for k, v in self.config().items() if k not in fields}

    #: training options shown by :meth:`hyperparams` (the bench's table)
    SHOWN: ClassVar[tuple[str, ...]] = ("iterations", "batch", "unroll", "lr", "weighting",
                                        "hidden", "init")

    def hyperparams(self) -> dict[str, Any]:
        """What the policy was trained with (the last :meth:`train`), else the defaults."""
        trained = self.summary.get("config")
        if not isinstance(trained, dict):
            return self.config()
        shown = {k: trained[k] for k in self.SHOWN if trained.get(k) is not None}
        return {"env": self.summary.get("env_id"), "horizon": self.summary.get("horizon"),
                **shown, **self._agent_options()}

    def state_dict(self) -> dict[str, Any]:
        return {"policy_config": self._policy.config(),
                "policy": {k: v.detach().clone() for k, v in self._policy.state_dict().items()},
                "summary": json.loads(json.dumps(self.summary))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._policy = CoordinatewiseLSTMOptimizer(**state["policy_config"])
        self._policy.load_state_dict(state["policy"])
        self.summary = dict(state.get("summary", {}))

    # -- training -------------------------------------------------------------------------
    def train(self, env_id: str, *, iterations: int | None = None, out: str | Path | None = None,
              resume: bool = False, progress: bool = False,
              env_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Meta-train on ``env_id``'s task family; ``kwargs`` override config fields.

        Returns a summary whose ``"final"`` holds floats: best and last validation
        scores, last mean meta-loss, iterations done. With ``resume`` and a checkpoint in
        ``out``, continues from it up to ``iterations`` in total.
        """
        overrides = dict(kwargs)
        if iterations is not None:
            overrides["iterations"] = iterations
        if env_kwargs is not None:
            overrides["env_kwargs"] = dict(env_kwargs)
        config = MetaTrainConfig(**{**self._defaults, **overrides})
        if resume and out is None:
            raise ValueError("resume=True needs the run folder out= holding checkpoint.pt")
        family, env_horizon = task_for(env_id, **config.env_kwargs)
        horizon = config.horizon or env_horizon
        train_family = self.training_family(family, config)
        val_problem, val_x0 = make_problem(
            family, range(VAL_SEED0, VAL_SEED0 + config.val_problems))
        out_dir = Path(out) if out is not None else None

        policy = self.make_policy(config)
        if config.init is not None:
            saved_agent = torch.load(config.init, map_location="cpu", weights_only=True)
            # rebuilt, so options added since the file was saved take their defaults
            try:
                theirs = CoordinatewiseLSTMOptimizer(
                    **saved_agent.get("state", {}).get("policy_config", {})).config()
            except (TypeError, ValueError) as err:
                raise ValueError(f"init {config.init!r} holds no L2L/RNNprop network: "
                                 f"{err}") from err
            mine = policy.config()
            for key in ("seed", "forget_bias"):  # only the shape of the network has to match
                theirs.pop(key, None)
                mine.pop(key)
            if theirs != mine:
                raise ValueError(f"init {config.init!r} holds a different network: "
                                 f"{theirs} != {mine}")
            policy.load_state_dict(saved_agent["state"]["policy"])
            # the result embodies the warm start's training too: count it
            init_cost = saved_agent.get("training_cost", {})
        else:
            init_cost = {}
        opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
        state = {"iteration": 0, "best_val": math.inf, "best_iteration": 0,
                 "best_policy": None, "last_val": math.nan,
                 "env_steps": float(init_cost.get("env_steps", 0.0)),
                 "wall_s": float(init_cost.get("wall_s", 0.0))}
        ckpt = out_dir / "checkpoint.pt" if out_dir is not None else None
        if resume and ckpt is not None and ckpt.exists():
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
            # a resume may extend a run, except under the cosine schedule, which it shapes
            free = () if config.lr_schedule == "cosine" else ("iterations",)
            mine = {k: v for k, v in dataclasses.asdict(config).items() if k not in free}
            mine.update(self._agent_options())
            theirs = {k: v for k, v in saved.get("config", {}).items() if k not in free}
            theirs.update(saved.get("agent_options", {}))
            changed = sorted(k for k in mine if theirs.get(k, mine[k]) != mine[k])
            if changed or saved.get("env_id", env_id) != env_id:
                raise ValueError(
                    f"cannot resume {ckpt}: it was trained with "
                    f"{ {k: theirs[k] for k in changed} } on {saved.get('env_id')!r}, now "
                    f"{ {k: mine[k] for k in changed} } on {env_id!r}")
            if saved["state"]["iteration"] > config.iterations:
                raise ValueError(f"cannot resume {ckpt} to iterations={config.iterations}: it "
                                 f"has done {saved['state']['iteration']} already")
            policy.load_state_dict(saved["policy"])
            opt.load_state_dict(saved["optimizer"])
            state.update(saved["state"])
            _trim_metrics(out_dir / "metrics.jsonl", state["iteration"])
        elif out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
        if out_dir is not None:
            atomic_write_json(out_dir / "config.json", {
                "agent": self.name, "env_id": env_id, "horizon": horizon,
                "policy": policy.config(), "train": dataclasses.asdict(config)})

        def validate() -> float:
            with torch.no_grad():
                run = rollout(policy, val_problem, horizon, x0=val_x0, minibatch_seed=VAL_SEED0)
            # diverged runs sit at their divergence threshold: finite, and bad
            obj = run.objective.double()
            score = obj[:, :horizon].sum(1) if config.val_metric == "sum" else obj[:, -1]
            return float(score.mean())

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=config.iterations, initial=state["iteration"], unit="it",
                       desc=f"{self.name} {env_id}")
        last: dict[str, Any] = {}
        try:
            while state["iteration"] < config.iterations:
                began = time.perf_counter()
                it = state["iteration"] + 1
                for group in opt.param_groups:
                    group["lr"] = config.lr_at(it)
                record = self._iteration(policy, opt, train_family, horizon, config, it)
                state["env_steps"] += float(config.batch * horizon)
                if it % config.val_every == 0 or it == config.iterations:
                    score = validate()
                    state["env_steps"] += float(config.val_problems * horizon)
                    record["val"] = state["last_val"] = score
                    if score < state["best_val"]:
                        state.update(best_val=score, best_iteration=it, best_policy={
                            k: v.detach().clone() for k, v in policy.state_dict().items()})
                state["iteration"] = it
                state["wall_s"] += time.perf_counter() - began
                record.update(iteration=it, wall_s=state["wall_s"])
                last = record
                if out_dir is not None:
                    # metrics first: a crash in between leaves a line that resume trims
                    append_jsonl(out_dir / "metrics.jsonl", record)
                    atomic_torch_save({"policy": policy.state_dict(),
                                       "optimizer": opt.state_dict(), "state": state,
                                       "config": dataclasses.asdict(config),
                                       "agent_options": self._agent_options(),
                                       "env_id": env_id}, ckpt)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(meta=f"{record['meta_loss']:.4g}",
                                    best=f"{state['best_val']:.4g}")
        finally:
            if bar is not None:
                bar.close()

        if state["best_policy"] is not None:
            policy.load_state_dict(state["best_policy"])
        self._policy = policy
        self.training_cost = {"env_steps": float(state["env_steps"]),
                              "wall_s": float(state["wall_s"])}
        self.summary = {
            "env_id": env_id, "config": dataclasses.asdict(config), "horizon": horizon,
            "final": {"val_best": float(state["best_val"]),
                      "best_iteration": float(state["best_iteration"]),
                      "val_last": float(state["last_val"]),
                      "meta_loss_last": float(last.get("meta_loss", math.nan)),
                      "iterations": float(state["iteration"])},
        }
        return self.summary

    def _iteration(self, policy: CoordinatewiseLSTMOptimizer, opt: torch.optim.Optimizer,
                   family: TaskFamily, horizon: int, config: MetaTrainConfig,
                   it: int) -> dict[str, Any]:
        """One training iteration: fresh problems, ⌈horizon / unroll⌉ truncations, one Adam
        step after each (L2L §3, RNNprop §5)."""
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + it)
        problem = family.sample(gen, config.batch)
        carry = start(policy, problem, problem.init(gen), gen)
        metas, norms, skipped, final_loss = [], [], 0, math.nan
        while carry.t < horizon:
            steps = min(config.unroll, horizon - carry.t)
            res = unroll(policy, problem, carry, steps, generator=gen,
                         meta_loss=config.meta_loss, weighting=config.weighting,
                         second_order=config.second_order)
            # summed losses per step of the truncation (L2L's Σ f, scaled to a mean);
            # RNNprop's final-loss weighting as it is. Averaged over problems; non-finite
            # instances (a diverged optimizee) are left out rather than poisoning the batch
            per = res.meta_loss / (steps if config.weighting == "sum" else 1)
            finite = torch.isfinite(per)
            opt.zero_grad(set_to_none=True)
            if bool(finite.any()):
                loss = per[finite].mean()
                loss.backward()
                # the pre-clip norm (clip=None: measured only); a non-finite one skips
                norm = float(torch.nn.utils.clip_grad_norm_(
                    policy.parameters(), config.clip if config.clip is not None else math.inf))
                if math.isfinite(norm):
                    opt.step()
                    metas.append(float(loss.detach()))
                    norms.append(norm)
                else:
                    skipped += 1
            else:
                skipped += 1
            last = res.losses[:, -1]
            ok = torch.isfinite(last)
            final_loss = float(last[ok].mean()) if bool(ok.any()) else math.inf
            carry = res.carry
        return {"meta_loss": sum(metas) / len(metas) if metas else math.nan,
                "final_loss": final_loss,
                "grad_norm": max(norms) if norms else math.nan, "skipped": skipped}


def _trim_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines past the checkpoint (a crash between the two writes)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
