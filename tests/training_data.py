"""scikit-learn's bundled data sets, split and standardised (no download)."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def load(name: str):
    """``(x_train, x_test, y_train, y_test)`` with a fixed stratified 75/25 split.

    Features are standardised with the training set's mean and deviation;
    ``x`` is float32, ``y`` is float32 0/1 for breast cancer and int32 for digits.
    """
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    loader = {"breast_cancer": load_breast_cancer, "digits": load_digits}[name]
    x, y = loader(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(xtr)
    xtr = scaler.transform(xtr).astype(np.float32)
    xte = scaler.transform(xte).astype(np.float32)
    dtype = np.float32 if name == "breast_cancer" else np.int32
    return xtr, xte, ytr.astype(dtype), yte.astype(dtype)
