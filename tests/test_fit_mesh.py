"""jaxce.fit(mesh=...) on 8 host CPU devices equals single-device training.

JAX fixes its device count when it starts, so the 8-device run happens in a fresh
Python process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
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
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType
    sys.path.insert(0, sys.argv[1])
    from training_data import load
    import jaxce

    assert jax.device_count() == 8, jax.devices()
    xtr, xte, ytr, yte = load("digits")
    x, y = xtr[:512], ytr[:512]
    opt = optax.adam(1e-2)
    seen = []

    def loss(logits, labels):
        # records how the per-step batch of logits is laid out over the devices
        shape = logits.shape
        jax.debug.inspect_array_sharding(logits, callback=lambda s: seen.append(
            [len(range(*ix[0].indices(shape[0])))
             for ix in s.devices_indices_map(shape).values()]))
        return jaxce.sparse_softmax_cross_entropy(logits, labels)

    def run(mesh, batch_size, batch_axis=None):
        seen.clear()
        model = jaxce.models.MLPClassifier(64, 10, width=32, depth=1,
                                           key=jax.random.key(0))
        model, history = jaxce.fit(
            model, x, y, loss=loss, optimizer=opt, steps=40,
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
            "rows_per_device": [sorted(rows) for rows in seen],
        }

    out = {"single": run(None, 64)}
    out["explicit"] = run(jax.make_mesh((8,), ("data",)), 64)
    auto = jax.make_mesh((2, 4), ("data", "model"),
                         axis_types=(AxisType.Auto, AxisType.Auto))
    out["auto_2x4"] = run(auto, 64, batch_axis="model")
    out["single_full"] = run(None, None)
    out["explicit_full"] = run(jax.make_mesh((8,), ("data",)), None)
    try:
        run(jax.make_mesh((8,), ("data",)), 20)
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


def test_indivisible_batch_is_an_error(result):
    assert "divide evenly" in result["error"] and "'data'" in result["error"]
