"""Checks on 8 host CPU devices (started by test_distributed.py as a subprocess).

The device count must be set before JAX starts, hence a separate process; all
checks share its start-up. Each check prints ``CHECK <name> <error> <tolerance>``;
the test asserts ``error <= tolerance`` for every expected name.
"""

import os
import re

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

with install_import_hook("jaxce", "beartype.beartype"):  # as pytest does
    import jaxce

TOL = 2e-5


def check(name: str, err: float, tol: float = TOL) -> None:
    print(f"CHECK {name} {err:.3e} {tol:.1e}", flush=True)


def max_err(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in leaves
    )


def rel_err(a, b) -> float:
    """Largest error relative to each leaf's own scale (for bf16)."""
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(np.float64(x) - np.float64(y))))
        / (float(np.max(np.abs(np.float64(y)))) + 1e-12)
        for x, y in leaves
    )


devices = np.array(jax.devices())
assert devices.size == 8, devices
MESHES = {
    "vocab8": (Mesh(devices, ("v",)), None, "v"),
    "batch2_vocab4": (Mesh(devices.reshape(2, 4), ("b", "v")), "b", "v"),
    "batch8": (Mesh(devices, ("b",)), "b", None),
    # jax.make_mesh gives Explicit axes in JAX 0.10; vocabulary over two axes.
    "explicit_b2_v2x2": (
        jax.make_mesh((2, 2, 2), ("b", "v1", "v2")),
        "b",
        ("v1", "v2"),
    ),
}

r = np.random.default_rng(0)
N, D, V = 16, 8, 96
h = jnp.asarray(r.standard_normal((N, D)), jnp.float32)
w = jnp.asarray(0.7 * r.standard_normal((V, D)), jnp.float32)
b = jnp.asarray(r.standard_normal((V,)), jnp.float32)
cw = jnp.asarray(r.uniform(0.5, 2.0, (V,)), jnp.float32)
y = jnp.asarray(r.integers(0, V, N), jnp.int32)
y_ignore = y.at[3].set(-100)
mask = jnp.asarray(r.uniform(size=N) < 0.75)

ALL = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-3, softcap=4.0, where=mask)
OPTION_SETS = {  # options, use bias, use class weights, labels
    "plain": ({}, False, False, y),
    "all": (ALL, True, True, y_ignore),
    "cw_smooth": (dict(label_smoothing=0.2), False, True, y),
}


def materialised(h, w, b, cw, labels, *, softcap=None, reduction="mean", **opts):
    """The unfused reference: the full logits through the plain sparse loss."""
    z = h @ w.T
    if b is not None:
        z = z + b[None, :]
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    return jaxce.sparse_softmax_cross_entropy(
        z, labels, class_weights=cw, reduction=reduction, **opts
    )


def fused(h, w, b, cw, labels, *, reduction="mean", **opts):
    return jaxce.linear_softmax_cross_entropy(
        h, w, labels, bias=b, class_weights=cw, reduction=reduction, chunk_size=5,
        **opts,
    )  # fmt: skip


def value_and_grads(fn, use_b, use_cw, labels=y, **kw):
    def scalar(h, w, b, cw):
        return jnp.sum(
            fn(h, w, b if use_b else None, cw if use_cw else None, labels, **kw)
        )

    return jax.jit(jax.value_and_grad(scalar, (0, 1, 2, 3)))(h, w, b, cw)


# 1. Sharded fused == single device, loss and gradients, options x meshes.
CASES = [  # mesh, option set, reduction
    ("vocab8", "plain", "mean"),
    ("vocab8", "all", "sum"),
    ("vocab8", "cw_smooth", "sum_over_batch_size"),
    ("batch2_vocab4", "plain", "none"),
    ("batch2_vocab4", "all", "mean"),
    ("batch2_vocab4", "all", "none"),
    ("batch2_vocab4", "cw_smooth", "mean"),
    ("batch8", "all", "mean"),
    ("explicit_b2_v2x2", "all", "mean"),
    ("explicit_b2_v2x2", "cw_smooth", "none"),
]
references = {}
for mesh_name, opt_name, red in CASES:
    mesh, ba, va = MESHES[mesh_name]
    opts, use_b, use_cw, labels = OPTION_SETS[opt_name]
    kw = dict(labels=labels, reduction=red, **opts)
    if (opt_name, red) not in references:
        references[opt_name, red] = value_and_grads(materialised, use_b, use_cw, **kw)
    got = value_and_grads(
        fused, use_b, use_cw, mesh=mesh, batch_axis=ba, vocab_axis=va, **kw
    )
    check(
        f"fused[{mesh_name},{opt_name},{red}]", max_err(got, references[opt_name, red])
    )

