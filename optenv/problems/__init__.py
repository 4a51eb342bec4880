"""Batched optimizees and task families (one module per family)."""

from optenv.problems.augment import (
    ConvexCombination,
    ConvexCombinationOptimizee,
    RandomScaling,
    RandomScalingOptimizee,
)
from optenv.problems.base import (
    CoordinateGroup,
    FixedTask,
    Optimizee,
    TaskFamily,
    groups_from_shapes,
    unflatten,
)
from optenv.problems.cnn import CNNOptimizee, CNNTask
from optenv.problems.lstm import LSTMSineFamily, LSTMSineOptimizee
from optenv.problems.mlp import ClassifierOptimizee, MLPOptimizee, MLPTask
from optenv.problems.quadratic import QuadraticFamily, QuadraticOptimizee
from optenv.problems.regression import (
    LogisticRegressionFamily,
    LogisticRegressionOptimizee,
    RobustLinearRegressionFamily,
    RobustLinearRegressionOptimizee,
)

__all__ = [
    "CNNOptimizee",
    "CNNTask",
    "ClassifierOptimizee",
    "ConvexCombination",
    "ConvexCombinationOptimizee",
    "CoordinateGroup",
    "FixedTask",
    "LSTMSineFamily",
    "LSTMSineOptimizee",
    "LogisticRegressionFamily",
    "LogisticRegressionOptimizee",
    "MLPOptimizee",
    "MLPTask",
    "Optimizee",
    "QuadraticFamily",
    "QuadraticOptimizee",
    "RandomScaling",
    "RandomScalingOptimizee",
    "RobustLinearRegressionFamily",
    "RobustLinearRegressionOptimizee",
    "TaskFamily",
    "groups_from_shapes",
    "unflatten",
]
