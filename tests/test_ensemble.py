"""jaxce.fit_ensemble: one compiled, vmapped call; members equal individual fits;
checkpoints and resuming; members split over 2- and 4-device meshes."""

from __future__ import annotations

import os

import equinox as eqx
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from training_data import load

import jaxce
import jaxce._training._engine as train
from jaxce._training._checkpoint import FILENAME
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


# -- checkpoints and meshes -----------------------------------------------------------

R = np.random.default_rng(0)
X = R.standard_normal((48, 4)).astype(np.float32)
Y = np.arange(48) % 3
KEYS = jax.random.split(jax.random.key(1), 4)


def _small(key):
    return SoftmaxRegression(4, 3, key=key)


def _ensemble(steps, **kw):
    opts = dict(optimizer=OPT, batch_size=16, eval_data=(X[:12], Y[:12]))
    return jaxce.fit_ensemble(_small, KEYS, X, Y, steps=steps, **{**opts, **kw})


def _assert_equal(a, b, atol=0.0):
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=0, atol=atol)


def test_ensemble_resume_equals_uninterrupted(tmp_path):
    full, h_full = _ensemble(30, log_every=10)
    first, _ = _ensemble(13, log_every=10, checkpoint_dir=tmp_path)
    resumed, h_res = _ensemble(30, log_every=10, checkpoint_dir=tmp_path,
                               checkpoint_every=10)  # fmt: skip
    _assert_equal(resumed, full, atol=1e-6)
    assert not np.allclose(first.weight, full.weight)
    assert h_res.keys() == h_full.keys()
    for k in h_full:  # step 13 (off the log grid) is dropped on resuming
        assert h_res[k].shape == h_full[k].shape, k
        np.testing.assert_allclose(h_res[k], h_full[k], rtol=0, atol=1e-6)
    assert h_full["loss"].shape == (4, 30) and h_full["accuracy"].shape == (4, 3)
    assert sorted(os.listdir(tmp_path)) == ["fit.lock", FILENAME]


def test_ensemble_checkpoint_errors(tmp_path):
    _ensemble(5, checkpoint_dir=tmp_path)
    with pytest.raises(jaxce.CheckpointError, match="`key` differs"):
        jaxce.fit_ensemble(_small, KEYS[::-1], X, Y, optimizer=OPT, steps=10,
                           batch_size=16, eval_data=(X[:12], Y[:12]),
                           checkpoint_dir=tmp_path)  # fmt: skip
    with pytest.raises(jaxce.CheckpointError, match="`kind` differs"):
        jaxce.fit(_small(KEYS[0]), X, Y, steps=10, key=KEYS[0], progress=False,
                  checkpoint_dir=tmp_path)  # fmt: skip
    path = tmp_path / FILENAME
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 4
    path.write_bytes(bytes(raw))
    with pytest.raises(jaxce.CheckpointError, match="corrupt"):
        _ensemble(10, checkpoint_dir=tmp_path)


@pytest.fixture(scope="module")
def one_device():
    return _ensemble(20, log_every=10)


@pytest.mark.parametrize("devices", [2, 4])
def test_ensemble_on_a_mesh_equals_one_device(one_device, devices):
    mesh = jax.make_mesh((devices,), ("members",), devices=jax.devices()[:devices])
    models, history = _ensemble(20, log_every=10, mesh=mesh)
    # each device holds its members: the member axis is split, nothing gathered
    assert models.weight.sharding.spec[0] == "members"
    assert len(models.weight.sharding.device_set) == devices
    shards = {s.data.shape for s in models.weight.addressable_shards}
    assert shards == {(4 // devices, 3, 4)}
    _assert_equal(models, one_device[0], atol=1e-6)
    for k, v in one_device[1].items():
        np.testing.assert_allclose(history[k], v, rtol=1e-6, atol=1e-6)


def test_ensemble_mesh_with_a_named_axis_and_errors():
    mesh = jax.make_mesh((2, 2), ("data", "members"), devices=jax.devices()[:4],
                         axis_types=(AxisType.Auto, AxisType.Auto))  # fmt: skip
    models, _ = _ensemble(4, mesh=mesh, member_axis="members")
    assert models.weight.sharding.spec[0] == "members"
    with pytest.raises(ValueError, match="3 members, which do not divide over the 2"):
        jaxce.fit_ensemble(_small, KEYS[:3], X, Y, steps=2, mesh=mesh,
                           member_axis="data")  # fmt: skip
    with pytest.raises(ValueError, match="`member_axis`='nope' is not an axis"):
        _ensemble(2, mesh=mesh, member_axis="nope")
