"""jaxce.fit: accuracy on real data, the update rule, data order, history.

Bad data and arguments: ``test_fit_data.py``; checkpoints: ``test_checkpoint.py``;
sweeps: ``test_fit_sweep.py``; meshes: ``test_fit_mesh.py``.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_data import load

import jaxce
from jaxce.models import (
    LogisticRegression,
    MLPClassifier,
    SoftmaxRegression,
    predict,
)


def _test_accuracy(model, x, y):
    return float(np.mean(np.asarray(predict(model, x)) == y.astype(np.int32)))


def test_logistic_breast_cancer_accuracy():
    xtr, xte, ytr, yte = load("breast_cancer")
    model = LogisticRegression(xtr.shape[1], key=jax.random.key(0))
    model, history = jaxce.fit(
        model, xtr, ytr, steps=300, batch_size=64, key=jax.random.key(1),
        progress=False, eval_data=(xte, yte),
    )  # fmt: skip
    acc = _test_accuracy(model, xte, yte)
    assert acc >= 0.95
    # the logged eval accuracy is the same quantity, computed inside fit
    np.testing.assert_allclose(history["eval_accuracy"][-1], acc, atol=1e-6)
    assert history["loss"][-10:].mean() < history["loss"][:10].mean() / 3


def test_softmax_regression_digits_accuracy():
    xtr, xte, ytr, yte = load("digits")
    model = SoftmaxRegression(64, 10, key=jax.random.key(0))
    model, _ = jaxce.fit(
        model, xtr, ytr, steps=300, batch_size=64, key=jax.random.key(1),
        progress=False,
    )  # fmt: skip
    assert _test_accuracy(model, xte, yte) >= 0.95


def test_mlp_digits_accuracy():
    xtr, xte, ytr, yte = load("digits")
    model = MLPClassifier(64, 10, width=64, depth=1, key=jax.random.key(0))
    model, history = jaxce.fit(
        model, xtr, ytr, steps=300, batch_size=64, key=jax.random.key(1),
        progress=False, log_every=150,
    )  # fmt: skip
    assert _test_accuracy(model, xte, yte) >= 0.96
    np.testing.assert_array_equal(history["step"], [150, 300])
    assert history["accuracy"][-1] >= 0.99  # training accuracy


def _numpy_logistic_gd(x, y, w, b, lr, steps, batches):
    """The seed article's loop: p = sigmoid(Xw + b); w -= lr * X.T (p - y) / N."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    w, b = w.astype(np.float64), float(b)
    for s in range(steps):
        idx = batches(s)
        xb, yb = x[idx], y[idx]
        p = 1 / (1 + np.exp(-(xb @ w + b)))
        w = w - lr * xb.T @ (p - yb) / len(idx)
        b = b - lr * np.mean(p - yb)
    return w, b


def _small_binary(n=40, d=3, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * r.standard_normal(n) > 0
    return x, y.astype(np.float32)


def test_full_batch_sgd_is_plain_gradient_descent():
    x, y = _small_binary()
    model = LogisticRegression(3, key=jax.random.key(0))
    trained, history = jaxce.fit(
        model, x, y, optimizer=optax.sgd(0.5), steps=25, key=jax.random.key(0),
        progress=False, log_every=10,
    )  # fmt: skip
    w, b = _numpy_logistic_gd(
        x, y, np.asarray(model.weight), 0.0, 0.5, 25, lambda s: np.arange(len(x))
    )
    np.testing.assert_allclose(trained.weight, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(trained.bias, b, rtol=1e-4, atol=1e-5)
    assert history["loss"].shape == (25,)
    np.testing.assert_array_equal(history["step"], [10, 20, 25])


def test_minibatch_order_follows_the_documented_rule():
    x, y = _small_binary(n=23)
    key, bs = jax.random.key(7), 5
    per_epoch = 23 // bs  # 4 batches per epoch, 3 examples sit out

    def batches(s):
        perm = np.asarray(
            jax.random.permutation(jax.random.fold_in(key, s // per_epoch), 23)
        )
        return perm[(s % per_epoch) * bs : (s % per_epoch + 1) * bs]

    model = LogisticRegression(3, key=jax.random.key(0))
    trained, _ = jaxce.fit(
        model, x, y, optimizer=optax.sgd(0.3), steps=11, batch_size=bs, key=key,
        progress=False, log_every=4,
    )  # fmt: skip
    w, b = _numpy_logistic_gd(x, y, np.asarray(model.weight), 0.0, 0.3, 11, batches)
    np.testing.assert_allclose(trained.weight, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(trained.bias, b, rtol=1e-4, atol=1e-5)


def test_data_order_is_deterministic_in_key():
    x, y = _small_binary()
    model = LogisticRegression(3, key=jax.random.key(0))
    run = functools.partial(
        jaxce.fit, model, x, y, steps=12, batch_size=8, progress=False
    )
    a, ha = run(key=jax.random.key(1))
    b, hb = run(key=jax.random.key(1))
    c, hc = run(key=jax.random.key(2))
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(ha["loss"], hb["loss"])
    assert not np.array_equal(ha["loss"], hc["loss"])


def test_natural_loss_and_custom_loss():
    xtr, _, ytr, _ = load("digits")
    x, y = xtr[:200], ytr[:200]
    model = SoftmaxRegression(64, 10, key=jax.random.key(0))
    opts = dict(
        steps=5, key=jax.random.key(0), progress=False, optimizer=optax.sgd(0.1)
    )
    a, ha = jaxce.fit(model, x, y, **opts)
    b, hb = jaxce.fit(model, x, y, loss=jaxce.sparse_softmax_cross_entropy, **opts)
    np.testing.assert_array_equal(ha["loss"], hb["loss"])
    smooth = functools.partial(jaxce.sparse_softmax_cross_entropy, label_smoothing=0.2)
    _, hc = jaxce.fit(model, x, y, loss=smooth, **opts)
    logits = jax.vmap(model)(jnp.asarray(x))
    expected = jaxce.sparse_softmax_cross_entropy(logits, y, label_smoothing=0.2)
    np.testing.assert_allclose(hc["loss"][0], expected, rtol=1e-5)
    assert hc["loss"][0] != ha["loss"][0]


def test_progress_bar_shows_loss_and_accuracy(capsys):
    x, y = _small_binary()
    model = LogisticRegression(3, key=jax.random.key(0))
    jaxce.fit(model, x, y, steps=20, key=jax.random.key(0), log_every=10)
    err = capsys.readouterr().err
    assert "20/20" in err and "loss=" in err and "acc=" in err


def test_no_output_without_progress(capsys):
    x, y = _small_binary()
    model = LogisticRegression(3, key=jax.random.key(0))
    jaxce.fit(model, x, y, steps=3, key=jax.random.key(0), progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_zero_steps_returns_the_model():
    x, y = _small_binary()
    model = LogisticRegression(3, key=jax.random.key(0))
    trained, history = jaxce.fit(model, x, y, steps=0, key=jax.random.key(0))
    np.testing.assert_array_equal(trained.weight, model.weight)
    assert history["loss"].shape == (0,) and history["step"].shape == (0,)


def test_mismatched_data_lengths():
    x, y = _small_binary()
    model = LogisticRegression(3, key=jax.random.key(0))
    # jaxtyping's runtime check (TypeError) or jaxce's own (ValueError)
    with pytest.raises((ValueError, TypeError)):
        jaxce.fit(model, x, y[:-1], steps=1, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="same"):
        inspect.unwrap(jaxce.fit)(
            model, x, y[:-1], steps=1, key=jax.random.key(0), progress=False
        )
