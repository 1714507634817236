"""jaxce.fit_ensemble: one compiled, vmapped call; members equal individual fits."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import optax
from training_data import load

import jaxce
import jaxce._training._engine as train
from jaxce.models import SoftmaxRegression

OPT = optax.adam(1e-2)


def _make(key):
    return SoftmaxRegression(64, 10, key=key)


def test_ensemble_of_16_trains_in_one_call(monkeypatch):
    xtr, xte, ytr, yte = load("digits")
    calls = []
    real = train._ensemble_chunk

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(train, "_ensemble_chunk", counting)
    keys = jax.random.split(jax.random.key(0), 16)
    models, history = jaxce.fit_ensemble(
        _make, keys, xtr, ytr, optimizer=OPT, steps=150, batch_size=64,
        eval_data=(xte, yte),
    )  # fmt: skip
    assert len(calls) == 1
    assert models.weight.shape == (16, 10, 64) and models.bias.shape == (16, 10)
    assert history["loss"].shape == (16, 150)
    assert history["accuracy"].shape == (16, 1)
    np.testing.assert_array_equal(history["step"], [150])
    # every member learned; members differ (own initialisation and data order)
    assert np.all(history["eval_accuracy"] >= 0.93)
    assert len({float(w) for w in models.weight[:, 0, 0]}) == 16
    # members are usable with filter_vmap, and agree with the logged accuracy
    preds = eqx.filter_vmap(lambda m: jaxce.models.predict(m, xte))(models)
    acc = np.mean(np.asarray(preds) == yte[None, :], axis=1)
    np.testing.assert_allclose(acc, history["eval_accuracy"][:, 0], atol=1e-6)


def test_members_equal_individual_fits():
    xtr, _, ytr, _ = load("digits")
    x, y = xtr[:200], ytr[:200]
    keys = jax.random.split(jax.random.key(3), 3)
    models, history = jaxce.fit_ensemble(
        _make, keys, x, y, optimizer=OPT, steps=30, batch_size=20, log_every=15
    )
    np.testing.assert_array_equal(history["step"], [15, 30])
    for i in range(3):
        init_key, data_key = jax.random.split(keys[i])
        single, h = jaxce.fit(
            _make(init_key), x, y, optimizer=OPT, steps=30, batch_size=20,
            key=data_key, progress=False, log_every=15,
        )  # fmt: skip
        np.testing.assert_allclose(models.weight[i], single.weight, atol=1e-5)
        np.testing.assert_allclose(models.bias[i], single.bias, atol=1e-5)
        np.testing.assert_allclose(history["loss"][i], h["loss"], rtol=1e-5)
        np.testing.assert_allclose(history["accuracy"][i], h["accuracy"], atol=1e-6)


def test_ensemble_progress_bar(capsys):
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]], np.float32)
    y = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    keys = jax.random.split(jax.random.key(0), 2)
    jaxce.fit_ensemble(
        lambda k: jaxce.models.LogisticRegression(1, key=k), keys, x, y,
        steps=4, progress=True, log_every=2,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "4/4" in err and "loss=" in err
