"""Fused linear -> cross-entropy against the unfused loss on explicit logits (CPU).

Measures, in one run:

1. forward + backward time (``jax.value_and_grad`` w.r.t. hidden and weight) of
   `jaxce.linear_softmax_cross_entropy` and of
   ``sparse_softmax_cross_entropy(hidden @ weight.T, labels)`` at N=2048, D=1024,
   V=32768, the forward-only time of the fused loss, and the achieved GFLOP/s
   (6 N D V per forward + backward) against this machine's float32 matmul rate
   (a plain ``jnp.dot`` of the same shape as one logits matmul);
2. compiled temporary memory (``memory_analysis().temp_size_in_bytes`` of the
   jitted value-and-grad; compile only, nothing runs) at N=4096, D=1024,
   V=32768 and at N=16384, D=2048, V=262144;
3. memory and time against V (a PNG in benchmarks/out/);
4. a JAX peer: tokamax's ``linear_softmax_cross_entropy_loss(x, labels,
   weights, reduction="mean", implementation="xla")`` (weight ``(D, V)``)
   beside jaxce with ``weight_layout="dv"`` and the unfused loss on ``h @ w``,
   at N=2048, D=1024, V=32768, float32: the three values and gradients are
   compared first (max difference printed), then fwd+bwd time and compiled
   temp memory. Skipped where tokamax is not installed (``pip install
   tokamax``, the ``bench`` extra). tokamax's "xla" implementation is its
   reference: the forward materialises the ``(N, V)`` logits, saves the
   logsumexp and the backward recomputes the logits (its memory-efficient
   kernel is ``"mosaic_tpu"``, TPU only).

The fused value-and-grad (``reduction="mean"``) takes the token-chunked path
that computes the gradients in the forward rule (three matmuls); the forward-only
call takes the one-matmul statistics pass.

Timings: warm-up first, ``block_until_ready``, minimum of the repeats, the
compared functions interleaved round by round (a shared machine's bursts hit
both alike).

    python benchmarks/bench_fused.py            # full run
    python benchmarks/bench_fused.py --quick    # small shapes, a smoke run
    python benchmarks/bench_fused.py --sections tokamax   # the peer only
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys

import jax
import jax.numpy as jnp
from _timing import time_min  # benchmarks/_timing.py, beside this script

import jaxce

GiB = 2**30
MiB = 2**20


def fused(h, w, y):
    return jaxce.linear_softmax_cross_entropy(h, w, y)


def unfused(h, w, y):
    return jaxce.sparse_softmax_cross_entropy(h @ w.T, y)


def fused_dv(h, w, y):
    return jaxce.linear_softmax_cross_entropy(h, w, y, weight_layout="dv")


def unfused_dv(h, w, y):
    return jaxce.sparse_softmax_cross_entropy(h @ w, y)


def tokamax_loss(h, w, y):
    import tokamax

    return tokamax.linear_softmax_cross_entropy_loss(
        h, y, w, reduction="mean", implementation="xla"
    )


def runner(fn):
    def run():
        jax.block_until_ready(fn())

    return run


def inputs(n, d, v, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k[0], (n, d), jnp.float32)
    w = jax.random.normal(k[1], (v, d), jnp.float32) / d**0.5
    y = jax.random.randint(k[2], (n,), 0, v)
    return h, w, y


def temp_bytes(loss, n, d, v) -> int:
    s = jax.ShapeDtypeStruct
    args = (s((n, d), jnp.float32), s((v, d), jnp.float32), s((n,), jnp.int32))
    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return vg.lower(*args).compile().memory_analysis().temp_size_in_bytes


def peer(n, d, v, repeats):
    """tokamax beside jaxce ("dv" weight) and the unfused loss."""
    print(f"\n## JAX peer: tokamax, N={n}, D={d}, V={v}, float32, mean, weight (D, V)")
    if importlib.util.find_spec("tokamax") is None:
        print("tokamax is not installed (`pip install tokamax`): skipped")
        return
    import tokamax
    from absl import flags  # a tokamax dependency

    # tokamax reads its settings from absl flags, parsed from sys.argv on first
    # use (where this script's own options are unknown flags): parse none.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])
    version = getattr(tokamax, "__version__", "?")
    h, w, y = inputs(n, d, v)
    w = w.T  # (D, V), materialised: every loss reads the same array
    names = [
        "unfused (`h @ w`)",
        'jaxce (`weight_layout="dv"`)',
        f'tokamax {version} (`implementation="xla"`)',
    ]
    fns = [unfused_dv, fused_dv, tokamax_loss]
    vgs = [jax.jit(jax.value_and_grad(f, argnums=(0, 1))) for f in fns]
    outs = [jax.block_until_ready(vg(h, w, y)) for vg in vgs]
    ref_v, (ref_dh, ref_dw) = outs[0]
    print("\nagreement with the unfused loss (max |difference|):\n")
    print("| loss | value | d hidden | d weight |\n|---|---|---|---|")
    ok = True
    for name, (val, (dh, dw)) in zip(names, outs):
        diffs = [
            float(jnp.max(jnp.abs(a - b)))
            for a, b in ((val, ref_v), (dh, ref_dh), (dw, ref_dw))
        ]
        scales = [float(jnp.max(jnp.abs(b))) for b in (ref_v, ref_dh, ref_dw)]
        ok &= all(x <= 1e-4 * max(s, 1.0) for x, s in zip(diffs, scales))
        print(f"| {name} | {diffs[0]:.1e} | {diffs[1]:.1e} | {diffs[2]:.1e} |")
    print(f"\nagree (within 1e-4 of the largest entry): {'yes' if ok else '**no**'}")
    s = jax.ShapeDtypeStruct
    specs = (s((n, d), jnp.float32), s((d, v), jnp.float32), s((n,), jnp.int32))
    temps = [
        vg.lower(*specs).compile().memory_analysis().temp_size_in_bytes for vg in vgs
    ]
    thunks = [runner(lambda vg=vg: vg(h, w, y)) for vg in vgs]
    times = time_min(thunks, repeats)
    print(
        f"\nfwd+bwd (value_and_grad w.r.t. hidden and weight; min of {repeats}, "
        "interleaved) and compiled temp memory:\n"
    )
    print("| loss | fwd+bwd s | / unfused | temp MiB | / unfused |")
    print("|---|---|---|---|---|")
    for name, t, b in zip(names, times, temps):
        print(
            f"| {name} | {t:.3f} | {t / times[0]:.2f} | {b / MiB:.1f} | "
            f"{b / temps[0]:.3f} |"
        )


def timings(n, d, v, repeats):
    h, w, y = inputs(n, d, v)
    vg_f = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))
    vg_u = jax.jit(jax.value_and_grad(unfused, argnums=(0, 1)))
    fwd_f = jax.jit(fused)
    dot = jax.jit(lambda a, b: jnp.dot(a, b.T))
    thunks = [
        runner(lambda: vg_f(h, w, y)),
        runner(lambda: vg_u(h, w, y)),
        runner(lambda: fwd_f(h, w, y)),
        runner(lambda: dot(h, w)),
    ]
    return dict(
        zip(["fused", "unfused", "fused_fwd", "dot"], time_min(thunks, repeats))
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sections", default="time,memory,sweep,tokamax",
        help="comma-separated, of: time, memory, sweep, tokamax",
    )  # fmt: skip
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if args.quick:
        n, d, v, mem1, mem2 = 256, 128, 4096, (512, 128, 4096), (1024, 256, 16384)
        sweep = [1024, 2048, 4096]
    else:
        n, d, v = 2048, 1024, 32768
        mem1, mem2 = (4096, 1024, 32768), (16384, 2048, 262144)
        sweep = [4096, 8192, 16384, 32768]
    print(
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, backend {jax.default_backend()}"
    )

    if "time" in sections:
        main_timings(n, d, v, args.repeats)
    if "memory" in sections:
        memory(mem1, mem2)
    if "sweep" in sections:
        against_v(n, d, sweep, args.repeats)
    if "tokamax" in sections:
        peer(n, d, v, args.repeats)


def main_timings(n, d, v, repeats):
    t = timings(n, d, v, repeats)
    flops = 6 * n * d * v
    peak = 2 * n * d * v / t["dot"] / 1e9
    print(f"\n## forward + backward, N={n}, D={d}, V={v}, float32 (min of repeats)")
    print("| quantity | value | goal |\n|---|---|---|")
    print(f"| unfused fwd+bwd | {t['unfused']:.3f} s | |")
    print(f"| fused fwd+bwd | {t['fused']:.3f} s | |")
    print(f"| fused / unfused time | {t['fused'] / t['unfused']:.2f} | <= 0.95 |")
    print(f"| fused forward only | {t['fused_fwd']:.3f} s | |")
    print(f"| forward / (fwd+bwd) | {t['fused_fwd'] / t['fused']:.2f} | <= 0.5 |")
    print(f"| matmul rate (jnp.dot {n}x{d} @ {d}x{v}) | {peak:.1f} GFLOP/s | |")
    for name in ("fused", "unfused"):
        rate = flops / t[name] / 1e9
        goal = ">= 0.85" if name == "fused" else ""
        print(
            f"| {name}: 6NDV / time | {rate:.1f} GFLOP/s = {rate / peak:.2f} "
            f"of matmul | {goal} |"
        )


def memory(mem1, mem2):
    print("\n## compiled temp memory of value_and_grad (compile only)")
    print(
        "| N, D, V | fused | unfused | fused / unfused | goal |\n|---|---|---|---|---|"
    )
    for shape, goal in ((mem1, "ratio <= 0.2"), (mem2, "fused <= 2 GiB")):
        f_b, u_b = temp_bytes(fused, *shape), temp_bytes(unfused, *shape)
        print(
            f"| {shape} | {f_b / MiB:.1f} MiB | {u_b / GiB:.2f} GiB | "
            f"{f_b / u_b:.4f} | {goal} |"
        )


def against_v(n, d, sweep, repeats):
    print(f"\n## against V (N={n}, D={d}; time = fwd+bwd, min of repeats)")
    print(
        "| V | fused MiB | unfused MiB | fused s | unfused s |\n|---|---|---|---|---|"
    )
    rows = []
    for vv in sweep:
        f_b, u_b = temp_bytes(fused, n, d, vv), temp_bytes(unfused, n, d, vv)
        tt = timings(n, d, vv, max(1, repeats - 1))
        rows.append((vv, f_b / MiB, u_b / MiB, tt["fused"], tt["unfused"]))
        print("| {} | {:.1f} | {:.1f} | {:.3f} | {:.3f} |".format(*rows[-1]))
    plot(rows, n, d)


def plot(rows, n, d):
    try:
        import matplotlib
    except ImportError:  # e.g. a GPU machine with JAX only (benchmarks/gpu.sh)
        print("\nplot: skipped (matplotlib is not installed)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out, exist_ok=True)
    vs = [r[0] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(vs, [r[1] for r in rows], "o-", label="fused")
    ax1.plot(vs, [r[2] for r in rows], "s-", label="unfused")
    ax1.set(xlabel="V", ylabel="compiled temp memory (MiB)", xscale="log")
    ax2.plot(vs, [r[3] for r in rows], "o-", label="fused")
    ax2.plot(vs, [r[4] for r in rows], "s-", label="unfused")
    ax2.set(xlabel="V", ylabel="fwd+bwd time (s)", xscale="log")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"linear -> cross-entropy, N={n}, D={d}, float32, CPU")
    fig.tight_layout()
    path = os.path.join(out, "fused_vs_unfused.png")
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
