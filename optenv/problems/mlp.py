"""Multilayer perceptrons trained with cross-entropy on a classification dataset.

Two references fix the defaults:

* Li & Malik (2017), section 4: a two-layer net with 48 inputs, 48 hidden units and 10
  outputs on MNIST randomly projected to 48 dimensions and normalized, mini-batches of
  64. Here the default dataset is the bundled 8x8 digits projected the same way
  (:func:`optenv.data.load_dataset` with ``dim=48``) and the activation is ReLU.
* Lv et al. (2017, RNNprop), section 5: the "base MLP" has one hidden layer of 20 sigmoid
  units, mini-batches of 128 and all parameters initialized from N(0, 0.1^2)
  (``hidden=(20,), activation="sigmoid", batch_size=128, init_scale=0.1``); section 5.2
  varies the activation over sigmoid, ReLU, ELU and tanh, section 5.3 adds hidden layers.

For ``B`` instances the forward pass is one batched computation in feature-major layout
(activations ``(B, width, M)``): the minibatch path is ``baddbmm`` over the per-instance
inputs ``(B, bs, d)``; the full-training-set path multiplies all ``B`` first-layer
matrices with the *shared* data ``(N, d)`` in one GEMM, without copying the data ``B``
times. Logits come out ``(B, classes, M)``, where the cross-entropy is fastest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from optenv.data import Dataset, load_dataset
from optenv.problems.base import (
    CoordinateGroup,
    Optimizee,
    TaskFamily,
    check_positive_int,
    groups_from_shapes,
)

__all__ = [
    "ACTIVATIONS",
    "ClassifierOptimizee",
    "MLPOptimizee",
    "MLPTask",
    "get_activation",
    "init_params",
    "resolve_dataset",
]

#: activations by name (RNNprop section 5.2 uses all four)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "tanh": torch.tanh,
}

# In-place versions for hidden activations: they act on fresh baddbmm/addmm outputs (whose
# backward does not need them) and avoid allocating and faulting in a second large buffer.
_INPLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu_,
    "sigmoid": torch.sigmoid_,
    "elu": lambda x: F.elu_(x),
    "tanh": torch.tanh_,
}

# Variance-preserving gain for the fan-in default init (He for ReLU-like units).
_GAIN = {"relu": math.sqrt(2.0), "elu": math.sqrt(2.0), "sigmoid": 1.0, "tanh": 1.0}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name``; ValueError for unknown names."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


def resolve_dataset(dataset: Dataset | str, dim: int | None) -> Dataset:
    """A :class:`Dataset` as given, or loaded by name (with projection ``dim``)."""
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, str):
        return load_dataset(dataset, dim=dim)
    raise ValueError(f"dataset must be a Dataset or a dataset name, got {dataset!r}")


def split_groups(params: torch.Tensor, groups: tuple[CoordinateGroup, ...]) -> list[torch.Tensor]:
    """Views ``(B, *shape)`` of each group, in order. Like :func:`unflatten`, but through one
    ``split`` whose backward is a single ``cat`` (slicing costs a zero-filled gradient
    buffer per group)."""
    B = params.shape[0]
    parts = params.split([g.size for g in groups], dim=1)
    return [t.reshape(B, *g.shape) for t, g in zip(parts, groups, strict=True)]


def init_params(
    groups: tuple[CoordinateGroup, ...],
    num_instances: int,
    generator: torch.Generator,
    init_scale: float | None,
    gain: float = 1.0,
) -> torch.Tensor:
    """Initial parameters ``(B, n)``.

    ``init_scale=s``: every coordinate ~ N(0, s^2) (RNNprop section 5 uses s = 0.1).
    ``init_scale=None``: weights ~ N(0, gain^2 / fan_in) with ``fan_in`` the product of a
    weight's trailing dims (PyTorch's ``(out, in, ...)`` layout), biases zero; the last
    weight (the output layer, no activation after it) uses gain 1 so initial logits are
    of order one.
    """
    n = groups[-1].slice.stop
    params = torch.zeros(num_instances, n)
    last_weight = max((i for i, g in enumerate(groups) if g.kind == "weight"), default=-1)
    for i, g in enumerate(groups):
        if init_scale is not None:
            std = init_scale
        elif g.kind == "weight":
            std = (1.0 if i == last_weight else gain) / math.sqrt(math.prod(g.shape[1:]))
        else:
            continue
        params[:, g.slice] = torch.randn(num_instances, g.size, generator=generator) * std
    return params


def check_classifier_args(task) -> None:
    """Validate the arguments an MLP and a CNN task share (``task.data`` already set)."""
    check_positive_int("batch_size", task.batch_size)
    if task.init_scale is not None and not task.init_scale > 0:
        raise ValueError(f"init_scale must be > 0 or None, got {task.init_scale!r}")
    if task.objective_size is not None:
        check_positive_int("objective_size", task.objective_size)
    if task.class_subset is not None:
        check_positive_int("class_subset", task.class_subset)
        if not 2 <= task.class_subset <= task.data.num_classes:
            raise ValueError(
                f"class_subset must be in [2, {task.data.num_classes}], got {task.class_subset}"
            )


class ClassifierOptimizee(Optimizee):
    """Cross-entropy classifier over a :class:`Dataset`, shared by the MLP and CNN.

    Subclasses implement :meth:`forward` for per-instance inputs ``(B, M, d)`` and
    :meth:`forward_shared` for one input ``(M, d)`` seen by all instances; both return
    logits class-major, ``(B, K, M)``. Minibatches are index tensors ``(B, batch_size)`` into the
    training set, independent per instance. With a class subset, ``instance_data
    ["class_map"]`` ``(B, C)`` maps a dataset label to the instance's output (``-1``: not in
    the subset); minibatches and objectives use only the instance's classes.
    """

    def __init__(
        self,
        data: Dataset,
        groups: tuple[CoordinateGroup, ...],
        num_instances: int,
        batch_size: int,
        init_scale: float | None,
        gain: float,
        class_map: torch.Tensor | None = None,
        objective_size: int | None = None,
    ) -> None:
        super().__init__(groups, num_instances,
                         {} if class_map is None else {"class_map": class_map})
        self.data = data
        self.batch_size = batch_size
        self.init_scale = init_scale
        self.gain = gain
        self._train_x, self._train_y = data.train_x, data.train_y
        if objective_size is not None and objective_size < data.num_train:
            # a fixed subset (seed 0) of the training set for a cheaper true objective
            keep = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(0))
            keep = keep[:objective_size].sort().values
            self._obj_x, self._obj_y = data.train_x[keep], data.train_y[keep]
        else:
            self._obj_x, self._obj_y = data.train_x, data.train_y
        if class_map is not None:
            # training indices sorted by class, for sampling a class then a member of it
            self._order = torch.argsort(data.train_y, stable=True)
            self._counts = torch.bincount(data.train_y, minlength=data.num_classes)
            self._starts = torch.cumsum(self._counts, 0) - self._counts

    def _scratch(self, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        """A kept, contiguous ``(rows, cols)`` buffer for activations that die within one
        call (the prefix of one flat block, so chunks of different sizes share it).

        Shared by shallow copies (``select``/``concat``), so one optimizee family is not
        to be evaluated from several threads at once; never pickled.
        """
        buf = self.__dict__.get("_buffer")
        if buf is None or buf.numel() < rows * cols or buf.dtype != dtype:
            buf = self._buffer = torch.empty(rows * cols, dtype=dtype)
        return buf[: rows * cols].view(rows, cols)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_buffer", None)
        return state

    # -- subclass interface ---------------------------------------------------------------
    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, M)`` for per-instance inputs ``x`` ``(B, M, d)``."""
        raise NotImplementedError

    def forward_shared(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, M)`` for inputs ``x`` ``(M, d)`` shared by all instances."""
        raise NotImplementedError

    #: floats of activation per (instance, example) in forward_shared; bounds chunk sizes
    _width: int = 1
    _chunk_floats: int = 1 << 24

    # -- Optimizee ------------------------------------------------------------------------
    def init(self, generator: torch.Generator) -> torch.Tensor:
        return init_params(self.groups, self.num_instances, generator, self.init_scale, self.gain)

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor:
        B, bs = self.num_instances, self.batch_size
        class_map = self.instance_data.get("class_map")
        if class_map is None:
            return torch.randint(0, self._train_x.shape[0], (B, bs), generator=generator)
        # uniform over the instance's training examples: class ~ its share, then a member
        weights = self._counts.to(torch.float32) * (class_map >= 0)
        cls = torch.multinomial(weights, bs, replacement=True, generator=generator)
        counts = self._counts[cls]
        offset = (torch.rand(B, bs, generator=generator) * counts).long()
        offset = torch.minimum(offset, counts - 1)
        return self._order[self._starts[cls] + offset]

    def loss(self, params: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        # index_select on the flat indices: advanced indexing launches a parallel kernel
        # even for a 64-row minibatch, and waking the thread pool costs more than the copy
        flat = batch.reshape(-1)
        x = self._train_x.index_select(0, flat).view(*batch.shape, -1)
        logits = self.forward(params, x)  # (B, K, bs)
        y = self._train_y.index_select(0, flat).view(batch.shape)
        class_map = self.instance_data.get("class_map")
        if class_map is not None:
            y = class_map.gather(1, y)
        return F.cross_entropy(logits, y, reduction="none").mean(1)

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the whole training set (or ``objective_size`` of it)."""
        return self._full_loss(params, self._obj_x, self._obj_y)

    def test_objective(self, params: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the test split."""
        return self._full_loss(params, self.data.test_x, self.data.test_y)

    def _full_loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B, N = params.shape[0], x.shape[0]
        class_map = self.instance_data.get("class_map")
        # chunk over examples (never over instances) to bound memory on large datasets
        chunk = max(64, self._chunk_floats // max(1, B * self._width))
        if chunk >= N and class_map is None:  # the common case, in fewest ops
            logits = self.forward_shared(params, x)
            return F.cross_entropy(logits, y.expand(B, N), reduction="none").mean(1)
        total = params.new_zeros(B)
        count = params.new_zeros(B)
        for start in range(0, N, chunk):
            xc, yc = x[start:start + chunk], y[start:start + chunk]
            logits = self.forward_shared(params, xc)  # (B, K, M)
            if class_map is None:
                ce = F.cross_entropy(logits, yc.expand(B, len(yc)), reduction="none")
                total = total + ce.sum(1)
                count = count + len(yc)
            else:
                labels = class_map[:, yc]  # (B, M)
                mask = labels >= 0
                ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
                total = total + (ce * mask).sum(1)
                count = count + mask.sum(1)
        return total / count.clamp_min(1)  # a class subset may miss a small split


def linear_t(w: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-instance ``w @ h + b`` in feature-major layout: w ``(B, out, in)``, b ``(B, out)``,
    h ``(B, in, M)`` -> ``(B, out, M)``. Keeping examples last makes the cross-entropy
    reduce over a strided class axis, which is several times faster than over a
    trailing axis of 10 classes."""
    return torch.baddbmm(b.unsqueeze(2), w, h)


def linear_shared_t(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, *,
                    relu: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """All instances on shared ``x`` ``(M, in)`` in one GEMM ``(B*out, in) @ (in, M)``;
    returns ``(B, out, M)`` without copying ``x`` per instance. ``relu=True`` applies
    ReLU after the bias; ``out`` is an optional ``(B*out, M)`` buffer to write into."""
    B, width, fin = w.shape
    # mm then an in-place bias add: addmm first copies the broadcast bias into the whole
    # (B*out, M) output, a second pass over memory (and a parallel launch) it does not need
    h = torch.mm(w.reshape(B * width, fin), x.t(), out=out)
    bias = b.reshape(B * width, 1)
    # aten's fused add+ReLU (the kernel TorchScript fuses add and relu into) makes one pass
    # over the activations instead of two; they are the full training set's, ~9 MB at B=32
    h = torch.ops.aten._add_relu_(h, bias) if relu else h.add_(bias)
    return h.view(B, width, -1)


class MLPOptimizee(ClassifierOptimizee):
    """``B`` MLPs ``d -> hidden... -> K`` (cross-entropy); built by :class:`MLPTask`."""

    def __init__(self, task: MLPTask, num_instances: int,
                 class_map: torch.Tensor | None = None) -> None:
        data = task.data
        sizes = [data.input_dim, *task.hidden, task.num_outputs]
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(len(sizes) - 1):
            shapes[f"fc{i}.weight"] = (sizes[i + 1], sizes[i])
            shapes[f"fc{i}.bias"] = (sizes[i + 1],)
        super().__init__(
            data, groups_from_shapes(shapes), num_instances, task.batch_size, task.init_scale,
            _GAIN[task.activation], class_map, task.objective_size,
        )
        self.act = _INPLACE[task.activation]
        self.num_layers = len(sizes) - 1
        self._width = max(sizes[1:])

    def _layers(self, params: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        p = split_groups(params, self.groups)
        return [(p[2 * i], p[2 * i + 1]) for i in range(self.num_layers)]

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layers = self._layers(params)
        h = linear_t(*layers[0], x.transpose(1, 2))
        for w, b in layers[1:]:
            h = linear_t(w, b, self.act(h))
        return h

    def forward_shared(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layers = self._layers(params)
        # Without autograd nothing outlives this call that reads the first layer's
        # activations (the next layer writes a new tensor), so they go to a kept buffer:
        # a fresh ~9 MB block from malloc costs its page faults on every objective call.
        # (The fused add+ReLU has no derivative: also only without autograd.)
        fast = not torch.is_grad_enabled() and len(layers) > 1
        fuse = fast and self.act is torch.relu_
        buffer = None
        if fast:
            w0 = layers[0][0]
            buffer = self._scratch(w0.shape[0] * w0.shape[1], x.shape[0], w0.dtype)
        h = linear_shared_t(*layers[0], x, relu=fuse, out=buffer)
        for i, (w, b) in enumerate(layers[1:]):
            h = linear_t(w, b, h if fuse and i == 0 else self.act(h))
        return h


@dataclass(eq=False)
class MLPTask(TaskFamily):
    """MLP classifier on a dataset; instances differ in init, minibatches (and class subset).

    Li & Malik (2017) section 4 (defaults: 48-48-10 ReLU net on data projected to 48 dims,
    batch 64); RNNprop (Lv et al. 2017) section 5 "base MLP" with ``hidden=(20,),
    activation="sigmoid", batch_size=128, init_scale=0.1``.
    Loss: mean cross-entropy of ``softmax(W_L act(... act(W_0 x + b_0)) + b_L)``.

    Arguments:
        dataset: a :class:`~optenv.data.Dataset` or a name for :func:`load_dataset`.
        hidden: hidden layer widths (``()`` is multinomial logistic regression).
        activation: ``"relu"``, ``"sigmoid"``, ``"elu"`` or ``"tanh"``.
        batch_size: minibatch size of :meth:`Optimizee.loss`.
        init_scale: ``None`` = fan-in init (weights N(0, gain²/fan_in), gain √2 for
            relu/elu hidden layers, else 1; biases 0); a float ``s`` = every parameter
            N(0, s²) (RNNprop: 0.1).
        dim: projection dimension when ``dataset`` is a name (default 48, Li & Malik).
        class_subset: ``k``: each instance trains on its own random ``k`` of the classes
            (``k`` outputs), as in L2L's CIFAR-2/CIFAR-5 tasks.
        objective_size: evaluate the true objective on a fixed subset of this many
            training examples (``None``: all).
    """

    dataset: Dataset | str = "digits"
    hidden: Sequence[int] | int = (48,)
    activation: str = "relu"
    batch_size: int = 64
    init_scale: float | None = None
    dim: int | None = 48
    class_subset: int | None = None
    objective_size: int | None = None
    data: Dataset = field(init=False, repr=False)

    def __post_init__(self) -> None:
        get_activation(self.activation)
        self.hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        for h in self.hidden:
            check_positive_int("hidden width", h)
        self.data = resolve_dataset(self.dataset, self.dim)
        check_classifier_args(self)

    @property
    def num_outputs(self) -> int:
        return self.class_subset or self.data.num_classes

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> MLPOptimizee:
        check_positive_int("num_instances", num_instances)
        return MLPOptimizee(self, num_instances, sample_class_map(self, generator, num_instances))


def sample_class_map(task, generator: torch.Generator, num_instances: int) -> torch.Tensor | None:
    """``(B, C)`` map from dataset label to output index for random class subsets."""
    k = task.class_subset
    if k is None:
        return None
    C = task.data.num_classes
    chosen = torch.rand(num_instances, C, generator=generator).argsort(1)[:, :k].sort(1).values
    class_map = torch.full((num_instances, C), -1, dtype=torch.long)
    class_map.scatter_(1, chosen, torch.arange(k).expand(num_instances, k).contiguous())
    return class_map
