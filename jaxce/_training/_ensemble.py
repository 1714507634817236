"""`jaxce.fit_ensemble`: train one model per key in a single vmapped, compiled call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Key, Shaped, UInt32

from . import _engine
from ._progress import Progress


def fit_ensemble(
    make_model: Callable[[Array], Any],
    keys: Key[Array, " members"] | UInt32[Array, " members 2"],
    x: Shaped[ArrayLike, " n ..."],
    y: Shaped[ArrayLike, " n ..."],
    *,
    loss: Callable[[Array, Array], Array] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    steps: int,
    batch_size: int | None = None,
    progress: bool = False,
    eval_data: tuple[ArrayLike, ArrayLike] | None = None,
    log_every: int | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Train an ensemble: one model per key, all in one `vmap`-ed compiled call.

    Member ``i`` splits its key, ``init_key, data_key = jax.random.split(keys[i])``,
    builds ``make_model(init_key)`` and trains it exactly as
    ``jaxce.fit(make_model(init_key), x, y, key=data_key, ...)`` would (same
    minibatch rule, loss and optimizer), up to float rounding of batched
    arithmetic. The members are stacked with `equinox.filter_vmap`: every array
    of the returned model has a leading ``members`` axis, so
    ``eqx.filter_vmap(lambda m: jax.vmap(m)(x_test))(models)`` evaluates them
    all. With ``log_every=None`` all ``steps`` run in a single dispatch of one
    compiled `lax.scan`.

    Args:
        make_model: ``make_model(key) -> model``, traced once under `vmap`.
        keys: ``(members,)`` PRNG keys (typed, or ``(members, 2)`` raw uint32).
        x: ``(n, ...)`` inputs, shared by all members.
        y: ``(n, ...)`` labels or targets.
        loss: as in `jaxce.fit` (``None``: the model's natural loss).
        optimizer: as in `jaxce.fit` (``None``: ``optax.adam(1e-2)``).
        steps: optimiser steps per member.
        batch_size: minibatch size or ``None`` (full batch).
        progress: show a progress bar with the members' mean loss and accuracy.
        eval_data: optional ``(x_eval, y_eval)``.
        log_every: steps per compiled chunk (default: all ``steps`` in one).

    Returns:
        ``(models, history)``: the stacked models, and a dict of NumPy arrays
        ``"loss"`` ``(members, steps)``, ``"step"`` ``(logged,)``,
        ``"accuracy"`` ``(members, logged)`` (and ``"eval_loss"``,
        ``"eval_accuracy"`` with ``eval_data``).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, jaxce
        >>> x = jnp.array([[-2.0], [-1.0], [1.0], [2.0]])
        >>> y = jnp.array([0.0, 0.0, 1.0, 1.0])
        >>> keys = jax.random.split(jax.random.key(0), 4)
        >>> models, history = jaxce.fit_ensemble(
        ...     lambda k: jaxce.models.LogisticRegression(1, key=k), keys, x, y,
        ...     optimizer=optax.sgd(1.0), steps=20)
        >>> print(models.weight.shape, history["loss"].shape, history["accuracy"])
        (4, 1) (4, 20) [[1.00000] [1.00000] [1.00000] [1.00000]]
    """
    x, y = _engine.check_data(x, y, "x", "y")
    n = x.shape[0]
    _engine.check_steps(steps, batch_size, log_every, n)
    if keys.ndim < 1 or keys.shape[0] == 0:
        raise ValueError(f"`keys` must hold at least one key, got shape {keys.shape}.")
    evals = (
        None
        if eval_data is None
        else _engine.check_data(*eval_data, "x_eval", "y_eval")
    )
    split = jax.vmap(jax.random.split)(keys)
    init_keys, data_keys = split[:, 0], split[:, 1]
    models = eqx.filter_vmap(make_model)(init_keys)
    if loss is None:
        one = eqx.filter_eval_shape(make_model, init_keys[0])
        loss = _engine.natural_loss(one, x[0])
    optimizer = _engine.default_optimizer() if optimizer is None else optimizer
    log_every = max(steps, 1) if log_every is None else log_every
    params, static = eqx.partition(models, eqx.is_inexact_array)
    opt_state = eqx.filter_vmap(optimizer.init)(params)
    cfg = _engine.Config(
        loss=loss,
        optimizer=optimizer,
        batch_size=batch_size,
        length=min(log_every, max(steps, 1)),
    )
    parts = _engine.empty_history(evals is not None)
    ex, ey = (None, None) if evals is None else evals
    bar = Progress(steps, 0, progress, "fit_ensemble")
    start = 0
    try:
        for stop in _engine.chunk_bounds(0, steps, [log_every]):
            orders = _engine.chunk_orders(cfg, data_keys, start, n, members=True)
            params, opt_state, losses, metrics = _engine.ensemble_chunk(
                params, opt_state, orders, _engine.as_int32(start),
                _engine.as_int32(stop), static, x, y, ex, ey, cfg,
            )  # fmt: skip
            parts["loss"].append(np.asarray(losses)[:, : stop - start])
            if stop % log_every == 0 or stop == steps:
                parts["step"].append(np.array([stop], np.int32))
                for k, v in metrics.items():
                    parts[k].append(np.asarray(v, np.float32).reshape(-1, 1))
            bar.update(
                stop - start,
                stop,
                loss=float(np.mean(parts["loss"][-1][:, -1])),
                acc=float(np.mean(metrics["accuracy"])),
            )
            start = stop
    finally:
        bar.close()
    if not parts["loss"]:
        parts["loss"].append(np.zeros((keys.shape[0], 0), np.float32))
    return eqx.combine(params, static), _engine.concat_history(parts, axis=-1)
