"""Keras loss classes for binary (sigmoid) losses: cross-entropy and focal."""

from __future__ import annotations

import jax.numpy as jnp
import keras
from jaxtyping import Array, ArrayLike

from .._binary import binary_cross_entropy, sigmoid_binary_cross_entropy
from .._focal import sigmoid_focal_loss
from ._base import (
    Dtype,
    Floats,
    JaxceLoss,
    Number,
    as_array,
    check_from_logits,
    check_gamma,
    check_logits_only,
    check_smoothing,
    register,
    same_rank,
    to_floats,
)


@register
class BinaryCrossentropy(JaxceLoss):
    r"""Binary cross-entropy, as a Keras loss.

    ``call`` returns `jaxce.sigmoid_binary_cross_entropy` (``from_logits=True``) or
    `jaxce.binary_cross_entropy` (``from_logits=False``, clipping at
    ``keras.config.epsilon()``) per element, averaged over ``axis`` as Keras'
    ``BinaryCrossentropy`` does:

    $$L = -\operatorname{mean}_{\text{axis}}
        \left[p_w\, y \log \sigma(z) + (1 - y) \log \sigma(-z)\right]$$

    with labels smoothed towards 0.5, $(1 - \varepsilon) y + \varepsilon / 2$.
    Keras then applies ``sample_weight`` (one per row) and ``reduction``. Labels
    of shape ``(N,)`` with predictions ``(N, 1)`` are aligned as in Keras.

    Args:
        from_logits: ``y_pred`` holds logits (default; Keras' default is False) or
            probabilities.
        label_smoothing: $\varepsilon \in [0, 1)$.
        pos_weight: weight $p_w$ of the positive term, a scalar or one per entry
            of the last axis (PyTorch ``pos_weight``); logits only.
        axis: the axis the per-element losses are averaged over.
        reduction: Keras' ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None.
        name: the loss's name.
        dtype: Keras' loss dtype; None is floatx.

    Examples:
        >>> import numpy as np
        >>> from jaxce.keras import BinaryCrossentropy
        >>> labels = np.array([[0.0, 1.0], [0.0, 0.0]])
        >>> logits = np.array([[-18.6, 0.51], [2.94, -12.8]])
        >>> print(BinaryCrossentropy()(labels, logits))
        0.86546
        >>> print(BinaryCrossentropy(pos_weight=[1.0, 2.0], reduction=None)(
        ...     labels, logits))
        [0.47031 1.49576]
    """

    _config = ("from_logits", "label_smoothing", "pos_weight", "axis")

    def __init__(
        self,
        *,
        from_logits: bool = True,
        label_smoothing: Number = 0.0,
        pos_weight: Floats | None = None,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "binary_crossentropy",
        dtype: Dtype = None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.from_logits = check_from_logits(from_logits)
        self.label_smoothing = check_smoothing(label_smoothing)
        self.pos_weight = to_floats(pos_weight, "pos_weight")
        self.axis = int(axis)
        if self.pos_weight is not None and not self.from_logits:
            raise ValueError(
                "`pos_weight` needs logits: it is only available with "
                "from_logits=True (jaxce.binary_cross_entropy has no pos_weight)."
            )

    def call(self, y_true: ArrayLike, y_pred: ArrayLike) -> Array:
        labels, y_pred = same_rank(jnp.asarray(y_true), jnp.asarray(y_pred))
        smoothing = self.label_smoothing
        if self.from_logits:
            losses = sigmoid_binary_cross_entropy(
                y_pred, labels, pos_weight=as_array(self.pos_weight, y_pred),
                label_smoothing=smoothing, reduction="none",
            )  # fmt: skip
        else:
            losses = binary_cross_entropy(
                y_pred, labels, eps=keras.config.epsilon(),
                label_smoothing=smoothing, reduction="none",
            )  # fmt: skip
        return jnp.mean(losses, axis=self.axis)


@register
class BinaryFocalCrossentropy(JaxceLoss):
    r"""Sigmoid focal loss, as a Keras loss (logits only).

    ``call`` returns `jaxce.sigmoid_focal_loss` per element, averaged over
    ``axis`` as Keras' ``BinaryFocalCrossentropy`` does; with $p = \sigma(z)$,
    $p_t = p y + (1 - p)(1 - y)$ and $\alpha_t = \alpha y + (1 - \alpha)(1 - y)$:

    $$L = -\operatorname{mean}_{\text{axis}}\, \alpha_t (1 - p_t)^\gamma
        \left[y \log \sigma(z) + (1 - y) \log \sigma(-z)\right]$$

    ``alpha=a`` is Keras' ``apply_class_balancing=True, alpha=a``; ``alpha=None``
    (default) is Keras' default ``apply_class_balancing=False``. Keras then applies
    ``sample_weight`` and ``reduction``.

    Args:
        alpha: balance $\alpha \in [0, 1]$ of the positive class, or None.
        gamma: focusing parameter $\gamma \ge 0$.
        from_logits: must be True: jaxce's focal loss takes logits.
        axis: the axis the per-element losses are averaged over.
        reduction: Keras' ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None.
        name: the loss's name.
        dtype: Keras' loss dtype; None is floatx.

    Examples:
        >>> import numpy as np
        >>> from jaxce.keras import BinaryFocalCrossentropy
        >>> labels = np.array([0.0, 1.0, 0.0, 0.0])
        >>> logits = np.array([-18.6, 0.51, 2.94, -12.8])
        >>> print(BinaryFocalCrossentropy(gamma=2.0)(labels, logits))
        0.69121
        >>> print(BinaryFocalCrossentropy(alpha=0.25, gamma=2.0)(labels, logits))
        0.51013
    """

    _config = ("alpha", "gamma", "from_logits", "axis")

    def __init__(
        self,
        *,
        alpha: Number | None = None,
        gamma: Number = 2.0,
        from_logits: bool = True,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "binary_focal_crossentropy",
        dtype: Dtype = None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.from_logits = check_from_logits(from_logits)
        check_logits_only(self, self.from_logits, "jaxce.sigmoid_focal_loss")
        self.alpha = None if alpha is None else float(alpha)
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1] or None, got {alpha!r}.")
        self.gamma = check_gamma(gamma)
        self.axis = int(axis)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike) -> Array:
        labels, y_pred = same_rank(jnp.asarray(y_true), jnp.asarray(y_pred))
        losses = sigmoid_focal_loss(
            y_pred, labels, alpha=self.alpha, gamma=self.gamma, reduction="none"
        )
        return jnp.mean(losses, axis=self.axis)
