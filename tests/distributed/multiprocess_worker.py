"""One process of the 2-process x 4-device check (started by test_distributed.py).

Usage: ``python multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES``. Joins the
coordinator on 127.0.0.1:PORT with ``jax.distributed.initialize`` (CPU
collectives over gloo), runs the vocabulary-parallel fused loss on a global
``(batch, vocab)`` mesh and a few data-parallel `jaxce.fit` steps on all 8
devices, and prints ``CHECK <name> <max abs error> <tolerance>`` lines against
the single-process answer this process computes on its own.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

port, process_id, num_processes = (int(a) for a in sys.argv[1:4])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=60,
)

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxce  # noqa: E402


def check(name: str, err: float, tol: float = 2e-5) -> None:
    print(f"CHECK {name} {err:.3e} {tol:.1e}", flush=True)


def global_array(x: np.ndarray, mesh, spec):
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def max_err_sharded(got: jax.Array, ref: np.ndarray) -> float:
    """Largest error over the shards this process holds (indices into ``ref``)."""
    return max(
        float(np.max(np.abs(np.asarray(s.data) - ref[s.index])))
        for s in got.addressable_shards
    )


r = np.random.default_rng(0)
N, D, V = 32, 16, 96
h = r.standard_normal((N, D)).astype(np.float32)
w = (0.5 * r.standard_normal((V, D))).astype(np.float32)
b = r.standard_normal((V,)).astype(np.float32)
y = r.integers(0, V, N).astype(np.int32)
y[5] = -100
opts = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-3, chunk_size=8)

assert jax.process_count() == num_processes and jax.device_count() == 8
mesh = jax.make_mesh((2, 4), ("batch", "vocab"))
# The vocabulary axis stays within a process; the batch axis spans the two.
rows = [{d.process_index for d in row} for row in mesh.devices]
check("mesh_vocab_axis_within_process", float(any(len(p) != 1 for p in rows)), 0.0)


def loss(h, w, b, y, **kw):
    return jaxce.linear_softmax_cross_entropy(h, w, y, bias=b, **opts, **kw)


grad_ref = jax.value_and_grad(loss, (0, 1, 2))
ref_val, (ref_dh, ref_dw, ref_db) = jax.device_get(grad_ref(h, w, b, y))

args = (
    global_array(h, mesh, P("batch", None)),
    global_array(w, mesh, P("vocab", None)),
    global_array(b, mesh, P("vocab")),
    global_array(y, mesh, P("batch")),
)
kw = dict(mesh=mesh, batch_axis="batch", vocab_axis="vocab")
val, (dh, dw, db) = jax.jit(jax.value_and_grad(lambda *a: loss(*a, **kw), (0, 1, 2)))(
    *args
)
check("fused_loss", abs(float(val.addressable_data(0)) - float(ref_val)))
check("fused_d_hidden", max_err_sharded(dh, ref_dh))
check("fused_d_weight", max_err_sharded(dw, ref_dw))
check("fused_d_bias", max_err_sharded(db, ref_db))
same = dw.sharding.is_equivalent_to(NamedSharding(mesh, P("vocab", None)), 2)
check("weight_grad_sharded_like_weight", float(not same), 0.0)

# A few data-parallel `fit` steps over all 8 devices of both processes (same x, y
# on every process) == the same steps on this process's first device alone.
K = 5
xs = r.standard_normal((64, 6)).astype(np.float32)
ys = r.integers(0, K, 64).astype(np.int32)
model = jaxce.models.SoftmaxRegression(6, K, key=jax.random.key(0))
fit_kw = dict(
    optimizer=optax.adam(0.05), steps=6, batch_size=16, key=jax.random.key(1),
    progress=False, log_every=3,
)  # fmt: skip
ref_model, ref_hist = jaxce.fit(model, xs, ys, **fit_kw)
dp_mesh = Mesh(np.array(jax.devices()), ("data",))
dp_model, dp_hist = jaxce.fit(model, xs, ys, mesh=dp_mesh, **fit_kw)


def local(m):
    leaves = jax.tree.leaves(eqx.filter(m, eqx.is_array))
    return [np.asarray(a.addressable_data(0)) for a in leaves]


check(
    "fit_params",
    max(
        float(np.max(np.abs(a - b))) for a, b in zip(local(dp_model), local(ref_model))
    ),
)
check("fit_loss_history", float(np.max(np.abs(dp_hist["loss"] - ref_hist["loss"]))))
check(
    "fit_used_both_processes",
    float(len({d.process_index for d in dp_mesh.devices.flat}) != 2),
    0.0,
)
print("DONE", flush=True)
jax.distributed.shutdown()
