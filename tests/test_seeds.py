"""The seed articles' worked numbers (DESIGN.md, "Seed figures") through jaxce,
the seed article's gradient descent (``examples/gradient_descent.py``), and the
tour (``examples/tour.py``) that prints them.

Each figure is asserted at the precision of its *correct* value; the PyTorch and
Keras figures are also recomputed with the real libraries. The article data are
copied here: nothing reads the articles at test time.
"""

import contextlib
import io
import itertools
import math
import pathlib
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_example

import jaxce

ROOT = pathlib.Path(__file__).resolve().parents[1]

# PyTorch BCELoss example: the printed tensors.
BCE_X = [0.0421, -0.6606, 0.6276, 1.2491, -1.1535,
         -1.4137, 0.8967, -1.1786, -1.3214, 0.2828]  # fmt: skip
BCE_Y = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
# The article's printed torch.sigmoid(X).
BCE_SIGMOID = [0.5105, 0.3406, 0.6519, 0.7772, 0.2398,
               0.1957, 0.7103, 0.2353, 0.2106, 0.5702]  # fmt: skip
# PyTorch CrossEntropyLoss example.
CE_X = [
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
CE_Y = [3, 0, 1, 1, 2, 4, 0, 2, 1, 3]
TF_BCE_TRUE = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
TF_BCE_PRED = [0.5, 0.7, 0.2, 0.3, 0.5, 0.6]
TF_CCE_TRUE = [0.0, 1.0, 0.0]
TF_CCE_PRED = [0.05, 0.85, 0.10]
FRUIT_PROBS = [[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4]]
FRUIT_LABELS = [0, 2, 2]


def assert_printed(value, expected: str) -> None:
    """``value`` equals ``expected`` to the digits printed (plus float32 slack)."""
    digits = len(expected.split(".")[1])
    tol = 0.5 * 10.0**-digits + 4 * float(np.finfo(np.float32).eps) * abs(
        float(expected)
    )
    assert abs(float(value) - float(expected)) <= tol, (float(value), expected)


def test_softmax_of_scores():
    scores = jnp.array([2.0, 1.0, -1.0])
    # softmax_c = exp(-CE(scores, c)): the loss's own softmax.
    ce = jaxce.sparse_softmax_cross_entropy(
        jnp.broadcast_to(scores, (3, 3)), jnp.arange(3), reduction="none"
    )
    for value, expected in zip(np.exp(-np.asarray(ce)), ["0.7054", "0.2595", "0.0351"]):
        assert_printed(value, expected)


@pytest.mark.parametrize(
    "probs, labels, product, log10_sum",
    [
        ([0.1, 0.7, 0.6, 0.2], [1.0, 1.0, 1.0, 1.0], "0.0084", "2.0757"),  # model A
        ([0.2, 0.4, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0], "0.3024", "0.5194"),  # model B
    ],
    ids=["model_A", "model_B"],
)
def test_students_product_and_base10_sum(probs, labels, product, log10_sum):
    ce10 = jaxce.binary_cross_entropy(
        jnp.array(probs), jnp.array(labels), reduction="sum", base=10
    )
    assert_printed(ce10, log10_sum)
    assert_printed(10.0 ** -float(ce10), product)
    # Independent check: the likelihood is the product of the outcome probabilities.
    p = np.where(np.array(labels) == 1, probs, 1 - np.array(probs))
    assert_printed(np.prod(p), product)


def test_fruit_containers():
    probs, labels = jnp.array(FRUIT_PROBS), jnp.array(FRUIT_LABELS)
    sparse = jaxce.sparse_categorical_cross_entropy(
        probs, labels, reduction="sum", base=10
    )
    dense = jaxce.categorical_cross_entropy(
        probs, jax.nn.one_hot(labels, 3), reduction="sum", base=10
    )
    assert_printed(sparse, "1.0757")
    assert_printed(dense, "1.0757")
    assert_printed(10.0 ** -float(sparse), "0.084")
    # The article's 1.073: each term cut to three digits before summing.
    cut = sum(np.floor(-np.log10(p) * 1000) / 1000 for p in (0.7, 0.3, 0.4))
    assert f"{cut:.3f}" == "1.073"


def test_model_b_article_summed_rounded_terms():
    terms = -np.log10([0.8, 0.6, 0.7, 0.9])
    assert f"{terms.sum():.4f}" == "0.5194"
    assert abs(0.09 + 0.22 + 0.15 + 0.045 - 0.505) < 1e-12


def test_torch_bce_loss_on_printed_tensors():
    import torch

    x, y = jnp.array(BCE_X), jnp.array(BCE_Y)
    probs = jax.nn.sigmoid(x)
    np.testing.assert_allclose(np.asarray(probs), BCE_SIGMOID, atol=1.5e-4)
    ours = jaxce.binary_cross_entropy(probs, y, reduction="sum_over_batch_size")
    from_logits = jaxce.sigmoid_binary_cross_entropy(
        x, y, reduction="sum_over_batch_size"
    )
    tx, ty = torch.tensor(BCE_X), torch.tensor(BCE_Y)
    theirs = torch.nn.BCELoss()(torch.sigmoid(tx), ty).item()
    assert_printed(ours, "0.4580")
    assert_printed(theirs, "0.4580")
    np.testing.assert_allclose(float(ours), theirs, rtol=1e-6)
    np.testing.assert_allclose(float(from_logits), theirs, rtol=1e-6)


def test_article_bce_figure_matches_no_labelling():
    """No 0/1 labelling of the printed X gives the article's 1.0966."""
    p = 1 / (1 + np.exp(-np.array(BCE_X)))
    ys = np.array(list(itertools.product([0.0, 1.0], repeat=10)))
    losses = -np.mean(ys * np.log(p) + (1 - ys) * np.log1p(-p), axis=1)
    assert np.min(np.abs(losses - 1.0966)) > 0.5e-4


def test_torch_cross_entropy_loss_on_printed_tensors():
    import torch

    ours = jaxce.sparse_softmax_cross_entropy(jnp.array(CE_X), jnp.array(CE_Y))
    dense = jaxce.softmax_cross_entropy(
        jnp.array(CE_X), jax.nn.one_hot(jnp.array(CE_Y), 5)
    )
    theirs = torch.nn.CrossEntropyLoss()(torch.tensor(CE_X), torch.tensor(CE_Y))
    assert_printed(ours, "1.97316")
    assert_printed(dense, "1.97316")
    np.testing.assert_allclose(float(ours), theirs.item(), rtol=1e-6)


def test_keras_binary_cross_entropy():
    ours = jaxce.binary_cross_entropy(
        jnp.array(TF_BCE_PRED),
        jnp.array(TF_BCE_TRUE),
        eps=1e-7,
        reduction="sum_over_batch_size",
    )
    assert_printed(ours, "0.5398464")
    # The article's 0.53984624 is TF 2's log(p + eps) formula in float32.
    p, y = np.float32(TF_BCE_PRED), np.float32(TF_BCE_TRUE)
    e = np.float32(1e-7)
    tf2 = -np.mean(y * np.log(p + e) + (1 - y) * np.log(1 - p + e))
    assert str(tf2) == "0.53984624"
    import keras

    theirs = keras.losses.BinaryCrossentropy()(np.array(TF_BCE_TRUE), np.array(p))
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


def test_keras_categorical_cross_entropy():
    ours = jaxce.categorical_cross_entropy(
        jnp.array(TF_CCE_PRED),
        jnp.array(TF_CCE_TRUE),
        eps=1e-7,
        reduction="sum_over_batch_size",
    )
    assert_printed(ours, "0.1625189")
    import keras

    theirs = keras.losses.CategoricalCrossentropy()(
        np.array([TF_CCE_TRUE]), np.array([TF_CCE_PRED])
    )
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


def test_numpy_clipped_bce():
    ours = jaxce.binary_cross_entropy(
        jnp.array([0.8, 0.3, 0.7, 0.2]), jnp.array([1.0, 0.0, 1.0, 0.0]), eps=1e-15
    )
    assert_printed(ours, "0.2899092")


def test_seed_figures_through_the_loss_functions():
    # softmax of scores [2, 1, -1] -> 0.7054, 0.2595, 0.0351
    z = np.array([2.0, 1.0, -1.0], np.float32)
    for c, p in enumerate([0.7054, 0.2595, 0.0351]):
        nll = jaxce.sparse_softmax_cross_entropy(z[None], np.array([c], np.int32))
        assert math.exp(-float(nll)) == pytest.approx(p, abs=5e-5)
    # fruit containers, -log10 of the product: 1.0757 (the article printed 1.073)
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4]], np.float32)
    labels = np.array([0, 2, 2], np.int32)
    got = jaxce.sparse_categorical_cross_entropy(
        probs, labels, reduction="sum", base=10
    )
    assert float(got) == pytest.approx(-math.log10(0.7 * 0.3 * 0.4), rel=1e-6)
    assert float(got) == pytest.approx(1.0757, abs=5e-5)
    # TF CategoricalCrossentropy, dog = class 1: 0.1625189
    got = jaxce.categorical_cross_entropy(
        np.array([0.05, 0.85, 0.10], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    )
    assert float(got) == pytest.approx(-math.log(0.85), rel=1e-6)
    assert float(got) == pytest.approx(0.1625189, abs=1e-7)
    # NumPy clipped BCE: 0.2899092
    got = jaxce.binary_cross_entropy(
        np.array([0.8, 0.3, 0.7, 0.2], np.float32),
        np.array([1.0, 0.0, 1.0, 0.0], np.float32),
        eps=1e-15,
    )
    assert float(got) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2, rel=1e-6)
    assert float(got) == pytest.approx(0.2899092, abs=1e-7)


