"""Figure of the training examples: loss curves, a 2-D decision boundary, calibration.

    python examples/plots.py       # writes examples/out/training.png

Panels: (1) the per-step training loss of the three examples (breast-cancer
logistic regression, digits softmax regression, digits MLP); (2) a logistic
regression trained on two breast-cancer features, its P(benign) = 0.5 boundary and
probability contours; (3) a reliability diagram: mean predicted probability
against the observed frequency, in 10 bins, on the test sets.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from example_data import load  # noqa: E402

import jaxce  # noqa: E402

OUT = HERE / "out"


def reliability(prob: np.ndarray, correct: np.ndarray, bins: int = 10):
    """Mean predicted probability and observed frequency in each non-empty bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    keep = [b for b in range(bins) if np.any(which == b)]
    mean_p = np.array([prob[which == b].mean() for b in keep])
    freq = np.array([correct[which == b].mean() for b in keep])
    return mean_p, freq


def boundary_model(steps: int = 300):
    """Logistic regression on features 0 and 1 (mean radius, mean texture)."""
    xtr, _, ytr, _ = load("breast_cancer")
    x2 = xtr[:, :2]
    model = jaxce.models.LogisticRegression(2, key=jax.random.key(0))
    model, _ = jaxce.fit(
        model, x2, ytr, steps=steps, key=jax.random.key(1), progress=False
    )
    return model, x2, ytr


def make_figure(results: list[dict], path: pathlib.Path = OUT / "training.png"):
    """Draw the three panels for ``results`` (from the examples' ``run``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    for r in results:
        loss = r["history"]["loss"]
        window = max(len(loss) // 30, 1)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, label=r["name"])
    ax.set(xlabel="step", ylabel="training loss (nats, moving mean)", yscale="log")
    ax.set_title("Loss curves (jaxce.fit)")
    ax.legend(fontsize=8)

    ax = axes[1]
    model, x2, y = boundary_model()
    g0, g1 = np.meshgrid(np.linspace(-3, 5, 200), np.linspace(-3, 5, 200))
    grid = np.stack([g0.ravel(), g1.ravel()], 1).astype(np.float32)
    p = np.asarray(jaxce.models.predict_proba(model, grid)).reshape(g0.shape)
    cs = ax.contourf(g0, g1, p, levels=np.linspace(0, 1, 11), cmap="RdBu", alpha=0.6)
    ax.contour(g0, g1, p, levels=[0.5], colors="k")
    ax.scatter(
        x2[:, 0], x2[:, 1], c=y, cmap="RdBu", edgecolors="k", linewidths=0.3, s=14
    )
    fig.colorbar(cs, ax=ax, label="P(benign)")
    ax.set(xlabel="mean radius (standardised)", ylabel="mean texture (standardised)")
    ax.set_title("Logistic regression: 2-D decision boundary")

    ax = axes[2]
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    for r in results:
        data = "breast_cancer" if "breast" in r["name"] else "digits"
        _, xte, _, yte = load(data)
        prob = np.asarray(jaxce.models.predict_proba(r["model"], xte))
        if prob.ndim == 1:  # binary: P(y = 1) against the frequency of y = 1
            mean_p, freq = reliability(prob, yte)
        else:  # multiclass: confidence of the top class against its accuracy
            mean_p, freq = reliability(prob.max(1), prob.argmax(1) == yte)
        ax.plot(mean_p, freq, "o-", label=r["name"])
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency")
    ax.set_title("Calibration on the test sets")
    ax.legend(fontsize=8)

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    import breast_cancer
    import digits

    results = [breast_cancer.run(progress=False)]
    results += [digits.run(kind, progress=False) for kind in ("softmax", "mlp")]
    print(f"wrote {make_figure(results)}")


if __name__ == "__main__":
    main()
