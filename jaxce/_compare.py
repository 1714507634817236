"""Hold a closed-form gradient against autodiff and float64 finite differences."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._core import Number

_DEFAULT_RTOL = {8: 1e-10, 4: 1e-5}  # by itemsize; 16-bit floats: 1e-2


@dataclasses.dataclass(frozen=True)
class GradientReport:
    """How far a closed-form gradient is from autodiff and from finite differences.

    Attributes:
        name: the loss compared (``loss_fn.__name__``).
        options: the keyword arguments, each rendered as a string (arrays by
            their shape, e.g. ``"(6, 5)"``).
        shape: shape of the differentiated argument (``()`` for a pytree).
        dtype: its dtype.
        max_abs_error: ``max |closed_form - autodiff|``.
        max_rel_error: ``max_abs_error / max |autodiff|`` (normwise relative).
        cosine_similarity: of the flattened closed form and autodiff gradients.
        worst_index: where ``|closed_form - autodiff|`` is largest (an index tuple;
            for a pytree argument, the leaf path and index as a string).
        finite_difference_error: ``max_k |fd_k - <g, d_k>| / max_k |fd_k|`` with
            ``g`` the closed form and ``fd_k`` central differences along direction
            ``d_k``, both in float64 (``None`` when not computed).
        rtol, atol, fd_rtol: the tolerances ``passed`` used.
        passed: everything finite, ``max_abs_error <= atol + rtol * max
            |autodiff|`` and ``finite_difference_error <= fd_rtol``.
    """

    name: str
    options: dict[str, str]
    shape: tuple[int, ...]
    dtype: str
    max_abs_error: float
    max_rel_error: float
    cosine_similarity: float
    worst_index: tuple[int, ...] | str
    finite_difference_error: float | None
    rtol: float
    atol: float
    fd_rtol: float
    passed: bool

    def __str__(self) -> str:
        fd = self.finite_difference_error
        rows = [
            ("loss", self.name),
            ("options", ", ".join(f"{k}={v}" for k, v in self.options.items()) or "-"),
            ("input", f"{self.shape} {self.dtype}"),
            ("max |closed - autodiff|", f"{self.max_abs_error:.3e}"),
            ("  / max |autodiff|", f"{self.max_rel_error:.3e}  (rtol {self.rtol:g})"),
            ("cosine similarity", f"{self.cosine_similarity:.12f}"),
            ("worst index", str(self.worst_index)),
            (
                "finite differences (f64)",
                "not computed" if fd is None else f"{fd:.3e}  (rtol {self.fd_rtol:g})",
            ),
            ("passed", "yes" if self.passed else "NO"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    @staticmethod
    def table(reports: Sequence[GradientReport]) -> str:
        """One row per report: the compact form `examples/gradients.py` prints."""
        head = ("loss", "reduction", "options", "dtype", "max abs", "max rel")
        head = head + ("1 - cos", "FD err", "")
        rows: list[tuple[str, ...]] = [head]
        for r in reports:
            fd = r.finite_difference_error
            opts = dict(r.options)
            reduction = opts.pop("reduction", "'mean'").strip("'")
            rows.append(
                (
                    r.name,
                    reduction,
                    ", ".join(_short(k, v) for k, v in opts.items()) or "-",
                    r.dtype,
                    f"{r.max_abs_error:.1e}",
                    f"{r.max_rel_error:.1e}",
                    f"{1 - r.cosine_similarity:.1e}",
                    "-" if fd is None else f"{fd:.1e}",
                    "ok" if r.passed else "FAIL",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(line.rstrip() for line in lines)


def _short(key: str, value: str) -> str:
    if value.startswith("("):  # an array: its shape
        return f"{key}[{'x'.join(value.strip('(,)').split(', '))}]"
    return f"{key}={value}"


def _describe(kwargs: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in kwargs.items():
        if hasattr(v, "shape") and np.ndim(v) > 0:
            out[k] = str(tuple(np.shape(v)))
        else:
            out[k] = repr(np.asarray(v).item() if hasattr(v, "shape") else v)
    return out


def _maybe_jit(fn, jit: bool):
    return jax.jit(fn) if jit else fn


def _to_float64(x):
    if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.asarray(x, jnp.float64)
    return x


def _worst(x, flat_index: int) -> tuple[int, ...] | str:
    if isinstance(x, (jax.Array, np.ndarray)):
        return tuple(int(i) for i in np.unravel_index(flat_index, np.shape(x)))
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        size = int(np.size(leaf))
        if flat_index < size:
            idx = np.unravel_index(flat_index, np.shape(leaf))
            return f"{jax.tree_util.keystr(path)}{list(map(int, idx))}"
        flat_index -= size
    return "?"


def _finite_difference_error(
    loss_fn, closed_form_fn, args, kwargs, step, max_coords, directions, jit
) -> float:
    with jax.enable_x64(True):
        args64 = jax.tree_util.tree_map(_to_float64, args)
        kwargs64 = jax.tree_util.tree_map(_to_float64, kwargs)
        x, rest = args64[0], args64[1:]
        flat, unravel = ravel_pytree(x)
        g = _maybe_jit(
            lambda v: ravel_pytree(closed_form_fn(v, *rest, **kwargs64))[0], jit
        )
        g = np.asarray(g(x), np.float64)

        def f(v):
            return jnp.sum(loss_fn(unravel(v), *rest, **kwargs64)).astype(jnp.float64)

        def central(flat, steps):
            return jax.vmap(f)(flat[None] + steps) - jax.vmap(f)(flat[None] - steps)

        n = flat.size
        if n <= max_coords:
            dirs = np.eye(n)
        else:
            d = np.random.default_rng(0).standard_normal((directions, n))
            dirs = d / np.linalg.norm(d, axis=1, keepdims=True)
        h = step * max(1.0, float(jnp.max(jnp.abs(flat))))
        steps = jnp.asarray(dirs * h)
        fd = np.asarray(_maybe_jit(central, jit)(flat, steps)) / (2 * h)
    pred = dirs @ g
    scale = max(np.max(np.abs(fd)), np.max(np.abs(pred)))
    err = np.max(np.abs(fd - pred))
    return float(err / scale) if scale > 0 else float(err)


def compare_gradients(
    loss_fn: Callable[..., Any],
    closed_form_fn: Callable[..., Any],
    *args: Any,
    rtol: Number | None = None,
    atol: Number = 0.0,
    fd_rtol: Number = 1e-5,
    finite_differences: bool = True,
    fd_step: Number = 1e-6,
    fd_max_coords: int = 256,
    fd_directions: int = 16,
    jit: bool = True,
    **kwargs: Any,
) -> GradientReport:
    r"""Compare a closed-form gradient with autodiff and central finite differences.

    Evaluates, at ``args``/``kwargs``, the autodiff gradient
    ``jax.grad(lambda x: sum(loss_fn(x, *args[1:], **kwargs)))(args[0])`` (the sum
    makes ``reduction="none"`` comparable), the closed form
    ``closed_form_fn(*args, **kwargs)``, and central differences
    $(f(x + h d) - f(x - h d)) / 2h$ in float64 (inside ``jax.enable_x64``, with
    floating inputs cast up) along every coordinate (or ``fd_directions`` random
    unit directions above ``fd_max_coords`` elements), $h$ = ``fd_step`` times
    $\max(1, \|x\|_\infty)$. The first argument may be an array or a pytree such
    as a model. Finite differences are meaningless at kinks (e.g. exactly on an
    ``eps`` clipping bound); ``finite_differences=False`` skips them.

    Args:
        loss_fn: the loss, differentiated by autodiff (must be ``vmap``-able for
            finite differences).
        closed_form_fn: the analytic gradient, same arguments.
        *args: positional arguments; the gradient is with respect to the first.
        rtol: relative tolerance against ``max |autodiff|``; ``None`` picks
            ``1e-10`` (float64), ``1e-5`` (float32) or ``1e-2`` (16-bit).
        atol: absolute tolerance added to ``rtol * max |autodiff|``.
        fd_rtol: tolerance for ``finite_difference_error``.
        finite_differences: compute ``finite_difference_error``.
        fd_step: relative step of the central differences.
        fd_max_coords: largest input differenced coordinate by coordinate.
        fd_directions: number of random directions above that size.
        jit: compile each evaluation (one compilation instead of dispatching
            every operation); ``False`` for functions that cannot be traced.
        **kwargs: keyword options of both functions.

    Returns:
        A `GradientReport`; ``print`` it for a table, check ``report.passed``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> labels = jnp.array([0, 2])
        >>> report = jaxce.compare_gradients(
        ...     jaxce.sparse_softmax_cross_entropy,
        ...     jaxce.closed_form.sparse_softmax_cross_entropy,
        ...     logits, labels, label_smoothing=0.1)
        >>> report.passed, report.max_rel_error < 1e-6
        (True, True)
        >>> wrong = lambda *a, **k: 1.01 * jaxce.closed_form.softmax_cross_entropy(
        ...     *a, **k)
        >>> jaxce.compare_gradients(jaxce.softmax_cross_entropy, wrong,
        ...     logits, jnp.eye(3)[labels]).passed
        False
    """
    x, rest = args[0], args[1:]

    def total(v):
        return jnp.sum(loss_fn(v, *rest, **kwargs))

    autodiff = _maybe_jit(lambda v: ravel_pytree(jax.grad(total)(v))[0], jit)(x)
    closed = _maybe_jit(
        lambda v: ravel_pytree(closed_form_fn(v, *rest, **kwargs))[0], jit
    )(x)
    dtype = jnp.result_type(autodiff)
    if rtol is None:
        rtol = _DEFAULT_RTOL.get(jnp.dtype(dtype).itemsize, 1e-2)
    ad = np.asarray(autodiff, np.float64)
    cf = np.asarray(closed, np.float64)
    if ad.shape != cf.shape:
        raise ValueError(
            f"closed form has {cf.size} gradient entries, autodiff {ad.size}."
        )
    diff = np.abs(cf - ad)
    finite = bool(np.all(np.isfinite(ad)) and np.all(np.isfinite(cf)))
    max_abs = float(np.max(diff, initial=0.0)) if finite else float("nan")
    scale = float(np.max(np.abs(ad), initial=0.0))
    if scale > 0:
        max_rel = max_abs / scale
    else:
        max_rel = 0.0 if max_abs == 0 else float("inf")
    norms = np.linalg.norm(ad) * np.linalg.norm(cf)
    if norms > 0:
        cosine = float(np.clip(np.dot(ad, cf) / norms, -1.0, 1.0))
    else:
        cosine = 1.0 if max_abs == 0 else 0.0
    worst = _worst(x, int(np.argmax(diff)) if diff.size and finite else 0)
    fd = None
    if finite_differences:
        fd = _finite_difference_error(
            loss_fn,
            closed_form_fn,
            args,
            kwargs,
            fd_step,
            fd_max_coords,
            fd_directions,
            jit,
        )
    passed = (
        finite
        and max_abs <= atol + rtol * scale
        and (fd is None or (np.isfinite(fd) and fd <= fd_rtol))
    )
    return GradientReport(
        name=getattr(loss_fn, "__name__", type(loss_fn).__name__),
        options=_describe(kwargs),
        shape=tuple(np.shape(x)) if isinstance(x, (jax.Array, np.ndarray)) else (),
        dtype=str(jnp.dtype(dtype)),
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        cosine_similarity=cosine,
        worst_index=worst,
        finite_difference_error=fd,
        rtol=float(rtol),
        atol=float(atol),
        fd_rtol=float(fd_rtol),
        passed=bool(passed),
    )
