"""Training Flax NNX models with jaxce losses.

    python examples/flax_nnx.py

Two small `flax.nnx` models, each trained with ``nnx.Optimizer`` (Adam) inside an
``@nnx.jit`` train step that takes ``nnx.value_and_grad`` of a jaxce loss:

1. an MLP classifier (two ``nnx.Linear`` layers) on scikit-learn's 8x8 digits,
   trained with `jaxce.sparse_softmax_cross_entropy` and ``label_smoothing=0.1``;
   it prints the training loss before and after and the test accuracy;
2. a tiny language-model head on synthetic token sequences (each token is the
   sum mod ``V`` of the two before it; padding labelled ``-100``): an
   ``nnx.Embed`` table, an ``nnx.Linear`` hidden layer giving ``hidden (N, D)``,
   and an output projection *tied* to the embedding table, trained with the fused
   `jaxce.linear_softmax_cross_entropy`, which never forms the ``(N, V)`` logits.
   It prints the loss falling, and checks once (on the trained model) that the
   fused loss equals `jaxce.sparse_softmax_cross_entropy` of the materialised
   logits ``hidden @ weight.T``.

``main()`` returns the figures as a dict. It runs in well under a minute on a
CPU, most of it compiling.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from example_data import load  # noqa: E402

import jaxce  # noqa: E402

IGNORE = -100  # PyTorch's ignore_index: labels of padding tokens
SMOOTHING = 0.1  # label smoothing of the digits classifier


def update(model: nnx.Module, optimizer: nnx.Optimizer, grads: nnx.State) -> None:
    """``optimizer.update(model, grads)``, under JAX's standard dtype promotion.

    Optax's Adam raises ``decay`` (a Python float) to the power of the int32 step
    count, which ``jax_numpy_dtype_promotion="strict"`` rejects; the model and
    the jaxce losses work under strict promotion, so only this call is relaxed.
    """
    with jax.numpy_dtype_promotion("standard"):
        optimizer.update(model, grads)


# -- 1. an MLP classifier on digits --------------------------------------------------


class MLP(nnx.Module):
    """``features -> width (ReLU) -> classes`` logits."""

    def __init__(self, features: int, width: int, classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(features, width, rngs=rngs)
        self.out = nnx.Linear(width, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def classifier_loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean smoothed cross-entropy of the model's logits against integer labels."""
    return jaxce.sparse_softmax_cross_entropy(model(x), y, label_smoothing=SMOOTHING)


@nnx.jit
def classifier_step(
    model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array
) -> jax.Array:
    """One Adam step on ``(x, y)``; updates ``model`` in place, returns the loss."""
    loss, grads = nnx.value_and_grad(classifier_loss)(model, x, y)
    update(model, optimizer, grads)
    return loss


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x).argmax(-1) == y).astype(jnp.float32))


