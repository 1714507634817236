"""SIGKILL a checkpointed `jaxce.fit` at random moments; resuming gives the
uninterrupted result.

A child process trains with a checkpoint every 5 steps; once it has written one,
the test kills it with SIGKILL at a random moment (during a step, the metrics or
a checkpoint write), a few times, then lets one run finish. While the first
child runs, a second `fit` on its directory (from this process) is refused.
The checkpoint never goes back, no temporary file is left, the lock of each
killed run is free for the next, and the final model and loss history equal an
uninterrupted run in this process, bit for bit. Bounded: at most ``KILLS``
kills and ``KILLS + 2`` children, sharing a persistent compilation cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

import jaxce
from jaxce._training._checkpoint import FILENAME
from jaxce._training._lock import LOCKNAME
from jaxce.models import MLPClassifier

KILLS = 3
STEPS = 2000
CHILD = textwrap.dedent(
    """
    import sys
    import jax, numpy as np, optax, jaxce
    from test_fault_injection import data, model, options
    x, y = data()
    print("ready", flush=True)
    m, h = jaxce.fit(model(), x, y, checkpoint_dir=sys.argv[1], checkpoint_every=5,
                     **options())
    jaxce.save(sys.argv[2], m)
    np.save(sys.argv[3], h["loss"])
    """
)


def data():
    r = np.random.default_rng(0)
    x = r.standard_normal((96, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)


def model():
    return MLPClassifier(8, 3, width=16, depth=1, key=jax.random.key(0))


def options():
    return dict(
        optimizer=optax.adam(1e-2), steps=STEPS, batch_size=16,
        key=jax.random.key(1), progress=False, log_every=5,
    )  # fmt: skip


def _step(directory):
    try:
        line = (directory / FILENAME).read_bytes().partition(b"\n")[0]
        return json.loads(line)["step"]
    except (FileNotFoundError, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "model.eqx"
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), *sys.path])
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    command = [sys.executable, "-c", CHILD, str(run_dir), str(out), str(tmp_path / "h")]
    rng = np.random.default_rng(2026)
    # the uninterrupted run, first: it also compiles what this process needs, so
    # that its second `fit` below is quick to reach the lock
    x, y = data()
    reference, history = jaxce.fit(model(), x, y, **options())
    kills, steps_seen, finished = 0, [0], False
    for _ in range(KILLS + 2):
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            if kills < KILLS:
                # once this child has written a checkpoint, a random moment of
                # its run: a step, the metrics or a checkpoint write
                start, deadline = _step(run_dir), time.monotonic() + 60
                while _step(run_dir) == start and child.poll() is None:
                    assert time.monotonic() < deadline, "no progress"
                    time.sleep(0.01)
                if kills == 0:  # a second run on the directory is refused
                    with pytest.raises(jaxce.CheckpointError, match=f"pid {child.pid}"):
                        jaxce.fit(model(), x, y, checkpoint_dir=run_dir, **options())
                time.sleep(rng.uniform(0.0, 1.5))
            if kills < KILLS and child.poll() is None:
                child.send_signal(signal.SIGKILL)
                kills += 1
            finished = child.wait(timeout=120) == 0
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        steps_seen.append(_step(run_dir))
        assert steps_seen[-1] >= steps_seen[-2], steps_seen  # never goes back
        if finished:
            break
    assert finished and kills >= 1, (kills, steps_seen)
    assert steps_seen[-1] == STEPS
    assert sorted(os.listdir(run_dir)) == [LOCKNAME, FILENAME]  # no temporaries

    resumed = jaxce.load(out, MLPClassifier)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.load(tmp_path / "h.npy"), history["loss"])
