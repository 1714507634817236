"""Equinox classifiers whose ``__call__`` takes one example and returns logits."""

from .._models import (
    LogisticRegression as LogisticRegression,
    MLPClassifier as MLPClassifier,
    SoftmaxRegression as SoftmaxRegression,
    predict as predict,
    predict_proba as predict_proba,
)
