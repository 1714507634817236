"""Logistic regression on scikit-learn's breast-cancer data with jaxce.fit.

    python examples/breast_cancer.py

Trains `jaxce.models.LogisticRegression` (30 standardised features -> one logit)
with its natural loss, `jaxce.sigmoid_binary_cross_entropy`, and Adam, then prints
the test accuracy next to scikit-learn's `LogisticRegression` on the same split.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from example_data import load, sklearn_accuracy  # noqa: E402

import jaxce  # noqa: E402


def run(steps: int = 300, progress: bool = True) -> dict:
    """Train and evaluate; returns the model, history and both accuracies."""
    xtr, xte, ytr, yte = load("breast_cancer")
    model = jaxce.models.LogisticRegression(xtr.shape[1], key=jax.random.key(0))
    model, history = jaxce.fit(
        model,
        xtr,
        ytr,
        steps=steps,
        batch_size=64,
        key=jax.random.key(1),
        progress=progress,
        eval_data=(xte, yte),
        log_every=max(steps // 10, 1),
    )
    pred = np.asarray(jaxce.models.predict(model, xte))
    return {
        "name": "logistic regression, breast cancer",
        "model": model,
        "history": history,
        "jaxce": float(np.mean(pred == yte)),
        "sklearn": sklearn_accuracy("breast_cancer"),
    }


def main() -> None:
    r = run()
    print(f"{r['name']}: test accuracy jaxce {r['jaxce']:.4f}, "
          f"scikit-learn {r['sklearn']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
