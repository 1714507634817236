"""jaxce.fit(mesh=...) on 8 host CPU devices equals single-device training.

In this process: the root ``conftest.py`` gives it 8 host CPU devices. Meshes
with Explicit axes (``jax.make_mesh``) and Auto axes; batches that divide over
the batch axis and batches that do not (padded inside `fit`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from training_data import load

import jaxce
from jaxce.models import MLPClassifier


class Probe(eqx.Module):
    """Records how the batch the model runs on is split (the spec's first entry)."""

    inner: eqx.Module

    def __call__(self, x):
        def record(s):  # under vmap the callback sees the batched array
            spec = getattr(s, "spec", None)  # one device: no spec
            MODEL_IN.append(spec[0] if spec else None)

        jax.debug.inspect_array_sharding(x, callback=record)
        return self.inner(x)


SEEN: list = []
MODEL_IN: list = []


def _loss(logits, labels):
    """The loss, recording how each batch of logits is laid out over the devices."""
    shape = logits.shape

    def record(s):
        try:
            SEEN.append([len(range(*ix[0].indices(shape[0])))
                         for ix in s.devices_indices_map(shape).values()])  # fmt: skip
        except ValueError:  # an uneven split XLA chose (padded internally)
            SEEN.append("uneven " + str(s.spec))

    jax.debug.inspect_array_sharding(logits, callback=record)
    return jaxce.sparse_softmax_cross_entropy(logits, labels)


@pytest.fixture(scope="module")
def result():
    assert jax.device_count() == 8, jax.devices()
    xtr, xte, ytr, yte = load("digits")
    x, y = xtr[:512], ytr[:512]
    opt = optax.adam(1e-2)

    def run(mesh, batch_size, batch_axis=None, n=512):
        SEEN.clear()
        MODEL_IN.clear()
        model = Probe(MLPClassifier(64, 10, width=32, depth=1, key=jax.random.key(0)))
        model, history = jaxce.fit(
            model, x[:n], y[:n], loss=_loss, optimizer=opt, steps=40,
            batch_size=batch_size, key=jax.random.key(1), progress=False,
            eval_data=(xte, yte), log_every=20, mesh=mesh, batch_axis=batch_axis,
        )  # fmt: skip
        leaves = jax.tree.leaves(model)
        return {
            "leaves": [np.asarray(a) for a in leaves],
            "devices": [len(a.sharding.device_set) for a in leaves],
            "replicated": [bool(a.sharding.is_fully_replicated) for a in leaves],
            "loss": history["loss"],
            "eval_accuracy": history["eval_accuracy"],
            # the layouts of every traced loss call (train steps and metrics)
            "rows_per_device": [r if isinstance(r, str) else sorted(r) for r in SEEN],
            "model_input_split": sorted(set(map(str, MODEL_IN))),
        }

    explicit = jax.make_mesh((8,), ("data",))
    auto = jax.make_mesh((2, 4), ("data", "model"),
                         axis_types=(AxisType.Auto, AxisType.Auto))  # fmt: skip
    out = {"single": run(None, 64)}
    out["explicit"] = run(explicit, 64)
    out["auto_2x4"] = run(auto, 64, batch_axis="model")
    out["single_full"] = run(None, None)
    out["explicit_full"] = run(explicit, None)
    # batches that do not divide: 22 over 8 devices and over the 4-way axis
    # (padded to 24), and all 509 examples over 8 (padded to 512)
    out["single_22"] = run(None, 22)
    out["explicit_22"] = run(explicit, 22)
    out["auto_2x4_22"] = run(auto, 22, batch_axis="model")
    out["single_full_509"] = run(None, None, n=509)
    out["explicit_full_509"] = run(explicit, None, n=509)
    try:
        run(explicit, 20, batch_axis="nope")
    except ValueError as err:
        out["error"] = str(err)
    return out


def _assert_close(a, b, atol):
    assert len(a["leaves"]) == len(b["leaves"])
    for x, y in zip(a["leaves"], b["leaves"]):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=atol)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["eval_accuracy"], b["eval_accuracy"], atol=0.005)


@pytest.mark.parametrize("name", ["explicit", "auto_2x4"])
def test_minibatch_mesh_equals_single_device(result, name):
    _assert_close(result[name], result["single"], atol=1e-5)


def test_full_batch_mesh_equals_single_device(result):
    _assert_close(result["explicit_full"], result["single_full"], atol=1e-5)


def test_batch_is_split_and_parameters_replicated(result):
    # 64 examples over 8 devices: 8 rows each; over the 4-way "model" axis: 16
    # (full batch: 512 over 8 devices is 64 each; the metrics see all 512)
    assert [8] * 8 in result["explicit"]["rows_per_device"]
    assert [16] * 8 in result["auto_2x4"]["rows_per_device"]
    assert [64] * 8 in result["explicit_full"]["rows_per_device"]
    assert [64] * 8 not in result["explicit"]["rows_per_device"]
    for name in ("explicit", "auto_2x4", "explicit_full"):
        assert all(n == 8 for n in result[name]["devices"])
        assert all(result[name]["replicated"])
    assert result["single"]["devices"] == [1] * 4


@pytest.mark.parametrize(
    "name, single",
    [
        ("explicit_22", "single_22"),
        ("auto_2x4_22", "single_22"),
        ("explicit_full_509", "single_full_509"),
    ],
)
def test_indivisible_batch_equals_single_device(result, name, single):
    # padded with absent examples inside fit: the loss, the parameters and the
    # metrics of every step are those of single-device training
    _assert_close(result[name], result[single], atol=1e-5)


def test_indivisible_batch_layout(result):
    # The model runs on the padded batch split over the batch axis; the loss sees
    # exactly the real rows (on Explicit axes replicated: no uneven layout exists).
    for name, axis in [("explicit_22", "data"), ("auto_2x4_22", "model"),
                       ("explicit_full_509", "data")]:  # fmt: skip
        assert axis in result[name]["model_input_split"], name
    assert [22] * 8 in result["explicit_22"]["rows_per_device"]
    assert [509] * 8 in result["explicit_full_509"]["rows_per_device"]
    assert all(result[name]["replicated"] for name in ("explicit_22", "auto_2x4_22"))


def test_unknown_batch_axis_is_an_error(result):
    assert "not an axis of the mesh" in result["error"] and "nope" in result["error"]