def train_classifier(steps: int, *, verbose: bool) -> dict:
    """Full-batch Adam on the digits training set; test accuracy at the end."""
    xtr, xte, ytr, yte = (jnp.asarray(a) for a in load("digits"))
    model = MLP(64, 64, 10, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    evaluate = nnx.jit(classifier_loss)
    before = float(evaluate(model, xtr, ytr))
    for _ in range(steps):
        classifier_step(model, optimizer, xtr, ytr)
    after = float(evaluate(model, xtr, ytr))
    acc = float(accuracy(model, xte, yte))
    if verbose:
        print(f"MLP on digits, sparse_softmax_cross_entropy(label_smoothing="
              f"{SMOOTHING}), {steps} steps: train loss {before:.4f} -> "
              f"{after:.4f}, test accuracy {acc:.4f} (chance 0.1)")  # fmt: skip
    return {"loss_before": before, "loss_after": after, "accuracy": acc}


# -- 2. a tiny LM head with tied embeddings and the fused loss -----------------------


class TinyLM(nnx.Module):
    """Predicts token ``t + 1`` from tokens ``t - 1`` and ``t``.

    ``hidden`` gives the ``(N, D)`` activations; the output projection is the
    embedding table itself (tied embeddings, as in GPT-2 and T5).
    """

    def __init__(self, vocab: int, dim: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.mix = nnx.Linear(2 * dim, dim, rngs=rngs)

    def hidden(self, prev: jax.Array, cur: jax.Array) -> jax.Array:
        """``(N,)`` token pairs -> ``(N, D)`` hidden states."""
        pair = jnp.concatenate([self.embed(prev), self.embed(cur)], axis=-1)
        return nnx.gelu(self.mix(pair))

    def head_weight(self) -> jax.Array:
        # jaxce.linear_softmax_cross_entropy takes the classifier in the (V, D)
        # layout of PyTorch's nn.Linear: logits = hidden @ weight.T. An
        # nnx.Embed(V, D) table is (V, D) already, so a tied head passes it as
        # is. (An untied nnx.Linear(D, V) head has a (D, V) kernel: pass
        # `head.kernel[...].T`, and its bias as `bias=`.)
        return self.embed.embedding[...]


def token_batch(
    rng: np.random.Generator, batch: int = 64, length: int = 24, vocab: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prev, cur, labels)``, int32, each ``(batch * (length - 2),)``.

    Each sequence starts with two random tokens and continues with
    ``x[t + 1] = (x[t - 1] + x[t]) % vocab``; the sequences have random lengths
    in ``[length // 2, length]`` and the labels past each one's end are ``-100``.
    Built with NumPy: synthetic data needs no compiling.
    """
    tokens = np.empty((batch, length), np.int32)
    tokens[:, :2] = rng.integers(0, vocab, (batch, 2))
    for t in range(2, length):
        tokens[:, t] = (tokens[:, t - 2] + tokens[:, t - 1]) % vocab
    lengths = rng.integers(length // 2, length + 1, (batch, 1))
    labels = np.where(np.arange(2, length) < lengths, tokens[:, 2:], IGNORE)
    return (
        tokens[:, :-2].ravel(),
        tokens[:, 1:-1].ravel(),
        labels.astype(np.int32).ravel(),
    )


def lm_loss(
    model: TinyLM, prev: jax.Array, cur: jax.Array, labels: jax.Array
) -> jax.Array:
    """Mean next-token cross-entropy over the non-padding tokens, fused.

    `jaxce.linear_softmax_cross_entropy` streams the vocabulary in
    ``chunk_size`` blocks and never holds the ``(N, V)`` logits.
    """
    return jaxce.linear_softmax_cross_entropy(
        model.hidden(prev, cur),
        model.head_weight(),
        labels,
        ignore_index=IGNORE,
        chunk_size=16,
    )


def unfused_lm_loss(
    model: TinyLM, prev: jax.Array, cur: jax.Array, labels: jax.Array
) -> jax.Array:
    """`lm_loss` from the materialised logits ``hidden @ weight.T``."""
    logits = model.hidden(prev, cur) @ model.head_weight().T
    return jaxce.sparse_softmax_cross_entropy(logits, labels, ignore_index=IGNORE)


@nnx.jit
def lm_step(
    model: TinyLM,
    optimizer: nnx.Optimizer,
    prev: jax.Array,
    cur: jax.Array,
    labels: jax.Array,
) -> jax.Array:
    """One Adam step on the fused loss; updates ``model`` in place."""
    loss, grads = nnx.value_and_grad(lm_loss)(model, prev, cur, labels)
    update(model, optimizer, grads)
    return loss


def train_lm(steps: int, *, verbose: bool, vocab: int = 32, dim: int = 32) -> dict:
    """Adam on a fresh batch of sequences each step; the loss on a held-out batch."""
    model = TinyLM(vocab, dim, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    test = token_batch(rng, vocab=vocab)
    evaluate = nnx.jit(lm_loss)
    before = float(evaluate(model, *test))
    log_every = max(steps // 5, 1)
    for i in range(1, steps + 1):
        loss = lm_step(model, optimizer, *token_batch(rng, vocab=vocab))
        if verbose and (i % log_every == 0 or i == steps):
            print(f"  step {i:4d}: train loss {float(loss):.4f}")
    after = float(evaluate(model, *test))
    # The fused loss against the unfused one, on the trained model's logits.
    unfused = float(nnx.jit(unfused_lm_loss)(model, *test))
    if verbose:
        print(f"tiny LM head (V={vocab}, D={dim}, tied embeddings), fused "
              f"linear_softmax_cross_entropy, {steps} steps: held-out loss "
              f"{before:.4f} -> {after:.4f} (uniform: ln {vocab} = "
              f"{np.log(vocab):.4f})")  # fmt: skip
        print(f"held-out loss: fused {after:.6f}, unfused "
              f"sparse_softmax_cross_entropy(hidden @ weight.T) {unfused:.6f}, "
              f"|diff| {abs(after - unfused):.1e}")  # fmt: skip
    return {
        "lm_loss_before": before,
        "lm_loss_after": after,
        "unfused_loss_after": unfused,
        "fused_unfused_diff": abs(after - unfused),
    }


def main(steps: int = 200, *, verbose: bool = True) -> dict:
    """Train both models for ``steps`` steps each; returns their figures."""
    start = time.perf_counter()
    classifier = train_classifier(steps, verbose=verbose)
    lm = train_lm(steps, verbose=verbose)
    if verbose:
        print(f"({time.perf_counter() - start:.1f} s including compilation)")
    return {"classifier": classifier, "lm": lm}


if __name__ == "__main__":
    main()
