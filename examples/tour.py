"""A tour of jaxce, starting from the worked numbers of the two seed articles.

Run it with ``python examples/tour.py`` (or ``python examples/tour.py seeds fused``
for some sections only). It prints

1. every worked number of the seed articles (softmax of three scores, the
   students' models A and B, the fruit containers, the PyTorch, TensorFlow and
   NumPy examples) next to the value jaxce computes through its public API, with
   a note wherever the article's number is wrong;
2. closed-form gradients checked against autodiff (``examples/gradients.py``);
3. a short training run (``examples/train_demo.py``);
4. the fused ``linear -> cross-entropy`` loss against the unfused one.

Sections 2-4 say so plainly when the part of jaxce they show is not installed.
The article data are copied here; nothing is read from disk.
"""

from __future__ import annotations

import importlib.util
import itertools
import pathlib
import sys
import textwrap
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxce

HERE = pathlib.Path(__file__).resolve().parent

# -- the articles' data ------------------------------------------------------------

SCORES = [2.0, 1.0, -1.0]  # blue, green, red
# Model A: the probability each model gives to each student's actual outcome.
MODEL_A_PROBS = [0.1, 0.7, 0.6, 0.2]
# Model B, as in the article's BCE table: pass probabilities 1-0.8, 1-0.6, 0.7, 0.9
# for students who failed, failed, passed, passed.
MODEL_B_PASS = [0.2, 0.4, 0.7, 0.9]
MODEL_B_LABELS = [0.0, 0.0, 1.0, 1.0]
# Fruit containers: rows are containers A, B, C; columns orange, apple, lemon.
FRUIT_PROBS = [[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4]]
FRUIT_LABELS = [0, 2, 2]  # orange, lemon, lemon
# PyTorch BCELoss example: the printed tensors.
TORCH_BCE_X = [0.0421, -0.6606, 0.6276, 1.2491, -1.1535,
               -1.4137, 0.8967, -1.1786, -1.3214, 0.2828]  # fmt: skip
TORCH_BCE_Y = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
# PyTorch CrossEntropyLoss example: the printed 10 x 5 logits and labels.
TORCH_CE_X = [
    [-0.5698, -0.0558, -0.2550, 1.6812, 0.0238],
    [-2.1786, 1.3923, -0.2363, -0.4601, -1.4949],
    [1.3679, 1.2853, 0.4087, -0.5743, -0.2752],
    [2.1995, 0.1469, -0.1661, 0.4617, -0.4395],
    [-0.5686, -0.7453, -0.1455, -0.5304, 0.3020],
    [-0.1489, -0.9143, -1.5282, -0.5023, 1.2751],
    [-1.3830, -0.6535, 0.5392, -2.2050, -1.4138],
    [-0.5592, 1.5028, 0.0442, -1.5487, -0.1522],
    [0.7436, -1.8956, 1.0145, -0.2974, -2.0576],
    [0.1003, 0.6604, -1.3535, -0.3053, -0.4034],
]
TORCH_CE_Y = [3, 0, 1, 1, 2, 4, 0, 2, 1, 3]
# TensorFlow examples.
TF_BCE_TRUE = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
TF_BCE_PRED = [0.5, 0.7, 0.2, 0.3, 0.5, 0.6]
TF_CCE_TRUE = [0.0, 1.0, 0.0]  # cat, dog, bear: a dog
TF_CCE_PRED = [0.05, 0.85, 0.10]
# NumPy article: clipped BCE, then gradient descent on logistic regression.
NUMPY_TRUE = [1.0, 0.0, 1.0, 0.0]
NUMPY_PRED = [0.8, 0.3, 0.7, 0.2]
GD_X = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
GD_Y = [0.0, 1.0, 1.0, 0.0]


# -- the figures, through jaxce's public API ---------------------------------------


def softmax_via_cross_entropy(scores) -> jax.Array:
    """softmax(s)_c = exp(-CE(s, c)): one cross-entropy per class."""
    s = jnp.asarray(scores, jnp.float32)
    k = s.shape[0]
    logits = jnp.broadcast_to(s, (k, k))
    ce = jaxce.sparse_softmax_cross_entropy(logits, jnp.arange(k), reduction="none")
    return jnp.exp(-ce)


