"""A learning-rate sweep compiles once: the chunk is cached on the optimizer's
structure (its update as a program), not on the optimizer object.

Compilations are counted with `jax.monitoring` (one backend-compile event per
XLA program built).
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from helpers import load_example

import jaxce
from jaxce._training._structure import SameUpdate
from jaxce.models import SoftmaxRegression

R = np.random.default_rng(0)
X = R.standard_normal((64, 5)).astype(np.float32)
Y = np.arange(64) % 4
MODEL = SoftmaxRegression(5, 4, key=jax.random.key(0))
EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compiles():
    seen = []

    def listen(name, duration, **kwargs):
        if name == EVENT:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listen)


def _fit(optimizer, steps=30):
    model, history = jaxce.fit(
        MODEL, X, Y, optimizer=optimizer, steps=steps, batch_size=16,
        key=jax.random.key(1), progress=False, log_every=10,
    )  # fmt: skip
    return model, history


def _injected(**hyperparameters):
    return optax.inject_hyperparams(optax.adam)(**hyperparameters)


def test_learning_rate_sweep_compiles_once(compiles):
    _fit(_injected(learning_rate=0.3))  # compiles the chunk (and warms eager ops)
    compiles.clear()
    results = {lr: _fit(_injected(learning_rate=lr)) for lr in (0.1, 0.03, 0.01)}
    results[0.001] = _fit(_injected(learning_rate=0.001, b1=0.5, eps=1e-6))
    assert compiles == []  # four rates (and other floats): no compilation at all
    # the shared program uses each call's values: the results differ by rate and
    # equal those of optax.adam(lr), which bakes the rate into its own program
    losses = [h["loss"][-1] for _, h in results.values()]
    assert len(set(np.round(losses, 4))) == 4
    for lr in (0.1, 0.01):
        model, history = _fit(optax.adam(lr))
        np.testing.assert_allclose(results[lr][0].weight, model.weight, atol=1e-5)
        np.testing.assert_allclose(results[lr][1]["loss"], history["loss"], atol=1e-5)


def test_a_baked_in_rate_compiles_per_value_and_equal_ones_share(compiles):
    _fit(optax.adam(0.5))
    compiles.clear()
    _fit(optax.adam(0.25))
    assert len(compiles) >= 1  # a new literal: a new program, as it must be
    compiles.clear()
    _fit(optax.adam(0.25))  # a new object with the same values: shared
    _fit(optax.adam(0.5))
    assert compiles == []


def test_same_update_compares_programs():
    params = {"w": np.zeros((3, 2), np.float32)}

    def same(a, b):
        wrap = [SameUpdate(o, params, o.init(params)) for o in (a, b)]
        assert (wrap[0] == wrap[1]) == (hash(wrap[0]) == hash(wrap[1]))
        return wrap[0] == wrap[1]

    assert same(optax.adam(0.1), optax.adam(0.1))
    assert not same(optax.adam(0.1), optax.adam(0.1000001))
    assert not same(optax.adam(0.1), optax.adam(0.1, b1=0.8))
    assert not same(optax.sgd(0.1), optax.sgd(0.1, momentum=0.9))
    assert same(_injected(learning_rate=0.1), _injected(learning_rate=0.2))
    assert not same(_injected(learning_rate=0.1), optax.adam(0.1))


def test_the_sweep_example_compiles_once():
    example = load_example("lr_sweep")
    rows = example.sweep(example.injected_adam, rates=(0.1, 0.03, 0.01), steps=20)
    assert [r["compiles"] for r in rows[1:]] == [0, 0]
    assert all(0 < r["test_accuracy"] <= 1 for r in rows)
