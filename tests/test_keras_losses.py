"""jaxce.keras: the Keras loss classes equal the jaxce functions they wrap and
Keras' own losses, serialise, and train a Keras model (JAX backend, set by the
root conftest)."""

from __future__ import annotations

import itertools

import helpers as h
import jax
import keras
import numpy as np
import pytest

import jaxce
import jaxce.keras as jk

N, K = 6, 4
TOL = dict(rtol=1e-6, atol=1e-6)
REDUCTIONS = ["sum_over_batch_size", "sum", "none", "mean_with_sample_weight"]
# (use sample_weight, reduction): every reduction with sample weights, the
# default without
SW_REDUCTIONS = [(False, "sum_over_batch_size")] + [(True, r) for r in REDUCTIONS]
# Keras reduction -> jaxce reduction with weights=sample_weight (without
# class_weights; jaxce's "mean" also divides by the class weights of the labels)
TO_JAXCE = {
    "sum_over_batch_size": "sum_over_batch_size",
    "sum": "sum",
    "none": "none",
    "mean_with_sample_weight": "mean",
}


@pytest.fixture
def keras_rules():
    """JAX's default promotion rules, which Keras' layers rely on (conftest makes
    them errors); the jaxce.keras losses need neither."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def builtin(cls, **kwargs):
    """A Keras built-in loss, called under JAX's default promotion rules (Keras
    relies on them; conftest makes them errors) and returning NumPy."""
    loss = cls(**kwargs)

    def call(y_true, y_pred, **kw) -> np.ndarray:
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            return np.asarray(loss(y_true, y_pred, **kw))

    return call


def _sparse_inputs(from_logits: bool, ignore_class, shape=(N,)):
    r = h.rng(1)
    x = h.logits(r, (*shape, K)) if from_logits else h.probs(r, int(np.prod(shape)), K)
    x = x.reshape(*shape, K)
    y = h.labels(r, shape, K)
    if ignore_class is not None:
        y.reshape(-1)[[0, 3]] = ignore_class
    return x, y, h.uniform(r, shape[:1], 0.1, 2.0)


@pytest.mark.parametrize(
    "from_logits, ignore_class, use_sw, reduction",
    [
        (a, b, *c)
        for a, b, c in itertools.product([True, False], [None, -1], SW_REDUCTIONS)
    ],
)
def test_sparse_equals_jaxce_and_keras(from_logits, ignore_class, use_sw, reduction):
    x, y, sw = _sparse_inputs(from_logits, ignore_class)
    sw = sw if use_sw else None
    kw = dict(from_logits=from_logits, ignore_class=ignore_class, reduction=reduction)
    got = np.asarray(jk.SparseCategoricalCrossentropy(**kw)(y, x, sample_weight=sw))
    expected = builtin(keras.losses.SparseCategoricalCrossentropy, **kw)
    h.assert_tree_allclose(got, expected(y, x, sample_weight=sw), **TOL)
    fn = (
        jaxce.sparse_softmax_cross_entropy
        if from_logits
        else jaxce.sparse_categorical_cross_entropy
    )
    eps = {} if from_logits else dict(eps=1e-7)
    ours = fn(
        x,
        y,
        ignore_index=ignore_class,
        weights=sw,
        reduction=TO_JAXCE[reduction],
        **eps,
    )
    h.assert_tree_allclose(got, np.asarray(ours), **TOL)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "none"])
def test_sparse_options_equal_jaxce(from_logits, reduction):
    # options Keras lacks: class weights, smoothing, z-loss (logits), ignore_class
    x, y, sw = _sparse_inputs(from_logits, 255)
    cw = [0.5, 1.0, 2.0, 1.5]
    z = dict(z_loss=1e-2) if from_logits else {}
    loss = jk.SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=255, class_weights=np.array(cw),
        label_smoothing=0.2, reduction=reduction, **z,
    )  # fmt: skip
    got = loss(y[:, None], x, sample_weight=sw)  # (N, 1) labels, as Keras allows
    if from_logits:
        fn, extra = jaxce.sparse_softmax_cross_entropy, z
    else:
        fn, extra = jaxce.sparse_categorical_cross_entropy, dict(eps=1e-7)
    expected = fn(
        x, y, ignore_index=255, class_weights=np.array(cw, np.float32),
        label_smoothing=0.2, weights=sw, reduction=reduction, **extra,
    )  # fmt: skip
    h.assert_tree_allclose(np.asarray(got), np.asarray(expected), **TOL)


def test_sparse_spatial_ignore_class_and_keras_mask():
    # (N, H, W, K) segmentation logits with a void class: Keras' own loss, and
    # jaxce's "mean" (no weights: ignored pixels leave the denominator)
    x, y, _ = _sparse_inputs(True, 255, shape=(2, 3, 2))
    got = jk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)(y, x)
    keras_loss = builtin(
        keras.losses.SparseCategoricalCrossentropy, from_logits=True, ignore_class=255
    )
    h.assert_tree_allclose(np.asarray(got), keras_loss(y, x), **TOL)
    mean = jaxce.sparse_softmax_cross_entropy(x, y, ignore_index=255)
    h.assert_tree_allclose(np.asarray(got), np.asarray(mean), **TOL)
    # every label ignored: 0, as in jaxce (not NaN)
    all_ignored = np.full_like(y, 255)
    loss = jk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    assert float(loss(all_ignored, x)) == 0


@pytest.mark.parametrize(
    "from_logits, smoothing, use_sw, reduction",
    [
        (a, b, *c)
        for a, b, c in itertools.product([True, False], [0.0, 0.2], SW_REDUCTIONS)
    ],
)
def test_categorical_equals_jaxce_and_keras(from_logits, smoothing, use_sw, reduction):
    r = h.rng(2)
    t = h.one_hot(h.labels(r, (N,), K), K)
    t[0] = h.probs(r, 1, K)[0]  # a soft target row
    x = h.logits(r, (N, K)) if from_logits else h.probs(r, N, K)
    sw = h.uniform(r, (N,), 0.1, 2.0) if use_sw else None
    kw = dict(from_logits=from_logits, label_smoothing=smoothing, reduction=reduction)
    got = np.asarray(jk.CategoricalCrossentropy(**kw)(t, x, sample_weight=sw))
    expected = builtin(keras.losses.CategoricalCrossentropy, **kw)
    h.assert_tree_allclose(got, expected(t, x, sample_weight=sw), **TOL)
    cw = [1.0, 2.0, 0.5, 1.0]
    weighted = jk.CategoricalCrossentropy(class_weights=cw, **kw)(
        t, x, sample_weight=sw
    )
    fn = jaxce.softmax_cross_entropy if from_logits else jaxce.categorical_cross_entropy
    eps = {} if from_logits else dict(eps=1e-7)
    mean = reduction == "mean_with_sample_weight"  # sum / sum(sample_weight)
    expected = fn(
        x, t, class_weights=np.array(cw, np.float32), label_smoothing=smoothing,
        weights=sw, reduction="sum" if mean else reduction, **eps,
    )  # fmt: skip
    if mean:
        expected = expected / (N if sw is None else np.sum(sw))
    h.assert_tree_allclose(np.asarray(weighted), np.asarray(expected), **TOL)


def _binary_inputs(from_logits: bool, d: int = 3):
    r = h.rng(3)
    y = h.binary_labels(r, (N, d))
    x = h.logits(r, (N, d)) if from_logits else h.uniform(r, (N, d), 0.02, 0.98)
    return x, y, h.uniform(r, (N,), 0.1, 2.0)


@pytest.mark.parametrize(
    "from_logits, smoothing, use_sw, reduction",
    [
        (a, b, *c)
        for a, b, c in itertools.product([True, False], [0.0, 0.2], SW_REDUCTIONS)
    ],
)
def test_binary_equals_keras(from_logits, smoothing, use_sw, reduction):
    x, y, sw = _binary_inputs(from_logits)
    sw = sw if use_sw else None
    kw = dict(from_logits=from_logits, label_smoothing=smoothing, reduction=reduction)
    got = np.asarray(jk.BinaryCrossentropy(**kw)(y, x, sample_weight=sw))
    expected = builtin(keras.losses.BinaryCrossentropy, **kw)
    h.assert_tree_allclose(got, expected(y, x, sample_weight=sw), **TOL)


@pytest.mark.parametrize("from_logits", [True, False])
def test_binary_equals_jaxce(from_logits):
    # per row: the mean over the last axis (as Keras); sample weights are per row
    x, y, sw = _binary_inputs(from_logits)
    if from_logits:
        fn, eps = jaxce.sigmoid_binary_cross_entropy, {}
        pos_weight = np.array([1.0, 3.0, 0.5], np.float32)
        ours = dict(label_smoothing=0.1, pos_weight=pos_weight)
    else:
        fn, eps = jaxce.binary_cross_entropy, dict(eps=1e-7)
        ours = dict(label_smoothing=0.1)
    kw = dict(ours, **eps)  # jaxce's arguments
    per_row = np.mean(np.asarray(fn(x, y, reduction="none", **kw)), axis=-1)
    none = jk.BinaryCrossentropy(from_logits=from_logits, reduction=None, **ours)
    h.assert_tree_allclose(np.asarray(none(y, x)), per_row, **TOL)
    loss = jk.BinaryCrossentropy(from_logits=from_logits, **ours)
    expected = fn(x, y, weights=sw[:, None], reduction="sum_over_batch_size", **kw)
    got = loss(y, x, sample_weight=sw)
    h.assert_tree_allclose(np.asarray(got), np.asarray(expected), **TOL)


@pytest.mark.parametrize(
    "alpha, gamma, use_sw, reduction",
    [
        (a, b, *c)
        for a, b, c in itertools.product([None, 0.3], [0.0, 2.0], SW_REDUCTIONS)
    ],
)
def test_binary_focal_equals_jaxce_and_keras(alpha, gamma, use_sw, reduction):
    x, y, sw = _binary_inputs(True)
    sw = sw if use_sw else None
    loss = jk.BinaryFocalCrossentropy(
        apply_class_balancing=alpha is not None,
        alpha=0.25 if alpha is None else alpha,
        gamma=gamma,
        from_logits=True,
        reduction=reduction,
    )
    got = np.asarray(loss(y, x, sample_weight=sw))
    expected = builtin(
        keras.losses.BinaryFocalCrossentropy,
        apply_class_balancing=alpha is not None,
        alpha=0.25 if alpha is None else alpha,
        gamma=gamma,
        from_logits=True,
        reduction=reduction,
    )
    h.assert_tree_allclose(got, expected(y, x, sample_weight=sw), **TOL)
    if reduction == "sum_over_batch_size":
        ours = jaxce.sigmoid_focal_loss(
            x, y, alpha=alpha, gamma=gamma, reduction=reduction,
            weights=None if sw is None else sw[:, None],
        )  # fmt: skip
        h.assert_tree_allclose(got, np.asarray(ours), **TOL)


@pytest.mark.parametrize(
    "alpha, ignore_class, use_sw, reduction",
    [
        (a, b, *c)
        for a, b, c in itertools.product(
            [None, 0.25, (0.1, 0.5, 1.0, 2.0)], [None, -1], SW_REDUCTIONS
        )
    ],
)
def test_sparse_focal_equals_jaxce_and_keras(alpha, ignore_class, use_sw, reduction):
    x, y, sw = _sparse_inputs(True, ignore_class)
    sw = sw if use_sw else None
    loss = jk.SparseCategoricalFocalCrossentropy(
        alpha=alpha,
        gamma=2.0,
        from_logits=True,
        ignore_class=ignore_class,
        reduction=reduction,
    )
    got = np.asarray(loss(y, x, sample_weight=sw))
    a = np.asarray(alpha, np.float32) if isinstance(alpha, tuple) else alpha
    ours = jaxce.softmax_focal_loss(
        x, y, alpha=a, gamma=2.0, ignore_index=ignore_class, weights=sw,
        reduction=TO_JAXCE[reduction],
    )  # fmt: skip
    h.assert_tree_allclose(got, np.asarray(ours), **TOL)
    if ignore_class is None:  # Keras' categorical focal loss on one-hot targets
        keras_alpha = list(alpha) if isinstance(alpha, tuple) else alpha
        expected = builtin(
            keras.losses.CategoricalFocalCrossentropy,
            alpha=1.0 if alpha is None else keras_alpha,
            gamma=2.0,
            from_logits=True,
            reduction=reduction,
        )
        h.assert_tree_allclose(
            got, expected(h.one_hot(y, K), x, sample_weight=sw), **TOL
        )


# -- serialisation --------------------------------------------------------------

CONFIGURED = [
    jk.SparseCategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1, ignore_class=-1,
        class_weights=[1.0, 2.0, 0.5, 1.0], z_loss=1e-3, reduction="sum", name="sce",
    ),
    jk.SparseCategoricalCrossentropy(ignore_class=np.int64(255)),
    jk.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.2, class_weights=np.ones(K)
    ),
    jk.BinaryCrossentropy(
        from_logits=True, label_smoothing=0.1, pos_weight=[1.0, 2.0, 3.0, 4.0]
    ),
    jk.BinaryCrossentropy(reduction=None, dtype="float32"),
    jk.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.3, gamma=1.5, from_logits=True
    ),
    jk.BinaryFocalCrossentropy(label_smoothing=0.1),
    jk.SparseCategoricalFocalCrossentropy(
        alpha=[0.1, 0.2, 0.3, 0.4], from_logits=True, ignore_class=-1
    ),
    jk.SparseCategoricalFocalCrossentropy(alpha=None),
]  # fmt: skip


def _apply(loss, sw=None):
    r = h.rng(4)
    x = h.logits(r, (N, K)) if loss.from_logits else h.probs(r, N, K)
    if isinstance(loss, (jk.BinaryCrossentropy, jk.BinaryFocalCrossentropy)):
        y = h.binary_labels(r, (N, K))
    elif isinstance(loss, jk.CategoricalCrossentropy):
        y = h.one_hot(h.labels(r, (N,), K), K)
    else:
        y = h.labels(r, (N,), K)
        y[1] = loss.ignore_class if loss.ignore_class is not None else y[1]
    return np.asarray(loss(y, x, sample_weight=sw))


@pytest.mark.parametrize("loss", CONFIGURED, ids=lambda loss: type(loss).__name__)
def test_config_round_trips(loss):
    config = loss.get_config()
    assert set(config) >= {"name", "reduction", "dtype"}
    again = type(loss).from_config(config)
    assert again.get_config() == config
    sw = h.uniform(h.rng(5), (N,), 0.1, 2.0)
    h.assert_tree_allclose(_apply(again, sw), _apply(loss, sw), rtol=0, atol=0)
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == f"jaxce>{type(loss).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss) and restored.get_config() == config
    h.assert_tree_allclose(_apply(restored, sw), _apply(loss, sw), rtol=0, atol=0)
    assert type(loss).__name__ in repr(loss)


def test_saved_model_reloads_with_its_loss(tmp_path, keras_rules):
    keras.utils.set_random_seed(0)
    r = h.rng(6)
    x = r.standard_normal((16, 4)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=-1).astype(np.int32)
    y[:3] = -1  # ignored
    loss = jk.SparseCategoricalCrossentropy(
        from_logits=True,
        ignore_class=-1,
        class_weights=[1.0, 2.0, 0.5],
        label_smoothing=0.1,
    )
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, jk.SparseCategoricalCrossentropy)
    assert loaded.loss.get_config() == loss.get_config()
    pred = model.predict(x, verbose=0)
    h.assert_tree_allclose(loaded.predict(x, verbose=0), pred, rtol=0, atol=0)
    # the compiled loss of the reloaded model: jaxce's, ignored rows left out
    expected = jaxce.sparse_softmax_cross_entropy(
        pred, y, ignore_index=-1, class_weights=np.array([1.0, 2.0, 0.5], np.float32),
        label_smoothing=0.1, reduction="sum_over_batch_size",
    )  # fmt: skip
    value = loaded.evaluate(x, y, batch_size=len(x), verbose=0)
    h.assert_tree_allclose(
        np.float32(value), np.asarray(expected), rtol=1e-5, atol=1e-6
    )


# -- training a Keras model -----------------------------------------------------


def test_fit_decreases_the_loss_and_evaluate_is_jaxce(keras_rules):
    keras.utils.set_random_seed(0)
    r = h.rng(7)
    x = r.standard_normal((64, 4)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=-1).astype(np.int32)
    cw = [1.0, 2.0, 0.5]
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    loss = jk.SparseCategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1, class_weights=cw, z_loss=1e-3
    )
    model.compile(optimizer="sgd", loss=loss)
    history = model.fit(x, y, epochs=5, batch_size=16, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    value = model.evaluate(x, y, batch_size=len(x), verbose=0)
    pred = model.predict(x, batch_size=len(x), verbose=0)
    expected = jaxce.sparse_softmax_cross_entropy(
        pred, y, label_smoothing=0.1, class_weights=np.array(cw, np.float32),
        z_loss=1e-3, reduction="sum_over_batch_size",
    )  # fmt: skip
    h.assert_tree_allclose(
        np.float32(value), np.asarray(expected), rtol=1e-5, atol=1e-5
    )
