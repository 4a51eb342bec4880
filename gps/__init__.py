"""Convolutional guided policy search that learns an optimizer (Li & Malik 2017).

gps/ imports optenv only (never agents/): it consumes the trajectories of optenv's vector
envs and produces a policy. Everything inside LQG and dynamics fits is float64.
"""

from gps.cost import fit_quadratic_cost
from gps.dynamics import (
    DynamicsPrior,
    GMMPrior,
    dynamics_log_likelihood,
    fit_dynamics,
    global_prior,
    predict,
)
from gps.lqg import (
    LQGError,
    LQGSolution,
    ValueFunction,
    backward,
    forward,
    kl_divergence,
    solve,
)
from gps.types import (
    LinearDynamics,
    LinearGaussianController,
    QuadraticCost,
    TrajectoryMoments,
)

__all__ = [
    "DynamicsPrior",
    "GMMPrior",
    "LQGError",
    "LQGSolution",
    "LinearDynamics",
    "LinearGaussianController",
    "QuadraticCost",
    "TrajectoryMoments",
    "ValueFunction",
    "backward",
    "dynamics_log_likelihood",
    "fit_dynamics",
    "fit_quadratic_cost",
    "forward",
    "global_prior",
    "kl_divergence",
    "predict",
    "solve",
]

from gps.badmm import (
    BADMMState,
    adapt_nu,
    augment_cost,
    dual_update,
    fit_linear_policy,
    psi_controller,
    psi_update,
    sample_kl,
)
from gps.policy import (
    CoordinatewiseLSTMPolicy,
    LinearStatePolicy,
    TimeVaryingLinearPolicy,
    optimal_variance,
    s_step,
)

__all__ += [
    "BADMMState",
    "CoordinatewiseLSTMPolicy",
    "LinearStatePolicy",
    "TimeVaryingLinearPolicy",
    "adapt_nu",
    "augment_cost",
    "dual_update",
    "fit_linear_policy",
    "optimal_variance",
    "psi_controller",
    "psi_update",
    "s_step",
    "sample_kl",
]

from gps.trainer import METRIC_KEYS, GPSConfig, GPSTrainer  # noqa: E402

__all__ += ["METRIC_KEYS", "GPSConfig", "GPSTrainer"]
