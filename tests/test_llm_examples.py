"""``examples/rl_logprobs.py`` and ``examples/distill.py``: the LLM-loss examples.

Runs each example's ``main`` for a few steps (under the strict dtype promotion
and raising rank promotion of the root conftest) and checks that training does
what the example says (the expected reward rises and the entropy falls; the
distillation losses and the held-out KL fall), and that the fused statistics
and losses equal the unfused ones on materialised logits.
"""

from __future__ import annotations

import math

import pytest
from helpers import load_example


def test_rl_logprobs_main():
    example = load_example("rl_logprobs")
    figures = example.main(steps=8, verbose=False)
    before, after, check = figures["before"], figures["after"], figures["check"]
    # 1 token in 7 is rewarded: the initial policy (near uniform) gets ~1/7.
    assert abs(before["expected_reward"] - 1 / 7) < 0.02
    # Near-uniform start: entropy a little under ln V, logprob near -ln V.
    assert (
        math.log(example.VOCAB) - 1.0 < before["mean_entropy"] < math.log(example.VOCAB)
    )
    assert before["mean_logprob"] < -5.0
    # Eight Adam steps move probability onto the rewarded tokens.
    assert after["expected_reward"] > before["expected_reward"] + 0.03
    assert after["mean_entropy"] < before["mean_entropy"]
    assert after["mean_logprob"] > before["mean_logprob"]
    assert len(figures["rewards"]) == 8
    # Fused linear_token_stats against jax.nn.log_softmax of the logits.
    assert check["logprob_diff"] < 1e-5
    assert check["entropy_diff"] < 1e-5
    assert check["grad_rel_diff"] < 1e-5


def test_distill_main():
    example = load_example("distill")
    figures = example.main(steps=5, verbose=False)
    assert set(figures) == {"forward_kl", "jsd"}
    start_kl = figures["forward_kl"]["held_out_kl"][0]
    for kind, run in figures.items():
        losses, kls, check = run["losses"], run["held_out_kl"], run["check"]
        assert len(losses) == 5 and len(kls) == 6
        assert kls[0] == pytest.approx(start_kl)  # the same initial student
        # Each step lowers the held-out forward KL (~5 % a step here).
        assert all(b < a for a, b in zip(kls, kls[1:])), (kind, kls)
        assert kls[-1] < 0.85 * kls[0], (kind, kls)
        assert losses[-1] < 0.9 * losses[0], (kind, losses)
        # Fused linear_distillation_loss against distillation_loss on the logits.
        assert check["fused"] == pytest.approx(losses[0], rel=1e-6)
        assert check["loss_diff"] < 1e-5
        assert check["grad_rel_diff"] < 1e-5
