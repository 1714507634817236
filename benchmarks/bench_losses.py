"""Forward + backward time of jaxce losses against optax and PyTorch (CPU).

Each row times ``value_and_grad`` of the mean loss with respect to the logits:
jitted for jaxce and optax, eager autograd (``loss.backward()``) for PyTorch with
``torch.set_num_threads`` set to the core count. Every function is warmed up
first, results are blocked on, and the table reports the minimum of the repeats;
the three libraries are timed in interleaved rounds (one call each per round).

    python benchmarks/bench_losses.py            # full table
    python benchmarks/bench_losses.py --quick    # small shapes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from _timing import time_min  # benchmarks/_timing.py, beside this script

import jaxce


def jax_runner(loss_fn, *args):
    """A thunk running jitted value_and_grad (w.r.t. the first argument)."""
    step = jax.jit(jax.value_and_grad(loss_fn))

    def run():
        value, grad = step(*args)
        jax.block_until_ready((value, grad))

    return run


def torch_runner(loss_fn, x: np.ndarray, *rest: np.ndarray):
    tx = torch.from_numpy(np.array(x)).requires_grad_(True)
    trest = [torch.from_numpy(np.array(r)) for r in rest]

    def run():
        tx.grad = None
        loss = loss_fn(tx, *trest)
        loss.backward()
        return loss.item(), tx.grad

    return run


# -- the losses, one definition per library ----------------------------------------


def sparse_case(n, v, key):
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, (n, v), jnp.float32)
    labels = jax.random.randint(k2, (n,), 0, v)
    return (
        (jaxce.sparse_softmax_cross_entropy, (logits, labels)),
        (
            lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
            (logits, labels),
        ),
        (
            lambda z, y: F.cross_entropy(z, y.long()),
            (np.asarray(logits), np.asarray(labels)),
        ),
    )


def dense_case(n, v, key):
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, (n, v), jnp.float32)
    targets = jax.nn.softmax(jax.random.normal(k2, (n, v), jnp.float32))
    return (
        (jaxce.softmax_cross_entropy, (logits, targets)),
        (lambda z, t: optax.softmax_cross_entropy(z, t).mean(), (logits, targets)),
        (lambda z, t: F.cross_entropy(z, t), (np.asarray(logits), np.asarray(targets))),
    )


def bce_case(shape, key):
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, shape, jnp.float32)
    labels = jax.random.bernoulli(k2, 0.3, shape).astype(jnp.float32)
    return (
        (jaxce.sigmoid_binary_cross_entropy, (logits, labels)),
        (
            lambda z, y: optax.sigmoid_binary_cross_entropy(z, y).mean(),
            (logits, labels),
        ),
        (
            lambda z, y: F.binary_cross_entropy_with_logits(z, y),
            (np.asarray(logits), np.asarray(labels)),
        ),
    )


def torch_sigmoid_focal(z, y, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss (reduction="mean"), written out."""
    p = torch.sigmoid(z)
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss.mean()


def focal_case(shape, key):
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, shape, jnp.float32)
    labels = jax.random.bernoulli(k2, 0.3, shape).astype(jnp.float32)
    return (
        (
            lambda z, y: jaxce.sigmoid_focal_loss(z, y, alpha=0.25, gamma=2.0),
            (logits, labels),
        ),
        (
            lambda z, y: optax.sigmoid_focal_loss(z, y, alpha=0.25, gamma=2.0).mean(),
            (logits, labels),
        ),
        (torch_sigmoid_focal, (np.asarray(logits), np.asarray(labels))),
    )


def cases(quick: bool):
    """(loss, shape, thunk building the three (fn, args) pairs); data made lazily."""
    key = jax.random.key(0)
    sparse = "sparse_softmax_cross_entropy"
    bce = "sigmoid_binary_cross_entropy"
    if quick:
        return [
            (sparse, "(256, 1000)", lambda: sparse_case(256, 1000, key)),
            ("softmax_cross_entropy", "(256, 100)", lambda: dense_case(256, 100, key)),
            (bce, "(4096,)", lambda: bce_case((4096,), key)),
            ("sigmoid_focal_loss", "(4096,)", lambda: focal_case((4096,), key)),
        ]
    return [
        (sparse, "(4096, 32000)", lambda: sparse_case(4096, 32000, key)),
        (sparse, "(4096, 1000)", lambda: sparse_case(4096, 1000, key)),
        ("softmax_cross_entropy", "(4096, 1000)", lambda: dense_case(4096, 1000, key)),
        (bce, "(4096, 1000)", lambda: bce_case((4096, 1000), key)),
        (bce, "(65536,)", lambda: bce_case((65536,), key)),
        ("sigmoid_focal_loss", "(4096, 1000)", lambda: focal_case((4096, 1000), key)),
        ("sigmoid_focal_loss", "(65536,)", lambda: focal_case((65536,), key)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default="", help="rows whose loss contains this")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), optax {optax.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )
    print("value_and_grad w.r.t. logits, float32, mean reduction; min of repeats, ms")
    header = (
        f"| {'loss':<28} | {'shape':<13} | {'jaxce':>8} | {'optax':>8} | "
        f"{'torch':>8} | {'jaxce/optax':>11} | {'jaxce/torch':>11} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, shape, make in cases(args.quick):
        if args.only not in name:
            continue
        (f_ce, a_ce), (f_ox, a_ox), (f_pt, a_pt) = make()
        run_ce, run_ox = jax_runner(f_ce, *a_ce), jax_runner(f_ox, *a_ox)
        run_pt = torch_runner(f_pt, *a_pt)
        # Same value from all three (a benchmark of different losses is useless).
        v_ce = float(jax.jit(f_ce)(*a_ce))
        v_ox = float(jax.jit(f_ox)(*a_ox))
        v_pt = run_pt()[0]
        np.testing.assert_allclose([v_ox, v_pt], [v_ce, v_ce], rtol=2e-5)
        t_ce, t_ox, t_pt = time_min([run_ce, run_ox, run_pt], args.repeats, warmup=2)
        print(
            f"| {name:<28} | {shape:<13} | {t_ce * 1e3:8.2f} | {t_ox * 1e3:8.2f} | "
            f"{t_pt * 1e3:8.2f} | {t_ce / t_ox:11.2f} | {t_ce / t_pt:11.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
