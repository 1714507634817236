"""`jaxce.fit_ensemble`: train one model per key in a single vmapped, compiled call."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Key, Shaped, UInt32

from . import _engine
from ._arguments import (
    check_checkpointing,
    check_data,
    check_eval_data,
    check_keys,
    check_loss,
    check_optimizer,
    check_steps,
    check_trainable,
    example_output,
)
from ._checkpoint import data_fingerprint, state_signature
from ._data_checks import check_inputs, check_labels, label_rule
from ._fit import key_data, place, resolve_mesh
from ._progress import Progress
from ._resume import Checkpointing
from ._structure import SameUpdate


def _is_float(a: Any) -> bool:
    return isinstance(a, jax.ShapeDtypeStruct) and jnp.issubdtype(a.dtype, jnp.inexact)


def _member(tree: Any) -> Any:
    """The shapes of one member of a stacked tree."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def fit_ensemble(
    make_model: Callable[[Array], Any],
    keys: Key[Array, " members"] | UInt32[Array, " members 2"],
    x: Shaped[ArrayLike, " n ..."],
    y: Shaped[ArrayLike, " n ..."],
    *,
    loss: Callable[[Array, Array], Array] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | np.integer,
    batch_size: int | np.integer | None = None,
    progress: bool = False,
    eval_data: tuple[ArrayLike, ArrayLike] | None = None,
    log_every: int | np.integer | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | np.integer | None = None,
    mesh: Mesh | None = None,
    member_axis: str | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Train an ensemble: one model per key, all in one `vmap`-ed compiled call.

    Member ``i`` splits its key, ``init_key, data_key = jax.random.split(keys[i])``,
    builds ``make_model(init_key)`` and trains it exactly as
    ``jaxce.fit(make_model(init_key), x, y, key=data_key, ...)`` would (same
    checks of the arguments and data, minibatch rule, loss and optimizer), up to
    float rounding of batched arithmetic. The members are stacked with
    `equinox.filter_vmap`: every array of the returned model has a leading
    ``members`` axis, so ``eqx.filter_vmap(lambda m: jax.vmap(m)(x_test))(models)``
    evaluates them all. With ``log_every=None`` all ``steps`` run in a single
    dispatch of one compiled `lax.scan`.

    Checkpoints work as in `jaxce.fit`: one file holds every member (written
    atomically, CRC-checked, the directory locked for the call), and calling
    again with the same ``checkpoint_dir`` resumes, so 100 + 100 steps equal 200.

    Devices: with ``mesh``, the members are split over ``member_axis`` (default:
    the mesh's first axis) with `jax.shard_map`: each device trains its own
    members on a replicated copy of the data, with no communication, so the
    results equal those of one device. The number of members must divide over
    that axis.

    Args:
        make_model: ``make_model(key) -> model``, traced once under `vmap`.
        keys: ``(members,)`` PRNG keys (typed, or ``(members, 2)`` raw uint32).
        x: ``(n, ...)`` inputs, shared by all members.
        y: ``(n, ...)`` labels or targets.
        loss: as in `jaxce.fit` (``None``: the model's natural loss).
        optimizer: as in `jaxce.fit` (``None``: ``optax.adam(1e-2)``).
        steps: optimiser steps per member (in total, when resuming).
        batch_size: minibatch size or ``None`` (full batch).
        progress: show a progress bar with the members' mean loss and accuracy.
        eval_data: optional pair ``(x_eval, y_eval)``.
        log_every: steps per compiled chunk (default: all ``steps`` in one).
        checkpoint_dir: directory for the checkpoint of all members.
        checkpoint_every: steps between checkpoints (needs ``checkpoint_dir``).
        mesh: optional `jax.sharding.Mesh` to split the members over.
        member_axis: the mesh axis of the members (default: the first).

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
    x, y = check_data(x, y, "x", "y")
    n = x.shape[0]
    steps, batch_size, log_every = check_steps(steps, batch_size, log_every, n)
    checkpoint_every = check_checkpointing(checkpoint_dir, checkpoint_every)
    members = check_keys(keys)
    check_loss(loss)
    if optimizer is None:
        optimizer = _engine.default_optimizer()
    optimizer = check_optimizer(optimizer)
    evals = check_eval_data(eval_data, x, y)
    axis = resolve_mesh(mesh, member_axis, "member_axis")
    if mesh is not None and members % mesh.shape[axis]:
        raise ValueError(
            f"`keys` holds {members} members, which do not divide over the "
            f"{mesh.shape[axis]} devices of mesh axis {axis!r}; pass a multiple of "
            f"{mesh.shape[axis]}."
        )
    split = jax.vmap(jax.random.split)(keys)
    init_keys, data_keys = split[:, 0], split[:, 1]
    one = eqx.filter_eval_shape(make_model, init_keys[0])
    name = "make_model(key)"
    check_trainable(eqx.filter(one, _is_float), name, one)
    out = example_output(one, x[0], name)
    loss = _engine.natural_loss(out) if loss is None else loss
    rule = label_rule(loss, out.shape)
    check_inputs(x, "x")
    check_labels(y, "y", rule, model=f"`{name}`")
    if evals is not None:
        check_inputs(evals[0], "eval_data[0]")
        check_labels(evals[1], "eval_data[1]", rule, model=f"`{name}`")
    log_every = max(steps, 1) if log_every is None else log_every

    models = eqx.filter_vmap(make_model)(init_keys)
    params, static = eqx.partition(models, eqx.is_inexact_array)
    opt_state = eqx.filter_vmap(optimizer.init)(params)
    meta = {
        "kind": "fit_ensemble",
        "model": state_signature(params),
        "opt_state": state_signature(opt_state),
        "data": data_fingerprint(x, y),
        "batch_size": batch_size,
        "key": key_data(keys),
    }
    same = SameUpdate(optimizer, _member(params), _member(opt_state))
    checkpoints = Checkpointing(checkpoint_dir, checkpoint_every)
    checkpoints.open()
    try:
        params, opt_state, start, parts = checkpoints.restore(
            params, opt_state, meta, _engine.empty_history(evals is not None),
            steps, log_every,
        )  # fmt: skip
        every = [log_every] + ([checkpoint_every] if checkpoint_every else [])
        cfg = _engine.Config(
            loss=loss,
            optimizer=same,
            batch_size=batch_size,
            length=_engine.chunk_length(every, steps - start),
        )
        members_split = (
            None if mesh is None else NamedSharding(mesh, PartitionSpec(axis))
        )
        if mesh is not None:
            params, opt_state = jax.device_put((params, opt_state), members_split)
            x, y = place((x, y), mesh)
            evals = None if evals is None else place(evals, mesh)
        ex, ey = (None, None) if evals is None else evals
        bar = Progress(steps, start, progress, "fit_ensemble")
        try:
            for stop in _engine.chunk_bounds(start, steps, every):
                orders = _engine.chunk_orders(cfg, data_keys, start, n, True)
                if members_split is not None:
                    orders = jax.device_put(orders, members_split)
                params, opt_state, losses, metrics = _engine.ensemble_chunk(
                    params, opt_state, orders, _engine.as_int32(start),
                    _engine.as_int32(stop), static, x, y, ex, ey, cfg,
                    mesh=mesh, axis=axis,
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
                if checkpoints.due(stop, steps):
                    history = _engine.concat_history(parts, axis=-1)
                    checkpoints.save(params, opt_state, stop, history, meta)
        finally:
            bar.close()
    finally:
        checkpoints.close()
    if not parts["loss"]:
        parts["loss"].append(np.zeros((members, 0), np.float32))
    return eqx.combine(params, static), _engine.concat_history(parts, axis=-1)
