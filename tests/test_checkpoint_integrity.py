"""Checkpoints that are whole or refused, and one owner per run directory.

Integrity: a CRC-32 over every byte of a checkpoint or saved model (header
included), so flipped bits anywhere are a `CheckpointError` / `ValueError`.
Ownership: an exclusive lock on ``checkpoint_dir`` for the whole call, released
by the OS when the owner dies; temporaries of killed writers are removed; a bad
directory is refused before compiling. Files follow the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxce
from jaxce._training import _engine
from jaxce._training._checkpoint import FILENAME, load_checkpoint
from jaxce._training._lock import LOCKNAME
from jaxce.models import MLPClassifier, SoftmaxRegression

R = np.random.default_rng(0)
X = R.standard_normal((40, 4)).astype(np.float32)
Y = np.arange(40) % 3
OPT = optax.adam(1e-2)


def _model():
    return SoftmaxRegression(4, 3, key=jax.random.key(0))


def _fit(path, steps=4, **kw):
    opts = dict(optimizer=OPT, batch_size=8, key=jax.random.key(1), progress=False)
    return jaxce.fit(_model(), X, Y, steps=steps, checkpoint_dir=path, **{**opts, **kw})


def _flip(path, byte, bit=0):
    raw = bytearray(path.read_bytes())
    raw[byte] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _load(path, meta):
    params = eqx.filter(_model(), eqx.is_inexact_array)
    return load_checkpoint(path, params=params, opt_state=OPT.init(params), meta=meta)


@pytest.fixture
def never_trains(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started before the bad directory was refused")

    monkeypatch.setattr(_engine, "_fit_chunk", fail)


# -- integrity ------------------------------------------------------------------------


def test_header_step_flip_is_an_error(tmp_path):
    _fit(tmp_path)
    path = tmp_path / FILENAME
    at = path.read_bytes().index(b'"step": 4') + len(b'"step": ')
    _flip(path, at, 1)  # "4" -> "6": a plausible step, caught by the CRC
    with pytest.raises(jaxce.CheckpointError, match="corrupt: its CRC-32"):
        _fit(tmp_path, steps=8)


def test_header_key_name_flip_is_an_error(tmp_path):
    _fit(tmp_path)
    path = tmp_path / FILENAME
    _flip(path, path.read_bytes().index(b'"meta"') + 1, 5)  # "meta" -> "Meta"
    with pytest.raises(jaxce.CheckpointError, match="corrupt"):
        _fit(tmp_path, steps=8)


def test_every_single_bit_flip_of_a_checkpoint_is_an_error(tmp_path):
    _fit(tmp_path)
    path = tmp_path / FILENAME
    good = path.read_bytes()
    rng = np.random.default_rng(1)
    header_end = good.index(b"\n")
    meta = json.loads(good[:header_end])["meta"]
    assert _load(tmp_path, meta)[2] == 4  # intact, this run's meta: it loads
    # 200 bits of the header, every byte of the trailer, 50 bits elsewhere
    places = rng.integers(0, header_end + 1, 200).tolist()
    places += [*range(len(good) - 12, len(good))]
    places += rng.integers(header_end, len(good), 50).tolist()
    for byte in places:
        path.write_bytes(good)
        _flip(path, byte, int(rng.integers(8)))
        with pytest.raises(jaxce.CheckpointError, match="corrupt"):
            _load(tmp_path, meta)
    path.write_bytes(good[:-1])
    with pytest.raises(jaxce.CheckpointError, match="trailer is missing"):
        _load(tmp_path, meta)


def test_saved_model_bit_flips_are_errors(tmp_path):
    model = MLPClassifier(5, 4, width=6, depth=2, key=jax.random.key(0))
    path = tmp_path / "mlp.eqx"
    jaxce.save(path, model)
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for byte, bit in zip(rng.integers(0, len(good), 200), rng.integers(0, 8, 200)):
        path.write_bytes(good)
        _flip(path, int(byte), int(bit))
        with pytest.raises(ValueError):
            jaxce.load(path, MLPClassifier)
    path.write_bytes(good + b"\0")
    with pytest.raises(ValueError, match="corrupt"):
        jaxce.load(path, model)


def test_mismatch_says_what_differs(tmp_path):
    _fit(tmp_path)
    with pytest.raises(jaxce.CheckpointError) as info:
        _fit(tmp_path, steps=8, optimizer=optax.sgd(0.1))
    text = str(info.value)
    assert "`opt_state` differs" in text and "another optimizer?" in text
    assert "ScaleByAdamState > SoftmaxRegression" in text and "EmptyState" in text
    with pytest.raises(jaxce.CheckpointError) as info:
        _fit(tmp_path, steps=8, optimizer=optax.adam(1e-2, mu_dtype=jnp.bfloat16))
    text = str(info.value)
    assert "[0].mu.weight is float32[3, 4] in the checkpoint and bfloat16[3, 4]" in text


@pytest.mark.parametrize("injected", [False, True])
def test_resuming_with_another_learning_rate_uses_it(tmp_path, injected):
    def adam(lr):
        if injected:
            return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
        return optax.adam(lr)

    _fit(tmp_path / "a", optimizer=adam(1e-2))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    same, _ = _fit(tmp_path / "a", steps=8, optimizer=adam(1e-2))
    other, _ = _fit(tmp_path / "b", steps=8, optimizer=adam(1e-1))
    full, _ = _fit(None, steps=8, optimizer=adam(1e-2))
    np.testing.assert_allclose(same.weight, full.weight, atol=1e-6)
    # the new rate is used, also when the optimizer keeps it in its state
    assert np.abs(np.asarray(other.weight - same.weight)).max() > 1e-3


# -- ownership ------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import fcntl, json, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], "fit.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": "h", "since": "t"}).encode())
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_second_run_on_a_directory_is_refused(tmp_path, never_trains):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(jaxce.CheckpointError, match=f"in use .*pid {holder.pid}"):
            _fit(tmp_path)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # the owner died: its lock went with it, the file left behind is no obstacle
    assert json.loads((tmp_path / LOCKNAME).read_text())["pid"] == holder.pid
    with pytest.raises(AssertionError, match="training started"):
        _fit(tmp_path)


def test_the_lock_is_held_for_the_call_and_released(tmp_path, monkeypatch):
    import jaxce._training._resume as resume

    seen = []
    real = resume.save_checkpoint

    def save_and_try_a_second_run(*args, **kwargs):
        with pytest.raises(jaxce.CheckpointError, match="in use"):
            _fit(tmp_path)
        seen.append(kwargs["step"])
        return real(*args, **kwargs)

    monkeypatch.setattr(resume, "save_checkpoint", save_and_try_a_second_run)
    _fit(tmp_path, checkpoint_every=2)
    monkeypatch.undo()
    assert seen == [2, 4]
    _fit(tmp_path, steps=6)  # released: the next call may take it


def test_stale_temporaries_are_removed(tmp_path):
    script = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True)
    pid, host = int(dead.stdout), socket.gethostname().replace(".", "-")
    names = [f".{FILENAME}.{host}.{pid}.ab12cd34.tmp", f".{FILENAME}.h.1.ab.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / "notes.txt").write_text("mine")
    _fit(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([FILENAME, LOCKNAME, "notes.txt"])
    # jaxce.save removes only those of dead writers on this host
    mine = os.getpid()
    model_names = [f".m.eqx.{host}.{pid}.0.tmp", f".m.eqx.{host}.{mine}.0.tmp"]
    model_names.append(".m.eqx.otherhost.1.0.tmp")
    for name in model_names:
        (tmp_path / name).write_bytes(b"")
    jaxce.save(tmp_path / "m.eqx", _model())
    assert not (tmp_path / model_names[0]).exists()
    assert (tmp_path / model_names[1]).exists() and (tmp_path / model_names[2]).exists()


def test_bad_directory_is_refused_before_training(tmp_path, never_trains, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(jaxce.CheckpointError, match="exists and is not a directory"):
        _fit(tmp_path / "file")
    with pytest.raises(jaxce.CheckpointError, match="cannot be created"):
        _fit(tmp_path / "file" / "run")
    # a directory that cannot be written (simulated: this may run as root)
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(jaxce.CheckpointError, match="is not writable.*Permission"):
        _fit(tmp_path / "ro")


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere"
)
def test_read_only_directory_is_refused_before_training(tmp_path, never_trains):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        with pytest.raises(jaxce.CheckpointError, match="not writable"):
            _fit(tmp_path / "ro")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


@pytest.mark.skipif(os.name != "posix", reason="umask")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        _fit(tmp_path)
        jaxce.save(tmp_path / "m.eqx", _model())
    finally:
        os.umask(old)
    for name in (FILENAME, "m.eqx", LOCKNAME):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask
