"""GRPO on a toy policy with the fused `jaxce.linear_policy_loss`.

    python examples/grpo.py

For each of ``PROMPTS`` prompts the policy samples ``GROUP`` responses of up to
``LENGTH`` tokens (each response stops at a random length: the rest is
padding, absent from the loss). The reward of a response is the fraction of its
tokens that are "good" (a multiple of 7); a response's advantage is its reward
against its group's mean and standard deviation (GRPO). Each batch of samples
is used for ``INNER`` optimiser steps: the first is on-policy (ratio 1), the
later ones see the ratio to the sampling policy (``old_logprob``) clipped by
``epsilon_low`` / ``epsilon_high``, with the k3 KL to the initial policy
(``ref_logprob``, ``beta``) and an entropy bonus.

The "model" is a trainable projection of a prompt-and-position encoding
(``hidden = tanh(x @ proj)``, shaped ``(B, T, D)``) and a trainable head
``(V, D)``; `jaxce.linear_policy_loss` forms the loss and its gradients without
the ``(B, T, V)`` logits (three matmuls; see its docstring). ``main()`` prints
and returns the mean reward before and after training; a few seconds on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxce

PROMPTS, GROUP, LENGTH = 8, 8, 8  # B = 64 responses, T = 8
FEATURES, DIM, VOCAB = 16, 32, 256
TEMPERATURE = 0.9
INNER = 2  # optimiser steps per batch of samples
GOOD = jnp.arange(VOCAB) % 7 == 0


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "proj": jax.random.normal(k1, (FEATURES, DIM)) / FEATURES**0.5,
        "head": jax.random.normal(k2, (VOCAB, DIM)) / DIM**0.5,
    }


def hidden_states(params, key):
    """``(B, T, D)``: a prompt vector (shared by its group) plus a position one."""
    kp, kt = jax.random.split(key)
    prompt = jax.random.normal(kp, (PROMPTS, 1, 1, FEATURES))
    pos = jax.random.normal(jax.random.key(7), (1, 1, LENGTH, FEATURES))
    x = jnp.broadcast_to(prompt + pos, (PROMPTS, GROUP, LENGTH, FEATURES))
    return jnp.tanh(x.reshape(PROMPTS * GROUP, LENGTH, FEATURES) @ params["proj"])


def sample(params, key):
    """Tokens, the completion mask, the sampled log-probs and the rewards."""
    kh, ks, kl = jax.random.split(key, 3)
    h = hidden_states(params, kh)
    logits = h @ params["head"].T / TEMPERATURE  # a toy: the sampler's own logits
    ids = jax.random.categorical(ks, logits)
    lens = jax.random.randint(kl, (PROMPTS * GROUP, 1), 2, LENGTH + 1)
    mask = jnp.arange(LENGTH)[None, :] < lens
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1)[..., 0]
    good = jnp.where(mask, GOOD[ids], False).astype(jnp.float32)
    reward = jnp.sum(good, -1) / jnp.sum(mask, -1).astype(jnp.float32)
    return h, ids, mask, logp, reward


def advantages(reward):
    """GRPO: each reward against its group's mean and standard deviation."""
    r = reward.reshape(PROMPTS, GROUP)
    adv = (r - r.mean(-1, keepdims=True)) / (r.std(-1, keepdims=True) + 1e-4)
    return adv.reshape(-1)


def loss_fn(params, key, ids, mask, adv, old, ref):
    h = hidden_states(params, key)
    return jaxce.linear_policy_loss(
        h, params["head"], ids, adv, where=mask, temperature=TEMPERATURE,
        old_logprob=old, ref_logprob=ref, loss_type="dapo", epsilon_high=0.28,
        beta=0.01, entropy_coef=0.001,
    )  # fmt: skip


def main(steps: int = 40, quiet: bool = False):
    params = init_params(jax.random.key(0))
    ref_params = params
    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        kh = jax.random.split(key, 3)[0]  # the hidden states' key in `sample`
        _, ids, mask, old, reward = sample(params, key)
        ref_logits = hidden_states(ref_params, kh) @ ref_params["head"].T
        ref = jax.nn.log_softmax(ref_logits / TEMPERATURE)
        ref = jnp.take_along_axis(ref, ids[..., None], -1)[..., 0]
        adv = advantages(reward)
        metrics = None
        for _ in range(INNER):
            (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(
                params, kh, ids, mask, adv, old, ref
            )
            # optax mixes int32 step counts with floats, which strict dtype
            # promotion (the tests') rejects: the update runs under standard.
            with jax.numpy_dtype_promotion("standard"):
                updates, state = opt.update(g, state, params)
                params = optax.apply_updates(params, updates)
        return params, state, jnp.mean(reward), metrics

    rewards = []
    for i in range(steps):
        params, state, r, m = step(params, state, jax.random.key(100 + i))
        rewards.append(float(r))
        if not quiet and i % 10 == 0:
            clip, kl, ent = float(m.clip_ratio), float(m.kl), float(m.entropy)
            print(f"step {i:3d}  reward {float(r):.3f}  clip {clip:.3f}  kl {kl:.4f}"
                  f"  entropy {ent:.3f}")  # fmt: skip
    first = sum(rewards[:5]) / 5
    last = sum(rewards[-5:]) / 5
    if not quiet:
        print(f"mean reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    return first, last


if __name__ == "__main__":
    main()
