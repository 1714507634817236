"""`jaxce.fit`: train an Equinox classifier with Optax in compiled `lax.scan` chunks."""

from __future__ import annotations

import dataclasses
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
from ._arguments import (
    check_checkpointing,
    check_data,
    check_eval_data,
    check_key,
    check_loss,
    check_optimizer,
    check_steps,
    check_trainable,
    example_output,
)
from ._checkpoint import data_fingerprint, state_signature
from ._data_checks import check_inputs, check_labels, label_rule
from ._progress import Progress
from ._resume import Checkpointing
from ._structure import SameUpdate

DEFAULT_LOG_EVERY = 100


def key_data(key: Any) -> list[int]:
    """The raw key bits of ``key`` (typed or raw), as a JSON-able list."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def place(tree: Any, mesh: Mesh | None) -> Any:
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


def resolve_mesh(mesh: Mesh | None, axis: str | None, name: str) -> str | None:
    if mesh is None:
        if axis is not None:
            raise ValueError(f"`{name}` was given without a `mesh`.")
        return None
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {mesh!r}.")
    axis = mesh.axis_names[0] if axis is None else axis
    if axis not in mesh.axis_names:
        raise ValueError(
            f"`{name}`={axis!r} is not an axis of the mesh {mesh.axis_names}."
        )
    return axis


def fit(
    model: eqx.Module,
    x: Shaped[ArrayLike, " n ..."],
    y: Shaped[ArrayLike, " n ..."],
    *,
    loss: Callable[[Array, Array], Array] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | np.integer,
    batch_size: int | np.integer | None = None,
    key: PRNGKeyArray,
    progress: bool = True,
    eval_data: tuple[ArrayLike, ArrayLike] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | np.integer | None = None,
    mesh: Mesh | None = None,
    batch_axis: str | None = None,
    log_every: int | np.integer | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    r"""Train ``model`` on ``(x, y)`` for ``steps`` optimiser steps.

    Each step computes the loss of a minibatch, $L(\theta) =
    \mathrm{loss}(\mathrm{vmap}(\mathrm{model})(x_B), y_B)$, its gradient with
    `equinox.filter_value_and_grad`, and applies ``optimizer``. Steps run inside
    compiled `jax.lax.scan` chunks of ``log_every`` steps (one Python dispatch per
    chunk, one compilation per configuration); metrics are computed and the
    progress bar is updated once per chunk.

    Checks first: before anything is compiled, the arguments are checked (types,
    ranges) and so are the data, on the host: ``x`` must be finite, and labels
    must fit the loss (integer labels of a ``(classes,)`` model in
    ``[0, classes)``, binary labels of a scalar-logit model in ``[0, 1]``;
    ``eval_data`` too). Each failure is a `ValueError` / `TypeError` naming the
    argument and the first offending value. With a ``loss`` jaxce does not know,
    only NaN labels are refused.

    Minibatches: ``batch_size=None`` uses all of ``x`` every step (full-batch
    gradient descent). Otherwise each epoch draws a fresh permutation
    ``jax.random.permutation(jax.random.fold_in(key, epoch), n)`` and walks it in
    blocks of ``batch_size`` (the ``n % batch_size`` examples left over sit that
    epoch out). The order depends only on ``key`` and the step number.

    Hyperparameter sweeps: the compiled chunk is reused by every optimizer whose
    update is the same program. ``optax.adam(lr)`` bakes ``lr`` into that
    program, so each new value compiles once; with
    ``optax.inject_hyperparams(optax.adam)(learning_rate=lr)`` the values live in
    the optimizer state and a sweep over them compiles once in all.

    Checkpoints: with ``checkpoint_dir``, parameters, optimizer state, step,
    history and the data-order key are written atomically every
    ``checkpoint_every`` steps (default: at the end of the call) and at the end,
    as one file whose CRC-32 covers every byte. The directory is created, locked
    for this call (a second run on it raises `jaxce.CheckpointError` naming the
    owner; the lock of a killed run is released by the operating system) and
    cleared of temporaries left by killed writers, all before compiling.
    Calling `fit` again with the same directory resumes from the saved step up to
    the new ``steps`` (the ``model`` passed in then only gives the structure), so
    100 + 100 steps give the parameters and history of 200. A checkpoint that is
    corrupt, or was written by a different model, optimizer state (tree, shapes,
    dtypes), data, batch size or key, raises `jaxce.CheckpointError` (a
    `ValueError`) saying what differs. Hyperparameter values are not compared: a
    run resumed with another learning rate continues with the new one (also one
    injected into the state). Under multi-process JAX only process 0 writes.

    Data parallelism: with ``mesh`` (a `jax.sharding.Mesh`, with ``Auto``
    axes or the ``Explicit`` axes of `jax.make_mesh`), parameters, optimizer
    state and the data are replicated over the mesh and every minibatch is
    split over ``batch_axis`` (default: the mesh's first axis), so each device
    computes the gradient of its slice and XLA all-reduces the gradients. A
    minibatch that does not divide over that axis is padded, per step, with
    repeats of its first examples; their logits are dropped before ``loss``, so
    the padding adds nothing to the loss or the gradient (on ``Explicit`` axes
    the minibatch's logits are replicated before the drop, as JAX has no uneven
    layout), and the data order and checkpoints stay those of one device.
    Results equal single-device training up to float32 summation order. The same
    code runs multi-host after `jax.distributed.initialize()`, with the same
    ``x``, ``y`` on every process.

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
        key: PRNG key for the data order (``jax.random.key(0)``).
        progress: show a tqdm progress bar (on stderr) with loss and accuracy.
        eval_data: optional pair ``(x_eval, y_eval)``; adds ``"eval_loss"`` and
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
        >>> jaxce.fit(model, x, y + 1, steps=5, key=jax.random.key(1))
        Traceback (most recent call last):
        ...
        ValueError: `y` must hold binary labels, 0 or 1 (or probabilities in [0, 1]), for `model` with a scalar logit; it holds 2 values outside [0, 1], first y[2] = 2.0 (values seen: 1, 2).
    """  # noqa: E501
    x, y = check_data(x, y, "x", "y")
    steps, batch_size, log_every = check_steps(steps, batch_size, log_every, len(x))
    checkpoint_every = check_checkpointing(checkpoint_dir, checkpoint_every)
    check_key(key)
    check_loss(loss)
    if optimizer is None:
        optimizer = _engine.default_optimizer()
    optimizer = check_optimizer(optimizer)
    evals = check_eval_data(eval_data, x, y)
    axis = resolve_mesh(mesh, batch_axis, "batch_axis")
    out = example_output(model, x[0], "model")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    check_trainable(params, "model", model)
    loss_fn = _engine.natural_loss(out) if loss is None else loss
    rule = label_rule(loss, out.shape)
    check_inputs(x, "x")
    check_labels(y, "y", rule)
    if evals is not None:
        check_inputs(evals[0], "eval_data[0]")
        check_labels(evals[1], "eval_data[1]", rule)
    log_every = DEFAULT_LOG_EVERY if log_every is None else log_every

    opt_state = optimizer.init(params)
    meta = {
        "kind": "fit",
        "model": state_signature(params),
        "opt_state": state_signature(opt_state),
        "data": data_fingerprint(x, y),
        "batch_size": batch_size,
        "key": key_data(key),
    }
    same = SameUpdate(optimizer, params, opt_state)
    checkpoints = Checkpointing(checkpoint_dir, checkpoint_every)
    checkpoints.open()
    try:
        params, opt_state, start, parts = checkpoints.restore(
            params, opt_state, meta, _engine.empty_history(evals is not None),
            steps, log_every,
        )  # fmt: skip
        every = [log_every] + ([checkpoint_every] if checkpoint_every else [])
        cfg = _engine.Config(
            loss=loss_fn,
            optimizer=same,
            batch_size=batch_size,
            length=_engine.chunk_length(every, steps - start),
            mesh=mesh,
            batch_axis=axis,
        )
        run = _Run(cfg, static, key, steps, log_every, checkpoints, meta)
        params, opt_state = run.train(
            params, opt_state, x, y, evals, start, parts, progress
        )
    finally:
        checkpoints.close()
    return eqx.combine(params, static), _engine.concat_history(parts, axis=0)


@dataclasses.dataclass
class _Run:
    """The chunk loop of one `fit` call, once everything is checked and restored."""

    cfg: _engine.Config
    static: Any
    key: Any
    steps: int
    log_every: int
    checkpoints: Checkpointing
    meta: dict[str, Any]

    def train(self, params, opt_state, x, y, evals, start, parts, progress):
        cfg, mesh, n = self.cfg, self.cfg.mesh, x.shape[0]
        params, opt_state, x_p, y_p = place((params, opt_state, x, y), mesh)
        ex, ey = (None, None) if evals is None else place(evals, mesh)
        every = [self.log_every]
        if self.checkpoints.every:
            every.append(self.checkpoints.every)
        bar = Progress(self.steps, start, progress, "fit")
        try:
            for stop in _engine.chunk_bounds(start, self.steps, every):
                orders = place(_engine.chunk_orders(cfg, self.key, start, n), mesh)
                params, opt_state, losses, metrics = _engine.fit_chunk(
                    params, opt_state, orders, _engine.as_int32(start),
                    _engine.as_int32(stop), self.static, x_p, y_p, ex, ey, cfg,
                )  # fmt: skip
                parts["loss"].append(np.asarray(losses)[: stop - start])
                if stop % self.log_every == 0 or stop == self.steps:
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
                if self.checkpoints.due(stop, self.steps):
                    history = _engine.concat_history(parts, axis=0)
                    self.checkpoints.save(params, opt_state, stop, history, self.meta)
        finally:
            bar.close()
        return params, opt_state
