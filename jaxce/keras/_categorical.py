"""Keras loss classes for softmax losses: integer labels, target distributions,
focal."""

from __future__ import annotations

import jax.numpy as jnp
import keras
import numpy as np
from jaxtyping import Array, ArrayLike

from .._losses._focal import softmax_focal_loss
from .._losses._probability import (
    categorical_cross_entropy,
    sparse_categorical_cross_entropy,
)
from .._losses._softmax import softmax_cross_entropy, sparse_softmax_cross_entropy
from ._base import (
    Dtype,
    Floats,
    JaxceLoss,
    Number,
    as_array,
    categorical_logits,
    check_from_logits,
    check_gamma,
    check_smoothing,
    mask_ignored,
    register,
    sparse_labels,
    to_floats,
    to_index,
)


@register
class SparseCategoricalCrossentropy(JaxceLoss):
    r"""Softmax cross-entropy with integer labels, as a Keras loss:
    ``keras.losses.SparseCategoricalCrossentropy``'s arguments and defaults, plus
    ``label_smoothing``, ``class_weights`` and ``z_loss``.

    ``call`` returns `jaxce.sparse_categorical_cross_entropy` (``from_logits=False``,
    the default, as in Keras: probabilities clipped at ``keras.config.epsilon()``)
    or `jaxce.sparse_softmax_cross_entropy` (``from_logits=True``) per element,
    ``reduction="none"``; from logits:

    $$L = (1 - \varepsilon)\, w_y (\operatorname{lse} - z_y)
        + \frac{\varepsilon}{K} \sum_c w_c (\operatorname{lse} - z_c)
        + \lambda\, \operatorname{lse}^2$$

    Keras then applies ``sample_weight`` and ``reduction``. Elements labelled
    ``ignore_class`` are masked as in Keras' ``SparseCategoricalCrossentropy``: the
    default ``"sum_over_batch_size"`` divides by the number of the others. The
    result is jaxce's ``reduction="sum_over_batch_size"`` with
    ``weights=sample_weight``; it is jaxce's ``"mean"`` only without
    ``class_weights`` and ``sample_weight`` (``"mean"`` divides by
    ``sum(weights * w_y)``). Keras' ``y_true`` (floats, maybe ``(N, 1)``) is cast to
    int32 labels.

    Args:
        from_logits: ``y_pred`` holds probabilities (False, Keras' default) or
            logits (True: pass the scores before the final softmax; more
            accurate).
        ignore_class: the label of elements to leave out (jaxce ``ignore_index``).
        reduction: Keras' ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None.
        axis: the class axis of ``y_pred``.
        name: the loss's name.
        dtype: Keras' loss dtype; None is floatx. Keras casts ``y_pred`` and the
            labels to it: keep float32 for more than 256 (bfloat16) or 2048
            (float16) classes.
        label_smoothing: (jaxce, keyword-only) $\varepsilon \in [0, 1)$, towards
            the uniform $1/K$.
        class_weights: (jaxce, keyword-only) ``(classes,)`` per-class weights $w$.
        z_loss: (jaxce, keyword-only) $\lambda \ge 0$ (PaLM z-loss); logits only.

    Examples:
        >>> import numpy as np
        >>> from jaxce.keras import SparseCategoricalCrossentropy
        >>> probs = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        >>> print(SparseCategoricalCrossentropy()(np.array([1, 2]), probs))
        1.17694
        >>> logits = np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
        >>> labels = np.array([0, 2, -1])
        >>> loss = SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
        >>> print(loss(labels, logits))
        0.22196
        >>> print(loss(labels, logits, sample_weight=np.array([1.0, 3.0, 1.0])))
        0.31690
        >>> per_element = SparseCategoricalCrossentropy(
        ...     from_logits=True, ignore_class=-1, reduction=None, z_loss=1e-3)
        >>> print(per_element(labels, logits))
        [0.35453 0.10450 0.00000]
    """

    _config = (
        "from_logits", "ignore_class", "axis", "label_smoothing", "class_weights",
        "z_loss",
    )  # fmt: skip

    def __init__(
        self,
        from_logits: bool = False,
        ignore_class: int | np.integer | None = None,
        reduction: str | None = "sum_over_batch_size",
        axis: int = -1,
        name: str | None = "sparse_categorical_crossentropy",
        dtype: Dtype = None,
        *,
        label_smoothing: Number = 0.0,
        class_weights: Floats | None = None,
        z_loss: Number = 0.0,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.from_logits = check_from_logits(from_logits)
        self.ignore_class = to_index(ignore_class, "ignore_class")
        self.axis = int(axis)
        self.label_smoothing = check_smoothing(label_smoothing)
        self.class_weights = to_floats(class_weights, "class_weights")
        self.z_loss = float(z_loss)
        if self.z_loss < 0 or not np.isfinite(self.z_loss):
            raise ValueError(f"`z_loss` must be >= 0, got {z_loss!r}.")
        if self.z_loss and not self.from_logits:
            raise ValueError(
                "`z_loss` needs logits: it is only available with from_logits=True "
                f"(got z_loss={z_loss!r}, from_logits=False)."
            )

    def call(self, y_true: ArrayLike, y_pred: ArrayLike) -> Array:
        y_pred = jnp.asarray(y_pred)
        labels = sparse_labels(jnp.asarray(y_true), y_pred, self.axis)
        w = as_array(self.class_weights, y_pred)
        if self.from_logits:
            losses = sparse_softmax_cross_entropy(
                y_pred, labels, axis=self.axis, class_weights=w,
                ignore_index=self.ignore_class, label_smoothing=self.label_smoothing,
                z_loss=self.z_loss, reduction="none",
            )  # fmt: skip
        else:
            losses = sparse_categorical_cross_entropy(
                y_pred, labels, axis=self.axis, eps=keras.config.epsilon(),
                class_weights=w, ignore_index=self.ignore_class,
                label_smoothing=self.label_smoothing, reduction="none",
            )  # fmt: skip
        return mask_ignored(losses, labels, self.ignore_class)


@register
class CategoricalCrossentropy(JaxceLoss):
    r"""Softmax cross-entropy with target distributions, as a Keras loss:
    ``keras.losses.CategoricalCrossentropy``'s arguments and defaults, plus
    ``class_weights``.

    ``call`` returns `jaxce.categorical_cross_entropy` (``from_logits=False``, the
    default, as in Keras: probabilities clipped at ``keras.config.epsilon()``) or
    `jaxce.softmax_cross_entropy` (``from_logits=True``) per element,
    ``reduction="none"``:
    $L = -\sum_c w_c\, t_c \log \operatorname{softmax}(z)_c$ with targets smoothed
    to $(1 - \varepsilon) t + \varepsilon / K$ (Keras' smoothing). Keras then
    applies ``sample_weight`` and ``reduction``: the default is jaxce's
    ``reduction="sum_over_batch_size"``. Unlike Keras, probabilities are not
    renormalised to sum to 1 (they agree on rows that do).

    Args:
        from_logits: ``y_pred`` holds probabilities (False, Keras' default) or
            logits (True).
        label_smoothing: $\varepsilon \in [0, 1)$.
        axis: the class axis.
        reduction: Keras' ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None.
        name: the loss's name.
        dtype: Keras' loss dtype; None is floatx.
        class_weights: (jaxce, keyword-only) ``(classes,)`` per-class weights $w$.

    Examples:
        >>> import numpy as np
        >>> from jaxce.keras import CategoricalCrossentropy
        >>> targets = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> probs = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        >>> print(CategoricalCrossentropy()(targets, probs))  # Keras' docstring: 1.177
        1.17694
        >>> logits = np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> soft = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
        >>> print(CategoricalCrossentropy(from_logits=True, reduction="none")(
        ...     soft, logits))
        [0.34901 1.59492]
        >>> print(CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
        ...     soft, logits))
        1.06363
    """

    _config = ("from_logits", "label_smoothing", "axis", "class_weights")

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: Number = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "categorical_crossentropy",
        dtype: Dtype = None,
        *,
        class_weights: Floats | None = None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.from_logits = check_from_logits(from_logits)
        self.label_smoothing = check_smoothing(label_smoothing)
        self.axis = int(axis)
        self.class_weights = to_floats(class_weights, "class_weights")

    def call(self, y_true: ArrayLike, y_pred: ArrayLike) -> Array:
        y_pred = jnp.asarray(y_pred)
        targets = jnp.asarray(y_true).astype(y_pred.dtype)
        w = as_array(self.class_weights, y_pred)
        smoothing = self.label_smoothing
        if self.from_logits:
            return softmax_cross_entropy(
                y_pred, targets, axis=self.axis, class_weights=w,
                label_smoothing=smoothing, reduction="none",
            )  # fmt: skip
        return categorical_cross_entropy(
            y_pred, targets, axis=self.axis, eps=keras.config.epsilon(),
            class_weights=w, label_smoothing=smoothing, reduction="none",
        )  # fmt: skip


@register
class SparseCategoricalFocalCrossentropy(JaxceLoss):
    r"""Softmax focal loss with integer labels, as a Keras loss: the arguments and
    defaults of ``keras.losses.CategoricalFocalCrossentropy`` (which takes one-hot
    targets) for integer labels, plus ``ignore_class``.

    ``call`` returns `jaxce.softmax_focal_loss` per element, with
    $p_y = \operatorname{softmax}(z)_y$:

    $$L = -\alpha_y (1 - p_y)^\gamma \log p_y$$

    Keras' ``CategoricalFocalCrossentropy(alpha=a, gamma=g, from_logits=f)`` on
    one-hot targets is this class with the same arguments on their ``argmax``
    labels. Probabilities (``from_logits=False``, the default) are renormalised
    and clipped at ``keras.config.epsilon()`` as Keras does, then taken as the
    logits $\log p$. ``ignore_class`` masks elements as in
    `SparseCategoricalCrossentropy`. Keras then applies ``sample_weight`` and
    ``reduction``.

    Args:
        alpha: a scalar $\alpha \ge 0$ (Keras' default 0.25), one $\alpha_c$ per
            class, or None (1).
        gamma: focusing parameter $\gamma \ge 0$ (2).
        from_logits: ``y_pred`` holds probabilities (False, Keras' default) or
            logits (True).
        ignore_class: the label of elements to leave out (jaxce ``ignore_index``).
        axis: the class axis of ``y_pred``.
        reduction: Keras' ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None.
        name: the loss's name.
        dtype: Keras' loss dtype; None is floatx. Keras casts ``y_pred`` and the
            labels to it: keep float32 for more than 256 (bfloat16) or 2048
            (float16) classes.

    Examples:
        Keras' ``CategoricalFocalCrossentropy`` docstring example, on labels:

        >>> import numpy as np
        >>> from jaxce.keras import SparseCategoricalFocalCrossentropy
        >>> probs = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        >>> print(SparseCategoricalFocalCrossentropy()(np.array([1, 2]), probs))
        0.23315
        >>> logits = np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> loss = SparseCategoricalFocalCrossentropy(from_logits=True, reduction=None)
        >>> print(loss(np.array([0, 1]), logits))
        [0.00757 0.70525]
    """

    _config = ("alpha", "gamma", "from_logits", "ignore_class", "axis")

    def __init__(
        self,
        alpha: Floats | None = 0.25,
        gamma: Number = 2.0,
        from_logits: bool = False,
        ignore_class: int | np.integer | None = None,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "sparse_categorical_focal_crossentropy",
        dtype: Dtype = None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.alpha = to_floats(alpha, "alpha")
        if self.alpha is not None and np.any(np.asarray(self.alpha) < 0):
            raise ValueError(f"`alpha` must be >= 0, got {alpha!r}.")
        self.gamma = check_gamma(gamma)
        self.from_logits = check_from_logits(from_logits)
        self.ignore_class = to_index(ignore_class, "ignore_class")
        self.axis = int(axis)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike) -> Array:
        y_pred = jnp.asarray(y_pred)
        labels = sparse_labels(jnp.asarray(y_true), y_pred, self.axis)
        logits = y_pred if self.from_logits else categorical_logits(y_pred, self.axis)
        losses = softmax_focal_loss(
            logits, labels, axis=self.axis, alpha=as_array(self.alpha, y_pred),
            gamma=self.gamma, ignore_index=self.ignore_class, reduction="none",
        )  # fmt: skip
        return mask_ignored(losses, labels, self.ignore_class)
