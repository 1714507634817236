"""A learning-rate sweep with jaxce.fit that compiles once.

    python examples/lr_sweep.py

`jaxce.fit` caches its compiled training chunk on the optimizer's *structure*
(its update step as a program), not on the optimizer object. ``optax.adam(lr)``
writes ``lr`` into that program as a constant, so every new rate compiles again.
``optax.inject_hyperparams(optax.adam)(learning_rate=lr)`` keeps the rate (and
the other float hyperparameters) in the optimizer *state*, an input of the
program, so the whole sweep shares one compilation. The script trains
`jaxce.models.MLPClassifier` on scikit-learn's digits at six learning rates both
ways, counts XLA compilations with `jax.monitoring`, and prints the timings and
the test accuracy of each rate.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from example_data import load  # noqa: E402

import jaxce  # noqa: E402

RATES = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def injected_adam(learning_rate: float) -> optax.GradientTransformation:
    """Adam whose learning rate lives in its state: one program for every rate."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def sweep(make_optimizer, rates=RATES, steps: int = 300) -> list[dict]:
    """Train one MLP per rate; each row: rate, seconds, compilations, accuracy."""
    xtr, xte, ytr, yte = load("digits")
    compiles: list[float] = []

    def count(name: str, seconds: float, **kwargs) -> None:
        if name == COMPILE_EVENT:
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(count)
    rows = []
    try:
        for lr in rates:
            compiles.clear()
            start = time.perf_counter()
            model = jaxce.models.MLPClassifier(
                64, 10, width=32, depth=1, key=jax.random.key(0)
            )
            model, history = jaxce.fit(
                model, xtr, ytr, optimizer=make_optimizer(lr), steps=steps,
                batch_size=64, key=jax.random.key(1), progress=False,
                eval_data=(xte, yte),
            )  # fmt: skip
            rows.append({
                "lr": lr,
                "seconds": time.perf_counter() - start,
                "compiles": len(compiles),
                "test_accuracy": float(history["eval_accuracy"][-1]),
            })  # fmt: skip
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    return rows


def main() -> None:
    ways = {"optax.adam(lr)": optax.adam, "inject_hyperparams": injected_adam}
    for name, make in ways.items():
        rows = sweep(make)
        print(f"\n{name}")
        print(f"{'learning rate':>14} {'time (s)':>9} {'compiles':>9} {'test acc':>9}")
        for r in rows:
            print(f"{r['lr']:>14g} {r['seconds']:>9.2f} {r['compiles']:>9d} "
                  f"{r['test_accuracy']:>9.3f}")  # fmt: skip
        later = sum(r["compiles"] for r in rows[1:])
        print(f"compilations after the first rate: {later}")
    best = max(rows, key=lambda r: r["test_accuracy"])
    print(f"\nbest rate {best['lr']:g}: test accuracy {best['test_accuracy']:.3f}")


if __name__ == "__main__":
    main()
