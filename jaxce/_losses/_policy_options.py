"""The checked, static options of `jaxce.policy_loss` and
`jaxce.linear_policy_loss` (Liger-Kernel 0.8.5's names and rules)."""

from __future__ import annotations

import dataclasses
import math

import jax

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")


@dataclasses.dataclass(frozen=True)
class PolicyOptions:
    """The checked, static options of a policy loss."""

    loss_type: str
    epsilon_low: float
    epsilon_high: float
    beta: float
    delta: float | None
    level: str
    max_completion_length: int | None
    sapo_temperature_pos: float
    sapo_temperature_neg: float
    use_bias_correction_kl: bool
    vespo: tuple[float, float, float, float]
    entropy_coef: float

    @property
    def token_sum(self) -> bool:
        """True where the loss is a sum of per-token terms of each token's own
        log-prob (the fused head's three-matmul path)."""
        return self.level == "token" and self.loss_type != "vespo"


def _number(x: object, name: str, *, positive: bool = False) -> float:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        raise TypeError(f"`{name}` must be a Python number, got {x!r}.") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        rule = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be a finite number {rule}, got {x!r}.")
    return v


def check_policy_options(
    loss_type, epsilon_low, epsilon_high, beta, delta, importance_sampling_level,
    max_completion_length, sapo_temperature_pos, sapo_temperature_neg,
    use_bias_correction_kl, vespo, entropy_coef,
) -> PolicyOptions:  # fmt: skip
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}.")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(
            "`importance_sampling_level` must be 'token' or 'sequence', got "
            f"{importance_sampling_level!r}."
        )
    if importance_sampling_level == "sequence" and loss_type in (
        "cispo",
        "sapo",
        "vespo",
    ):
        raise ValueError(
            f"`importance_sampling_level='sequence'` is not supported for "
            f"`loss_type={loss_type!r}` (as in Liger); use 'token'."
        )
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("`loss_type='dr_grpo'` needs `max_completion_length`.")
    if max_completion_length is not None:
        if (
            isinstance(max_completion_length, bool)
            or not isinstance(max_completion_length, int)
            or max_completion_length < 1
        ):
            raise ValueError(
                "`max_completion_length` must be a positive int, got "
                f"{max_completion_length!r}."
            )
    d = None if delta is None else _number(delta, "delta", positive=True)
    if d is not None and loss_type in ("cispo", "sapo", "vespo"):
        raise ValueError(
            f"`delta` (two-sided clipping) does not apply to {loss_type!r}."
        )
    return PolicyOptions(
        loss_type, _number(epsilon_low, "epsilon_low"),
        _number(epsilon_high, "epsilon_high"), _number(beta, "beta"), d,
        importance_sampling_level, max_completion_length,
        _number(sapo_temperature_pos, "sapo_temperature_pos", positive=True),
        _number(sapo_temperature_neg, "sapo_temperature_neg", positive=True),
        bool(use_bias_correction_kl),
        _vespo(vespo),
        _number(entropy_coef, "entropy_coef"),
    )  # fmt: skip


def _vespo(vespo) -> tuple[float, float, float, float]:
    names = ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")
    k_pos, l_pos, k_neg, l_neg = (_number(x, n) for x, n in zip(vespo, names))
    return k_pos, l_pos, k_neg, l_neg
