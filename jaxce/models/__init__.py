"""Equinox classifiers whose ``__call__`` takes one example and returns logits."""

from .._models import (
    LogisticRegression as LogisticRegression,
    SoftmaxRegression as SoftmaxRegression,
)
