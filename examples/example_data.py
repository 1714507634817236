"""scikit-learn's bundled data sets (no download), split and standardised.

Used by the training examples: a fixed stratified 75/25 train/test split, features
standardised with the training set's mean and standard deviation, and the
accuracy scikit-learn's own ``LogisticRegression`` reaches on the same split.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def load(name: str):
    """``(x_train, x_test, y_train, y_test)`` for ``"breast_cancer"`` or ``"digits"``.

    ``x`` is float32; ``y`` is float32 0/1 (breast cancer: 1 = benign) or int32
    digit classes.
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


def sklearn_accuracy(name: str) -> float:
    """Test accuracy of ``sklearn.linear_model.LogisticRegression`` (defaults)."""
    from sklearn.linear_model import LogisticRegression

    xtr, xte, ytr, yte = load(name)
    clf = LogisticRegression(max_iter=5000).fit(xtr, ytr)
    return float(clf.score(xte, yte))
