"""Policy-gradient fine-tuning of an LM head with `jaxce.linear_token_stats`.

    python examples/rl_logprobs.py

A GRPO-shaped loop on a toy policy: for each of ``PROMPTS`` prompts the policy
samples ``GROUP`` responses of ``LENGTH`` tokens (some shorter: the rest is
padding), a reward scores each response (the fraction of its tokens that are
"good": a multiple of 7), and the advantage of a response is its reward against
the mean and standard deviation of its group (GRPO). The step minimises

    -(adv * logprob).mean() - ENT_COEF * entropy.mean()

over the response tokens, where ``logprob`` is the sampled token's
log-probability and ``entropy`` the entropy of the policy at that position, both
at the sampling ``TEMPERATURE`` (the log-probabilities of the tokens a sampler
drew at temperature 0.8 are those of ``softmax(z / 0.8)``, not of
``softmax(z)``). `jaxce.linear_token_stats` gives both, and their gradients
w.r.t. the hidden states and the head, from ``hidden (N, D)`` and the head
``weight (V, D)`` without forming the ``(N, V)`` logits. (PPO's clipped ratio
``exp(logprob - old_logprob)`` takes the same ``logprob``.)

The "model" is a trainable random projection of a prompt and position encoding
(``hidden = tanh(x @ proj)``) and a trainable head; one Adam step per batch of
fresh samples. The script prints the expected reward, the sampled tokens'
mean log-probability and the mean entropy before and after training, and checks
once that the fused statistics (and the objective's gradients) equal those of
``jax.nn.log_softmax(hidden @ weight.T / temperature)``.

``main()`` returns the figures as a dict. It runs in a few seconds on a CPU,
most of it compiling.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

import jaxce

PROMPTS, GROUP, LENGTH = 16, 8, 8  # N = 16 * 8 * 8 = 1024 response tokens
FEATURES, DIM, VOCAB = 32, 64, 1024
TEMPERATURE = 0.8  # sampling temperature
ENT_COEF = 0.01  # weight of the entropy bonus
LEARNING_RATE = 1e-2
GOOD = jnp.arange(VOCAB) % 7 == 0  # the tokens the reward likes (1 in 7)


def init_params(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "proj": jax.random.normal(k1, (FEATURES, DIM)) / FEATURES**0.5,
        "head": jax.random.normal(k2, (VOCAB, DIM)) / DIM**0.5,  # (V, D)
    }


def contexts(key: jax.Array) -> jax.Array:
    """``(N, FEATURES)``: a prompt vector plus a position vector per token.

    Token ``n`` belongs to prompt ``n // (GROUP * LENGTH)`` and sits at position
    ``n % LENGTH`` of its response.
    """
    k1, k2 = jax.random.split(key)
    prompt = jax.random.normal(k1, (PROMPTS, 1, 1, FEATURES))
    position = 0.5 * jax.random.normal(k2, (1, 1, LENGTH, FEATURES))
    x = jnp.broadcast_to(prompt + position, (PROMPTS, GROUP, LENGTH, FEATURES))
    return x.reshape(-1, FEATURES)


def hidden_states(params: dict, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["proj"])  # (N, D)


@jax.jit
def rollout(params: dict, x: jax.Array, key: jax.Array) -> dict:
    """Sample responses at ``TEMPERATURE``, score them, GRPO advantages.

    Sampling needs the logits of the sampled positions (an inference engine
    forms them anyway); the training step below does not.
    """
    k1, k2 = jax.random.split(key)
    logits = hidden_states(params, x) @ params["head"].T
    tokens = jax.random.categorical(k1, logits / TEMPERATURE).astype(jnp.int32)
    # Responses of 4 to LENGTH tokens; the positions past the end are padding.
    lengths = jax.random.randint(k2, (PROMPTS, GROUP, 1), 4, LENGTH + 1)
    present = (jnp.arange(LENGTH)[None, None, :] < lengths).reshape(-1)
    good = (GOOD[tokens] & present).reshape(PROMPTS, GROUP, LENGTH)
    reward = jnp.sum(good, -1) / lengths[..., 0]  # (PROMPTS, GROUP)
    mean = jnp.mean(reward, axis=1, keepdims=True)
    std = jnp.std(reward, axis=1, keepdims=True)
    adv = (reward - mean) / (std + 1e-6)
    adv = jnp.broadcast_to(adv[..., None], (PROMPTS, GROUP, LENGTH)).reshape(-1)
    return {"tokens": tokens, "where": present, "adv": adv, "reward": reward}


def objective(params: dict, x: jax.Array, batch: dict) -> jax.Array:
    """``-(adv * logprob).mean() - ENT_COEF * entropy.mean()`` over the response.

    Padding tokens are absent (``where``): 0 in the statistics, no gradient, and
    out of the means.
    """
    stats = jaxce.linear_token_stats(
        hidden_states(params, x),
        params["head"],
        batch["tokens"],
        temperature=TEMPERATURE,
        where=batch["where"],
    )
    count = jnp.sum(batch["where"], dtype=jnp.float32)
    pg = jnp.sum(batch["adv"] * stats.logprob) / count
    return -pg - ENT_COEF * jnp.sum(stats.entropy) / count


def unfused_objective(params: dict, x: jax.Array, batch: dict) -> jax.Array:
    """`objective` from the materialised ``(N, V)`` log-softmax."""
    stats = unfused_stats(params, x, batch)
    count = jnp.sum(batch["where"], dtype=jnp.float32)
    pg = jnp.sum(batch["adv"] * stats["logprob"]) / count
    return -pg - ENT_COEF * jnp.sum(stats["entropy"]) / count


def unfused_stats(params: dict, x: jax.Array, batch: dict) -> dict:
    logits = hidden_states(params, x) @ params["head"].T / TEMPERATURE
    logp = jax.nn.log_softmax(logits, axis=-1)
    logprob = jnp.take_along_axis(logp, batch["tokens"][:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    keep = batch["where"]
    return {
        "logprob": jnp.where(keep, logprob, 0.0),
        "entropy": jnp.where(keep, entropy, 0.0),
    }


def make_step(optimizer: optax.GradientTransformation):
    @jax.jit
    def step(params, opt_state, x, batch):
        loss, grads = jax.value_and_grad(objective)(params, x, batch)
        # Optax's Adam raises its decay to the int32 step count, which strict
        # dtype promotion rejects; only the update runs under standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    return step


@jax.jit
def fused_stats(params: dict, x: jax.Array, batch: dict) -> jaxce.TokenStats:
    return jaxce.linear_token_stats(
        hidden_states(params, x),
        params["head"],
        batch["tokens"],
        temperature=TEMPERATURE,
        where=batch["where"],
    )


@jax.jit
def evaluate(params: dict, x: jax.Array, batch: dict) -> dict:
    """Expected reward per token (exact, from the policy) and the fused stats."""
    logits = hidden_states(params, x) @ params["head"].T / TEMPERATURE
    p_good = jnp.sum(jnp.where(GOOD[None, :], jax.nn.softmax(logits, axis=-1), 0.0), -1)
    stats = fused_stats(params, x, batch)
    count = jnp.sum(batch["where"], dtype=jnp.float32)
    return {
        "expected_reward": jnp.mean(p_good),
        "mean_logprob": jnp.sum(stats.logprob) / count,
        "mean_entropy": jnp.sum(stats.entropy) / count,
    }


def check_against_unfused(params: dict, x: jax.Array, batch: dict) -> dict:
    """Largest differences, fused against unfused: stats (abs), gradients (rel)."""
    fused = fused_stats(params, x, batch)
    ref = jax.jit(unfused_stats)(params, x, batch)
    g_fused = jax.jit(jax.grad(objective))(params, x, batch)
    g_ref = jax.jit(jax.grad(unfused_objective))(params, x, batch)
    grad_diff = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_ref))
    )
    return {
        "logprob_diff": float(jnp.max(jnp.abs(fused.logprob - ref["logprob"]))),
        "entropy_diff": float(jnp.max(jnp.abs(fused.entropy - ref["entropy"]))),
        "grad_rel_diff": grad_diff,
    }


def main(steps: int = 30, *, verbose: bool = True) -> dict:
    """``steps`` GRPO steps (fresh samples each); returns the figures."""
    start = time.perf_counter()
    key = jax.random.key(0)
    key, k_params, k_x = jax.random.split(key, 3)
    params = init_params(k_params)
    x = contexts(k_x)
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)
    step = make_step(optimizer)

    key, k_eval = jax.random.split(key)

    def stats(params):  # on the policy's own samples (the same key each time)
        batch = rollout(params, x, k_eval)
        return {k: float(v) for k, v in evaluate(params, x, batch).items()}

    before = stats(params)
    check = check_against_unfused(params, x, rollout(params, x, k_eval))
    rewards = []
    for _ in range(steps):
        key, k = jax.random.split(key)
        batch = rollout(params, x, k)
        rewards.append(float(jnp.mean(batch["reward"])))
        params, opt_state, _ = step(params, opt_state, x, batch)
    after = stats(params)

    if verbose:
        n = PROMPTS * GROUP * LENGTH
        print(f"GRPO on a toy LM head: N={n} tokens ({PROMPTS} prompts x "
              f"{GROUP} samples x {LENGTH}), D={DIM}, V={VOCAB}, temperature "
              f"{TEMPERATURE}, ent_coef {ENT_COEF}, {steps} Adam steps")  # fmt: skip
        print(f"{'':34s}{'before':>10s}{'after':>10s}")
        for name, label in (
            ("expected_reward", "expected reward (chance 1/7)"),
            ("mean_logprob", "mean logprob of sampled tokens"),
            ("mean_entropy", "mean entropy (nats)"),
        ):
            print(f"{label:34s}{before[name]:10.4f}{after[name]:10.4f}")
        if rewards:
            print(f"sampled mean reward, first / last step: {rewards[0]:.4f} / "
                  f"{rewards[-1]:.4f}")  # fmt: skip
        print(f"fused linear_token_stats vs jax.nn.log_softmax(hidden @ W.T / T): "
              f"max |diff| logprob {check['logprob_diff']:.1e}, entropy "
              f"{check['entropy_diff']:.1e}; objective gradients max rel. diff "
              f"{check['grad_rel_diff']:.1e}")  # fmt: skip
        print(f"({time.perf_counter() - start:.1f} s including compilation)")
    return {"before": before, "after": after, "rewards": rewards, "check": check}


if __name__ == "__main__":
    main()
