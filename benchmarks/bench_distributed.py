"""Vocabulary-parallel fused loss: per-device memory and collective traffic.

Compiles (nothing runs) ``jax.value_and_grad`` w.r.t. ``hidden`` and ``weight`` of

- ``fused, 1 device``: `jaxce.linear_softmax_cross_entropy` without a mesh;
- ``fused, vocab x d``: the same with ``mesh=(d,)``, ``vocab_axis`` (``weight``
  split in ``d`` blocks of classes), d = 1, 2, 4, 8, and on a ``(2, 4)``
  batch x vocab mesh;
- ``fused, Explicit ...``: the ``(2, 4)`` mesh of ``jax.make_mesh`` (Explicit
  axes), with ``hidden`` / ``labels`` / ``weight`` placed on it;
- ``..., padded``: ``N - 1`` tokens and ``V + 3`` classes, which the axes do not
  divide (padded inside the loss; the caller's arrays are then replicated);
- ``unfused GSPMD, vocab x d``: ``sparse_softmax_cross_entropy(hidden @ weight.T)``
  under ``jit`` with ``weight`` sharded over the vocabulary and XLA left to
  partition it (the logits are materialised, sharded);

on host CPU devices (``--xla_force_host_platform_device_count=8``, set below
before JAX starts), and reads per device from the compiled executable:
``memory_analysis()`` (arguments + outputs + temporaries: the peak an executable
needs) and, from ``compiled.as_text()``, every collective with the bytes of its
result. Memory and collectives come from XLA's compiled program, so they do not
depend on the machine's speed (no timings here: 8 virtual devices on 2 cores
say nothing about a real cluster).

    python benchmarks/bench_distributed.py           # N=2048, D=1024, V=65536
    python benchmarks/bench_distributed.py --quick   # small shapes
"""

from __future__ import annotations

import argparse
import os
import re

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxce  # noqa: E402

MiB = 2**20
COLLECTIVES = "all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute"
BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1}


def collectives(hlo: str) -> list[tuple[str, int]]:
    """``(op, result bytes)`` of every collective in compiled HLO text."""
    out = []
    for shape, op in re.findall(rf"=\s*(\(.*?\)|\S+)\s+({COLLECTIVES})\(", hlo):
        size = 0
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
            n = int(np.prod([int(d) for d in dims.split(",") if d]))
            size += n * BYTES.get(dtype, 4)
        out.append((op, size))
    return out


