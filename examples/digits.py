"""Softmax regression and an MLP on scikit-learn's 8x8 digits with jaxce.fit.

    python examples/digits.py

Trains `jaxce.models.SoftmaxRegression` (64 pixels -> 10 logits) and
`jaxce.models.MLPClassifier` (one hidden ReLU layer of 64 units) with their
natural loss, `jaxce.sparse_softmax_cross_entropy`, and Adam; prints the test
accuracy of each next to scikit-learn's `LogisticRegression`.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from example_data import load, sklearn_accuracy  # noqa: E402

import jaxce  # noqa: E402


def run(kind: str = "softmax", steps: int = 300, progress: bool = True) -> dict:
    """Train ``kind`` ("softmax" or "mlp"); returns model, history, accuracies."""
    xtr, xte, ytr, yte = load("digits")
    key = jax.random.key(0)
    if kind == "softmax":
        model = jaxce.models.SoftmaxRegression(64, 10, key=key)
    else:
        model = jaxce.models.MLPClassifier(64, 10, width=64, depth=1, key=key)
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
    name = "softmax regression" if kind == "softmax" else "MLP (64 hidden)"
    return {
        "name": f"{name}, digits",
        "model": model,
        "history": history,
        "jaxce": float(np.mean(pred == yte)),
        "sklearn": sklearn_accuracy("digits"),
    }


def main() -> None:
    for kind in ("softmax", "mlp"):
        r = run(kind)
        print(f"{r['name']}: test accuracy jaxce {r['jaxce']:.4f}, "
              f"scikit-learn LogisticRegression {r['sklearn']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
