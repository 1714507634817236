"""jaxce.fit(mesh=...) on 8 host CPU devices equals single-device training.

JAX fixes its device count when it starts, so the 8-device run happens in a fresh
Python process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
Meshes with Explicit axes (``jax.make_mesh``) and Auto axes; batches that divide
over the batch axis and batches that do not (padded inside `fit`).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

TESTS = pathlib.Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import equinox as eqx
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType
    sys.path.insert(0, sys.argv[1])
    from training_data import load
    import jaxce

    assert jax.device_count() == 8, jax.devices()
    xtr, xte, ytr, yte = load("digits")
    x, y = xtr[:512], ytr[:512]
    opt = optax.adam(1e-2)
    seen, model_in = [], []

    class Probe(eqx.Module):
        # records how the batch the model runs on is split (under vmap the
        # callback sees the batched array): the spec's first entry
        inner: eqx.Module

        def __call__(self, x):
            def record(s):
                spec = getattr(s, "spec", None)  # one device: no spec
                model_in.append(spec[0] if spec else None)

            jax.debug.inspect_array_sharding(x, callback=record)
            return self.inner(x)

    def loss(logits, labels):
        # records how the per-step batch of logits is laid out over the devices
        shape = logits.shape

        def record(s):
            try:
                seen.append([len(range(*ix[0].indices(shape[0])))
                             for ix in s.devices_indices_map(shape).values()])
            except ValueError:  # an uneven split XLA chose (padded internally)
                seen.append("uneven " + str(s.spec))

        jax.debug.inspect_array_sharding(logits, callback=record)
        return jaxce.sparse_softmax_cross_entropy(logits, labels)

    def run(mesh, batch_size, batch_axis=None, n=512):
        seen.clear()
        model_in.clear()
        model = Probe(jaxce.models.MLPClassifier(64, 10, width=32, depth=1,
                                                 key=jax.random.key(0)))
        model, history = jaxce.fit(
            model, x[:n], y[:n], loss=loss, optimizer=opt, steps=40,
            batch_size=batch_size, key=jax.random.key(1), progress=False,
            eval_data=(xte, yte), log_every=20, mesh=mesh, batch_axis=batch_axis)
        leaves = jax.tree.leaves(model)
        return {
            "leaves": [np.asarray(a).tolist() for a in leaves],
            "devices": [len(a.sharding.device_set) for a in leaves],
            "replicated": [bool(a.sharding.is_fully_replicated) for a in leaves],
            "loss": history["loss"].tolist(),
            "eval_accuracy": history["eval_accuracy"].tolist(),
            # the layouts of every traced loss call (train steps and metrics)
            "rows_per_device": [r if isinstance(r, str) else sorted(r) for r in seen],
            "model_input_split": sorted(set(map(str, model_in))),
        }

    out = {"single": run(None, 64)}
    out["explicit"] = run(jax.make_mesh((8,), ("data",)), 64)
    auto = jax.make_mesh((2, 4), ("data", "model"),
                         axis_types=(AxisType.Auto, AxisType.Auto))
    out["auto_2x4"] = run(auto, 64, batch_axis="model")
    out["single_full"] = run(None, None)
    out["explicit_full"] = run(jax.make_mesh((8,), ("data",)), None)
    # batches that do not divide: 22 over 8 devices and over the 4-way axis
    # (padded to 24), and all 509 examples over 8 (padded to 512)
    out["single_22"] = run(None, 22)
    out["explicit_22"] = run(jax.make_mesh((8,), ("data",)), 22)
    out["auto_2x4_22"] = run(auto, 22, batch_axis="model")
    out["single_full_509"] = run(None, None, n=509)
    out["explicit_full_509"] = run(jax.make_mesh((8,), ("data",)), None, n=509)
    try:
        run(jax.make_mesh((8,), ("data",)), 20, batch_axis="nope")
    except ValueError as err:
        out["error"] = str(err)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def _assert_close(a, b, atol):
    import numpy as np

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
