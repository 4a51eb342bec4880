"""Per-coordinate feature sets: what a learned optimizer sees at each step.

A :class:`FeatureSet` turns the history of iterates ``x``, gradients ``grad`` and
minibatch losses ``loss`` of ``B`` independent problem instances into a tensor
``(B, n, dim)``: ``dim`` features for each of the ``n`` coordinates. The env and the
torch optimizer adapter use the same classes, so a policy sees the same inputs in both.

Conventions
-----------
* Shapes: ``x`` and ``grad`` are ``(B, n)``, ``loss`` is ``(B,)`` (the minibatch loss
  f̂ at ``x``). Everything is computed in the dtype and on the device of ``x``;
  ``grad`` and ``loss`` are cast to it.
* Time: step ``t = 0`` is the initial iterate, pushed by :meth:`FeatureSet.init`;
  every :meth:`FeatureSet.update` pushes step ``t + 1``. Each instance has its own
  step counter ``state["t"]`` (a ``(B,)`` long tensor), so
  :meth:`FeatureSet.reset_where` can restart single instances (vector-env autoreset).
* Undefined features: wherever a feature refers to a negative time index (before any
  ``max(., .)`` clamp of the paper's formula), it is zero (Li & Malik 2017, §3.6).
* State: a ``dict[str, Tensor]``, every tensor with leading dimension ``B``, so it can
  live in a ``torch.optim.Optimizer`` state dict. Histories are ring buffers
  ``(B, H, ...)``: the entry for time ``s`` lives in slot ``s mod H`` and is read with
  a per-instance :func:`torch.gather`; the history is never shifted.
* Relative changes of the loss divide by the loss with a signed floor: values with
  ``|f| < LOSS_FLOOR`` become ``±LOSS_FLOOR`` (``+`` for 0), so a zero loss gives a
  large but finite feature instead of ``inf``/``nan``.
* ``grad_scale`` (the two Li & Malik sets): ``"paper"`` uses the raw gradient, as
  §3.6 does; ``"instance_rms"`` first divides each instance's gradient by its root mean
  square over the instance's coordinates, at every step. The paper's gradient features
  ``g/(|g'|+1)`` are then scale-free: near a minimum, where raw gradients are ~1e-6,
  they still carry the gradient's direction (a departure from the paper, off by default).
  ``"adagrad"`` divides each coordinate's gradient by the root of the sum of its squares
  so far, ``g_t / √(Σ_{s≤t} g_s²)`` (AdaGrad's normalization, Duchi et al. 2011; in
  [-1, 1], ``sign(g_0)`` at t = 0): also scale-free, and a step proportional to it is
  AdaGrad's, so a policy linear in the features can express AdaGrad (also a departure,
  off by default). Its running sum is the state entry ``"g_sq"``.
* :meth:`FeatureSet.update` may mutate the state in place (ring-buffer writes); clone
  the state first if the old one is still needed. Inputs are used as given: detach
  them if gradients should not flow through the features.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

__all__ = [
    "FEATURES",
    "GRAD_SCALES",
    "LOSS_FLOOR",
    "AdamFeatures",
    "FeatureSet",
    "GradientFeatures",
    "L2LFeatures",
    "LiMalikObservation",
    "LiMalikState",
    "MomentumFeatures",
    "check_grad_scale",
    "feature_names",
    "make_features",
]

#: Floor on ``|f̂|`` in loss denominators; the sign is kept (0 counts as positive).
LOSS_FLOOR = 1e-12
#: ``grad_scale`` options of the Li & Malik feature sets (module docstring)
GRAD_SCALES = ("paper", "instance_rms", "adagrad")

State = dict[str, Tensor]


# --------------------------------------------------------------------------- helpers


def _inputs(x: Tensor, grad: Tensor, loss: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes and cast ``grad`` and ``loss`` to the dtype/device of ``x``."""
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor (B, n), got {x.dtype} {tuple(x.shape)}")
    if grad.shape != x.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)}, expected {tuple(x.shape)}")
    if loss.shape != x.shape[:1]:
        raise ValueError(f"loss has shape {tuple(loss.shape)}, expected ({x.shape[0]},)")
    return x, grad.to(x), loss.to(x)


