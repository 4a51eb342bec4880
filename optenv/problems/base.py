"""Batched optimizees: the inner problems that optimizer environments train.

An :class:`Optimizee` holds ``B`` independent instances of one problem. Parameters
are a tensor ``(B, n)``; every method is batched over the leading dimension, so a
vector env, a learning-rate grid or a set of seeds is one torch computation.

Per-instance random data (a quadratic's ``W`` and ``y``, a scaling vector ``c``)
lives in :attr:`Optimizee.instance_data`, a dict of tensors with leading dimension
``B``; :meth:`Optimizee.splice` uses it to replace single instances (vector-env
autoreset) without knowing the family.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CoordinateGroup", "FixedTask", "Optimizee", "TaskFamily"]


@dataclass(frozen=True)
class CoordinateGroup:
    """One weight matrix, bias vector or other block of coordinates.

    ``slice`` indexes the flat parameter vector; ``shape`` is the block's tensor
    shape (``prod(shape) == slice length``); ``kind`` is ``"weight"``, ``"bias"``
    or ``"vector"``. Convolutional GPS and coordinatewise policies share
    parameters within a group (Li & Malik 2017, section 3.5).
    """

    name: str
    slice: slice
    shape: tuple[int, ...]
    kind: str = "vector"

    @property
    def size(self) -> int:
        return self.slice.stop - self.slice.start

    def __post_init__(self) -> None:
        numel = 1
        for s in self.shape:
            numel *= s
        if self.slice.step not in (None, 1) or self.slice.stop - self.slice.start != numel:
            raise ValueError(
                f"CoordinateGroup {self.name!r}: slice {self.slice} does not hold "
                f"shape {self.shape} ({numel} coordinates)"
            )


def groups_from_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[CoordinateGroup, ...]:
    """Lay named tensor shapes out one after another in a flat vector.

    A name ending in ``bias`` (or a 1-D shape) is a ``"bias"`` group when there are
    also matrices, otherwise a ``"vector"``; tensors of rank >= 2 are ``"weight"``.
    """
    groups, start = [], 0
    has_matrix = any(len(s) >= 2 for s in shapes.values())
    for name, shape in shapes.items():
        numel = 1
        for s in shape:
            numel *= s
        kind = "weight" if len(shape) >= 2 else ("bias" if has_matrix else "vector")
        groups.append(CoordinateGroup(name, slice(start, start + numel), tuple(shape), kind))
        start += numel
    return tuple(groups)


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive int, else ValueError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


#: run seeds are below this: generator seeds derived from them (seed·10⁶ + i, ...) then
#: stay far inside the 64 bits torch.Generator.manual_seed takes
MAX_SEED = 2**31


def check_seed(name: str, value: object) -> int:
    """``value`` if it is an int in ``[0, MAX_SEED)``, else ValueError naming both."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**31), got {value!r}")
    return value


def unflatten(params: torch.Tensor, groups: tuple[CoordinateGroup, ...]) -> dict[str, torch.Tensor]:
    """Views ``(B, *shape)`` of each group of a flat ``(B, n)`` parameter tensor."""
    B = params.shape[0]
    return {g.name: params[:, g.slice].reshape(B, *g.shape) for g in groups}