# Gradients come back sharded like the inputs (weight by vocab, hidden by batch).
mesh, ba, va = MESHES["batch2_vocab4"]
_, (dh, dw, db, dcw) = value_and_grads(
    fused, True, True, labels=y_ignore, mesh=mesh, batch_axis=ba, vocab_axis=va, **ALL
)
expected_specs = [
    ("d_weight", dw, P("v", None)),
    ("d_hidden", dh, P("b", None)),
    ("d_bias", db, P("v")),
    ("d_class_weights", dcw, P("v")),
]
for name, g, spec in expected_specs:
    same = g.sharding.is_equivalent_to(NamedSharding(mesh, spec), g.ndim)
    check(f"sharding[{name}]", float(not same), 0.0)

# Nothing present: 0 with zero gradients, not NaN.
none_present = jnp.full((N,), -100, jnp.int32)
val, grads = value_and_grads(
    fused, True, True, labels=none_present, ignore_index=-100, mesh=mesh,
    batch_axis=ba, vocab_axis=va,
)  # fmt: skip
check(
    "nothing_present_is_zero",
    max_err((val, grads), jax.tree.map(jnp.zeros_like, (val, grads))),
)

# A present label outside [0, V) (V = 96 here) gives NaN, never a wrapped index
# or a finite loss (labels past the last shard, and negative ones).
y_bad = y.at[5].set(V + 3).at[9].set(-1)
val, grads = value_and_grads(
    fused, True, True, labels=y_bad, reduction="none", mesh=mesh, batch_axis=ba,
    vocab_axis=va,
)  # fmt: skip
per = np.asarray(fused(h, w, b, cw, y_bad, reduction="none", **dict(
    mesh=mesh, batch_axis=ba, vocab_axis=va)))  # fmt: skip
nan_ok = np.isnan(per[[5, 9]]).all() and np.isfinite(np.delete(per, [5, 9])).all()
nan_ok = nan_ok and np.isnan(val) and np.isnan(np.asarray(grads[1])).any()
check("out_of_range_label_is_nan", float(not nan_ok), 0.0)

# Eager jax.grad on a jax.make_mesh (Explicit axes) mesh: inside jax.set_mesh
# (outside it, JAX cannot build the cotangent of an explicitly sharded output).
emesh, eba, eva = MESHES["explicit_b2_v2x2"]
with jax.set_mesh(emesh):
    eager_g = jax.grad(
        lambda h, w: fused(h, w, None, None, y, mesh=emesh, batch_axis=eba,
                           vocab_axis=eva), (0, 1),
    )(h, w)  # fmt: skip
ref_g = jax.grad(lambda h, w: materialised(h, w, None, None, y), (0, 1))(h, w)
check("set_mesh_eager_grad", max_err(eager_g, ref_g))

# Eager call (no jit) and bf16 inputs (float32 accumulation in both).
eager = jaxce.linear_softmax_cross_entropy(
    h, w, y, mesh=mesh, batch_axis=ba, vocab_axis=va
)
check("eager", max_err(eager, materialised(h, w, None, None, y)))
hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
try:
    axes = dict(mesh=mesh, batch_axis=ba, vocab_axis=va)
    bf = jax.jit(
        jax.value_and_grad(lambda h, w: fused(h, w, None, None, y, **axes), (0, 1))
    )(hb, wb)
    bf_ref = jax.jit(
        jax.value_and_grad(lambda h, w: fused(h, w, None, None, y), (0, 1))
    )(hb, wb)
    dtypes = {x.dtype for x in jax.tree.leaves(bf)}
    check("bf16_dtype", float(dtypes != {jnp.dtype(jnp.bfloat16)}), 0.0)
    check("bf16_vs_single_device", rel_err(bf, bf_ref), 2e-2)
except Exception as e:  # report, keep going with the other checks
    print(f"ERROR bf16: {type(e).__name__}: {str(e)[:300]}", flush=True)
    check("bf16_dtype", float("inf"), 0.0)

# Shapes the mesh cannot split evenly are refused with a clear error.
for what, args in [("rows", (h[:15], w, y[:15])), ("vocab", (h, w[:90], y))]:
    try:
        jaxce.linear_softmax_cross_entropy(
            *args, mesh=mesh, batch_axis=ba, vocab_axis=va
        )
        check(f"indivisible_{what}_raises", 1.0, 0.0)
    except ValueError as e:
        check(f"indivisible_{what}_raises", float("divisible" not in str(e)), 0.0)


