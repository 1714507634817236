"""Distributed cross-entropy: a vocabulary-parallel LM head and data-parallel `fit`.

One host, many devices (here: 8 CPU devices simulated by XLA; on a GPU/TPU host
the real devices are used and ``--devices`` is ignored)::

    python examples/distributed.py                 # 8 host CPU devices
    python examples/distributed.py --devices 4

Many hosts (or many processes on one host): start the same command once per
process, with the coordinator's address; every process builds the same data
from the same seed, and the mesh spans the devices of all processes::

    # process 0 (its address is the coordinator)         process 1
    python examples/distributed.py --devices 4 \\
        --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
    python examples/distributed.py --devices 4 \\
        --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1

On a cluster whose scheduler JAX recognises (SLURM, Open MPI, Kubernetes on
TPU/GPU) ``jax.distributed.initialize()`` needs no arguments; pass
``--auto-initialize`` for that.

It shows:

1. a language-model head trained with `jaxce.linear_softmax_cross_entropy` on a
   ``(batch, vocab)`` mesh: tokens are split over ``batch``, the ``(V, D)``
   classifier over ``vocab`` (Megatron-style); the logits are never built and the
   classifier and its gradient and Adam state stay sharded;
2. `jaxce.fit(..., mesh=...)`: data-parallel training of a softmax regression,
   equal to single-device training.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8, help="host CPU devices")
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (multi-process)")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--auto-initialize", action="store_true")
    p.add_argument("--steps", type=int, default=30)
    return p.parse_args()


args = parse_args()
# Must happen before JAX starts: how many CPU devices XLA simulates.
os.environ.setdefault(
    "XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}"
)

import jax  # noqa: E402

if args.coordinator or args.auto_initialize:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes if args.coordinator else None,
        process_id=args.process_id if args.coordinator else None,
    )

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxce  # noqa: E402


def say(*a) -> None:
    if jax.process_index() == 0:  # one copy of the output, not one per process
        print(*a, flush=True)


def global_array(x: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
    """A global array from the full value every process holds (same seed)."""
    return jax.make_array_from_callback(
        x.shape, NamedSharding(mesh, spec), lambda idx: x[idx]
    )


def lm_head_demo(devices: np.ndarray, steps: int) -> None:
    n_dev = devices.size
    batch = 2 if n_dev % 2 == 0 and n_dev > 2 else 1
    mesh = Mesh(devices.reshape(batch, n_dev // batch), ("batch", "vocab"))
    say(f"1. LM head on mesh {dict(mesh.shape)} ({jax.process_count()} process(es))")

    # Toy data: tokens whose next token depends on a random "context" vector.
    r = np.random.default_rng(0)
    n, d, v = 512, 64, 8192
    n, v = n - n % batch, v - v % (n_dev // batch)
    hidden = r.standard_normal((n, d)).astype(np.float32)
    teacher = r.standard_normal((v, d)).astype(np.float32)
    labels = np.argmax(hidden @ teacher.T, axis=1).astype(np.int32)

    h = global_array(hidden, mesh, P("batch", None))
    y = global_array(labels, mesh, P("batch"))
    w = global_array(np.zeros((v, d), np.float32), mesh, P("vocab", None))
    optimizer = optax.adam(0.01)
    opt_state = optimizer.init(w)

    def loss_fn(w, h, y):
        return jaxce.linear_softmax_cross_entropy(
            h, w, y, label_smoothing=0.05, z_loss=1e-4,
            mesh=mesh, batch_axis="batch", vocab_axis="vocab",
        )  # fmt: skip

    @jax.jit
    def step(w, opt_state, h, y):
        loss, g = jax.value_and_grad(loss_fn)(w, h, y)
        updates, opt_state = optimizer.update(g, opt_state, w)
        return optax.apply_updates(w, updates), opt_state, loss

    mem = step.lower(w, opt_state, h, y).compile().memory_analysis()
    if mem is not None:
        per_dev = mem.argument_size_in_bytes + mem.temp_size_in_bytes
        say(
            f"   weight {v * d * 4 / 2**20:.1f} MiB, logits {n * v * 4 / 2**20:.1f} "
            f"MiB; one compiled step needs {per_dev / 2**20:.1f} MiB per device"
        )
    for i in range(steps):
        w, opt_state, loss = step(w, opt_state, h, y)
        if i % 10 == 0 or i == steps - 1:
            say(f"   step {i:3d}  loss {float(loss):.4f}")
    say(f"   weight sharding after training: {w.sharding.spec}")
    final = float(jax.jit(loss_fn)(w, h, y))
    say(f"   final loss {final:.4f}")

    # The same loss without a mesh, on one device (this small weight fits).
    if w.is_fully_addressable:  # single process: gather the weight to compare
        single = jaxce.linear_softmax_cross_entropy(
            jnp.asarray(hidden), jnp.asarray(jax.device_get(w)), jnp.asarray(labels),
            label_smoothing=0.05, z_loss=1e-4,
        )  # fmt: skip
        say(f"   the same loss on one device, no mesh: {float(single):.4f}")


def fit_demo(devices: np.ndarray) -> None:
    mesh = Mesh(devices, ("data",))
    say(f"2. data-parallel jaxce.fit on mesh {dict(mesh.shape)}")
    r = np.random.default_rng(1)
    k, d = 4, 8
    centers = 3 * r.standard_normal((k, d))
    y = r.integers(0, k, 1024).astype(np.int32)
    x = (centers[y] + r.standard_normal((1024, d))).astype(np.float32)
    model = jaxce.models.SoftmaxRegression(d, k, key=jax.random.key(0))
    kw = dict(
        optimizer=optax.adam(0.05), steps=100, batch_size=128,
        key=jax.random.key(1), progress=False, log_every=50,
    )  # fmt: skip
    _, hist = jaxce.fit(model, x, y, mesh=mesh, **kw)
    _, ref = jaxce.fit(model, x, y, **kw)
    diff = float(np.max(np.abs(hist["loss"] - ref["loss"])))
    say(
        f"   loss {hist['loss'][0]:.4f} -> {hist['loss'][-1]:.4f}, accuracy "
        f"{hist['accuracy'][-1]:.3f}; max |loss - single device| = {diff:.1e}"
    )


def main() -> None:
    devices = np.array(jax.devices())
    say(f"{devices.size} devices: {devices[0].platform}, {jax.process_count()} proc.")
    lm_head_demo(devices, args.steps)
    fit_demo(devices)
    if jax.process_count() > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