def product_and_log10_sum(probs, labels) -> tuple[float, float]:
    """Likelihood (product) and cross-entropy in base 10 (sum of -log10 p)."""
    ce10 = jaxce.binary_cross_entropy(
        jnp.asarray(probs), jnp.asarray(labels), reduction="sum", base=10
    )
    return float(10.0 ** (-ce10)), float(ce10)


def fruit_product_and_log10_sum() -> tuple[float, float]:
    ce10 = jaxce.sparse_categorical_cross_entropy(
        jnp.asarray(FRUIT_PROBS), jnp.asarray(FRUIT_LABELS), reduction="sum", base=10
    )
    return float(10.0 ** (-ce10)), float(ce10)


def torch_bce_loss() -> float:
    """``nn.BCELoss()(torch.sigmoid(X), y)``: divides by the element count."""
    probs = jax.nn.sigmoid(jnp.asarray(TORCH_BCE_X))
    loss = jaxce.binary_cross_entropy(
        probs, jnp.asarray(TORCH_BCE_Y), reduction="sum_over_batch_size"
    )
    return float(loss)


def closest_labelling_to(target: float) -> tuple[float, tuple[int, ...]]:
    """BCELoss of the printed X under all 2**10 labellings (vmapped); the closest."""
    probs = jax.nn.sigmoid(jnp.asarray(TORCH_BCE_X))
    all_y = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=len(TORCH_BCE_X))))
    losses = jax.vmap(
        lambda y: jaxce.binary_cross_entropy(probs, y, reduction="sum_over_batch_size")
    )(all_y)
    i = int(jnp.argmin(jnp.abs(losses - target)))
    return float(losses[i]), tuple(int(v) for v in all_y[i])


def torch_cross_entropy_loss() -> float:
    """``nn.CrossEntropyLoss()(X, y)``: class-index mean."""
    x, y = jnp.asarray(TORCH_CE_X), jnp.asarray(TORCH_CE_Y)
    return float(jaxce.sparse_softmax_cross_entropy(x, y, reduction="mean"))


def keras_binary_cross_entropy() -> float:
    """``keras.losses.BinaryCrossentropy()``: eps=1e-7, sum over batch size."""
    loss = jaxce.binary_cross_entropy(
        jnp.asarray(TF_BCE_PRED),
        jnp.asarray(TF_BCE_TRUE),
        eps=1e-7,
        reduction="sum_over_batch_size",
    )
    return float(loss)


def tf2_log_plus_eps_bce() -> np.float32:
    """TF 2 Keras' BCE in float32: ``-mean(y log(p + e) + (1-y) log(1-p+e))``."""
    p = np.asarray(TF_BCE_PRED, np.float32)
    y = np.asarray(TF_BCE_TRUE, np.float32)
    e = np.float32(1e-7)
    return -np.mean(y * np.log(p + e) + (1 - y) * np.log(1 - p + e))


def keras_categorical_cross_entropy() -> float:
    loss = jaxce.categorical_cross_entropy(
        jnp.asarray(TF_CCE_PRED),
        jnp.asarray(TF_CCE_TRUE),
        eps=1e-7,
        reduction="sum_over_batch_size",
    )
    return float(loss)


def numpy_clipped_bce() -> float:
    """The article's ``np.clip(p, 1e-15, 1 - 1e-15)`` then the mean."""
    loss = jaxce.binary_cross_entropy(
        jnp.asarray(NUMPY_PRED), jnp.asarray(NUMPY_TRUE), eps=1e-15
    )
    return float(loss)


