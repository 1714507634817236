"""Closed-form gradients of every jaxce loss, held against autodiff.

Run ``python examples/gradients.py`` to print, for every loss and a grid of option
sets (weights, class weights, smoothing, masks, z-loss, focal terms, clipping,
every reduction, log base), in float32 and float64:

- ``max abs`` / ``max rel``: ``|closed form - jax.grad|`` (relative to the largest
  autodiff entry);
- ``1 - cos``: one minus the cosine similarity of the two gradients;
- ``FD err``: the closed form against central finite differences in float64.

``python examples/gradients.py --short`` prints one float32 table with two rows per
loss; `summary` returns that table as a string (the tour calls it).

The fused ``linear_softmax_cross_entropy`` has three parameters and its closed form
returns the tuple ``(d_hidden, d_weight, d_bias)``; `fused_pair` wraps it as one
row per parameter (that parameter first, the others in a tuple after it), the
shape `jaxce.compare_gradients` differentiates.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxce
from jaxce import closed_form

N, K = 6, 5  # examples, classes
D = 3  # features of the fused loss
REDUCTIONS = ("mean", "sum", "none", "sum_over_batch_size")
FUSED = "linear_softmax_cross_entropy"
_PARAMS = ("hidden", "weight", "bias")


def fused_pair(param: str):
    """``(loss, closed_form)`` of the fused loss w.r.t. ``param`` alone.

    Both take ``(x, rest, **options)``: ``x`` the ``hidden``, ``weight`` or
    ``bias`` array and ``rest`` the tuple of the other arrays of
    ``(hidden, weight, labels)`` (``(hidden, weight, labels)`` for the bias). The
    closed form picks its entry of ``(d_hidden, d_weight, d_bias)``.
    """
    i = _PARAMS.index(param)

    def call(fn, x, rest, **kw):
        if param == "bias":
            return fn(*rest, bias=x, **kw)
        h, w, y = (x, *rest) if param == "hidden" else (rest[0], x, rest[1])
        return fn(h, w, y, **kw)

    def loss(x, rest, **kw):
        return call(jaxce.linear_softmax_cross_entropy, x, rest, **kw)

    def grad(x, rest, **kw):
        return call(closed_form.linear_softmax_cross_entropy, x, rest, **kw)[i]

    loss.__name__ = f"{FUSED} (d_{param})"
    return loss, grad


def _fused_args(d, param: str, labels):
    """``(x, rest)`` for `fused_pair` ``(param)``."""
    h, w = d["hidden"], d["weight"]
    if param == "hidden":
        return h, (w, labels)
    if param == "weight":
        return w, (h, labels)
    return d["bias"], (h, w, labels)


def _inputs(dtype):
    """Deterministic inputs of ``dtype``: logits, probabilities, labels, masks."""
    r = np.random.default_rng(0)
    logits = 2.0 * r.standard_normal((N, K))
    probs = r.dirichlet(np.full(K, 2.0), size=N) * 0.9 + 0.02
    labels = r.integers(0, K, size=N)
    class_mask = r.uniform(size=(N, K)) < 0.7
    class_mask[np.arange(N), labels] = True  # the label stays in play
    return dict(
        logits=jnp.asarray(logits, dtype),
        probs=jnp.asarray(probs, dtype),
        targets=jnp.asarray(r.dirichlet(np.ones(K), size=N), dtype),
        onehot=jnp.asarray(np.eye(K)[labels], dtype),
        labels=jnp.asarray(labels, jnp.int32),
        ignored=jnp.asarray(np.where(np.arange(N) % 3 == 0, -100, labels), jnp.int32),
        class_mask=jnp.asarray(class_mask),
        element_mask=jnp.asarray(np.arange(N) % 4 != 1),
        weights=jnp.asarray(r.uniform(0.5, 2.0, size=N), dtype),
        class_weights=jnp.asarray(r.uniform(0.5, 2.0, size=K), dtype),
        z=jnp.asarray(2.0 * r.standard_normal(3 * N), dtype),
        p=jnp.asarray(
            np.r_[r.uniform(0.02, 0.98, size=3 * N - 2), [0.01, 0.995]], dtype
        ),
        y=jnp.asarray(r.uniform(size=3 * N) < 0.5, dtype),
        soft_y=jnp.asarray(r.uniform(size=3 * N), dtype),
        bin_weights=jnp.asarray(r.uniform(0.5, 2.0, size=3 * N), dtype),
        bin_mask=jnp.asarray(np.arange(3 * N) % 5 != 2),
        hidden=jnp.asarray(r.standard_normal((N, D)), dtype),
        weight=jnp.asarray(0.7 * r.standard_normal((K, D)), dtype),
        bias=jnp.asarray(r.standard_normal(K), dtype),
    )


def cases(dtype, *, short: bool = False):
    """Yield ``(name, first_arg, second_arg, options)`` for every loss."""
    d = _inputs(dtype)
    binary = [
        ("sigmoid_binary_cross_entropy", d["z"], d["y"], {}),
        (
            "sigmoid_binary_cross_entropy",
            d["z"],
            d["soft_y"],
            dict(
                weights=d["bin_weights"],
                pos_weight=2.5,
                label_smoothing=0.1,
                where=d["bin_mask"],
                base=2,
            ),
        ),
        ("binary_cross_entropy", d["p"], d["y"], {}),
        (
            "binary_cross_entropy",
            d["p"],
            d["soft_y"],
            dict(
                eps=0.015,
                weights=d["bin_weights"],
                label_smoothing=0.2,
                where=d["bin_mask"],
                base=10,
            ),
        ),
        ("sigmoid_focal_loss", d["z"], d["y"], {}),
        (
            "sigmoid_focal_loss",
            d["z"],
            d["soft_y"],
            dict(alpha=0.25, gamma=1.5, weights=d["bin_weights"], where=d["bin_mask"]),
        ),
    ]
    categorical = [
        ("softmax_cross_entropy", d["logits"], d["targets"], {}),
        (
            "softmax_cross_entropy",
            d["logits"],
            d["targets"],
            dict(
                class_weights=d["class_weights"],
                weights=d["weights"],
                label_smoothing=0.1,
                where=d["class_mask"],
            ),
        ),
        ("sparse_softmax_cross_entropy", d["logits"], d["labels"], {}),
        (
            "sparse_softmax_cross_entropy",
            d["logits"],
            d["ignored"],
            dict(
                class_weights=d["class_weights"],
                weights=d["weights"],
                ignore_index=-100,
                label_smoothing=0.1,
                z_loss=1e-2,
                where=d["class_mask"],
            ),
        ),
        ("categorical_cross_entropy", d["probs"], d["targets"], {}),
        (
            "categorical_cross_entropy",
            d["probs"],
            d["targets"],
            dict(
                eps=0.03,
                class_weights=d["class_weights"],
                weights=d["weights"],
                label_smoothing=0.1,
                where=d["element_mask"],
                base=2,
            ),
        ),
        ("sparse_categorical_cross_entropy", d["probs"], d["labels"], {}),
        (
            "sparse_categorical_cross_entropy",
            d["probs"],
            d["ignored"],
            dict(
                class_weights=d["class_weights"],
                weights=d["weights"],
                ignore_index=-100,
                label_smoothing=0.1,
                where=d["class_mask"],
            ),
        ),
        ("softmax_focal_loss", d["logits"], d["labels"], {}),
        (
            "softmax_focal_loss",
            d["logits"],
            d["ignored"],
            dict(
                alpha=d["class_weights"],
                gamma=3.0,
                weights=d["weights"],
                ignore_index=-100,
                where=d["class_mask"],
            ),
        ),
    ]
    fused_all = dict(
        class_weights=d["class_weights"],
        ignore_index=-100,
        label_smoothing=0.1,
        z_loss=1e-2,
        softcap=3.0,
        where=d["element_mask"],
        chunk_size=2,
    )
    fused = []
    for param in _PARAMS:
        plain = {} if param == "bias" else dict(bias=d["bias"])
        if short and param == "bias":
            continue
        if not short or param == "hidden":
            fused.append((param, d["labels"], {}))
        if not short or param == "weight":
            fused.append((param, d["ignored"], dict(fused_all, **plain)))
    for name, a, b, opts in binary + categorical:
        if short:
            yield name, a, b, opts
            continue
        if not opts:  # the plain loss under every reduction, and a class axis first
            for reduction in REDUCTIONS:
                yield name, a, b, dict(reduction=reduction)
            if a.ndim == 2:
                yield name, a.T, (b.T if b.ndim == 2 else b), dict(axis=0)
        else:  # all the options together under every reduction
            for reduction in REDUCTIONS:
                yield name, a, b, dict(opts, reduction=reduction)
    # The fused loss: one row per parameter (see `fused_pair`).
    for param, labels, opts in fused:
        x, rest = _fused_args(d, param, labels)
        for reduction in ("mean",) if short else REDUCTIONS:
            red = {} if short else dict(reduction=reduction)
            yield f"{FUSED}:{param}", x, rest, dict(opts, **red)


def reports(dtype=jnp.float32, *, short: bool = False) -> list[jaxce.GradientReport]:
    """A `jaxce.GradientReport` for every case of `cases`."""
    out = []
    for name, a, b, opts in cases(dtype, short=short):
        if name.startswith(FUSED + ":"):
            loss, grad = fused_pair(name.split(":")[1])
        else:
            loss, grad = getattr(jaxce, name), getattr(closed_form, name)
        out.append(jaxce.compare_gradients(loss, grad, a, b, **opts))
    return out


def summary() -> str:
    """The short float32 table (two option sets per loss), as a string."""
    return jaxce.GradientReport.table(reports(jnp.float32, short=True))


def main(short: bool = False) -> bool:
    if short:
        print(summary())
        return True
    ok = True
    for dtype in (jnp.float32, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            rs = reports(dtype)
        print(f"\n== {jnp.dtype(dtype).name}: closed form vs jax.grad vs float64 FD ==")
        print(jaxce.GradientReport.table(rs))
        ok &= all(r.passed for r in rs)
    # One report in full, then a closed form that is wrong by 1 %.
    d = _inputs(jnp.float32)
    print(
        "\n"
        + str(
            jaxce.compare_gradients(
                jaxce.sparse_softmax_cross_entropy,
                closed_form.sparse_softmax_cross_entropy,
                d["logits"],
                d["labels"],
                label_smoothing=0.1,
                z_loss=1e-3,
            )
        )
    )

    def wrong(*args, **kwargs):
        return 1.01 * closed_form.sparse_softmax_cross_entropy(*args, **kwargs)

    wrong.__name__ = "sparse_softmax_cross_entropy (1 % wrong)"
    print(
        "\n"
        + str(
            jaxce.compare_gradients(
                jaxce.sparse_softmax_cross_entropy, wrong, d["logits"], d["labels"]
            )
        )
    )
    print("\nall closed forms passed" if ok else "\nSOME CLOSED FORMS FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main(short="--short" in sys.argv) else 1)