def test_numpy_gradient_descent_is_degenerate():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    y = jnp.array([0.0, 1.0, 1.0, 0.0])

    def loss(w):  # the article's loss: clipped BCE on sigmoid(X @ w), no bias
        return jaxce.binary_cross_entropy(jax.nn.sigmoid(x @ w), y, eps=1e-15)

    g0 = jax.grad(loss)(jnp.zeros(2))
    assert np.array_equal(np.asarray(g0), [0.0, 0.0])
    w = jax.lax.fori_loop(0, 1000, lambda _, w: w - 0.1 * jax.grad(loss)(w), g0 * 0)
    assert np.array_equal(np.asarray(w), [0.0, 0.0])
    assert np.array_equal(np.round(np.asarray(jax.nn.sigmoid(x @ w))), [0, 0, 0, 0])
    # The article's NumPy loop, run as printed, agrees.
    wn = np.zeros(2)
    xn, yn = np.asarray(x), np.asarray(y)
    for _ in range(1000):
        wn -= 0.1 * (xn.T @ (1 / (1 + np.exp(-xn @ wn)) - yn) / 4)
    assert np.array_equal(wn, [0.0, 0.0])


# -- examples/gradient_descent.py: its weights never move, and why ------------------

GD_X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], np.float32)
GD_Y = np.array([0.0, 1.0, 1.0, 0.0], np.float32)


