"""The compiled training engine behind `jaxce.fit` and `jaxce.fit_ensemble`.

One call of :func:`train_chunk` runs up to ``cfg.length`` optimiser steps inside a
`jax.lax.scan` (steps at or after ``stop`` are skipped by a `jax.lax.cond`, so one
compilation serves every chunk), then evaluates the metrics once. The minibatch of
step ``s`` depends only on ``(key, s)``: epoch ``e = s // (n // batch_size)`` uses
the permutation ``jax.random.permutation(fold_in(key, e), n)`` and takes the
``s % (n // batch_size)``-th block of it (the ``n % batch_size`` examples left over
sit out that epoch). That is what lets a resumed run replay the same order. The
permutations a chunk needs are computed by `epoch_orders`, compiled separately.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array

from .._losses._binary import sigmoid_binary_cross_entropy
from .._losses._softmax import sparse_softmax_cross_entropy
from ._structure import SameUpdate

LossFn = Callable[[Array, Array], Array]


_DEFAULT_OPTIMIZER = optax.adam(1e-2)


def default_optimizer() -> optax.GradientTransformation:
    """The optimiser `jaxce.fit` uses when none is given: ``optax.adam(1e-2)``.

    One shared object, so repeated `fit` calls reuse the compiled chunk.
    """
    return _DEFAULT_OPTIMIZER


def natural_loss(out: Any) -> LossFn:
    """Sigmoid BCE for a scalar logit, sparse softmax CE for ``(classes,)`` logits.

    ``out`` is the shape of the model's output for one example (`eval_shape`).
    """
    shape = getattr(out, "shape", None)
    if shape == ():
        return sigmoid_binary_cross_entropy
    if shape is not None and len(shape) == 1:
        return sparse_softmax_cross_entropy
    raise ValueError(
        "`loss=None` needs a model returning a scalar logit or (classes,) logits "
        f"for one example; this model returns {out}. Pass `loss=` explicitly."
    )


def accuracy(logits: Array, y: Array) -> Array:
    """Fraction of correct predictions (``logit > 0`` or argmax; soft targets ok)."""
    if logits.ndim == 1:
        truth = y.astype(jnp.float32) > 0.5
        return jnp.mean((logits > 0) == truth, dtype=jnp.float32)
    pred = jnp.argmax(logits, axis=-1)
    truth = jnp.argmax(y, axis=-1) if y.ndim == logits.ndim else y
    return jnp.mean(pred == truth, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything static about a training run (hashable: it keys the jit cache)."""

    loss: LossFn
    optimizer: SameUpdate
    batch_size: int | None
    length: int
    mesh: Mesh | None = None
    batch_axis: str | None = None


def _explicit(cfg: Config) -> bool:
    """Whether ``cfg.batch_axis`` is an Explicit mesh axis (sharding in types)."""
    mesh, axis = cfg.mesh, cfg.batch_axis
    if mesh is None:
        return False
    return mesh.axis_types[mesh.axis_names.index(axis)] == AxisType.Explicit


def _shard_batch(cfg: Config, tree):
    """Split the leading (batch) axis over ``cfg.batch_axis`` of ``cfg.mesh``."""
    if cfg.mesh is None:
        return tree
    sharding = NamedSharding(cfg.mesh, PartitionSpec(cfg.batch_axis))
    if _explicit(cfg):
        return jax.tree.map(lambda a: jax.sharding.reshard(a, sharding), tree)
    return jax.lax.with_sharding_constraint(tree, sharding)


