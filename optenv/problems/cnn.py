"""VGG-like convolutional nets trained with cross-entropy (RNNprop, Lv et al. 2017, 5.4.1).

An architecture string such as ``"c-c-p-f"`` lists the layers: ``c`` a 3x3 convolution
(stride 1, same padding) followed by the activation, ``p`` a 2x2 max-pool with stride 2
(TensorFlow "SAME" padding, i.e. ``ceil_mode``), ``f`` a fully connected layer; the last
``f`` maps to the classes, earlier ``f`` layers have ``hidden`` units and the activation.
RNNprop section 5.4.1 uses ``c-c-p-f`` on MNIST and CIFAR-10 and ``c-c-p-c-c-p-f-f`` on
MNIST; its code (``optimizee/vgg.py``) gives convolutions before the ``j``-th pool
``16 * 2**j`` channels, intermediate ``f`` layers ``16 * 2**pools`` units, ReLU, batches
of 128 and init N(0, 0.1^2) - the defaults here except the init (see :class:`CNNTask`).

Batched over instances with grouped convolution: the ``B`` instances' channels are stacked
``(M, B*C, H, W)`` and each conv runs with ``groups=B``. On the shared training set the
first conv is an ordinary conv with all ``B`` filter banks stacked as output channels,
so the data is never copied per instance. (Measured against ``torch.func.vmap`` over
``conv2d``: grouped convolution is as fast or faster on CPU and needs no functorch.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from optenv.data import Dataset
from optenv.problems.base import (
    CoordinateGroup,
    TaskFamily,
    check_positive_int,
    groups_from_shapes,
)
from optenv.problems.mlp import (
    _GAIN,
    _INPLACE,
    ClassifierOptimizee,
    check_classifier_args,
    get_activation,
    linear_shared_t,
    linear_t,
    resolve_dataset,
    sample_class_map,
    split_groups,
)

__all__ = ["CNNOptimizee", "CNNTask", "parse_arch"]


def parse_arch(arch: str) -> tuple[str, ...]:
    """``"c-c-p-f"`` -> ``("c", "c", "p", "f")``; ValueError unless the string is
    convolutions/pools followed by one or more fully connected layers."""
    tokens = tuple(arch.split("-")) if isinstance(arch, str) else ()
    ok = (
        bool(tokens)
        and all(t in ("c", "p", "f") for t in tokens)
        and tokens[-1] == "f"
        and "c" not in tokens[tokens.index("f"):]
        and "p" not in tokens[tokens.index("f"):]
    )
    if not ok:
        raise ValueError(
            f"bad arch {arch!r}: expected '-'-separated layers from c (3x3 conv), p (2x2 "
            "max-pool), f (fully connected), with c/p layers first and ending in f, "
            "e.g. 'c-c-p-f' or 'c-c-p-c-c-p-f-f'"
        )
    return tokens


class CNNOptimizee(ClassifierOptimizee):
    """``B`` CNNs on image data; built by :class:`CNNTask`."""

    def __init__(self, task: CNNTask, num_instances: int,
                 class_map: torch.Tensor | None = None) -> None:
        data = task.data
        c, h, w = data.image_shape
        shapes: dict[str, tuple[int, ...]] = {}
        self.layers: list[tuple[str, int]] = []  # (kind, index of its weight in groups)
        pools, convs, fcs, width = 0, 0, 0, c * h * w
        n_f = task.arch_tokens.count("f")
        hidden = task.fc_hidden
        for tok in task.arch_tokens:
            if tok == "c":
                out = task.channels * 2**pools
                shapes[f"conv{convs}.weight"] = (out, c, 3, 3)
                shapes[f"conv{convs}.bias"] = (out,)
                self.layers.append(("c", 2 * (convs + fcs)))
                c, convs = out, convs + 1
            elif tok == "p":
                h, w, pools = (h + 1) // 2, (w + 1) // 2, pools + 1
                self.layers.append(("p", -1))
            else:
                fin = c * h * w if fcs == 0 else hidden
                out = task.num_outputs if fcs == n_f - 1 else hidden
                shapes[f"fc{fcs}.weight"] = (out, fin)
                shapes[f"fc{fcs}.bias"] = (out,)
                self.layers.append(("f", 2 * (convs + fcs)))
                fcs += 1
            width = max(width, c * h * w)
        groups: tuple[CoordinateGroup, ...] = groups_from_shapes(shapes)
        super().__init__(
            data, groups, num_instances, task.batch_size, task.init_scale,
            _GAIN[task.activation], class_map, task.objective_size,
        )
        self.image_shape = data.image_shape
        self.act = _INPLACE[task.activation]
        self._width = width

    def _run(self, params: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """``x``: ``(M, C, H, W)`` shared by all instances, or ``(M, B*C, H, W)`` with the
        instances' channels stacked. Returns logits ``(B, K, M)``."""
        B = params.shape[0]
        p = split_groups(params, self.groups)
        seen_f = False
        for kind, i in self.layers:
            if kind == "c":
                w, b = p[i], p[i + 1]
                w = w.reshape(B * w.shape[1], *w.shape[2:])
                # shared input: every instance's filters read the same channels (groups=1)
                x = self.act(F.conv2d(x, w, b.reshape(-1), padding=1, groups=1 if shared else B))
                shared = False
            elif kind == "p":
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            else:
                w, b = p[i], p[i + 1]
                if seen_f:
                    x = linear_t(w, b, self.act(x))
                elif shared:
                    x = linear_shared_t(w, b, x.reshape(x.shape[0], -1))
                else:  # (M, B*C, H, W) -> (B, C*H*W, M), the instance's own features
                    x = linear_t(w, b, x.reshape(x.shape[0], B, -1).permute(1, 2, 0))
                seen_f = True
        return x

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, M = x.shape[:2]
        c, h, w = self.image_shape
        x = x.reshape(B, M, c, h, w).transpose(0, 1).reshape(M, B * c, h, w)
        return self._run(params, x, shared=False)

    def forward_shared(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._run(params, x.reshape(x.shape[0], *self.image_shape), shared=True)


@dataclass(eq=False)
class CNNTask(TaskFamily):
    """VGG-like CNN classifier on image data (RNNprop, Lv et al. 2017, section 5.4.1).

    Layers from ``arch`` (``c`` 3x3 conv + activation, ``p`` 2x2 max-pool, ``f`` fully
    connected); mean cross-entropy of the last layer's logits.

    Arguments:
        dataset: a :class:`~optenv.data.Dataset` with ``image_shape`` or a name for
            :func:`load_dataset` (loaded with ``dim=None`` to keep the images).
        arch: layer string, default ``"c-c-p-f"``.
        channels: channels of the convolutions before the first pool; doubled after
            each pool (RNNprop code: 16).
        hidden: units of intermediate ``f`` layers (default ``channels * 2**pools``).
        activation: ``"relu"`` (RNNprop), ``"sigmoid"``, ``"elu"`` or ``"tanh"``.
        batch_size: minibatch size (RNNprop: 128).
        init_scale: ``None`` = fan-in init (weights N(0, gain²/fan_in), biases 0);
            ``0.1`` reproduces RNNprop's N(0, 0.1²) for every parameter.
        class_subset: each instance trains on its own random ``k`` classes.
        objective_size: true objective on a fixed subset of this many training examples
            (convolutions over all of MNIST/CIFAR every step are expensive).
    """

    dataset: Dataset | str = "digits"
    arch: str = "c-c-p-f"
    channels: int = 16
    hidden: int | None = None
    activation: str = "relu"
    batch_size: int = 128
    init_scale: float | None = None
    class_subset: int | None = None
    objective_size: int | None = None
    data: Dataset = field(init=False, repr=False)
    arch_tokens: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.arch_tokens = parse_arch(self.arch)
        get_activation(self.activation)
        check_positive_int("channels", self.channels)
        if self.hidden is not None:
            check_positive_int("hidden", self.hidden)
        self.data = resolve_dataset(self.dataset, None)
        if self.data.image_shape is None:
            raise ValueError(
                f"CNNTask needs image data, but dataset {self.data.name!r} has "
                "image_shape=None (load it with dim=None; mnist1d has no images)"
            )
        check_classifier_args(self)

    @property
    def fc_hidden(self) -> int:
        return self.hidden or self.channels * 2 ** self.arch_tokens.count("p")

    @property
    def num_outputs(self) -> int:
        return self.class_subset or self.data.num_classes

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> CNNOptimizee:
        check_positive_int("num_instances", num_instances)
        return CNNOptimizee(self, num_instances, sample_class_map(self, generator, num_instances))
