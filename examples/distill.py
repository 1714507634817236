"""Distilling a teacher LM head into a smaller student with the fused loss.

    python examples/distill.py

A fixed teacher (hidden size ``TEACHER_DIM``) and a trainable student (hidden
size ``STUDENT_DIM``) share a vocabulary of ``VOCAB`` tokens. Each has a
projection of the same token contexts into its hidden states and a ``(V, D)``
output head. The student is trained with
`jaxce.linear_distillation_loss`, which takes both models' hidden states and
heads and never forms either ``(N, V)`` logits matrix (the teacher gets no
gradient). Two runs from the same initial student:

1. ``kind="forward_kl"``: ``KL(p_teacher || p_student)`` (Hinton-style
   distillation; at ``temperature=2.0`` here, without the ``tau**2`` factor);
2. ``kind="jsd", beta=0.5``: the generalised Jensen-Shannon divergence (Liger
   Kernel's ``LigerFusedLinearJSD``; on-policy distillation, GKD).

Some tokens are padding (``where=False``): absent from the loss and its mean.
Each run prints its training loss and the held-out forward KL (at temperature
1) falling, and checks once that the fused loss and its gradients equal
`jaxce.distillation_loss` on the materialised logits ``hs @ ws.T`` and
``ht @ wt.T``.

``main()`` returns the figures as a dict. It runs in well under a minute on a
CPU, most of it compiling.
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import optax

import jaxce

TOKENS, FEATURES, VOCAB = 512, 32, 1024
TEACHER_DIM, STUDENT_DIM = 128, 32
LEARNING_RATE = 2e-2
RUNS = (
    ("forward_kl", dict(kind="forward_kl", temperature=2.0)),
    ("jsd", dict(kind="jsd", beta=0.5)),
)


def init_teacher(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "proj": jax.random.normal(k1, (FEATURES, TEACHER_DIM)) / FEATURES**0.5,
        # A peaked teacher: logits of scale ~3.
        "head": 3.0 * jax.random.normal(k2, (VOCAB, TEACHER_DIM)) / TEACHER_DIM**0.5,
    }


def init_student(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "proj": jax.random.normal(k1, (FEATURES, STUDENT_DIM)) / FEATURES**0.5,
        "head": jax.random.normal(k2, (VOCAB, STUDENT_DIM)) / STUDENT_DIM**0.5,
    }


def hidden_states(params: dict, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["proj"])  # (N, D)


def batch(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x, where)``: token contexts ``(N, FEATURES)``; 1 in 8 tokens padding."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (TOKENS, FEATURES))
    where = jax.random.uniform(k2, (TOKENS,)) > 0.125
    return x, where


def loss(student: dict, teacher: dict, x: jax.Array, where: jax.Array, **kw):
    """Mean distillation loss over the present tokens, fused."""
    return jaxce.linear_distillation_loss(
        hidden_states(student, x),
        student["head"],
        hidden_states(teacher, x),
        teacher["head"],
        where=where,
        **kw,
    )


def unfused_loss(student: dict, teacher: dict, x: jax.Array, where: jax.Array, **kw):
    """`loss` from the materialised logits of both models."""
    zs = hidden_states(student, x) @ student["head"].T
    zt = hidden_states(teacher, x) @ teacher["head"].T
    return jaxce.distillation_loss(zs, zt, where=where, **kw)


def train(student, teacher, data, test, steps, kw):
    """Adam on the fused loss; the training loss and held-out forward KL per step.

    Arrays go into the jitted functions as arguments, not closed over: XLA would
    fold constant arrays (the teacher, the data) at compile time, slowly.
    """
    optimizer = optax.adam(LEARNING_RATE)

    @jax.jit
    def step(student, opt_state, teacher, x, where):
        value, grads = jax.value_and_grad(loss)(student, teacher, x, where, **kw)
        # Optax's Adam raises its decay to the int32 step count, which strict
        # dtype promotion rejects; only the update runs under standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, student)
            student = optax.apply_updates(student, updates)
        return student, opt_state, value

    held_out_kl = jax.jit(partial(loss, kind="forward_kl"))
    opt_state = optimizer.init(student)
    losses, kls = [], [float(held_out_kl(student, teacher, *test))]
    for i in range(steps):
        student, opt_state, value = step(
            student, opt_state, teacher, *data[i % len(data)]
        )
        losses.append(float(value))
        kls.append(float(held_out_kl(student, teacher, *test)))
    return student, losses, kls


def check_against_unfused(student, teacher, x, where, kw) -> dict:
    """Fused against unfused: loss (abs) and student gradients (rel) differences."""
    v_f, g_f = jax.jit(jax.value_and_grad(partial(loss, **kw)))(
        student, teacher, x, where
    )
    v_u, g_u = jax.jit(jax.value_and_grad(partial(unfused_loss, **kw)))(
        student, teacher, x, where
    )
    grad_diff = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_u))
    )
    return {
        "fused": float(v_f),
        "unfused": float(v_u),
        "loss_diff": abs(float(v_f) - float(v_u)),
        "grad_rel_diff": grad_diff,
    }


def main(steps: int = 30, *, verbose: bool = True) -> dict:
    """Both runs for ``steps`` steps each; returns their figures."""
    start = time.perf_counter()
    k_teacher, k_student, k_test, k_data = jax.random.split(jax.random.key(0), 4)
    teacher = init_teacher(k_teacher)
    student0 = init_student(k_student)
    test = batch(k_test)
    data = [batch(k) for k in jax.random.split(k_data, 4)]  # 4 training batches
    if verbose:
        print(f"distillation: N={TOKENS} tokens per batch, teacher D="
              f"{TEACHER_DIM}, student D={STUDENT_DIM}, V={VOCAB}, {steps} Adam "
              f"steps, fused linear_distillation_loss")  # fmt: skip
    figures = {}
    for name, kw in RUNS:
        # The check, on the initial student and a training batch, before training.
        check = check_against_unfused(student0, teacher, *data[0], kw)
        _, losses, kls = train(student0, teacher, data, test, steps, kw)
        figures[name] = {"losses": losses, "held_out_kl": kls, "check": check}
        if verbose:
            opts = ", ".join(f"{k}={v!r}" for k, v in kw.items())
            print(f"  {opts}: training loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
                  f"held-out forward KL {kls[0]:.4f} -> {kls[-1]:.4f}")  # fmt: skip
            print(f"    fused {check['fused']:.6f} vs unfused distillation_loss("
                  f"hs @ ws.T, ht @ wt.T) {check['unfused']:.6f}: |diff| "
                  f"{check['loss_diff']:.1e}, gradients max rel. diff "
                  f"{check['grad_rel_diff']:.1e}")  # fmt: skip
    if verbose:
        print(f"({time.perf_counter() - start:.1f} s including compilation)")
    return figures


if __name__ == "__main__":
    main()
