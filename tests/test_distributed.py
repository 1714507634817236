"""Distributed cross-entropy over 2 processes, the distributed example, and mesh
arguments.

The single-host checks on 8 devices run in this process (``test_sharded.py``).
Separate processes are the point of the 2-process check: 2 processes x 4 CPU
devices joined by ``jax.distributed.initialize`` on loopback
(``tests/distributed/multiprocess_worker.py``), each printing ``CHECK <name>
<error> <tolerance>`` lines that the test asserts. The example is run as a user
runs it, a script with its own ``--devices``. Argument errors that need no
devices are checked in-process on a 1-device mesh.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxce

HERE = Path(__file__).parent / "distributed"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the scripts set their own device count
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _parse(out: str) -> dict[str, tuple[float, float]]:
    checks = {}
    for line in out.splitlines():
        if line.startswith("CHECK "):
            _, name, err, tol = line.split()[:4]
            checks[name] = (float(err), float(tol))
    return checks


def _assert_group(checks: dict, prefix: str, expected: int) -> None:
    group = {k: v for k, v in checks.items() if k.startswith(prefix)}
    assert len(group) == expected, f"expected {expected} `{prefix}` checks: {group}"
    bad = {k: v for k, v in group.items() if not v[0] <= v[1]}
    assert not bad, f"failed (error, tolerance): {bad}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(n: int, timeout: float) -> list[tuple[int, str, str]]:
    """Start ``n`` worker processes on a fresh port; (returncode, stdout, stderr).

    One deadline for all of them; whatever is still running at the end (a
    deadlock, a failed peer) is killed.
    """
    port = _free_port()
    script = str(HERE / "multiprocess_worker.py")
    procs = []
    deadline = time.monotonic() + timeout
    try:
        for i in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, script, str(port), str(i), str(n)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=_env(),
                )  # fmt: skip
            )
        outs = []
        for p in procs:
            left = max(deadline - time.monotonic(), 1.0)
            outs.append(p.communicate(timeout=left))
    finally:
        for p in procs:  # never leave a worker behind (e.g. after a timeout)
            if p.poll() is None:
                p.kill()
                p.communicate()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_two_processes_match_single_process():
    # 2 processes x 4 CPU devices, coordinator on loopback, gloo collectives:
    # the vocabulary-parallel fused loss on a (2, 4) mesh whose batch axis spans
    # the processes, and 6 data-parallel `jaxce.fit` steps over all 8 devices,
    # each against the single-process answer.
    results = _run_workers(2, timeout=150)
    if any("already in use" in err.lower() for _, _, err in results):
        results = _run_workers(2, timeout=150)  # the free port was taken: retry
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0 and "DONE" in out, f"process {i}:\n{out}\n{err[-4000:]}"
        checks = _parse(out)
        _assert_group(checks, "fused_", 4)
        _assert_group(checks, "weight_grad_sharded_like_weight", 1)
        _assert_group(checks, "fit_", 3)
        _assert_group(checks, "mesh_vocab_axis_within_process", 1)


def test_example_runs_on_four_devices():
    proc = subprocess.run(
        [sys.executable, str(HERE.parent.parent / "examples" / "distributed.py"),
         "--devices", "4", "--steps", "3"],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "mesh {'batch': 2, 'vocab': 2}" in proc.stdout
    assert "weight sharding after training: P('vocab', None)" in proc.stdout
    assert "data-parallel jaxce.fit on mesh {'data': 4}" in proc.stdout


# In-process: argument errors and a 1-device mesh (no extra devices needed).


def _inputs():
    r = np.random.default_rng(1)
    h = jnp.asarray(r.standard_normal((6, 3)), jnp.float32)
    w = jnp.asarray(r.standard_normal((10, 3)), jnp.float32)
    y = jnp.asarray(r.integers(0, 10, 6), jnp.int32)
    return h, w, y


@pytest.mark.parametrize("axes", [dict(vocab_axis="v"), dict()])
def test_one_device_mesh_equals_no_mesh(axes):
    # A mesh with no axis named (everything replicated) is allowed too.
    h, w, y = _inputs()
    mesh = Mesh(np.array(jax.devices()[:1]), ("v",))
    kw = dict(label_smoothing=0.1, z_loss=1e-3)
    loss = jaxce.linear_softmax_cross_entropy
    ref = jax.jit(jax.value_and_grad(lambda h, w: loss(h, w, y, **kw), (0, 1)))(h, w)
    got = jax.jit(
        jax.value_and_grad(lambda h, w: loss(h, w, y, mesh=mesh, **axes, **kw), (0, 1))
    )(h, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(vocab_axis="model"), ValueError, "not in the mesh"),
        (dict(batch_axis="v", vocab_axis="v"), ValueError, "share the mesh axes"),
        (dict(mesh="v", vocab_axis="v"), TypeError, "mesh"),
        (dict(mesh=None, vocab_axis="v"), ValueError, "need a `mesh`"),
    ],
)
def test_bad_mesh_arguments(kwargs, error, match):
    h, w, y = _inputs()
    kw = dict(mesh=Mesh(np.array(jax.devices()[:1]), ("v",))) | kwargs
    with pytest.raises(error, match=match):
        jaxce.linear_softmax_cross_entropy(h, w, y, **kw)
