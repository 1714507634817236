"""jaxce.fit / fit_ensemble refuse bad data and arguments before compiling.

Each case must raise a clear error naming the argument and the offending value,
and must do so before the training chunk is compiled or run (the chunk and the
epoch shuffle are replaced by functions that fail the test). The messages are
jaxce's own: the tests call the functions under the runtime type checker that
the test run installs (``inspect.unwrap``), as a user without it would.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxce
from jaxce._training import _engine
from jaxce._training._data_checks import check_labels, label_rule
from jaxce.models import LogisticRegression, MLPClassifier, SoftmaxRegression

fit = inspect.unwrap(jaxce.fit)
fit_ensemble = inspect.unwrap(jaxce.fit_ensemble)
KEY = jax.random.key(0)
R = np.random.default_rng(0)
X = R.standard_normal((40, 4)).astype(np.float32)
Y10 = np.arange(40) % 10
YBIN = (np.arange(40) % 2).astype(np.float32)


@pytest.fixture
def never_trains(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started before the bad input was refused")

    for name in ("_fit_chunk", "_ensemble_chunk", "_ensemble_chunk_mesh"):
        monkeypatch.setattr(_engine, name, fail)
    monkeypatch.setattr(_engine, "epoch_orders", fail)


def _softmax(classes=10):
    return SoftmaxRegression(4, classes, key=KEY)


def _with(y, index, value):
    y = np.array(y)
    y[index] = value
    return y


def _nan_x(value):
    x = X.copy()
    x[7, 2] = value
    return x


BAD_DATA = {
    "label 10 with 10 classes": (
        _softmax,
        X,
        _with(Y10, 3, 10),
        {},
        r"outside \[0, 10\).*y\[3\] = 10",
    ),  # noqa: E501
    "label -1": (
        _softmax,
        X,
        _with(Y10, 5, -1),
        {},
        r"`y` holds 1 label outside.*y\[5\] = -1",
    ),  # noqa: E501
    "labels 0..9 for 5 classes": (
        lambda: _softmax(5),
        X,
        Y10,
        {},
        r"outside \[0, 5\).*more than 5 classes",
    ),  # noqa: E501
    "NaN in x": (
        _softmax,
        _nan_x(np.nan),
        Y10,
        {},
        r"`x` holds 1 non-finite value.*x\[7, 2\] = nan",
    ),  # noqa: E501
    "inf in x": (_softmax, _nan_x(-np.inf), Y10, {}, r"`x` holds.*x\[7, 2\] = -inf"),
    "binary labels -1/+1": (
        lambda: LogisticRegression(4, key=KEY),
        X,
        2 * YBIN - 1,
        {},
        r"binary labels.*values seen: -1, 1",
    ),  # noqa: E501
    "binary labels 0..9": (
        lambda: LogisticRegression(4, key=KEY),
        X,
        Y10,
        {},
        r"binary labels.*0 \.\. 9",
    ),  # noqa: E501
    "eval label 42": (
        _softmax,
        X,
        Y10,
        dict(eval_data=(X[:8], _with(Y10[:8], 2, 42))),
        r"`eval_data\[1\]`.*eval_data\[1\]\[2\] = 42",
    ),  # noqa: E501
    "NaN in eval x": (
        _softmax,
        X,
        Y10,
        dict(eval_data=(_nan_x(np.nan), Y10)),
        r"`eval_data\[0\]`.*nan",
    ),  # noqa: E501
    "NaN labels, any loss": (
        _softmax,
        X,
        _with(YBIN, 1, np.nan),
        dict(loss=lambda z, y: jnp.mean(z)),
        r"`y` holds NaN labels.*y\[1\]",
    ),  # noqa: E501
    "smoothing partial": (
        _softmax,
        X,
        _with(Y10, 0, 12),
        dict(
            loss=functools.partial(
                jaxce.sparse_softmax_cross_entropy, label_smoothing=0.1
            )
        ),
        r"y\[0\] = 12",
    ),  # noqa: E501
    "ignore_index allows it, not others": (
        _softmax,
        X,
        _with(_with(Y10, 0, -100), 1, -1),
        dict(
            loss=functools.partial(
                jaxce.sparse_softmax_cross_entropy, ignore_index=-100
            )
        ),
        r"1 label outside.*`ignore_index`=-100.*y\[1\] = -1",
    ),  # noqa: E501
    "targets outside [0, 1]": (
        _softmax,
        X,
        np.eye(10, dtype=np.float32)[Y10] * 2,
        dict(loss=jaxce.softmax_cross_entropy),
        r"target probabilities in \[0, 1\]",
    ),  # noqa: E501
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_training(never_trains, case):
    make, x, y, kwargs, match = BAD_DATA[case]
    with pytest.raises(ValueError, match=match):
        fit(make(), x, y, steps=5, key=KEY, progress=False, **kwargs)


def test_a_model_without_arrays_is_refused(never_trains):
    with pytest.raises(ValueError, match="`model` has no floating-point arrays"):
        fit(lambda e: jnp.sum(e), X, YBIN, steps=5, key=KEY, progress=False)
    with pytest.raises(ValueError, match="`model` cannot take one example of `x`"):
        fit(SoftmaxRegression(3, 10, key=KEY), X, Y10, steps=5, key=KEY)


def test_ensemble_bad_data_is_refused_before_training(never_trains):
    keys = jax.random.split(KEY, 3)
    make = functools.partial(MLPClassifier, 4, 5, width=4, depth=1)
    with pytest.raises(ValueError, match=r"`make_model\(key\)` need more than 5"):
        fit_ensemble(lambda k: make(key=k), keys, X, Y10, steps=5)
    with pytest.raises(ValueError, match=r"`x` holds 1 non-finite"):
        fit_ensemble(lambda k: make(key=k), keys, _nan_x(np.inf), Y10 % 5, steps=5)
    with pytest.raises(ValueError, match="no floating-point arrays"):
        fit_ensemble(lambda k: lambda e: jnp.sum(e), keys, X, YBIN, steps=5)


def test_labels_a_loss_allows_are_accepted():
    # ignore_index labels, soft binary labels, an unknown loss: trained, no error
    ignore = functools.partial(jaxce.sparse_softmax_cross_entropy, ignore_index=-1)
    opts = dict(steps=2, key=KEY, progress=False, optimizer=optax.sgd(0.1))
    _, h = fit(_softmax(), X, _with(Y10, 0, -1), loss=ignore, **opts)
    assert np.all(np.isfinite(h["loss"]))
    _, h = fit(LogisticRegression(4, key=KEY), X, np.full(40, 0.3, np.float32), **opts)
    assert np.all(np.isfinite(h["loss"]))
    custom = lambda z, y: jaxce.sparse_softmax_cross_entropy(z, jnp.maximum(y, 0))  # noqa: E731
    _, h = fit(_softmax(), X, _with(Y10, 0, -1), loss=custom, **opts)
    assert np.all(np.isfinite(h["loss"]))


def test_traced_labels_keep_the_documented_nan():
    # under a user's own jit the values are unknown: the check passes them on,
    # and the loss gives its documented NaN for a label out of range
    rule = label_rule(None, (10,))

    @jax.jit
    def loss(logits, labels):
        check_labels(labels, "y", rule)
        return jaxce.sparse_softmax_cross_entropy(logits, labels)

    assert np.isnan(loss(jnp.zeros((3, 10)), jnp.array([0, 10, 2])))
    with pytest.raises(ValueError, match="outside"):
        check_labels(jnp.array([0, 10, 2]), "y", rule)


# -- arguments ------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(steps=True), TypeError, "`steps` must be an int, got True"),
    (dict(steps=2.0), TypeError, "`steps` must be an int, got 2.0"),
    (dict(steps=-1), ValueError, "`steps` must be an int >= 0, got -1"),
    (dict(batch_size=np.int64(0)), ValueError, "`batch_size` must be an int >= 1"),
    (dict(batch_size=100), ValueError, "`batch_size`=100 is larger than the 40"),
    (dict(log_every=False), TypeError, "`log_every` must be None or an int"),
    (
        dict(checkpoint_every=2),
        ValueError,
        "`checkpoint_every`=2 needs `checkpoint_dir`",
    ),  # noqa: E501
    (dict(key=0), TypeError, r"`key` must be a PRNG key.*got 0 \(int\)"),
    (dict(key=None), TypeError, r"`key` must be a PRNG key.*got None"),
    (dict(key=jnp.zeros(2)), TypeError, r"`key` must be a PRNG key.*shape \(2,\)"),
    (
        dict(optimizer=0.01),
        TypeError,
        r"`optimizer` must be an optax.*optax.adam\(0.01\)",
    ),  # noqa: E501
    (dict(optimizer=optax.adam), TypeError, "`optimizer` must be an optax"),
    (
        dict(eval_data=X),
        TypeError,
        r"`eval_data` must be None or a pair.*shape \(40, 4\)",
    ),  # noqa: E501
    (dict(eval_data=(X,)), TypeError, "`eval_data` must be None or a pair.*1 items"),
    (
        dict(eval_data=(X, Y10[:3])),
        ValueError,
        r"`eval_data\[0\]` and `eval_data\[1\]`",
    ),  # noqa: E501
    (dict(loss="ce"), TypeError, "`loss` must be None or a function"),
    (dict(loss=lambda z, y: z), ValueError, "must return a scalar"),
    (dict(batch_axis="data"), ValueError, "`batch_axis` was given without a `mesh`"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS)
def test_bad_arguments_are_refused(kwargs, error, match):
    opts = {**dict(steps=3, key=KEY, progress=False), **kwargs}
    with pytest.raises(error, match=match):
        fit(_softmax(), X, Y10, **opts)


def test_public_functions_refuse_bad_arguments_too():
    # through the runtime type checker of the test run (or jaxce's own checks)
    for kwargs in (dict(key=0), dict(key=None), dict(optimizer=0.01)):
        name = next(iter(kwargs))
        with pytest.raises(TypeError, match=name):
            jaxce.fit(_softmax(), X, Y10, **{"steps": 3, "key": KEY, **kwargs})
    with pytest.raises(TypeError, match="`keys` must be PRNG keys"):
        fit_ensemble(_softmax, 0, X, Y10, steps=3)


def test_numpy_integers_are_integers():
    model, h = fit(
        _softmax(), X, Y10, steps=np.int64(4), batch_size=np.int64(8), key=KEY,
        log_every=np.int32(2), progress=False, optimizer=optax.sgd(0.1),
    )  # fmt: skip
    assert h["loss"].shape == (4,) and h["step"].tolist() == [2, 4]
    assert isinstance(h["step"][0], np.integer)


def test_eval_data_must_be_shaped_like_the_training_data(never_trains):
    with pytest.raises(
        ValueError, match=r"`eval_data\[0\]` has examples of shape \(3,\)"
    ):  # noqa: E501
        fit(_softmax(), X, Y10, steps=3, key=KEY, eval_data=(X[:, :3], Y10))
