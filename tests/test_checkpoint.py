"""Checkpointed and resumed fits; jaxce.save / jaxce.load round trips."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_data import load

import jaxce
from jaxce._training._checkpoint import FILENAME
from jaxce._training._files import TRAILER_BYTES
from jaxce._training._lock import LOCKNAME
from jaxce.models import LogisticRegression, MLPClassifier, SoftmaxRegression

OPT = optax.adam(1e-2)
KEY = jax.random.key(0)  # one object: the compiled chunk is reused across calls


def _data():
    xtr, xte, ytr, yte = load("digits")
    return xtr[:300], ytr[:300], (xte[:100], yte[:100])


def _model():
    return MLPClassifier(64, 10, width=16, depth=1, key=jax.random.key(0))


def _fit(model, steps, path, **kw):
    x, y, ev = _data()
    opts = dict(
        optimizer=OPT, batch_size=32, key=jax.random.key(5), progress=False,
        eval_data=ev, log_every=50, checkpoint_dir=path,
    )  # fmt: skip
    opts.update(kw)
    return jaxce.fit(model, x, y, steps=steps, **opts)


def _assert_same(a, b):
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(la, lb, rtol=0, atol=1e-6)


def test_resume_equals_uninterrupted(tmp_path):
    full, h_full = _fit(_model(), 200, None)
    first, _ = _fit(_model(), 100, tmp_path / "run")
    assert (tmp_path / "run" / FILENAME).exists()
    resumed, h_res = _fit(_model(), 200, tmp_path / "run")
    _assert_same(resumed, full)
    assert not np.allclose(first.layers[0].weight, full.layers[0].weight)
    assert h_res.keys() == h_full.keys()
    for k in h_full:
        np.testing.assert_allclose(h_res[k], h_full[k], rtol=0, atol=1e-6)
    # the checkpoint and the (released) lock remain: no temporary files
    assert sorted(os.listdir(tmp_path / "run")) == [LOCKNAME, FILENAME]


def test_resume_off_the_log_grid_equals_uninterrupted(tmp_path):
    # 70 is not a multiple of log_every=40: the first call logs it as its own
    # last step, the resumed call must drop it to match one 200-step call.
    full, h_full = _fit(_model(), 200, None, log_every=40)
    _, h_first = _fit(_model(), 70, tmp_path, log_every=40)
    np.testing.assert_array_equal(h_first["step"], [40, 70])
    resumed, h_res = _fit(_model(), 200, tmp_path, log_every=40)
    _assert_same(resumed, full)
    np.testing.assert_array_equal(h_full["step"], [40, 80, 120, 160, 200])
    assert h_res.keys() == h_full.keys()
    for k in h_full:
        assert h_res[k].shape == h_full[k].shape, k
        np.testing.assert_allclose(h_res[k], h_full[k], rtol=0, atol=1e-6)
    # resuming a finished off-grid run keeps its last step
    _, h_again = _fit(_model(), 70, tmp_path / "short", log_every=40)
    _, h_again2 = _fit(_model(), 70, tmp_path / "short", log_every=40)
    np.testing.assert_array_equal(h_again2["step"], [40, 70])
    np.testing.assert_array_equal(h_again2["accuracy"], h_again["accuracy"])


def test_checkpoint_every_and_interrupted_run(tmp_path, monkeypatch):
    full, _ = _fit(_model(), 120, None)
    import jaxce._training._resume as resume_module

    saved_steps = []
    real = resume_module.save_checkpoint

    def crash_after_second_save(*args, **kwargs):
        real(*args, **kwargs)
        saved_steps.append(kwargs["step"])
        if len(saved_steps) == 2:
            raise KeyboardInterrupt  # the process dies after step 80's checkpoint

    monkeypatch.setattr(resume_module, "save_checkpoint", crash_after_second_save)
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), 120, tmp_path, checkpoint_every=40)
    monkeypatch.undo()
    assert saved_steps == [40, 80]
    header = json.loads((tmp_path / FILENAME).read_bytes().split(b"\n")[0])
    assert header["step"] == 80
    resumed, history = _fit(_model(), 120, tmp_path, checkpoint_every=40)
    _assert_same(resumed, full)
    assert history["loss"].shape == (120,)


def test_finished_checkpoint_returns_saved_model(tmp_path):
    trained, h = _fit(_model(), 50, tmp_path)
    again, h2 = _fit(_model(), 50, tmp_path)
    _assert_same(again, trained)
    np.testing.assert_array_equal(h2["loss"], h["loss"])
    with pytest.raises(ValueError, match="beyond"):
        _fit(_model(), 20, tmp_path)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(key=jax.random.key(6)), "key"),
        (dict(batch_size=16), "batch_size"),
        (dict(optimizer=optax.sgd(0.1)), "opt_state"),
        (dict(model=MLPClassifier(64, 10, width=8, depth=1, key=KEY)), "model"),
    ],
)
def test_mismatched_checkpoint_is_an_error(tmp_path, change, field):
    _fit(_model(), 10, tmp_path, log_every=10)
    model = change.pop("model", _model())
    with pytest.raises(jaxce.CheckpointError, match=f"`{field}` differs"):
        _fit(model, 20, tmp_path, log_every=10, **change)


def test_checkpoint_on_different_data_is_an_error(tmp_path):
    x, y, _ = _data()
    opts = dict(steps=5, key=jax.random.key(0), progress=False, checkpoint_dir=tmp_path)
    model = SoftmaxRegression(64, 10, key=jax.random.key(0))
    jaxce.fit(model, x, y, **opts)
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 10
    with pytest.raises(jaxce.CheckpointError, match="`data` differs"):
        jaxce.fit(model, x, y2, **{**opts, "steps": 10})


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_checkpoint_is_an_error(tmp_path, damage):
    _fit(_model(), 10, tmp_path, log_every=10)
    path = tmp_path / FILENAME
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 7]
    elif damage == "flip":
        raw[-3] ^= 0xFF
    else:
        raw = bytearray(b"not a checkpoint\n" + bytes(raw[-50:]))
    path.write_bytes(bytes(raw))
    with pytest.raises(jaxce.CheckpointError, match="corrupt|not a jaxce.fit"):
        _fit(_model(), 20, tmp_path, log_every=10)


# -- jaxce.save / jaxce.load ---------------------------------------------------------


def _models():
    key = jax.random.key(3)
    return [
        LogisticRegression(5, key=key),
        SoftmaxRegression(5, 4, key=key),
        MLPClassifier(5, 4, width=6, depth=2, key=key),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_save_load_round_trip_exactly(tmp_path, index):
    model = _models()[index]
    path = tmp_path / "model.eqx"
    jaxce.save(path, model)
    like = jax.tree.map(jnp.zeros_like, model)
    for template in (like, type(model)):
        back = jaxce.load(path, template)
        assert type(back) is type(model)
        assert jax.tree.structure(back) == jax.tree.structure(model)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(model)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    header = json.loads(path.read_bytes().split(b"\n")[0])
    assert header["hyperparameters"]["in_features"] == 5


def test_load_checks_hyperparameters(tmp_path):
    path = tmp_path / "mlp.eqx"
    jaxce.save(path, MLPClassifier(5, 4, width=6, depth=2, key=jax.random.key(0)))
    other = MLPClassifier(5, 4, width=7, depth=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="hyperparameters"):
        jaxce.load(path, other)
    with pytest.raises(ValueError, match="class"):
        jaxce.load(path, SoftmaxRegression(5, 4, key=jax.random.key(0)))
    # the class itself: refused by name, before it is built from the file's
    # hyperparameters (SoftmaxRegression takes no `width`)
    with pytest.raises(ValueError, match="class is jaxce.models.MLPClassifier"):
        jaxce.load(path, SoftmaxRegression)
    (tmp_path / "junk.eqx").write_bytes(b"\x00\x01junk")
    with pytest.raises(ValueError, match="not a model saved by jaxce.save"):
        jaxce.load(tmp_path / "junk.eqx", other)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_files_record_the_public_class_name_and_old_files_still_load(tmp_path, index):
    model = _models()[index]
    path = tmp_path / "model.eqx"
    jaxce.save(path, model)
    line, _, body = path.read_bytes()[:-TRAILER_BYTES].partition(b"\n")
    header = json.loads(line)
    assert header["class"] == f"jaxce.models.{type(model).__name__}"
    # jaxce 0.1 recorded the private module the classes lived in then, in files
    # of format jaxce.model/1, which had no CRC trailer
    header["class"] = f"jaxce._models.{type(model).__name__}"
    header["format"] = "jaxce.model/1"
    old = tmp_path / "old.eqx"
    old.write_bytes(json.dumps(header).encode() + b"\n" + body)
    back = jaxce.load(old, type(model))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(model)):
        np.testing.assert_array_equal(a, b)
