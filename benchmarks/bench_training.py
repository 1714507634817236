"""Training throughput: jaxce.fit / fit_ensemble against a vectorised NumPy loop.

    python benchmarks/bench_training.py

Task: softmax regression on scikit-learn's digits (1347 x 64 training split,
10 classes), 500 full-batch gradient-descent steps, learning rate 0.5, the
plain loop of the seed article written with NumPy matrix products:

    p = softmax(X @ W.T + b);  G = (p - onehot(y)) / N;  W -= lr G.T X;  b -= lr sum(G)

jaxce: `jaxce.fit(..., optimizer=optax.sgd(0.5), batch_size=None)`, timed after a
warm-up call that compiles (its extra time is reported as compile time), including
Python dispatch, the argument and data checks and the per-chunk metrics; minimum
of repeats. Ensemble: `jaxce.fit_ensemble` of 64 models in one compiled call
against 64 sequential NumPy runs. Sweep: 5 learning rates, each a fresh optimizer
object, with `optax.adam(lr)` (a new program per rate) and with
`optax.inject_hyperparams(optax.adam)(learning_rate=lr)` (one program), after a
warm-up call at another rate; XLA compilations counted with `jax.monitoring`.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

from example_data import load  # noqa: E402

import jaxce  # noqa: E402

STEPS, LR, REPEATS = 500, 0.5, 5


def numpy_softmax_gd(x, y, w, b, steps=STEPS, lr=LR):
    onehot = np.eye(w.shape[0], dtype=x.dtype)[y]
    n = x.shape[0]
    for _ in range(steps):
        z = x @ w.T + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / n
        w = w - lr * (g.T @ x)
        b = b - lr * g.sum(0)
    return w, b


def best(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    xtr, _, ytr, _ = load("digits")
    opt = optax.sgd(LR)
    model = jaxce.models.SoftmaxRegression(64, 10, key=jax.random.key(0))
    w0, b0 = np.asarray(model.weight), np.asarray(model.bias)
    rows = []

    def jax_fit(log_every):
        def run():
            m, h = jaxce.fit(model, xtr, ytr, optimizer=opt, steps=STEPS,
                             key=jax.random.key(0), progress=False,
                             log_every=log_every)  # fmt: skip
            jax.block_until_ready(m)
            return m

        return run

    np32 = best(lambda: numpy_softmax_gd(xtr, ytr, w0, b0))
    np64 = best(
        lambda: numpy_softmax_gd(
            xtr.astype(np.float64), ytr, w0.astype(np.float64), b0.astype(np.float64)
        )  # fmt: skip
    )
    rows.append(("NumPy loop, float64 (article style)", np64, None))
    rows.append(("NumPy loop, float32", np32, None))
    for log_every in (100, 500):
        run = jax_fit(log_every)
        t = time.perf_counter()
        trained = run()
        first = time.perf_counter() - t
        steady = best(run)
        rows.append((f"jaxce.fit, log_every={log_every} ({STEPS // log_every} "
                     f"dispatches)", steady, first - steady))  # fmt: skip
    w_np, _ = numpy_softmax_gd(xtr, ytr, w0, b0)
    err = float(np.max(np.abs(np.asarray(trained.weight) - w_np)))

    print(f"500 full-batch SGD steps, softmax regression, digits {xtr.shape}")
    print(f"{'method':<48} {'time (ms)':>10} {'compile (s)':>12} {'vs NumPy f32':>13}")
    for name, t, comp in rows:
        c = f"{comp:.2f}" if comp is not None else "-"
        print(f"{name:<48} {t * 1e3:>10.1f} {c:>12} {t / np32:>13.2f}")
    print(f"max |W_jaxce - W_numpy| after {STEPS} steps: {err:.1e}")

    members = 64
    keys = jax.random.split(jax.random.key(0), members)

    def ens():
        m, _ = jaxce.fit_ensemble(
            lambda k: jaxce.models.SoftmaxRegression(64, 10, key=k), keys, xtr, ytr,
            optimizer=opt, steps=STEPS,
        )  # fmt: skip
        jax.block_until_ready(m)

    t = time.perf_counter()
    ens()
    first = time.perf_counter() - t
    t_ens = best(ens, 3)
    t_seq = np32 * members  # 64 x the best single NumPy run (NumPy's best case)
    t_seq8 = best(lambda: [numpy_softmax_gd(xtr, ytr, w0, b0) for _ in range(8)], 1)
    print()
    print(f"{members} models x {STEPS} full-batch steps")
    print(f"{'method':<48} {'time (s)':>10} {'models/s':>10} {'compile (s)':>12}")
    print(f"{'NumPy float32, 64 x best single run':<48} {t_seq:>10.2f} "
          f"{members / t_seq:>10.1f} {'-':>12}")  # fmt: skip
    print(f"{'NumPy float32, 8 sequential runs, x 8':<48} {8 * t_seq8:>10.2f} "
          f"{members / (8 * t_seq8):>10.1f} {'-':>12}")  # fmt: skip
    print(f"{'jaxce.fit_ensemble (one compiled call)':<48} {t_ens:>10.2f} "
          f"{members / t_ens:>10.1f} {first - t_ens:>12.2f}")  # fmt: skip
    print(f"per-model throughput, fit_ensemble / NumPy: {t_seq / t_ens:.1f}x "
          f"(against the 8 sequential runs: {8 * t_seq8 / t_ens:.1f}x)")  # fmt: skip


def sweep() -> None:
    xtr, _, ytr, _ = load("digits")
    model = jaxce.models.SoftmaxRegression(64, 10, key=jax.random.key(0))
    rates = (0.3, 0.1, 0.03, 0.01, 0.003)
    compiles: list[float] = []

    def count(name, seconds, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    def injected(lr):
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr)

    jax.monitoring.register_event_duration_secs_listener(count)
    print()
    print(f"{len(rates)} learning rates x {STEPS} full-batch steps, one fit per rate")
    print(f"{'optimizer':<48} {'total (s)':>10} {'per rate (s)':>13} {'compiles':>9}")
    kinds = {
        "optax.adam(lr)": optax.adam,
        "inject_hyperparams(optax.adam)(lr)": injected,
    }
    for name, make in kinds.items():

        def run(lr, make=make):
            m, _ = jaxce.fit(model, xtr, ytr, optimizer=make(lr), steps=STEPS,
                             key=jax.random.key(0), progress=False)  # fmt: skip
            jax.block_until_ready(m)

        run(1.0)  # warm-up: compiles once for this optimizer kind
        compiles.clear()
        t = time.perf_counter()
        for lr in rates:
            run(lr)
        total = time.perf_counter() - t
        print(f"{name:<48} {total:>10.2f} {total / len(rates):>13.3f} "
              f"{len(compiles):>9d}")  # fmt: skip
    jax.monitoring.unregister_event_duration_listener(count)


if __name__ == "__main__":
    main()
    sweep()
