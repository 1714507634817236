"""Closed-form gradients vs `jax.grad`: time of a training step, in one run.

1. Sparse softmax cross-entropy at (4096, 32000) float32: value and gradient with
   respect to the logits (``jax.value_and_grad`` vs loss + closed form), and the
   gradient alone.
2. Logistic and softmax regression on 4096 x 64 data: 100 SGD steps in one
   ``lax.scan`` with ``eqx.filter_grad`` vs `jaxce.closed_form.linear_model_grads`.

Every function is jitted and warmed up; the figure is the minimum of repeats with
``block_until_ready``. Run ``python benchmarks/bench_closed_form.py [--small]``.
"""

from __future__ import annotations

import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxce
from jaxce import closed_form


def best_time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_softmax(n: int, v: int):
    r = np.random.default_rng(0)
    z = jnp.asarray(r.standard_normal((n, v)), jnp.float32)
    y = jnp.asarray(r.integers(0, v, n), jnp.int32)
    loss = jaxce.sparse_softmax_cross_entropy
    cases = {
        "value+grad": (
            jax.jit(jax.value_and_grad(lambda z: loss(z, y))),
            jax.jit(
                lambda z: (loss(z, y), closed_form.sparse_softmax_cross_entropy(z, y))
            ),
        ),
        "grad": (
            jax.jit(jax.grad(lambda z: loss(z, y))),
            jax.jit(lambda z: closed_form.sparse_softmax_cross_entropy(z, y)),
        ),
        "grad, smoothing 0.1 + z-loss 1e-4": (
            jax.jit(jax.grad(lambda z: loss(z, y, label_smoothing=0.1, z_loss=1e-4))),
            jax.jit(
                lambda z: closed_form.sparse_softmax_cross_entropy(
                    z, y, label_smoothing=0.1, z_loss=1e-4
                )
            ),
        ),
    }
    rows = []
    for name, (auto, mine) in cases.items():
        a, b = np.asarray(jax.tree_util.tree_leaves(auto(z))[-1]), None
        b = np.asarray(jax.tree_util.tree_leaves(mine(z))[-1])
        err = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
        rows.append((f"sparse softmax CE ({n}, {v}) {name}", best_time(auto, z),
                     best_time(mine, z), err))  # fmt: skip
    return rows


def bench_linear(n: int, d: int, steps: int = 100):
    r = np.random.default_rng(1)
    x = jnp.asarray(r.standard_normal((n, d)), jnp.float32)
    rows = []
    for name, model, y, loss in (
        (
            "logistic regression",
            jaxce.models.LogisticRegression(d, key=jax.random.key(0)),
            jnp.asarray(r.uniform(size=n) < 0.5, jnp.float32),
            jaxce.sigmoid_binary_cross_entropy,
        ),
        (
            "softmax regression, 10 classes",
            jaxce.models.SoftmaxRegression(d, 10, key=jax.random.key(0)),
            jnp.asarray(r.integers(0, 10, n), jnp.int32),
            jaxce.sparse_softmax_cross_entropy,
        ),
    ):

        def autodiff(m):
            return eqx.filter_grad(lambda m: loss(jax.vmap(m)(x), y))(m)

        def closed(m):
            return closed_form.linear_model_grads(m, x, y)

        def train(grad_fn):
            def step(m, _):
                g = grad_fn(m)
                return jax.tree_util.tree_map(lambda p, q: p - 0.1 * q, m, g), None

            return jax.jit(lambda m: jax.lax.scan(step, m, length=steps)[0])

        auto_m, mine_m = train(autodiff)(model), train(closed)(model)
        leaves = zip(
            jax.tree_util.tree_leaves(auto_m), jax.tree_util.tree_leaves(mine_m)
        )
        err = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in leaves
        )
        rows.append(
            (
                f"{name} ({n}x{d}), {steps} SGD steps",
                best_time(train(autodiff), model),
                best_time(train(closed), model),
                err,
            )
        )
    return rows


def main() -> None:
    small = "--small" in sys.argv
    n, v = (512, 4000) if small else (4096, 32000)
    rows = bench_softmax(n, v) + bench_linear(512 if small else 4096, 64)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, float32\n")
    head = ("case", "jax.grad", "closed form", "ratio", "max diff")
    width = max(len(r[0]) for r in rows)
    print(
        f"{head[0]:<{width}}  {head[1]:>10}  {head[2]:>11}  {head[3]:>6}  {head[4]:>9}"
    )
    for name, t_auto, t_mine, err in rows:
        print(
            f"{name:<{width}}  {t_auto * 1e3:>8.2f}ms  {t_mine * 1e3:>9.2f}ms  "
            f"{t_auto / t_mine:>5.2f}x  {err:>9.1e}"
        )
    print("\nratio = jax.grad time / closed-form time (> 1: the closed form is faster)")
    print("max diff: relative for the softmax rows; absolute on the trained weights.")


if __name__ == "__main__":
    main()