class Optimizee(abc.ABC):
    """``B`` independent instances of a differentiable problem, parameters ``(B, n)``.

    Subclasses set :attr:`groups`, :attr:`num_instances` and, for per-instance
    random data, :attr:`instance_data`; and implement :meth:`init`,
    :meth:`sample_batch`, :meth:`loss` and :meth:`objective`.
    """

    #: coordinate groups, laid out contiguously over ``[0, n)``
    groups: tuple[CoordinateGroup, ...]
    #: ``B``
    num_instances: int
    #: per-instance tensors, each with leading dimension ``B``
    instance_data: dict[str, torch.Tensor]

    def __init__(self, groups: tuple[CoordinateGroup, ...], num_instances: int,
                 instance_data: dict[str, torch.Tensor] | None = None) -> None:
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        self.groups = tuple(groups)
        self.num_instances = int(num_instances)
        self.instance_data = dict(instance_data or {})
        for name, t in self.instance_data.items():
            if t.shape[0] != self.num_instances:
                raise ValueError(
                    f"instance_data[{name!r}] has leading size {t.shape[0]}, "
                    f"expected num_instances={self.num_instances}"
                )

    @property
    def n(self) -> int:
        """Number of parameters of one instance."""
        return self.groups[-1].slice.stop if self.groups else 0

    @abc.abstractmethod
    def init(self, generator: torch.Generator) -> torch.Tensor:
        """Initial parameters ``(B, n)``, drawn from ``generator``."""

    @abc.abstractmethod
    def sample_batch(self, generator: torch.Generator) -> Any:
        """A minibatch for :meth:`loss`: independent per instance, from ``generator``."""

    @abc.abstractmethod
    def loss(self, params: torch.Tensor, batch: Any) -> torch.Tensor:
        """Minibatch loss ``(B,)``, differentiable in ``params``."""

    @abc.abstractmethod
    def objective(self, params: torch.Tensor) -> torch.Tensor:
        """The true objective ``(B,)`` (e.g. full training-set loss)."""

    def test_objective(self, params: torch.Tensor) -> torch.Tensor | None:
        """Held-out loss ``(B,)`` where the problem has a test split, else ``None``."""
        return None

    def loss_and_grad(self, params: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch loss ``(B,)`` and its gradient ``(B, n)`` (no graph kept)."""
        with torch.enable_grad():
            p = params.detach().requires_grad_(True)
            value = self.loss(p, batch)
            (grad,) = torch.autograd.grad(value.sum(), p)
        return value.detach(), grad

    def splice(self, mask: torch.Tensor, other: Optimizee) -> None:
        """Replace the instances where ``mask`` (bool ``(B,)``) is set by ``other``'s.

        ``other`` holds either ``B`` instances (taken index by index) or
        ``mask.sum()`` instances (taken in order).
        """
        if set(other.instance_data) != set(self.instance_data):
            raise ValueError("splice: the two optimizees come from different families")
        for name, mine in self.instance_data.items():
            theirs = other.instance_data[name]
            if theirs.shape[0] == mine.shape[0]:
                mine[mask] = theirs[mask]
            else:
                mine[mask] = theirs

    def select(self, index: torch.Tensor) -> Optimizee:
        """A new optimizee whose instance ``i`` is this one's instance ``index[i]``.

        Repeats are allowed: ``select(torch.arange(S).repeat(G))`` lays out ``G`` copies
        of ``S`` problems, e.g. a learning-rate grid over the same seeds. Shared data
        (a dataset) is shared, per-instance data is indexed (a copy).
        """
        index = torch.as_tensor(index, dtype=torch.long)
        if index.ndim != 1 or len(index) == 0:
            raise ValueError(
                f"index must be a non-empty 1-D tensor, got shape {tuple(index.shape)}"
            )
        if index.min() < 0 or index.max() >= self.num_instances:
            raise ValueError(f"index out of range for {self.num_instances} instances")
        out = copy.copy(self)
        out.num_instances = len(index)
        out.instance_data = {k: v[index] for k, v in self.instance_data.items()}
        return out

    def concat(self, others: list[Optimizee]) -> Optimizee:
        """A new optimizee holding this one's instances, then each of ``others``'.

        All must come from the same family (same type, same shared data): used to put
        problems drawn from separate per-seed generators into one batch.
        """
        parts = [self, *others]
        for p in others:
            if type(p) is not type(self) or set(p.instance_data) != set(self.instance_data):
                raise ValueError("concat: the optimizees come from different families")
            if p.n != self.n:
                raise ValueError(f"concat: n={p.n} differs from n={self.n}")
        out = copy.copy(self)
        out.num_instances = sum(p.num_instances for p in parts)
        out.instance_data = {
            k: torch.cat([p.instance_data[k] for p in parts]) for k in self.instance_data
        }
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(B={self.num_instances}, n={self.n})"


class TaskFamily(abc.ABC):
    """A distribution over problems; :meth:`sample` draws ``B`` i.i.d. instances."""

    @abc.abstractmethod
    def sample(self, generator: torch.Generator, num_instances: int = 1) -> Optimizee:
        """``num_instances`` independent problems drawn with ``generator``."""

    def describe(self) -> str:
        """One line for ``optenv list``."""
        return (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]


class FixedTask(TaskFamily):
    """A family of one problem: instances differ only in init and minibatches."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> Optimizee:
        return self.factory(num_instances)