@pytest.fixture(scope="module")
def gd():
    return load_example("gradient_descent")


def test_gradient_at_zero_is_exactly_zero():
    residual = 1 / (1 + np.exp(-(GD_X @ np.zeros(2, np.float32)))) - GD_Y
    np.testing.assert_array_equal(residual, [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_array_equal(GD_X.T @ residual, [0.0, 0.0])
    g = jaxce.closed_form.sigmoid_binary_cross_entropy(jnp.zeros(4), jnp.asarray(GD_Y))
    np.testing.assert_array_equal(np.asarray(g) @ GD_X, [0.0, 0.0])


def test_seed_weights_never_move(gd):
    np.testing.assert_array_equal(gd.numpy_descent(GD_X, GD_Y), [0.0, 0.0])
    w_ad, losses = gd.autodiff_descent(GD_X, GD_Y)
    w_cf, _ = gd.closed_form_descent(GD_X, GD_Y)
    assert losses.shape == (1000,)
    np.testing.assert_array_equal(np.asarray(w_ad), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(w_cf), [0.0, 0.0])
    np.testing.assert_array_equal(gd.predictions(GD_X, w_ad), [0.0, 0.0, 0.0, 0.0])
    assert np.round(0.5) == 0  # the article's rounding: half to even
    np.testing.assert_allclose(losses, np.log(2), rtol=1e-6)


def test_learnable_variant_decreases_the_loss(gd):
    y = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    w_ad, losses = gd.autodiff_descent(GD_X, y)
    w_cf, losses_cf = gd.closed_form_descent(GD_X, y)
    losses = np.asarray(losses)
    assert np.all(np.diff(losses) < 0)
    assert losses[-1] < 0.3 < np.log(2) - 1e-3 < losses[0] + 1e-3
    np.testing.assert_allclose(w_cf, w_ad, rtol=1e-4)
    np.testing.assert_allclose(losses_cf, losses, rtol=1e-5)
    np.testing.assert_allclose(w_ad, gd.numpy_descent(GD_X, y), rtol=1e-4)
    np.testing.assert_array_equal(gd.predictions(GD_X, w_ad), y)


def load_tour():
    return load_example("tour")


TOUR_SECTIONS = ["seeds", "gradients", "fused"]


@pytest.fixture(scope="module")
def tour_run():
    """``python examples/tour.py seeds gradients fused``, once for the tests below:
    the script run as ``__main__`` (its entry point, its ``sys.argv``), in-process
    under this suite's strict dtype / rank promotion and warnings-as-errors. The
    training section (examples/train_demo.py, ~20 s of compiling) is left to
    `test_tour_training_section_is_wired`. Returns (the script's globals, stdout).
    """
    out = io.StringIO()
    argv = [str(ROOT / "examples" / "tour.py"), *TOUR_SECTIONS]
    old_argv, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(out):
            namespace = runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.argv = old_argv
    return namespace, out.getvalue()


def test_tour_runs_and_prints_the_figures(tour_run):
    tour, text = tour_run
    assert list(tour["SECTIONS"]) == ["seeds", "gradients", "training", "fused"]
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    for figure, value in [
        ("softmax of scores [2, 1, -1]", "0.7054, 0.2595, 0.0351"),
        ("model A: -log10 sum", "2.0757"),
        ("model B: -log10 sum", "0.5194"),
        ("fruit containers: -log10 sum", "1.0757"),
        ("PyTorch BCELoss", "0.4580"),
        ("PyTorch CrossEntropyLoss", "1.97316"),
        ("TF BinaryCrossentropy", "0.5398464"),
        ("TF CategoricalCrossentropy", "0.1625189"),
        ("NumPy clipped BCE", "0.2899092"),
        ("NumPy gradient descent: w", "0.0000, 0.0000"),
        ("NumPy gradient descent: preds", "0, 0, 0, 0"),
    ]:
        assert figure in lines, f"tour printed no row {figure!r}"
        assert value in lines[figure], lines[figure]
    assert "wrong, note 3" in lines["PyTorch BCELoss"]
    assert "is 0.53984624, the article's figure" in " ".join(text.split())
    for heading in ["== 1.", "== 2.", "== 4.", "Tour done"]:
        assert heading in text
    assert "skipped" not in text, "a tour section found its part of jaxce missing"


def test_tour_training_section_is_wired():
    """The training section finds examples/train_demo.py and its main()."""
    module = load_tour().load_example("train_demo")
    assert module is not None and callable(module.main)


def test_tour_script_entry_point(tour_run):
    """``python examples/tour.py ...`` runs as a script, as a newcomer runs it."""
    _, text = tour_run
    assert "PyTorch CrossEntropyLoss" in text and "Tour done" in text


@pytest.mark.parametrize("page", ["docs/index.md", "README.md"])
def test_docs_quick_start_runs(capsys, page):
    """The quick start (first python block of the page) runs and learns."""
    text = (ROOT / page).read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "jax.value_and_grad" in code and "optimizer.update" in code
    # As a user runs it: JAX's default promotion rules (optax.adam needs them).
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(code, page, "exec"), {"__name__": "quick_start"})
    out = capsys.readouterr().out
    final = float(out.split("loss after 200 steps:")[1].split()[0])
    assert final < 0.8 < np.log(3)
