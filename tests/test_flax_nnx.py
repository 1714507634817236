"""``examples/flax_nnx.py``: Flax NNX models trained with jaxce losses.

Runs the example's ``main`` for a few steps (under the strict dtype promotion and
raising rank promotion of the root conftest), and checks the gradients of the
fused LM loss w.r.t. an NNX model against those of the unfused one.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import load_example


@pytest.fixture(scope="module")
def example():
    return load_example("flax_nnx")


def test_main_trains_both_models(example):
    figures = example.main(steps=50, verbose=False)
    clf, lm = figures["classifier"], figures["lm"]
    # Digits, 10 classes: ~0.97 test accuracy after 50 full-batch Adam steps.
    assert clf["loss_after"] < 0.5 * clf["loss_before"]
    assert clf["accuracy"] > 0.85
    # Starts near uniform (ln 32 = 3.47); ~0.9 after 50 steps (~1.4 after 40).
    assert abs(lm["lm_loss_before"] - np.log(32)) < 0.1
    assert lm["lm_loss_after"] < lm["lm_loss_before"] - 1.0
    assert lm["fused_unfused_diff"] < 1e-5
    np.testing.assert_allclose(
        lm["lm_loss_after"], lm["unfused_loss_after"], rtol=1e-5, atol=1e-5
    )


def test_fused_gradients_match_unfused(example):
    model = example.TinyLM(32, 32, rngs=nnx.Rngs(1))
    prev, cur, labels = example.token_batch(np.random.default_rng(7))
    assert np.any(np.asarray(labels) == example.IGNORE)  # padding is exercised
    # Jitted: one compile each instead of many small eager ones.
    fused = nnx.jit(nnx.grad(example.lm_loss))(model, prev, cur, labels)
    unfused = nnx.jit(nnx.grad(example.unfused_lm_loss))(model, prev, cur, labels)
    fused_leaves = jax.tree.leaves(fused)
    unfused_leaves = jax.tree.leaves(unfused)
    # Embedding (input and tied head together), mix kernel, mix bias. The entries
    # are ~1e-3 at initialisation and differ by ~1e-9, hence the small atol.
    assert len(fused_leaves) == len(unfused_leaves) == 3
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        fused,
        unfused,
    )
    embedding = np.asarray(fused.embed.embedding[...])
    assert embedding.shape == (32, 32) and np.abs(embedding).max() > 1e-3