# 2. The compiled HLO: no all-gather of anything the size of `weight` or logits.
def collectives(text: str):
    """(op, element count of its result) for every collective in compiled HLO."""
    ops = "all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute"
    pattern = rf"=\s*(\(.*?\)|\S+)\s+({ops})(?:-start)?\("
    out = []
    for shape, op in re.findall(pattern, text):
        dims = re.findall(r"\[([\d,]*)\]", shape)  # one per tuple element
        sizes = [int(np.prod([int(d) for d in x.split(",") if d])) for x in dims]
        out.append((op, sum(sizes)))
    return out


Vb, Nb = 4096, 64  # big enough that a gathered weight / logits block stands out
hb_, wb_ = jnp.ones((Nb, D)), jnp.ones((Vb, D))
yb_ = jnp.zeros((Nb,), jnp.int32)
# Control: the parser does see an all-gather of the weight when there is one.
gather_w = jax.jit(jax.shard_map(
    lambda w: jax.lax.all_gather(w, "v", tiled=True).sum(0), mesh=MESHES["vocab8"][0],
    in_specs=P("v", None), out_specs=P(), check_vma=False,
))  # fmt: skip
control = collectives(gather_w.lower(wb_).compile().as_text())
check(
    "hlo_parser_sees_weight_all_gather",
    float(("all-gather", Vb * D) not in control),
    0.0,
)
for mesh_name in ["vocab8", "batch2_vocab4"]:
    mesh, ba, va = MESHES[mesh_name]
    axes = dict(mesh=mesh, batch_axis=ba, vocab_axis=va)

    def big_loss(h, w, axes=axes):
        return jaxce.linear_softmax_cross_entropy(
            h, w, yb_, label_smoothing=0.1, z_loss=1e-4, **axes
        )

    f = jax.jit(jax.value_and_grad(big_loss, (0, 1)))
    ops = collectives(f.lower(hb_, wb_).compile().as_text())
    big = [c for op, c in ops if op == "all-gather" and c >= min(Vb * D, Nb * Vb) // 8]
    check(f"hlo_has_collectives[{mesh_name}]", float(not ops), 0.0)
    check(f"hlo_no_big_all_gather[{mesh_name}]", float(len(big)), 0.0)
    largest = max(c for _, c in ops)
    check(
        f"hlo_largest_collective_below_weight[{mesh_name}]",
        float(largest >= Vb * D),
        0.0,
    )


# 3. The plain losses under jit on sharded logits give the single-device answer.
mesh = Mesh(devices.reshape(2, 4), ("b", "v"))
K = 8
z = jnp.asarray(2 * r.standard_normal((N, K)), jnp.float32)
labels = jnp.asarray(r.integers(0, K, N), jnp.int32)
targets = jax.nn.softmax(jnp.asarray(r.standard_normal((N, K)), jnp.float32))
binary = jnp.asarray(r.uniform(size=(N, K)) < 0.5, jnp.float32)
class_w = jnp.asarray(r.uniform(0.5, 2.0, (K,)), jnp.float32)
smooth = dict(label_smoothing=0.1)
plain = {
    "sparse_softmax_cross_entropy": lambda z: jaxce.sparse_softmax_cross_entropy(
        z, labels, class_weights=class_w, z_loss=1e-3, **smooth
    ),
    "softmax_cross_entropy": lambda z: jaxce.softmax_cross_entropy(
        z, targets, **smooth
    ),
    "sigmoid_binary_cross_entropy": lambda z: jaxce.sigmoid_binary_cross_entropy(
        z, binary
    ),
    "softmax_focal_loss": lambda z: jaxce.softmax_focal_loss(z, labels, gamma=2.0),
    "sparse_categorical_cross_entropy": lambda z: (
        jaxce.sparse_categorical_cross_entropy(jax.nn.softmax(z), labels)
    ),
    "categorical_cross_entropy": lambda z: jaxce.categorical_cross_entropy(
        jax.nn.softmax(z), targets
    ),
}
plain_refs = {name: jax.jit(jax.value_and_grad(fn))(z) for name, fn in plain.items()}
# Every loss with logits split over batch x classes; the sparse one also over the
# classes only.
layouts = [("both", P("b", "v"), list(plain))]
layouts.append(("vocab", P(None, "v"), ["sparse_softmax_cross_entropy"]))
for spec_name, spec, names in layouts:
    zs = jax.device_put(z, NamedSharding(mesh, spec))
    for name in names:
        got = jax.jit(jax.value_and_grad(plain[name]))(zs)
        ok = len(got[1].sharding.device_set) == 8  # the gradient stays sharded
        check(
            f"plain[{name},{spec_name}]", max_err(got, plain_refs[name]) if ok else 1.0
        )

print("DONE", flush=True)
