"""Keras loss classes for binary (sigmoid) losses: cross-entropy and focal."""

from __future__ import annotations

import jax.numpy as jnp
import keras
from jaxtyping import Array, ArrayLike

from .._losses._binary import binary_cross_entropy, sigmoid_binary_cross_entropy
from .._losses._focal import sigmoid_focal_loss
from ._base import (
    Dtype,
    Floats,
    JaxceLoss,
    Number,
    as_array,
    binary_logits,
    check_alpha,
    check_flag,
    check_from_logits,
    check_gamma,
    check_smoothing,
    register,
    same_rank,
    to_floats,
)


@register
class BinaryCrossentropy(JaxceLoss):
    r"""Binary cross-entropy, as a Keras loss: ``keras.losses.BinaryCrossentropy``'s
    arguments and defaults, plus ``pos_weight``.

    ``call`` returns `jaxce.binary_cross_entropy` (``from_logits=False``, the
    default, as in Keras: probabilities clipped at ``keras.config.epsilon()``) or
    `jaxce.sigmoid_binary_cross_entropy` (``from_logits=True``) per element,
    averaged over ``axis`` as Keras' ``BinaryCrossentropy`` does; from logits:

    $$L = -\operatorname{mean}_{\text{axis}}
        \left[p_w\, y \log \sigma(z) + (1 - y) \log \sigma(-z)\right]$$

    with labels smoothed towards 0.5, $(1 - \varepsilon) y + \varepsilon / 2$.
    Keras then applies ``sample_weight`` (one per row) and ``reduction``. Labels
    of shape ``(N,)`` with predictions ``(N, 1)`` are aligned as in Keras.

    Args:
        from_logits: ``y_pred`` holds probabilities (False, Keras' default) or
            logits (True: pass the scores before the final sigmoid; more
            accurate).
        label_smoothing: $\varepsilon \in [0, 1)$.
        axis: the axis the per-element losses are averaged over.
        reduction: Keras' ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None.
        name: the loss's name.
        dtype: Keras' loss dtype; None is floatx.
        pos_weight: (jaxce, keyword-only) weight $p_w$ of the positive term, a
            scalar or one per entry of the last axis (PyTorch ``pos_weight``);
            logits only.

    Examples:
        >>> import numpy as np
        >>> from jaxce.keras import BinaryCrossentropy
        >>> labels = np.array([[0.0, 1.0], [0.0, 0.0]])
        >>> probs = np.array([[0.6, 0.4], [0.4, 0.6]])
        >>> print(BinaryCrossentropy()(labels, probs))  # Keras' docstring: 0.8149
        0.81492
        >>> logits = np.array([[-18.6, 0.51], [2.94, -12.8]])
        >>> print(BinaryCrossentropy(from_logits=True)(labels, logits))
        0.86546
        >>> print(BinaryCrossentropy(from_logits=True, pos_weight=[1.0, 2.0],
        ...                          reduction=None)(labels, logits))
        [0.47031 1.49576]
    """

    _config = ("from_logits", "label_smoothing", "axis", "pos_weight")

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: Number = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "binary_crossentropy",
        dtype: Dtype = None,
        *,
        pos_weight: Floats | None = None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.from_logits = check_from_logits(from_logits)
        self.label_smoothing = check_smoothing(label_smoothing)
        self.axis = int(axis)
        self.pos_weight = to_floats(pos_weight, "pos_weight")
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
    r"""Sigmoid focal loss, as a Keras loss: ``keras.losses.BinaryFocalCrossentropy``'s
    arguments and defaults.

    ``call`` returns `jaxce.sigmoid_focal_loss` per element, averaged over
    ``axis`` as Keras' ``BinaryFocalCrossentropy`` does; with $p = \sigma(z)$,
    $p_t = p y + (1 - p)(1 - y)$ and, with ``apply_class_balancing=True``,
    $\alpha_t = \alpha y + (1 - \alpha)(1 - y)$ (else 1):

    $$L = -\operatorname{mean}_{\text{axis}}\, \alpha_t (1 - p_t)^\gamma
        \left[y \log \sigma(z) + (1 - y) \log \sigma(-z)\right]$$

    with labels smoothed towards 0.5 first, as in Keras. Probabilities
    (``from_logits=False``, the default) are clipped at ``keras.config.epsilon()``
    and taken as the logits $\log p - \log(1 - p)$ (jaxce's focal loss is in
    log space). Keras then applies ``sample_weight`` and ``reduction``.

    Args:
        apply_class_balancing: weigh by $\alpha_t$ (Keras' default: False).
        alpha: balance $\alpha \in [0, 1]$ of the positive class (0.25).
        gamma: focusing parameter $\gamma \ge 0$ (2).
        from_logits: ``y_pred`` holds probabilities (False, Keras' default) or
            logits (True).
        label_smoothing: $\varepsilon \in [0, 1)$, towards 0.5.
        axis: the axis the per-element losses are averaged over.
        reduction: Keras' ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None.
        name: the loss's name.
        dtype: Keras' loss dtype; None is floatx.

    Examples:
        Keras' docstring examples:

        >>> import numpy as np
        >>> from jaxce.keras import BinaryFocalCrossentropy
        >>> labels = np.array([0.0, 1.0, 0.0, 0.0])
        >>> logits = np.array([-18.6, 0.51, 2.94, -12.8])
        >>> print(BinaryFocalCrossentropy(gamma=2.0, from_logits=True)(labels, logits))
        0.69121
        >>> balanced = BinaryFocalCrossentropy(
        ...     apply_class_balancing=True, gamma=2.0, from_logits=True)
        >>> print(balanced(labels, logits))
        0.51013
    """

    _config = (
        "apply_class_balancing", "alpha", "gamma", "from_logits", "label_smoothing",
        "axis",
    )  # fmt: skip

    def __init__(
        self,
        apply_class_balancing: bool = False,
        alpha: Number = 0.25,
        gamma: Number = 2.0,
        from_logits: bool = False,
        label_smoothing: Number = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "binary_focal_crossentropy",
        dtype: Dtype = None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.apply_class_balancing = check_flag(
            apply_class_balancing, "apply_class_balancing"
        )
        self.alpha = check_alpha(alpha)
        self.gamma = check_gamma(gamma)
        self.from_logits = check_from_logits(from_logits)
        self.label_smoothing = check_smoothing(label_smoothing)
        self.axis = int(axis)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike) -> Array:
        labels, y_pred = same_rank(jnp.asarray(y_true), jnp.asarray(y_pred))
        if self.label_smoothing:
            e = self.label_smoothing
            labels = labels * (1 - e) + e / 2
        logits = y_pred if self.from_logits else binary_logits(y_pred)
        losses = sigmoid_focal_loss(
            logits, labels, alpha=self.alpha if self.apply_class_balancing else None,
            gamma=self.gamma, reduction="none",
        )  # fmt: skip
        return jnp.mean(losses, axis=self.axis)
