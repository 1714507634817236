"""Training classifiers with jaxce.fit: accuracy next to scikit-learn.

    python examples/train_demo.py     # full run; writes examples/out/training.png

``main(short=True)`` (what ``examples/tour.py`` calls) trains the three examples
with fewer steps and no figure: logistic regression on breast cancer, softmax
regression and an MLP on digits, then an ensemble of 16 softmax regressions in one
compiled call with `jaxce.fit_ensemble`, and prints a table.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import breast_cancer  # noqa: E402
import digits  # noqa: E402
from example_data import load  # noqa: E402

import jaxce  # noqa: E402


def ensemble(members: int = 16, steps: int = 150) -> tuple[float, float, float]:
    """Test accuracy of each member (min, max) and of their averaged probabilities."""
    xtr, xte, ytr, yte = load("digits")
    keys = jax.random.split(jax.random.key(0), members)
    models, _ = jaxce.fit_ensemble(
        lambda k: jaxce.models.SoftmaxRegression(64, 10, key=k),
        keys, xtr, ytr, steps=steps, batch_size=64,
    )  # fmt: skip
    probs = jax.vmap(lambda m: jaxce.models.predict_proba(m, xte))(models)
    each = np.mean(np.asarray(probs.argmax(-1)) == yte, axis=1)
    mean = float(np.mean(np.asarray(probs.mean(0).argmax(-1)) == yte))
    return float(each.min()), float(each.max()), mean


def main(short: bool = True) -> None:
    steps = 150 if short else 300
    start = time.perf_counter()
    results = [breast_cancer.run(steps, progress=False)]
    results += [digits.run(kind, steps, progress=False) for kind in ("softmax", "mlp")]
    print(f"{'model, data':<40} {'steps':>5} {'jaxce':>7} {'sklearn LR':>10}")
    for r in results:
        print(f"{r['name']:<40} {steps:>5} {r['jaxce']:>7.4f} {r['sklearn']:>10.4f}")
    lo, hi, mean = ensemble(16, steps)
    print(f"fit_ensemble: 16 softmax regressions on digits in one call: members "
          f"{lo:.4f}..{hi:.4f}, averaged probabilities {mean:.4f}")  # fmt: skip
    if not short:
        from plots import make_figure

        print(f"wrote {make_figure(results)}")
    print(f"({time.perf_counter() - start:.1f} s including compilation)")


if __name__ == "__main__":
    main(short="--short" in sys.argv)
