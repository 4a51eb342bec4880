"""LSTM sine-sequence regression (RNNprop, Lv et al. 2017, section 5.4.2).

"Given a sequence f(0), ..., f(9) with additive noise, the LSTM needs to predict the
value of f(10). Here f(x) = A sin(ωx + φ) ... A ~ U(0, 10), ω ~ U(0, π/2), φ ~ U(0, 2π),
and we draw the noise from the Gaussian distribution N(0, 0.1)." The paper's LSTM has
hidden state size 20 and one layer (two in its Table 3 variant); its code
(``optimizee/lstm.py``) uses 128 sequences per minibatch, noise standard deviation 0.1 on
the inputs only (the target f(10) is noiseless), a linear readout of the last hidden state,
the mean squared error, and all parameters initialized from N(0, 0.1²). Those are the
defaults here.

The LSTM is written out with per-instance weights and ``baddbmm``, so ``B`` instances
run as one computation; gates follow PyTorch's ``nn.LSTM`` order (i, f, g, o) and layout
(``weight_ih (4H, in)``, ``weight_hh (4H, H)``), with a single bias per layer.

Every minibatch draws fresh sequences. The true objective is the MSE on a fixed
evaluation set of ``eval_size`` sequences drawn per instance at :meth:`sample` time
(stored in ``instance_data``, so spliced instances bring their own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from optenv.problems.base import Optimizee, TaskFamily, check_positive_int, groups_from_shapes
from optenv.problems.mlp import init_params, split_groups

__all__ = ["LSTMSineFamily", "LSTMSineOptimizee", "sample_sine_sequences"]


def sample_sine_sequences(
    generator: torch.Generator, shape: tuple[int, ...], seq_len: int, noise_std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(*shape, seq_len)`` = A sin(ωk + φ) + noise for k < seq_len and noiseless
    targets ``shape`` = A sin(ω·seq_len + φ), with A ~ U(0, 10), ω ~ U(0, π/2),
    φ ~ U(0, 2π), noise ~ N(0, noise_std²)."""
    amp = torch.rand(*shape, 1, generator=generator) * 10.0
    omega = torch.rand(*shape, 1, generator=generator) * (math.pi / 2)
    phase = torch.rand(*shape, 1, generator=generator) * (2 * math.pi)
    k = torch.arange(seq_len + 1, dtype=torch.float32)
    f = amp * torch.sin(omega * k + phase)
    noise = torch.randn(*shape, seq_len, generator=generator) * noise_std
    return f[..., :seq_len] + noise, f[..., seq_len]


class LSTMSineOptimizee(Optimizee):
    """``B`` LSTMs predicting f(seq_len) from noisy f(0..seq_len-1); built by
    :class:`LSTMSineFamily`. Minibatches are ``(x (B, S, T), y (B, S))``."""

    def __init__(self, family: LSTMSineFamily, eval_x: torch.Tensor,
                 eval_y: torch.Tensor) -> None:
        H = family.hidden
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(family.num_layers):
            fin = 1 if layer == 0 else H
            shapes[f"lstm{layer}.weight_ih"] = (4 * H, fin)
            shapes[f"lstm{layer}.weight_hh"] = (4 * H, H)
            shapes[f"lstm{layer}.bias"] = (4 * H,)
        shapes["out.weight"] = (1, H)
        shapes["out.bias"] = (1,)
        super().__init__(groups_from_shapes(shapes), eval_x.shape[0],
                         {"eval_x": eval_x, "eval_y": eval_y})
        self.family = family

    def init(self, generator: torch.Generator) -> torch.Tensor:
        return init_params(self.groups, self.num_instances, generator, self.family.init_scale)

    def sample_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.family
        return sample_sine_sequences(generator, (self.num_instances, f.batch_size), f.seq_len,
                                     f.noise_std)

    def predict(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, S)`` for input sequences ``x`` ``(B, S, T)``."""
        T = x.shape[2]
        H, L = self.family.hidden, self.family.num_layers
        p = split_groups(params, self.groups)
        # per layer: [W_ih | W_hh]ᵀ (B, in+H, 4H), so one baddbmm per step computes
        # W_ih x_t + W_hh h_{t-1} + b without materializing all steps' input terms
        w_ih = [p[3 * k] for k in range(L)]
        w_cat = [torch.cat([w_ih[k], p[3 * k + 1]], dim=2).transpose(1, 2) for k in range(L)]
        bias = [p[3 * k + 2].unsqueeze(1) for k in range(L)]
        h: list[torch.Tensor | None] = [None] * L
        c: list[torch.Tensor | None] = [None] * L
        for t in range(T):
            inp = x[:, :, t:t + 1]
            for k in range(L):
                if h[k] is None:  # h_0 = c_0 = 0
                    gates = torch.baddbmm(bias[k], inp, w_ih[k].transpose(1, 2))
                else:
                    gates = torch.baddbmm(bias[k], torch.cat([inp, h[k]], dim=2), w_cat[k])
                # one sigmoid over all four gates (g's share is unused) beats four launches
                act = torch.sigmoid(gates)
                i, f, o = act[..., :H], act[..., H:2 * H], act[..., 3 * H:]
                g = torch.tanh(gates[..., 2 * H:3 * H])
                c[k] = i * g if c[k] is None else torch.addcmul(f * c[k], i, g)
                h[k] = inp = o * torch.tanh(c[k])
        w_out, b_out = p[-2], p[-1]
        return torch.baddbmm(b_out.unsqueeze(1), h[-1], w_out.transpose(1, 2)).squeeze(2)

    def loss(self, params: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (self.predict(params, x) - y).square().mean(1)

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        """MSE on the instance's fixed evaluation sequences."""
        return self.loss(params, (self.instance_data["eval_x"], self.instance_data["eval_y"]))


@dataclass(eq=False)
class LSTMSineFamily(TaskFamily):
    """LSTM predicting A sin(ω·10 + φ) from 10 noisy samples, MSE (RNNprop, Lv et al. 2017, 5.4.2).

    Arguments:
        hidden: LSTM state size (paper: 20).
        num_layers: stacked LSTM layers (paper: 1; 2 in its Table 3).
        seq_len: observed steps T (paper: 10, predicting f(10)).
        batch_size: sequences per minibatch (RNNprop code: 128).
        noise_std: input noise standard deviation (paper: 0.1; 0.01 for "small noise").
        eval_size: sequences in each instance's fixed evaluation set (the true objective).
        init_scale: every parameter ~ N(0, init_scale²) (RNNprop code: 0.1); ``None`` for
            fan-in init (weights N(0, 1/fan_in), biases 0).
    """

    hidden: int = 20
    num_layers: int = 1
    seq_len: int = 10
    batch_size: int = 128
    noise_std: float = 0.1
    eval_size: int = 512
    init_scale: float | None = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden", "num_layers", "seq_len", "batch_size", "eval_size"):
            check_positive_int(name, getattr(self, name))
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")
        if self.init_scale is not None and not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0 or None, got {self.init_scale!r}")

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> LSTMSineOptimizee:
        B = check_positive_int("num_instances", num_instances)
        eval_x, eval_y = sample_sine_sequences(generator, (B, self.eval_size), self.seq_len,
                                               self.noise_std)
        return LSTMSineOptimizee(self, eval_x, eval_y)