def check_grad_scale(grad_scale: str, name: str = "grad_scale") -> str:
    """``grad_scale`` if it is one of :data:`GRAD_SCALES`, else ValueError naming it."""
    if grad_scale not in GRAD_SCALES:
        raise ValueError(f"{name} must be one of {GRAD_SCALES}, got {grad_scale!r}")
    return grad_scale


def _scaled(grad: Tensor, grad_scale: str,
            g_sq: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``grad`` as the features read it (module docstring), and for ``"adagrad"`` the new
    running sum of squares (``g_sq`` is the previous one, None at t = 0; else None)."""
    if grad_scale == "paper":
        return grad, None
    tiny = torch.finfo(grad.dtype).tiny  # a zero gradient stays zero (0 / tiny)
    if grad_scale == "adagrad":
        g_sq = grad.square() if g_sq is None else g_sq + grad.square()
        return grad / g_sq.sqrt().clamp_min(tiny), g_sq
    rms = grad.square().mean(-1, keepdim=True).sqrt_().clamp_min_(tiny)
    return grad / rms, None


def _with_g_sq(state: State, g_sq: Tensor | None) -> State:
    if g_sq is not None:
        state["g_sq"] = g_sq
    return state


def _signed_floor(f: Tensor) -> Tensor:
    """``f`` with ``|f| < LOSS_FLOOR`` replaced by ``±LOSS_FLOOR`` (sign kept, +0 -> +)."""
    return torch.copysign(f.abs().clamp_min_(LOSS_FLOOR), f)


def _ring(value: Tensor, size: int) -> Tensor:
    """A zero ring buffer ``(B, size, ...)`` holding ``value`` as time 0 (slot 0)."""
    buf = value.new_zeros((value.shape[0], size, *value.shape[1:]))
    buf[:, 0] = value
    return buf


def _write(buf: Tensor, t: Tensor, value: Tensor) -> None:
    """In place: store ``value`` (B, ...) as time ``t`` (B,) in slot ``t mod H``."""
    slot = t.remainder(buf.shape[1]).view(-1, 1)
    if buf.dim() == 3:
        slot = slot.unsqueeze(-1).expand(-1, 1, buf.shape[2])
    buf.scatter_(1, slot, value.unsqueeze(1))


def _gather(buf: Tensor, times: Tensor) -> Tensor:
    """Entries of ring buffer ``buf`` (B, H, ...) at per-instance ``times`` (B, K)."""
    slots = times.remainder(buf.shape[1])
    if buf.dim() == 3:
        slots = slots.unsqueeze(-1).expand(-1, -1, buf.shape[2])
    return torch.gather(buf, 1, slots)


def _clip(times: Tensor, t: Tensor) -> Tensor:
    """Clamp time indices into ``[0, t]``: masked-out entries still read a valid slot."""
    return torch.minimum(times.clamp_min(0), t)


# ------------------------------------------------------------------------ base class


class FeatureSet(abc.ABC):
    """A named per-coordinate feature map computed from a rolling history.

    Subclasses set :attr:`name` (registry key) and :attr:`dim` (features per
    coordinate) and implement :meth:`init`, :meth:`update` and :meth:`compute`.
    """

    #: registry name
    name: ClassVar[str]
    #: features per coordinate (``k``)
    dim: int
    #: True when :meth:`compute` returns a tensor nothing else references, so callers
    #: may sanitize it in place instead of copying it (the observation path, every step)
    compute_is_new: ClassVar[bool] = False

    @abc.abstractmethod
    def init(self, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        """State at ``t = 0`` from the initial iterate ``x`` (B, n), its gradient and loss."""

    @abc.abstractmethod
    def update(self, state: State, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        """Push step ``t + 1``; may mutate ``state`` in place and return it."""

    @abc.abstractmethod
    def compute(self, state: State) -> Tensor:
        """Features ``(B, n, dim)`` at each instance's current step, dtype of ``x``."""

    def reset_where(self, state: State, mask: Tensor, x: Tensor, grad: Tensor,
                    loss: Tensor) -> State:
        """Restart the instances where the bool ``mask`` (B,) is set at ``t = 0``.

        ``x``, ``grad`` and ``loss`` are full-``B`` tensors; only the masked rows are
        used. The other instances' state is left unchanged. Mutates and returns ``state``.
        """
        mask = mask.to(device=state["t"].device, dtype=torch.bool)
        if mask.shape != state["t"].shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected "
                             f"{tuple(state['t'].shape)}")
        fresh = self.init(x, grad, loss)
        for key, old in state.items():
            m = mask.view(-1, *([1] * (old.dim() - 1)))
            state[key] = torch.where(m, fresh[key], old)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


