"""Type and value checks of the arguments of `jaxce.fit` / `jaxce.fit_ensemble`.

Every check names the argument and shows what it got, and runs before anything
is compiled. Counts accept any integer (``int`` or a NumPy integer) but not
``bool``, as the checks of `jaxce._core` do.
"""

from __future__ import annotations

import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import ArrayLike


def show(value: Any) -> str:
    """``value`` for an error message (arrays by shape and dtype)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def check_count(value: Any, name: str, *, minimum: int, what: str = "an int") -> int:
    """``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be {what}, got {show(value)}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}.")
    return int(value)


def check_optional_count(value: Any, name: str, *, minimum: int) -> int | None:
    """``None``, or ``value`` as an int >= ``minimum``."""
    if value is None:
        return None
    return check_count(value, name, minimum=minimum, what="None or an int")


def check_steps(
    steps: Any, batch_size: Any, log_every: Any, n: int
) -> tuple[int, int | None, int | None]:
    """``(steps, batch_size, log_every)`` as ints (``None`` kept), checked."""
    count = check_count(steps, "steps", minimum=0)
    batch = check_optional_count(batch_size, "batch_size", minimum=1)
    every = check_optional_count(log_every, "log_every", minimum=1)
    if batch is not None and batch > n:
        raise ValueError(
            f"`batch_size`={batch} is larger than the {n} training examples."
        )
    return count, batch, every


def check_checkpointing(checkpoint_dir: Any, checkpoint_every: Any) -> int | None:
    every = check_optional_count(checkpoint_every, "checkpoint_every", minimum=1)
    if every is not None and checkpoint_dir is None:
        raise ValueError(
            f"`checkpoint_every`={every} needs `checkpoint_dir` (where to save)."
        )
    return every


def _is_key(key: Any, batch: tuple[int, ...]) -> bool:
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is None or isinstance(key, bool | int | float):
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return shape == batch
    return dtype == jnp.uint32 and len(shape) == len(batch) + 1 and shape[:-1] == batch


def check_key(key: Any) -> None:
    """A typed PRNG key (``jax.random.key``) or a raw one (``jax.random.PRNGKey``)."""
    if not _is_key(key, ()):
        raise TypeError(
            "`key` must be a PRNG key such as `jax.random.key(0)` (it orders the "
            f"minibatches), got {show(key)}."
        )


def check_keys(keys: Any) -> int:
    """``(members,)`` typed keys or ``(members, 2)`` raw ones: the member count."""
    shape = tuple(getattr(keys, "shape", ()))
    if not shape or not _is_key(keys, shape[:1]):
        raise TypeError(
            "`keys` must be PRNG keys, one per member, e.g. "
            f"`jax.random.split(jax.random.key(0), 8)`, got {show(keys)}."
        )
    if shape[0] == 0:
        raise ValueError(f"`keys` must hold at least one key, got shape {shape}.")
    return shape[0]


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """An `optax.GradientTransformation` (anything with ``init`` and ``update``)."""
    methods = (getattr(optimizer, m, None) for m in ("init", "update"))
    if not all(callable(m) for m in methods):
        hint = (
            f" (a learning rate? pass e.g. `optax.adam({optimizer})`)"
            if isinstance(optimizer, numbers.Real)
            else ""
        )
        raise TypeError(
            "`optimizer` must be an optax.GradientTransformation such as "
            f"`optax.adam(1e-3)`, got {show(optimizer)}{hint}."
        )
    return optimizer


def check_loss(loss: Any) -> None:
    if loss is not None and not callable(loss):
        raise TypeError(
            "`loss` must be None or a function `loss(logits, labels)`, got "
            f"{show(loss)}."
        )


def check_data(x: ArrayLike, y: ArrayLike, xname: str, yname: str):
    """``x`` as a float array with a leading example axis, ``y`` matching it."""
    for value, name in ((x, xname), (y, yname)):
        if value is None or isinstance(value, str | bytes | dict):
            raise TypeError(f"`{name}` must be an array, got {show(value)}.")
    x, y = jnp.asarray(x), jnp.asarray(y)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if y.dtype == jnp.bool_:
        y = y.astype(jnp.float32)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"`{xname}` and `{yname}` must have the same (non-zero) number of "
            f"examples along axis 0, got shapes {x.shape} and {y.shape}."
        )
    return x, y


def check_eval_data(eval_data: Any, x: Any, y: Any):
    """``None`` or the checked pair ``(x_eval, y_eval)``, shaped like ``x``, ``y``."""
    if eval_data is None:
        return None
    if not isinstance(eval_data, tuple | list) or len(eval_data) != 2:
        got = show(eval_data)
        if isinstance(eval_data, tuple | list):
            got = f"a {type(eval_data).__name__} of {len(eval_data)} items"
        raise TypeError(
            f"`eval_data` must be None or a pair `(x_eval, y_eval)`, got {got}."
        )
    first, second = eval_data
    x_eval, y_eval = check_data(first, second, "eval_data[0]", "eval_data[1]")
    for name, ours, theirs, what in (
        ("eval_data[0]", x_eval, x, "x"),
        ("eval_data[1]", y_eval, y, "y"),
    ):
        if ours.shape[1:] != theirs.shape[1:]:
            raise ValueError(
                f"`{name}` has examples of shape {ours.shape[1:]}, `{what}` of shape "
                f"{theirs.shape[1:]}."
            )
    return x_eval, y_eval


def check_trainable(params: Any, name: str, model: Any) -> None:
    """``params`` (the float arrays of the model) must hold something to train."""
    if not jax.tree.leaves(params):
        raise ValueError(
            f"`{name}` has no floating-point arrays to train, got {show(model)}; "
            "pass an equinox.Module such as `jaxce.models.SoftmaxRegression`."
        )


def example_output(model: Any, example: Any, name: str) -> Any:
    """The shape of ``model(example)`` (traced, not run), or a clear error."""
    if not callable(model):
        raise TypeError(f"`{name}` must be callable on one example, got {show(model)}.")
    try:
        return eqx.filter_eval_shape(lambda m, e: m(e), model, example)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{name}` cannot take one example of `x` (shape {tuple(example.shape)}, "
            f"{example.dtype}): {err}"
        ) from err
