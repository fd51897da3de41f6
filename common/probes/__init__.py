"""Probes of a trained network on frozen features: feature extraction, weighted k-NN and a
linear probe; ``networks`` rebuilds the network to probe from a checkpoint and ``cli`` is the
body of ``evaluate.py``. The prototype classifier's accuracy is ``common.accuracy``'s.
"""

from common.probes.features import extract_features
from common.probes.knn import knn_accuracy, knn_scores
from common.probes.linear import LinearProbeConfig, linear_probe

__all__ = [
    "LinearProbeConfig",
    "extract_features",
    "knn_accuracy",
    "knn_scores",
    "linear_probe",
]