def numpy_gradient_descent(
    steps: int = 1000, learning_rate: float = 0.1
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The article's loop: w -= lr * grad(mean BCE)(w), from w = 0, no bias.

    Returns the final weights, the rounded predictions and the gradient at w = 0.
    """
    x, y = jnp.asarray(GD_X), jnp.asarray(GD_Y)

    def loss(w):
        return jaxce.sigmoid_binary_cross_entropy(x @ w, y)

    grad = jax.jit(jax.grad(loss))

    def step(_, w):
        return w - learning_rate * grad(w)

    w0 = jnp.zeros(2)
    w = jax.lax.fori_loop(0, steps, step, w0)
    preds = jnp.round(jax.nn.sigmoid(x @ w))  # np.round: 0.5 rounds to 0 (even)
    return w, preds, grad(w0)


# -- printing ------------------------------------------------------------------------


def fmt(values, digits: int = 4) -> str:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    return ", ".join(f"{v:.{digits}f}" for v in arr)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def section(title: str) -> None:
    print()
    print(f"== {title} " + "=" * max(0, 74 - len(title)))


def seed_rows() -> tuple[list[list[str]], list[str]]:
    """Rows of [figure, article prints, jaxce, verdict], and the numbered notes."""
    soft = softmax_via_cross_entropy(SCORES)
    a_prod, a_sum = product_and_log10_sum(MODEL_A_PROBS, [1.0] * 4)
    b_prod, b_sum = product_and_log10_sum(MODEL_B_PASS, MODEL_B_LABELS)
    f_prod, f_sum = fruit_product_and_log10_sum()
    near, _ = closest_labelling_to(1.0966)
    w, preds, g0 = numpy_gradient_descent()
    notes = [
        "The article cut each -log10 term to three digits (0.1549 -> 0.154, "
        "0.2218 -> 0.221, 0.6990 -> 0.698, ...) and summed the cut terms.",
        "Model B: the article summed terms rounded to 1-2 digits, "
        "0.09 + 0.22 + 0.15 + 0.045 = 0.505.",
        "The article is inconsistent: its printed X and y give BCELoss 0.4580, and "
        f"no 0/1 labelling of that X gives 1.0966 (closest: {near:.4f}); the loss "
        "was probably printed from another random draw.",
        "TF 2 Keras put eps inside the log: -mean(y log(p + 1e-7) + ...) in "
        f"float32 is {tf2_log_plus_eps_bce()!s}, the article's figure. Keras 3 "
        "clips p to [1e-7, 1 - 1e-7] (jaxce eps=1e-7) and gives 0.5398464, "
        "the exact value.",
        "Degenerate example: at w = 0 every prediction is 0.5 and the gradient "
        f"X.T @ (0.5 - y) / 4 is exactly [{fmt(g0, 1)}], so w never moves. "
        "np.round(0.5) is 0, so every prediction is 0. Labels 0, 1, 1, 0 on a "
        "line are not linearly separable anyway.",
    ]
    rows = [
        ["softmax of scores [2, 1, -1]", "0.705, 0.259, 0.035", fmt(soft), "ok"],
        ["model A: product", "0.0084", fmt(a_prod), "ok"],
        ["model A: -log10 sum", "2.073", fmt(a_sum), "wrong, note 1"],
        ["model B: product", "0.3024", fmt(b_prod), "ok"],
        ["model B: -log10 sum", "0.505", fmt(b_sum), "wrong, note 2"],
        ["fruit containers: product", "0.084", fmt(f_prod, 3), "ok"],
        ["fruit containers: -log10 sum", "1.073", fmt(f_sum), "wrong, note 1"],
        ["PyTorch BCELoss", "1.0966", fmt(torch_bce_loss()), "wrong, note 3"],
        ["PyTorch CrossEntropyLoss", "1.9732",
         fmt(torch_cross_entropy_loss(), 5), "ok"],
        ["TF BinaryCrossentropy", "0.53984624",
         fmt(keras_binary_cross_entropy(), 7), "off by 2e-7, note 4"],
        ["TF CategoricalCrossentropy", "0.1625189",
         fmt(keras_categorical_cross_entropy(), 7), "ok"],
        ["NumPy clipped BCE", "0.2899", fmt(numpy_clipped_bce(), 7), "ok"],
        ["NumPy gradient descent: w", "(image)", fmt(w), "degenerate, note 5"],
        ["NumPy gradient descent: preds", "(image)", fmt(preds, 0),
         "degenerate, note 5"],
    ]  # fmt: skip
    return rows, notes


def show_seed_figures() -> None:
    section("1. The seed articles' worked numbers, recomputed with jaxce")
    rows, notes = seed_rows()
    print_table(["figure", "article", "jaxce", "verdict"], rows)
    print()
    for i, note in enumerate(notes, 1):
        print(textwrap.fill(note, 80, initial_indent=f"{i}. ", subsequent_indent="   "))
    print(
        "\nHow each figure maps onto jaxce: products are 10 ** -(the base-10"
        "\ncross-entropy, reduction='sum', base=10); PyTorch BCELoss is"
        "\nreduction='sum_over_batch_size'; CrossEntropyLoss is reduction='mean';"
        "\nKeras is eps=1e-7 with reduction='sum_over_batch_size'."
    )


# -- sections that show the rest of jaxce ------------------------------------------


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module, or None if it is not there."""
    path = HERE / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"jaxce_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def show_example(title: str, name: str, needs: str) -> None:
    section(title)
    module = load_example(name)
    if module is None or not hasattr(module, "main"):
        print(f"(skipped: examples/{name}.py with a main() is not there yet; {needs})")
        return
    module.main()


# Two option-laden cases; examples/gradients.py prints every loss and option set.
GRADIENT_CASES = ("sigmoid_binary_cross_entropy", "sparse_softmax_cross_entropy")


def show_gradients() -> None:
    section("2. Closed-form gradients against autodiff and finite differences")
    module = load_example("gradients")
    closed_form = getattr(jaxce, "closed_form", None)
    if module is None or not hasattr(module, "cases") or closed_form is None:
        print(
            "(skipped: jaxce.closed_form and examples/gradients.py are not there yet)"
        )
        return
    reports = [
        jaxce.compare_gradients(
            getattr(jaxce, name), getattr(closed_form, name), a, b, **options
        )
        for name, a, b, options in module.cases(jnp.float32, short=True)
        if name in GRADIENT_CASES and options
    ]
    print(jaxce.GradientReport.table(reports))
    print("\nEvery loss, option set, reduction and dtype: python examples/gradients.py")


def show_fused() -> None:
    section("4. Fused linear -> cross-entropy (never builds the N x V logits)")
    fused = getattr(jaxce, "linear_softmax_cross_entropy", None)
    if fused is None:
        print("(skipped: jaxce.linear_softmax_cross_entropy is not there yet)")
        return
    n, d, v = 64, 32, 1000
    kh, kw, ky = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(kh, (n, d))
    weight = jax.random.normal(kw, (v, d)) / jnp.sqrt(d)
    labels = jax.random.randint(ky, (n,), 0, v)

    def unfused(h, w):
        return jaxce.sparse_softmax_cross_entropy(h @ w.T, labels)

    def fused_loss(h, w):
        return fused(h, w, labels, chunk_size=256)

    lu, gu = jax.value_and_grad(unfused, argnums=(0, 1))(hidden, weight)
    lf, gf = jax.value_and_grad(fused_loss, argnums=(0, 1))(hidden, weight)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(gu, gf))
    print(f"hidden {hidden.shape}, weight {weight.shape}, labels {labels.shape}")
    print(f"unfused loss {float(lu):.6f}   fused loss {float(lf):.6f}")
    print(f"max |grad difference| over hidden and weight: {err:.2e}")


def show_training() -> None:
    show_example(
        "3. Training a classifier with jaxce.fit",
        "train_demo",
        "it trains jaxce.models through Optax",
    )


SECTIONS = {
    "seeds": show_seed_figures,
    "gradients": show_gradients,
    "training": show_training,
    "fused": show_fused,
}


def main(sections: Sequence[str] | None = None) -> None:
    """Print the tour: every section, or only those named (keys of `SECTIONS`)."""
    start = time.perf_counter()
    print(f"jaxce {jaxce.__version__} on {jax.default_backend()}")
    for name in SECTIONS if sections is None else sections:
        t0 = time.perf_counter()
        SECTIONS[name]()
        print(f"[{time.perf_counter() - t0:.1f} s]")
    print(f"\nTour done in {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
    main(sys.argv[1:] or None)
