"""`jaxce.fit`: train an Equinox classifier with Optax in compiled `lax.scan` chunks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, PRNGKeyArray, Shaped

from . import _engine
from ._checkpoint import data_fingerprint, load_checkpoint, save_checkpoint
from ._files import tree_signature as _signature
from ._progress import Progress

DEFAULT_LOG_EVERY = 100


def _drop_off_grid_end(
    saved: dict[str, np.ndarray], start: int, steps: int, log_every: int
) -> dict[str, np.ndarray]:
    """Drop the saved log entry of the previous call's last step when it is off-grid.

    A call logs the multiples of ``log_every`` and its own last step. When a later
    call goes on past that step, an off-grid entry there would not exist in an
    uninterrupted run, so it is removed: the logged steps then depend only on the
    total ``steps`` (and ``log_every``), not on where the run was interrupted.
    """
    if start >= steps or start % log_every == 0:
        return saved
    keep = np.asarray(saved["step"]) != start
    return {k: v if k == "loss" else np.asarray(v)[keep] for k, v in saved.items()}


def _key_data(key: Any) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def _place(tree: Any, mesh: Mesh | None) -> Any:
    """Replicate every array of ``tree`` over ``mesh`` (a no-op without a mesh)."""
    if mesh is None:
        return tree
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(a):
        if not eqx.is_array(a):
            return a
        if replicated.is_fully_addressable:
            return jax.device_put(a, replicated)
        # Multi-process: every process holds the same value; build the global
        # array from the local copy (device_put cannot reach other processes).
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(a))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, replicated, lambda i: host[i])

    return jax.tree.map(put, tree)


def _resolve_mesh(mesh: Mesh | None, batch_axis: str | None) -> str | None:
    if mesh is None:
        if batch_axis is not None:
            raise ValueError("`batch_axis` was given without a `mesh`.")
        return None
    axis = mesh.axis_names[0] if batch_axis is None else batch_axis
    if axis not in mesh.axis_names:
        raise ValueError(
            f"`batch_axis`={axis!r} is not an axis of the mesh {mesh.axis_names}."
        )
    return axis


def fit(
    model: eqx.Module,
    x: Shaped[ArrayLike, " n ..."],
    y: Shaped[ArrayLike, " n ..."],
    *,
    loss: Callable[[Array, Array], Array] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    steps: int,
    batch_size: int | None = None,
    key: PRNGKeyArray,
    progress: bool = True,
    eval_data: tuple[ArrayLike, ArrayLike] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    mesh: Mesh | None = None,
    batch_axis: str | None = None,
    log_every: int | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    r"""Train ``model`` on ``(x, y)`` for ``steps`` optimiser steps.

    Each step computes the loss of a minibatch, $L(\theta) =
    \mathrm{loss}(\mathrm{vmap}(\mathrm{model})(x_B), y_B)$, its gradient with
    `equinox.filter_value_and_grad`, and applies ``optimizer``. Steps run inside
    compiled `jax.lax.scan` chunks of ``log_every`` steps (one Python dispatch per
    chunk, one compilation per configuration); metrics are computed and the
    progress bar is updated once per chunk.

    Minibatches: ``batch_size=None`` uses all of ``x`` every step (full-batch
    gradient descent). Otherwise each epoch draws a fresh permutation
    ``jax.random.permutation(jax.random.fold_in(key, epoch), n)`` and walks it in
    blocks of ``batch_size`` (the ``n % batch_size`` examples left over sit that
    epoch out). The order depends only on ``key`` and the step number.

    Checkpoints: with ``checkpoint_dir``, parameters, optimizer state, step,
    history and the data-order key are written atomically every
    ``checkpoint_every`` steps (default: at the end of the call) and at the end.
    Calling `fit` again with the same directory resumes from the saved step up to
    the new ``steps`` (the ``model`` passed in then only gives the structure), so
    100 + 100 steps give the parameters and history of 200. A checkpoint that is
    corrupt or was written by a different model, optimizer state, data, batch size
    or key raises `jaxce.CheckpointError` (a `ValueError`). Under
    multi-process JAX only process 0 writes.

    Data parallelism: with ``mesh`` (a `jax.sharding.Mesh`, with ``Auto``
    axes or the ``Explicit`` axes of `jax.make_mesh`), parameters, optimizer
    state and the data are replicated over the mesh and every minibatch is
    split over ``batch_axis`` (default: the mesh's first axis), so each device
    computes the gradient of its slice and XLA all-reduces the gradients. A
    minibatch (``batch_size``, or all of ``x`` when it is None) that does not
    divide over that axis is padded, per step, up to the next multiple with
    repeats of its first examples: the model runs on the padded batch, evenly
    split, and the padding's logits are dropped before ``loss``, so ``loss``
    sees exactly the minibatch and the padding adds nothing to the loss or the
    gradient (absent examples; on ``Explicit`` axes the minibatch's logits are
    replicated before the drop, as JAX has no uneven layout). The padding is
    per step rather than in ``x`` so that the data order (and checkpoints) stay
    those of one device, and at the logits because ``loss`` is any callable,
    which cannot be told which rows are absent. Results equal single-device
    training up to float32 summation order. The same code runs multi-host after
    `jax.distributed.initialize()`, with the same ``x``, ``y`` on every process.

    Args:
        model: an `equinox.Module` mapping one example to logits (scalar for a
            binary classifier, ``(classes,)`` otherwise).
        x: ``(n, ...)`` inputs (integers are converted to float32).
        y: ``(n,)`` labels or ``(n, ...)`` targets, as ``loss`` expects.
        loss: ``loss(logits, labels) -> scalar`` on a batch. ``None``:
            `jaxce.sigmoid_binary_cross_entropy` for scalar logits,
            `jaxce.sparse_softmax_cross_entropy` otherwise (both mean-reduced).
            Pass e.g. ``functools.partial(jaxce.sparse_softmax_cross_entropy,
            label_smoothing=0.1)`` for options.
        optimizer: any `optax.GradientTransformation`; ``None`` is
            ``optax.adam(1e-2)``.
        steps: total number of steps (including those of a resumed checkpoint).
        batch_size: minibatch size, or ``None`` for full batch.
        key: PRNG key for the data order.
        progress: show a tqdm progress bar (on stderr) with loss and accuracy.
        eval_data: optional ``(x_eval, y_eval)``; adds ``"eval_loss"`` and
            ``"eval_accuracy"`` at logged steps.
        checkpoint_dir: directory for the checkpoint file (created if missing).
        checkpoint_every: steps between checkpoints (needs ``checkpoint_dir``).
        mesh: optional device mesh for data-parallel training.
        batch_axis: mesh axis the batch is split over (default: the first).
        log_every: steps per compiled chunk and between logged metrics
            (default 100). Logged steps are the multiples of ``log_every`` and
            the last step, ``steps``. A resumed call drops the saved entry of the
            previous call's last step unless it is a multiple of ``log_every``,
            so e.g. 70 + 130 steps with ``log_every=40`` log steps 40, 80, ...,
            160, 200, exactly like 200 steps in one call.

    Returns:
        ``(model, history)``: the trained model, and a dict of NumPy arrays:
        ``"loss"`` ``(steps,)`` the minibatch loss of every step; ``"step"`` the
        logged step numbers (steps completed); ``"accuracy"`` the accuracy on all
        of ``x`` at those steps; with ``eval_data`` also ``"eval_loss"`` and
        ``"eval_accuracy"``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, jaxce
        >>> x = jnp.array([[-2.0], [-1.0], [1.0], [2.0]])
        >>> y = jnp.array([0.0, 0.0, 1.0, 1.0])
        >>> model = jaxce.models.LogisticRegression(1, key=jax.random.key(0))
        >>> model, history = jaxce.fit(model, x, y, optimizer=optax.sgd(1.0),
        ...     steps=50, key=jax.random.key(1), progress=False, log_every=25)
        >>> print(history["loss"].shape, history["step"], history["accuracy"])
        (50,) [25 50] [1.00000 1.00000]
        >>> print(bool(history["loss"][-1] < history["loss"][0]))
        True
    """
    x, y = _engine.check_data(x, y, "x", "y")
    n = x.shape[0]
    _engine.check_steps(steps, batch_size, log_every, n)
    if checkpoint_every is not None and (
        checkpoint_dir is None
        or not isinstance(checkpoint_every, int)
        or checkpoint_every <= 0
    ):
        raise ValueError(
            "`checkpoint_every` must be an int > 0 and needs `checkpoint_dir`, got "
            f"{checkpoint_every!r}."
        )
    evals = (
        None
        if eval_data is None
        else _engine.check_data(*eval_data, "x_eval", "y_eval")
    )
    axis = _resolve_mesh(mesh, batch_axis)
    loss_fn = _engine.natural_loss(model, x[0]) if loss is None else loss
    optimizer = _engine.default_optimizer() if optimizer is None else optimizer
    log_every = DEFAULT_LOG_EVERY if log_every is None else log_every

    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    start, parts = 0, _engine.empty_history(evals is not None)
    meta = {
        "model": _signature(params),
        "opt_state": _signature(opt_state),
        "data": data_fingerprint(x, y),
        "batch_size": batch_size,
        "key": _key_data(key),
    }
    if checkpoint_dir is not None:
        loaded = load_checkpoint(
            checkpoint_dir, params=params, opt_state=opt_state, meta=meta
        )
        if loaded is not None:
            params, opt_state, start, saved = loaded
            if start > steps:
                raise ValueError(
                    f"the checkpoint in {os.fspath(checkpoint_dir)!r} is at step "
                    f"{start}, beyond `steps`={steps}."
                )
            if set(saved) != set(parts):
                raise ValueError(
                    "the checkpoint's history has metrics "
                    f"{sorted(saved)}, this run logs {sorted(parts)} "
                    "(pass the same `eval_data`)."
                )
            parts = {
                k: [v]
                for k, v in _drop_off_grid_end(saved, start, steps, log_every).items()
            }

    stops = _engine.chunk_bounds(
        start, steps, [log_every] + ([checkpoint_every] if checkpoint_every else [])
    )
    cfg = _engine.Config(
        loss=loss_fn,
        optimizer=optimizer,
        batch_size=batch_size,
        length=min(log_every, checkpoint_every or log_every, max(steps - start, 1)),
        mesh=mesh,
        batch_axis=axis,
    )
    params, opt_state, x_p, y_p = _place((params, opt_state, x, y), mesh)
    ex, ey = (None, None) if evals is None else _place(evals, mesh)
    bar = Progress(steps, start, progress, "fit")
    try:
        for stop in stops:
            orders = _place(_engine.chunk_orders(cfg, key, start, n), mesh)
            params, opt_state, losses, metrics = _engine.fit_chunk(
                params, opt_state, orders, _engine.as_int32(start),
                _engine.as_int32(stop), static, x_p, y_p, ex, ey, cfg,
            )  # fmt: skip
            parts["loss"].append(np.asarray(losses)[: stop - start])
            logged = stop % log_every == 0 or stop == steps
            if logged:
                parts["step"].append(np.array([stop], np.int32))
                for k, v in metrics.items():
                    parts[k].append(np.asarray(v, np.float32).reshape(1))
            bar.update(
                stop - start,
                stop,
                loss=float(parts["loss"][-1][-1]),
                acc=float(metrics["accuracy"]),
            )
            start = stop
            if checkpoint_dir is not None and (
                stop == steps or (checkpoint_every and stop % checkpoint_every == 0)
            ):
                save_checkpoint(
                    checkpoint_dir,
                    params=params,
                    opt_state=opt_state,
                    step=stop,
                    history=_engine.concat_history(parts, axis=0),
                    meta=meta,
                )
    finally:
        bar.close()
    return eqx.combine(params, static), _engine.concat_history(parts, axis=0)
