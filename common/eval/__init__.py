"""Evaluation on frozen features: feature extraction, weighted k-NN and a linear probe.

Each module does one job; ``evaluate.py`` at the repository root wires them to checkpoints.
The prototype classifier of our checkpoints is ``common.evaluation.evaluate_classifier``.
"""

from common.eval.features import extract_features
from common.eval.knn import knn_accuracy, knn_scores
from common.eval.linear import LinearProbeConfig, linear_probe

__all__ = [
    "LinearProbeConfig",
    "extract_features",
    "knn_accuracy",
    "knn_scores",
    "linear_probe",
]
