"""Equinox classifiers whose ``__call__`` takes one example and returns logits."""

from ._linear import (
    LogisticRegression as LogisticRegression,
    SoftmaxRegression as SoftmaxRegression,
)
from ._mlp import MLPClassifier as MLPClassifier
from ._predict import predict as predict, predict_proba as predict_proba