def padded_rows(cfg: Config, rows: int) -> int:
    """``rows`` rounded up to a multiple of the size of ``cfg.batch_axis``."""
    if cfg.mesh is None or cfg.batch_axis is None:
        return rows
    size = cfg.mesh.shape[cfg.batch_axis]
    return -(-rows // size) * size


def _replicate(cfg: Config, a: Array) -> Array:
    """``a`` resharded to replicated on an Explicit batch axis (else as it is)."""
    if not _explicit(cfg):
        return a
    assert cfg.mesh is not None
    return jax.sharding.reshard(a, NamedSharding(cfg.mesh, PartitionSpec()))


def _batch_logits(model, x, cfg: Config) -> Array:
    """The logits of the minibatch ``x``, its rows split over ``cfg.batch_axis``.

    A minibatch that does not divide over the axis is padded with repeats of its
    first examples (real inputs, so the model sees nothing unusual); the model
    runs on the evenly split, padded batch and the padding's logits are dropped
    here, so they reach neither the loss nor the gradient. An uneven split is no
    array layout, so on Explicit axes the logits are replicated before the drop.
    """
    rows = x.shape[0]
    padded = padded_rows(cfg, rows)
    if padded == rows:
        return jax.vmap(model)(_shard_batch(cfg, x))
    x = _shard_batch(cfg, x[jnp.arange(padded) % rows])
    return _replicate(cfg, jax.vmap(model)(x))[:rows]


def _batch_loss(model, x, y, cfg: Config):
    logits = _batch_logits(model, x, cfg)
    if padded_rows(cfg, x.shape[0]) == x.shape[0]:
        y = _shard_batch(cfg, y)
    value = cfg.loss(logits, y)
    if jnp.shape(value) != ():
        raise ValueError(
            f"`loss(logits, labels)` must return a scalar, got shape "
            f"{jnp.shape(value)}; use a reduction such as 'mean'."
        )
    return value


def _metrics(model, x, y, loss_fn, prefix: str) -> dict[str, Array]:
    logits = jax.vmap(model)(x)
    return {
        f"{prefix}loss": jnp.asarray(loss_fn(logits, y), jnp.float32),
        f"{prefix}accuracy": accuracy(logits, y),
    }


def epochs_per_chunk(cfg: Config, n: int) -> int:
    """How many epoch permutations one chunk of ``cfg.length`` steps can touch."""
    if cfg.batch_size is None:
        return 0
    return (cfg.length - 1) // (n // cfg.batch_size) + 2


@functools.partial(jax.jit, static_argnums=(2, 3))
def epoch_orders(key, first_epoch, count: int, n: int) -> Array:
    """``(count, n)``: the permutations of epochs ``first_epoch .. + count - 1``.

    Compiled on its own (the threefry-based shuffle is slow to compile), so the
    training chunks of every configuration share it.
    """
    epochs = first_epoch + jnp.arange(count, dtype=jnp.int32)

    def order(epoch):
        return jax.random.permutation(jax.random.fold_in(key, epoch), n)

    return jax.vmap(order)(epochs).astype(jnp.int32)


def train_chunk(params, opt_state, orders, start, stop, static, x, y, ex, ey, cfg):
    """Run steps ``start .. stop - 1`` (at most ``cfg.length``) and the metrics.

    ``orders`` holds the permutations of the epochs from ``start``'s onwards
    (`epoch_orders`); it is empty for full-batch training.
    """
    bs = cfg.batch_size
    per_epoch = 1 if bs is None else x.shape[0] // bs
    first_epoch = start // per_epoch

    def step_fn(carry, step):
        def run(carry):
            params, opt_state = carry
            if bs is None:
                xb, yb = x, y
            else:
                row = jax.lax.dynamic_index_in_dim(
                    orders, step // per_epoch - first_epoch, keepdims=False
                )
                idx = jax.lax.dynamic_slice_in_dim(row, (step % per_epoch) * bs, bs)
                xb, yb = x[idx], y[idx]
            model = eqx.combine(params, static)
            value, grads = eqx.filter_value_and_grad(_batch_loss)(model, xb, yb, cfg)
            grads = eqx.filter(grads, eqx.is_inexact_array)
            updates, opt_state = cfg.optimizer.update(grads, opt_state, params)
            params = eqx.apply_updates(params, updates)
            return (params, opt_state), jnp.asarray(value, jnp.float32)

        def skip(carry):
            return carry, jnp.full((), jnp.nan, jnp.float32)

        return jax.lax.cond(step < stop, run, skip, carry)

    steps = start + jnp.arange(cfg.length, dtype=jnp.int32)
    (params, opt_state), losses = jax.lax.scan(step_fn, (params, opt_state), steps)
    model = eqx.combine(params, static)
    metrics = _metrics(model, x, y, cfg.loss, "")
    del metrics["loss"]  # the per-step minibatch loss is what "loss" reports
    if ex is not None:
        metrics.update(_metrics(model, ex, ey, cfg.loss, "eval_"))
    return params, opt_state, losses, metrics


def chunk_orders(cfg: Config, key, start: int, n: int, members: bool = False):
    """The ``orders`` argument of `train_chunk` for the chunk beginning at ``start``."""
    count = epochs_per_chunk(cfg, n)
    if count == 0:
        shape = (key.shape[0], 0, 0) if members else (0, 0)
        return jnp.zeros(shape, jnp.int32)
    assert cfg.batch_size is not None
    first = as_int32(start // (n // cfg.batch_size))
    if members:
        # a loop, not vmap: reuses the one compiled `epoch_orders`
        return jnp.stack([epoch_orders(k, first, count, n) for k in key])
    return epoch_orders(key, first, count, n)


_fit_chunk = eqx.filter_jit(train_chunk)
_members = eqx.filter_vmap(
    train_chunk, in_axes=(0, 0, 0, None, None, None, None, None, None, None, None)
)
_ensemble_chunk = eqx.filter_jit(_members)


def _members_over_mesh(
    mesh, axis, params, opt_state, orders, start, stop, static, *rest
):
    """`_members` under `jax.shard_map`: each device trains its slice of members.

    Parameters, optimizer state and data orders are split over ``axis`` along
    their leading (member) axis; the data and the step bounds are replicated.
    Members are independent, so no collective runs and every member computes
    exactly what it computes on one device.
    """
    x, y, ex, ey, cfg = rest
    split, whole = PartitionSpec(axis), PartitionSpec()

    def body(params, opt_state, orders, start, stop, x, y, ex, ey):
        return _members(
            params, opt_state, orders, start, stop, static, x, y, ex, ey, cfg
        )

    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(split, split, split, whole, whole, whole, whole, whole, whole),
        out_specs=split,
        check_vma=False,  # per-member code, written without varying-axis types
    )(params, opt_state, orders, start, stop, x, y, ex, ey)


_ensemble_chunk_mesh = eqx.filter_jit(_members_over_mesh)


def fit_chunk(*args):
    """The compiled `train_chunk`, traced under standard dtype promotion.

    Optax's optimisers (e.g. ``decay ** count`` in Adam's bias correction) are
    not written for ``jax_numpy_dtype_promotion="strict"``, so the training step
    is traced under the standard rules whatever the global setting is.
    """
    with jax.numpy_dtype_promotion("standard"):
        return _fit_chunk(*args)


def ensemble_chunk(*args, mesh: Mesh | None = None, axis: str | None = None):
    """`fit_chunk` vmapped over members (parameters, optimizer state, key).

    With ``mesh``, the members are split over its axis ``axis``.
    """
    with jax.numpy_dtype_promotion("standard"):
        if mesh is None:
            return _ensemble_chunk(*args)
        return _ensemble_chunk_mesh(mesh, axis, *args)


def as_int32(value: int) -> Array:
    return jnp.asarray(value, dtype=jnp.int32)


def empty_history(eval_data: bool) -> dict[str, list[np.ndarray]]:
    names = ["loss", "step", "accuracy"]
    if eval_data:
        names += ["eval_loss", "eval_accuracy"]
    return {name: [] for name in names}


def concat_history(parts: dict[str, list[np.ndarray]], axis: int):
    """Join the per-chunk pieces (``axis=-1``: the step axis, members first)."""
    return {
        k: np.concatenate(v, axis=axis if k != "step" else 0)
        if v
        else np.zeros((0,), np.int32 if k == "step" else np.float32)
        for k, v in parts.items()
    }


def chunk_bounds(start: int, steps: int, every: list[int]) -> list[int]:
    """Where the chunks from ``start`` to ``steps`` stop: multiples of ``every``."""
    stops, s = [], start
    while s < steps:
        s = min([steps] + [(s // e + 1) * e for e in every])
        stops.append(s)
    return stops


def chunk_length(every: list[int], remaining: int) -> int:
    """Steps per compiled chunk: at most ``min(every)``, covering ``remaining``.

    Shorter runs round up to a power of two (the steps past ``stop`` are skipped
    inside the chunk), so calls of 5, 6 or 8 remaining steps share one program.
    """
    cap = min(every)
    return min(cap, 1 << max(remaining - 1, 0).bit_length())