FEATURES: dict[str, type[FeatureSet]] = {}


def _register(cls: type[FeatureSet]) -> type[FeatureSet]:
    FEATURES[cls.name] = cls
    return cls


def make_features(name: str, **kwargs: object) -> FeatureSet:
    """Instantiate the feature set registered as ``name`` with constructor ``kwargs``."""
    try:
        cls = FEATURES[name]
    except KeyError:
        raise ValueError(
            f"unknown feature set {name!r}; known: {', '.join(feature_names())}"
        ) from None
    return cls(**kwargs)  # type: ignore[arg-type]


def feature_names() -> list[str]:
    """Registered feature-set names, in registration order."""
    return list(FEATURES)


# ---------------------------------------------------------------------- Li & Malik


@_register
class LiMalikObservation(FeatureSet):
    """Observation features Ψ of Li & Malik, "Learning to Optimize Neural Nets" (2017), §3.6.

    Three features per coordinate at step ``t`` (elementwise):

    1. ``(f̂(x^t) - f̂(x^{t-1})) / f̂(x^{t-1})`` -- one value per instance, broadcast
       to all coordinates; the denominator has a signed floor (:data:`LOSS_FLOOR`);
    2. ``∇f̂(x^t) / (|∇f̂(x^{max(t-1,0)})| + 1)``;
    3. ``|x^{max(t-1,1)} - x^{max(t-2,0)}| / (|x^t - x^{t-1}| + 0.1)``.

    ``grad_scale="instance_rms"`` reads ∇f̂ divided by its RMS over the instance's
    coordinates, ``"adagrad"`` by the root of its running sum of squares (module
    docstring; neither is the paper's).

    Features 1 and 3 refer to ``t - 1`` and are zero at ``t = 0``. At ``t = 1`` feature
    3 is ``|x^1 - x^0| / (|x^1 - x^0| + 0.1)``. (The extracted paper text garbles
    feature 3; this is the project's reading of it.)

    State: the iterates at ``t, t-1, t-2``, gradients and losses at ``t, t-1`` as
    separate tensors, shifted by reference at each update: Ψ looks back two steps at
    most, so this avoids the gathers a ring buffer needs (it is on every env step).
    """

    name: ClassVar[str] = "li_malik_obs"
    compute_is_new: ClassVar[bool] = True

    def __init__(self, grad_scale: str = "paper") -> None:
        self.dim = 3
        self.grad_scale = check_grad_scale(grad_scale)

    def init(self, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        grad, g_sq = _scaled(grad, self.grad_scale)
        # Lagged slots of negative times hold copies of time 0; the masks in compute()
        # zero every feature that would read them.
        return _with_g_sq({
            "t": torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
            "x0": x.clone(), "x1": x.clone(), "x2": x.clone(),
            "g0": grad.clone(), "g1": grad.clone(),
            "f0": loss.clone(), "f1": loss.clone(),
        }, g_sq)

    def update(self, state: State, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        grad, g_sq = _scaled(grad, self.grad_scale, state.get("g_sq"))
        _with_g_sq(state, g_sq)
        # keeps references, not copies (this runs every env step): callers pass fresh
        # tensors and never modify them in place afterwards
        state["x2"], state["x1"], state["x0"] = state["x1"], state["x0"], x
        state["g1"], state["g0"] = state["g0"], grad
        state["f1"], state["f0"] = state["f0"], loss
        state["t"] = state["t"] + 1
        return state

    def compute(self, state: State) -> Tensor:
        # Runs on every env step, so: contiguous arithmetic, each feature's last op
        # writing straight into its strided slot of the output, and torch.where only on
        # the rare steps that need it (an elementwise where over (B, n) costs ~30 adds).
        t = state["t"]
        x_t, x_tm1, x_tm2 = state["x0"], state["x1"], state["x2"]
        out = x_t.new_empty((*x_t.shape, 3))
        early = int(t.min()) < 2  # some instance is at t = 0 or 1: masks needed
        rel_loss = (state["f0"] - state["f1"]) / _signed_floor(state["f1"])
        if early:
            rel_loss = torch.where(t >= 1, rel_loss, 0.0)
        out[..., 0] = rel_loss[:, None]
        # at t = 0 the previous gradient is g^0 itself: init() stored it in g1
        torch.div(state["g0"], state["g1"].abs().add_(1), out=out[..., 1])
        # numerator |x^{max(t-1,1)} - x^{max(t-2,0)}|: at t = 1 that is |x^1 - x^0|
        step = x_t - x_tm1
        numerator = x_tm1 - x_tm2
        if early:
            numerator = torch.where((t == 1)[:, None], step, numerator)
        torch.div(numerator.abs_(), step.abs_().add_(0.1), out=out[..., 2])
        if early:
            out[..., 2].masked_fill_((t < 1)[:, None], 0.0)
        return out


@_register
class LiMalikState(FeatureSet):
    """State features Φ of Li & Malik, "Learning to Optimize Neural Nets" (2017), §3.6.

    With windowed averages over the last up to 3 steps, ``x̄(i) = mean(x^{max(i-2,0)..i})``
    and likewise ``ḡ(i)`` (gradients) and ``f̄(i)`` (losses), the 75 features are, in
    this column order:

    * 25 objective features, ``i = 0..24``:
      ``(f̄(t-5i) - f̄(t-5(i+1))) / f̄(t-5(i+1))``, zero unless ``t-5(i+1) >= 0``.
      The extracted paper text shows the first term without its overline, but the
      prose says "relative change in the average recent objective value", so both
      terms are averages. The denominator has a signed floor (:data:`LOSS_FLOOR`).
    * 26 gradient features, ``i = 0..25``:
      ``ḡ(t-5i) / (|ḡ(max(t-5(i+1), t mod 5))| + 1)``, zero unless ``t-5i >= 0``.
    * 24 iterate features, ``i = 0..23``:
      ``|x̄(max(t-5(i+1), t mod 5 + 5)) - x̄(max(t-5(i+2), t mod 5))|
      / (|x̄(t-5i) - x̄(t-5(i+1))| + 0.1)``, zero unless ``t-5(i+1) >= 0``.
      The paper's text shows ``i = 0..24``; the project fixes 24 of them so that Φ has
      75 = 25 + 26 + 24 features, as the paper states.

    ``grad_scale="instance_rms"`` reads each gradient divided by its RMS over the
    instance's coordinates, ``"adagrad"`` by the root of its running sum of squares
    (module docstring; neither is the paper's).

    The objective feature is a per-instance value broadcast to all coordinates. State:
    ring buffers of the last 3 raw values (for the averages) and of the last
    :attr:`HISTORY` averages; the largest look-back is ``t - 130`` (gradient, ``i=25``).
    """

    name: ClassVar[str] = "li_malik_state"
    compute_is_new: ClassVar[bool] = True
    #: length of the ring buffers of averages; must exceed the largest look-back (130)
    HISTORY: ClassVar[int] = 131
    N_OBJECTIVE: ClassVar[int] = 25
    N_GRADIENT: ClassVar[int] = 26
    N_ITERATE: ClassVar[int] = 24

    def __init__(self, grad_scale: str = "paper") -> None:
        self.dim = self.N_OBJECTIVE + self.N_GRADIENT + self.N_ITERATE
        self.grad_scale = check_grad_scale(grad_scale)

    def init(self, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        grad, g_sq = _scaled(grad, self.grad_scale)
        # At t = 0 each average is the value itself.
        return _with_g_sq({
            "t": torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
            "x_raw": _ring(x, 3),
            "g_raw": _ring(grad, 3),
            "f_raw": _ring(loss, 3),
            "x_avg": _ring(x, self.HISTORY),
            "g_avg": _ring(grad, self.HISTORY),
            "f_avg": _ring(loss, self.HISTORY),
        }, g_sq)

    def update(self, state: State, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        grad, g_sq = _scaled(grad, self.grad_scale, state.get("g_sq"))
        _with_g_sq(state, g_sq)
        t = state["t"] + 1
        count = (t + 1).clamp_max(3).to(x.dtype)
        for key, value in (("x", x), ("g", grad), ("f", loss)):
            raw = state[f"{key}_raw"]
            _write(raw, t, value)
            # Slots of times < 0 are still zero (init and reset_where zero them), so the
            # sum over all 3 slots is the sum over max(t-2,0)..t.
            mean = raw.sum(1) / (count[:, None] if raw.dim() == 3 else count)
            _write(state[f"{key}_avg"], t, mean)
        state["t"] = t
        return state

    def compute(self, state: State) -> Tensor:
        t = state["t"]
        if bool((t == t[0]).all()):  # lockstep instances (every env step but after resets)
            return self._compute_lockstep(state, int(t[0]))
        T = t[:, None]
        mod = T.remainder(5)
        dev = t.device

        # Objective: relative change of f̄ over 5-step blocks.
        i = torch.arange(self.N_OBJECTIVE, device=dev)
        now, before = T - 5 * i, T - 5 * (i + 1)
        f_now = _gather(state["f_avg"], _clip(now, T))
        f_before = _gather(state["f_avg"], _clip(before, T))
        obj = torch.where(before >= 0, (f_now - f_before) / _signed_floor(f_before), 0.0)

        # Gradient: ḡ normalized by an earlier ḡ (at least the one at t mod 5).
        i = torch.arange(self.N_GRADIENT, device=dev)
        now, ref = T - 5 * i, torch.maximum(T - 5 * (i + 1), mod)
        k = self.N_GRADIENT
        g = _gather(state["g_avg"], _clip(torch.cat([now, ref], 1), T))
        grad = g[:, :k] / (g[:, k:].abs() + 1)
        grad = torch.where((now >= 0)[..., None], grad, 0.0)

        # Iterate: previous change of x̄ relative to the current change.
        i = torch.arange(self.N_ITERATE, device=dev)
        k = self.N_ITERATE
        times = torch.cat([
            torch.maximum(T - 5 * (i + 1), mod + 5),
            torch.maximum(T - 5 * (i + 2), mod),
            T - 5 * i,
            T - 5 * (i + 1),
        ], 1)
        xp, xq, xa, xb = _gather(state["x_avg"], _clip(times, T)).split(k, 1)
        it = (xp - xq).abs() / ((xa - xb).abs() + 0.1)
        it = torch.where((T - 5 * (i + 1) >= 0)[..., None], it, 0.0)

        n = state["x_avg"].shape[2]
        obj = obj[:, None, :].expand(-1, n, -1)
        return torch.cat([obj, grad.transpose(1, 2), it.transpose(1, 2)], -1)

    def _compute_lockstep(self, state: State, t: int) -> Tensor:
        """:meth:`compute` when every instance is at step ``t``: the look-back times and
        the masks are the same for all, so rows are picked with ``index_select`` and the
        masked features are zero slices (no per-instance gather, no ``torch.where``);
        each feature block is written straight into its strided slot of the output."""
        H = self.HISTORY
        x_avg, g_avg, f_avg = state["x_avg"], state["g_avg"], state["f_avg"]
        B, _, n = x_avg.shape
        no, ng = self.N_OBJECTIVE, self.N_GRADIENT
        out = x_avg.new_empty((B, n, self.dim))
        mod = t % 5

        def rows(buf: Tensor, times: list[int]) -> Tensor:
            slots = torch.tensor([min(max(u, 0), t) % H for u in times], device=buf.device)
            return buf.index_select(1, slots)

        # Objective: valid for i with t - 5(i+1) >= 0.
        k = min(no, t // 5)
        if k:
            f_now = rows(f_avg, [t - 5 * i for i in range(k)])
            f_before = rows(f_avg, [t - 5 * (i + 1) for i in range(k)])
            obj = (f_now - f_before) / _signed_floor(f_before)
            out[..., :k] = obj[:, None, :]
        out[..., k:no] = 0.0

        # Gradient: valid for i with t - 5i >= 0.
        k = min(ng, t // 5 + 1)
        g_now = rows(g_avg, [t - 5 * i for i in range(k)])
        g_ref = rows(g_avg, [max(t - 5 * (i + 1), mod) for i in range(k)])
        torch.div(g_now.transpose(1, 2), g_ref.abs().add_(1).transpose(1, 2),
                  out=out[..., no:no + k])
        out[..., no + k:no + ng] = 0.0

        # Iterate: valid for i with t - 5(i+1) >= 0.
        k, first = min(self.N_ITERATE, t // 5), no + ng
        if k:
            idx = range(k)
            xp = rows(x_avg, [max(t - 5 * (i + 1), mod + 5) for i in idx])
            xq = rows(x_avg, [max(t - 5 * (i + 2), mod) for i in idx])
            xa = rows(x_avg, [t - 5 * i for i in idx])
            xb = rows(x_avg, [t - 5 * (i + 1) for i in idx])
            num = xp.sub_(xq).abs_()
            den = xa.sub_(xb).abs_().add_(0.1)
            torch.div(num.transpose(1, 2), den.transpose(1, 2), out=out[..., first:first + k])
        out[..., first + k:] = 0.0
        return out


# ---------------------------------------------------------------- gradient-based sets


@_register
class GradientFeatures(FeatureSet):
    """The raw gradient, one feature: ``∇f̂(x^t)``.

    The input of the coordinatewise LSTM of Andrychowicz et al., "Learning to learn by
    gradient descent by gradient descent" (2016), §2, without preprocessing.
    """

    name: ClassVar[str] = "gradient"

    def __init__(self) -> None:
        self.dim = 1

    def init(self, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        return {"t": torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
                "g": grad.clone()}

    def update(self, state: State, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        state["t"] = state["t"] + 1
        state["g"] = grad.clone()
        return state

    def compute(self, state: State) -> Tensor:
        return state["g"].unsqueeze(-1)


@_register
class L2LFeatures(GradientFeatures):
    """Gradient preprocessing of Andrychowicz et al., "Learning to learn by gradient descent
    by gradient descent" (2016), appendix A (as summarized in the L2L notes, §2.2).

    Two features per coordinate, with ``p > 0`` (default 10)::

        (log|g| / p, sign(g))   if |g| >= exp(-p)
        (-1,         exp(p) g)  otherwise
    """

    name: ClassVar[str] = "l2l"
    compute_is_new: ClassVar[bool] = True

    def __init__(self, p: float = 10.0) -> None:
        if not p > 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.p = float(p)
        self.dim = 2

    def compute(self, state: State) -> Tensor:
        g = state["g"]
        threshold = math.exp(-self.p)
        big = g.abs() >= threshold
        # clamp keeps log finite (and its gradient defined) in the unused branch
        log_part = torch.where(big, g.abs().clamp_min(threshold).log() / self.p, -1.0)
        sign_part = torch.where(big, g.sign(), math.exp(self.p) * g)
        return torch.stack([log_part, sign_part], -1)

    def __repr__(self) -> str:
        return f"L2LFeatures(p={self.p})"


@_register
class AdamFeatures(FeatureSet):
    """RNNprop inputs of Lv, Jiang & Li, "Learning Gradient Descent" (2017), §4.3 and §5.

    Two features per coordinate, eqs. (8)-(9)::

        m̃ = m̂ / (sqrt(v̂) + eps),   g̃ = g / (sqrt(v̂) + eps)

    with Adam's moments (their Table 1) ``m = β1 m + (1-β1) g``, ``v = β2 v + (1-β2) g²``
    from ``m = v = 0``, bias-corrected ``m̂ = m / (1 - β1^t')``, ``v̂ = v / (1 - β2^t')``.
    The gradient at step ``t = 0`` is Adam's first update, ``t' = t + 1``. Defaults
    ``β1 = β2 = 0.95``, ``eps = 1e-8`` as in §5.
    """

    name: ClassVar[str] = "adam"
    compute_is_new: ClassVar[bool] = True

    def __init__(self, beta1: float = 0.95, beta2: float = 0.95, eps: float = 1e-8) -> None:
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {beta}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.dim = 2

    def init(self, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        return {
            "t": torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
            "g": grad.clone(),
            "m": (1 - self.beta1) * grad,
            "v": (1 - self.beta2) * grad.square(),
        }

    def update(self, state: State, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        state["t"] = state["t"] + 1
        state["g"] = grad.clone()
        state["m"] = self.beta1 * state["m"] + (1 - self.beta1) * grad
        state["v"] = self.beta2 * state["v"] + (1 - self.beta2) * grad.square()
        return state

    def compute(self, state: State) -> Tensor:
        g, m, v = state["g"], state["m"], state["v"]
        steps = (state["t"] + 1).to(g.dtype)[:, None]  # Adam's t' (per instance)
        m_hat = m / (1 - torch.pow(self.beta1, steps))
        v_hat = v / (1 - torch.pow(self.beta2, steps))
        denom = v_hat.sqrt() + self.eps
        return torch.stack([m_hat / denom, g / denom], -1)

    def __repr__(self) -> str:
        return f"AdamFeatures(beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"


@_register
class MomentumFeatures(FeatureSet):
    """Inputs of Metz et al., "Understanding and correcting pathologies in the training of
    learned optimizers" (2019), §4.1 (without the iteration-number feature).

    Per coordinate: the gradient ``g``, the parameter value ``x`` and exponential moving
    averages of the gradient ``a_β = β a_β + (1-β) g`` for each decay β in ``decays``
    (default 0.5, 0.9, 0.99, 0.999, 0.9999); ``dim = 2 + len(decays)``, in that order.
    The averages start from 0 before step 0 and are *not* bias-corrected (so slow
    averages are small early on -- that is how the policy can tell early steps apart).
    """

    name: ClassVar[str] = "momentum"
    compute_is_new: ClassVar[bool] = True

    def __init__(self, decays: Sequence[float] = (0.5, 0.9, 0.99, 0.999, 0.9999)) -> None:
        decays = tuple(float(d) for d in decays)
        if not decays or not all(0.0 <= d < 1.0 for d in decays):
            raise ValueError(f"decays must be a non-empty sequence in [0, 1), got {decays}")
        self.decays = decays
        self.dim = 2 + len(decays)

    def _betas(self, like: Tensor) -> Tensor:
        return torch.tensor(self.decays, dtype=like.dtype, device=like.device)

    def init(self, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        return {
            "t": torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
            "g": grad.clone(),
            "x": x.clone(),
            "ema": (1 - self._betas(x)) * grad[..., None],
        }

    def update(self, state: State, x: Tensor, grad: Tensor, loss: Tensor) -> State:
        x, grad, loss = _inputs(x, grad, loss)
        betas = self._betas(x)
        state["t"] = state["t"] + 1
        state["g"] = grad.clone()
        state["x"] = x.clone()
        state["ema"] = betas * state["ema"] + (1 - betas) * grad[..., None]
        return state

    def compute(self, state: State) -> Tensor:
        return torch.cat([state["g"][..., None], state["x"][..., None], state["ema"]], -1)

    def __repr__(self) -> str:
        return f"MomentumFeatures(decays={self.decays})"
