"""The seed article's NumPy gradient descent, reproduced with jaxce, and why it stalls.

The article trains logistic regression without a bias on

    X = [[1, 2], [3, 4], [5, 6], [7, 8]],  y = [0, 1, 1, 0]

from ``w = 0`` with ``lr = 0.1`` for 1000 steps, using the closed-form gradient
``X.T @ (sigmoid(X @ w) - y) / N``, and prints the weights and the rounded
predictions. Its weights never move: at ``w = 0`` every ``sigmoid`` is exactly 0.5,
so ``sigmoid(Xw) - y = [0.5, -0.5, -0.5, 0.5]`` and ``X.T @ that = [0, 0]``, exactly.
The mean log-loss is convex, so a zero gradient means ``w = 0`` is already the
global minimum (loss ``log 2``): no linear model through the origin separates
these labels. Every prediction is ``round(0.5) = 0`` (NumPy rounds half to even).

With labels ``y = [0, 0, 1, 1]`` the gradient at 0 is not zero and the same loop
learns. Run ``python examples/gradient_descent.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxce

X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], np.float32)
Y_SEED = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
Y_LEARNABLE = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
LR, STEPS = 0.1, 1000


def numpy_descent(x, y, *, lr=LR, steps=STEPS):
    """The article's loop, verbatim in NumPy: returns the weights."""
    w = np.zeros(x.shape[1], x.dtype)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        w = w - lr * (x.T @ (p - y) / len(y))
    return w


def autodiff_descent(x, y, *, lr=LR, steps=STEPS):
    """jaxce loss + ``jax.grad`` + Optax SGD in one ``lax.scan``: (w, losses)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    optimizer = optax.sgd(lr)

    def loss(w):
        return jaxce.sigmoid_binary_cross_entropy(x @ w, y)

    def step(carry, _):
        w, state = carry
        value, grad = jax.value_and_grad(loss)(w)
        updates, state = optimizer.update(grad, state)
        return (optax.apply_updates(w, updates), state), value

    w0 = jnp.zeros(x.shape[1], x.dtype)
    (w, _), losses = jax.jit(
        lambda w0: jax.lax.scan(step, (w0, optimizer.init(w0)), length=steps)
    )(w0)
    return w, losses


def closed_form_descent(x, y, *, lr=LR, steps=STEPS):
    """``w -= lr * X.T @ dR/dz`` with jaxce's closed form ``dR/dz = (p - y) / N``."""
    x, y = jnp.asarray(x), jnp.asarray(y)

    def step(w, _):
        z = x @ w
        grad = jaxce.closed_form.sigmoid_binary_cross_entropy(z, y) @ x
        return w - lr * grad, jaxce.sigmoid_binary_cross_entropy(z, y)

    w0 = jnp.zeros(x.shape[1], x.dtype)
    return jax.jit(lambda w0: jax.lax.scan(step, w0, length=steps))(w0)


def predictions(x, w):
    """The article's ``np.round(sigmoid(X @ w))`` (round half to even)."""
    return np.round(1 / (1 + np.exp(-(np.asarray(x) @ np.asarray(w)))))


def main() -> None:
    print("The seed article's gradient descent (lr 0.1, 1000 steps, w = 0, no bias)")
    for name, y in (("seed labels", Y_SEED), ("learnable labels", Y_LEARNABLE)):
        print(f"\n== {name}: y = {y} ==")
        residual = 1 / (1 + np.exp(-(X @ np.zeros(2, np.float32)))) - y
        print(f"sigmoid(X @ 0) - y  = {residual}")
        print(f"gradient at w = 0   = X.T @ that / N = {X.T @ residual / len(y)}")
        w_np = numpy_descent(X, y)
        w_ad, losses = autodiff_descent(X, y)
        w_cf, losses_cf = closed_form_descent(X, y)
        print(f"NumPy loop          w = {w_np}")
        print(f"autodiff + SGD      w = {np.asarray(w_ad)}")
        print(f"closed form         w = {np.asarray(w_cf)}")
        print(f"predictions         {predictions(X, w_ad)}")
        print(
            f"loss at step 0 / 1 / 1000: {losses[0]:.6f} / {losses[1]:.6f} / "
            f"{losses[-1]:.6f}   (log 2 = {np.log(2):.6f})"
        )
        print(
            f"closed form and autodiff losses agree: {np.allclose(losses, losses_cf)}"
        )
    print(
        "\nWith the seed labels the gradient at 0 is exactly zero and the convex loss"
        "\nis already at its minimum (log 2): the weights never move and every"
        "\nprediction is round(0.5) = 0. With y = [0, 0, 1, 1] the same loop learns."
    )


if __name__ == "__main__":
    main()