def measure(fn, *args, mesh=None) -> dict:
    """Memory and collectives of ``value_and_grad(fn)`` (under ``mesh``, if any)."""
    f = jax.jit(jax.value_and_grad(fn, (0, 1)))
    if mesh is None:
        compiled = f.lower(*args).compile()
    else:
        with jax.set_mesh(mesh):
            compiled = f.lower(*args).compile()
    mem = compiled.memory_analysis()
    ops = collectives(compiled.as_text())
    gathers = [b for op, b in ops if op == "all-gather"]
    return {
        "args": mem.argument_size_in_bytes,
        "out": mem.output_size_in_bytes,
        "temp": mem.temp_size_in_bytes,
        "total": mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes,
        "n_coll": len(ops),
        "coll_bytes": sum(b for _, b in ops),
        "max_gather": max(gathers, default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    n, d, v = (256, 128, 8192) if a.quick else (2048, 1024, 65536)
    h = jax.ShapeDtypeStruct((n, d), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    devices = np.array(jax.devices())
    print(f"N={n} tokens, D={d}, V={v}, float32; weight {v * d * 4 / MiB:.0f} MiB, ")
    print(f"logits {n * v * 4 / MiB:.0f} MiB; per-device figures from XLA (MiB)\n")

    rows = []

    def fused_fn(**kw):
        return lambda h, w, y: jaxce.linear_softmax_cross_entropy(h, w, y, **kw)

    w_full = jax.ShapeDtypeStruct((v, d), jnp.float32)
    rows.append(("fused, 1 device (no mesh)", 1, measure(fused_fn(), h, w_full, y)))
    for k in [1, 2, 4, 8]:
        mesh = Mesh(devices[:k], ("v",))
        fn = fused_fn(mesh=mesh, vocab_axis="v")
        rows.append((f"fused, vocab x {k}", k, measure(fn, h, w_full, y)))
    mesh = Mesh(devices.reshape(2, 4), ("b", "v"))
    fn = fused_fn(mesh=mesh, batch_axis="b", vocab_axis="v")
    rows.append(("fused, batch 2 x vocab 4", 8, measure(fn, h, w_full, y)))
    # Explicit axes (jax.make_mesh), the arrays placed on the mesh
    ex = jax.make_mesh((2, 4), ("b", "v"))

    def placed(shape, dtype, *spec):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(ex, P(*spec)))

    fn = fused_fn(mesh=ex, batch_axis="b", vocab_axis="v")
    args = (
        placed((n, d), jnp.float32, "b", None),
        placed((v, d), jnp.float32, "v", None),
        placed((n,), jnp.int32, "b"),
    )
    rows.append(("fused, Explicit batch 2 x vocab 4", 8, measure(fn, *args, mesh=ex)))
    # Sizes the axes do not divide: N - 1 tokens, V + 3 classes (padded inside)
    hp = jax.ShapeDtypeStruct((n - 1, d), jnp.float32)
    yp = jax.ShapeDtypeStruct((n - 1,), jnp.int32)
    wp = jax.ShapeDtypeStruct((v + 3, d), jnp.float32)
    rows.append(("fused, 1 device, N - 1, V + 3", 1, measure(fused_fn(), hp, wp, yp)))
    mesh = Mesh(devices, ("v",))
    fn = fused_fn(mesh=mesh, vocab_axis="v")
    rows.append(("fused, vocab x 8, V + 3 padded", 8, measure(fn, h, wp, y)))
    mesh = Mesh(devices.reshape(2, 4), ("b", "v"))
    fn = fused_fn(mesh=mesh, batch_axis="b", vocab_axis="v")
    rows.append(
        ("fused, batch 2 x vocab 4, N - 1 padded", 8, measure(fn, hp, w_full, yp))
    )
    rows.append(
        ("fused, batch 2 x vocab 4, N - 1, V + 3 padded", 8, measure(fn, hp, wp, yp))
    )
    fn = fused_fn(mesh=ex, batch_axis="b", vocab_axis="v")
    rows.append(
        (
            "fused, Explicit batch 2 x vocab 4, N - 1, V + 3 padded",
            8,
            measure(fn, hp, wp, yp, mesh=ex),
        )
    )
    for k in [2, 8]:
        mesh = Mesh(devices[:k], ("v",))
        w_sh = jax.ShapeDtypeStruct(
            (v, d), jnp.float32, sharding=NamedSharding(mesh, P("v", None))
        )
        h_rep = jax.ShapeDtypeStruct(
            (n, d), jnp.float32, sharding=NamedSharding(mesh, P())
        )
        y_rep = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=NamedSharding(mesh, P()))

        def unfused(h, w, y):
            return jaxce.sparse_softmax_cross_entropy(h @ w.T, y)

        rows.append(
            (f"unfused GSPMD, vocab x {k}", k, measure(unfused, h_rep, w_sh, y_rep))
        )

    base = rows[0][2]["total"]
    header = (
        "| configuration | devices | args | outputs | temp | total / device "
        "| vs 1 device | collectives | collective bytes | largest all-gather |"
    )
    print(header)
    print("|" + "---|" * 10)
    for name, k, m in rows:
        print(
            f"| {name} | {k} | {m['args'] / MiB:.1f} | {m['out'] / MiB:.1f} "
            f"| {m['temp'] / MiB:.1f} | {m['total'] / MiB:.1f} "
            f"| {m['total'] / base:.3f} | {m['n_coll']} "
            f"| {m['coll_bytes'] / 1024:.1f} KiB | {m['max_gather'] / 1024:.1f} KiB |"
        )


if __name__ == "__main__":
    main()
