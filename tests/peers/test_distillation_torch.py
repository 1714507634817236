"""Distillation losses against PyTorch: ``kl_div`` and Liger Kernel's generalised JSD.

Kept apart from `tests/test_distillation.py` so that file runs where torch is
not installed (the GPU script); CI installs torch and runs both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxce
from jaxce._losses._distillation import check_divergence, divergence_and_grad
from tests.helpers import assert_tree_allclose
from tests.test_distillation import KINDS, TOL, _fused_data, _logits


def torch_kl_rows(zs, zt, kind, tau):
    """Forward / reverse KL from ``torch.nn.functional.kl_div(log_target=True)``."""
    ls = torch.log_softmax(torch.tensor(zs, dtype=torch.float64) / tau, -1)
    lt = torch.log_softmax(torch.tensor(zt, dtype=torch.float64) / tau, -1)
    kl = torch.nn.functional.kl_div
    if kind == "forward_kl":  # kl_div(input, target) = target * (target - input)
        return kl(ls, lt, reduction="none", log_target=True).sum(-1).numpy()
    return kl(lt, ls, reduction="none", log_target=True).sum(-1).numpy()


def torch_liger_jsd(zs, zt, beta, tau, labels=None, ignore_index=-100):
    """Liger's generalised JSD (its test reference, transcribed): student ``log_q``
    first, teacher ``log_p`` second, the mean over non-ignored rows."""
    log_q = torch.log_softmax(torch.tensor(zs, dtype=torch.float64) / tau, -1)
    log_p = torch.log_softmax(torch.tensor(zt, dtype=torch.float64) / tau, -1)
    kl = torch.nn.KLDivLoss(reduction="none", log_target=True)
    if beta == 0.0:
        loss = kl(log_q, log_p).sum(-1)
    elif beta == 1.0:
        loss = kl(log_p, log_q).sum(-1)
    else:
        m = torch.lerp(torch.exp(log_q), torch.exp(log_p), beta)
        loss = beta * kl(torch.log(m), log_p).sum(-1)
        loss = loss + (1 - beta) * kl(torch.log(m), log_q).sum(-1)
    if labels is None:
        return float((loss / log_q.shape[0]).sum())
    keep = torch.tensor(np.asarray(labels)) != ignore_index
    count = int(keep.sum())
    return 0.0 if count == 0 else float((torch.where(keep, loss, 0.0) / count).sum())


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_kl_matches_torch(kind):
    zs, zt = _logits(4, (16, 50)), _logits(5, (16, 50))
    for tau in [1.0, 0.7, 3.0]:
        got = jaxce.distillation_loss(
            zs, zt, kind=kind, temperature=tau, reduction="none"
        )
        np.testing.assert_allclose(got, torch_kl_rows(zs, zt, kind, tau), **TOL)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_jsd_matches_liger_transcription(beta, tau):
    zs, zt = _logits(6, (16, 60)), _logits(7, (16, 60))
    got = jaxce.distillation_loss(zs, zt, kind="jsd", beta=beta, temperature=tau)
    np.testing.assert_allclose(got, torch_liger_jsd(zs, zt, beta, tau), **TOL)
    labels = np.random.default_rng(8).integers(0, 60, 16)
    labels[::3] = -100
    got = jaxce.distillation_loss(
        zs, zt, kind="jsd", beta=beta, temperature=tau, where=labels != -100
    )
    np.testing.assert_allclose(got, torch_liger_jsd(zs, zt, beta, tau, labels), **TOL)


@pytest.mark.parametrize("kind, beta", KINDS)
def test_gradients_match_analytic_and_torch(kind, beta):
    zs, zt = _logits(11, (6, 25)), _logits(12, (6, 25))
    tau = 1.7
    f = lambda s, t: jaxce.distillation_loss(  # noqa: E731
        s, t, kind=kind, beta=beta, temperature=tau, reduction="sum"
    )
    gs, gt = jax.grad(f, argnums=(0, 1))(jnp.asarray(zs), jnp.asarray(zt))
    assert not np.any(np.asarray(gt))  # the teacher is a constant
    d = check_divergence(kind, beta, tau)
    ls = jax.nn.log_softmax(jnp.asarray(zs) / tau)
    lt = jax.nn.log_softmax(jnp.asarray(zt) / tau)
    assert_tree_allclose(gs, divergence_and_grad(ls, lt, d)[1] / tau, **TOL)
    # PyTorch autograd of the same formula (teacher detached).
    s = torch.tensor(zs, dtype=torch.float64, requires_grad=True)
    log_q = torch.log_softmax(s / tau, -1)
    log_p = torch.log_softmax(torch.tensor(zt, dtype=torch.float64) / tau, -1)
    if kind == "forward_kl":
        loss = (log_p.exp() * (log_p - log_q)).sum()
    elif kind == "reverse_kl":
        loss = (log_q.exp() * (log_q - log_p)).sum()
    else:
        log_m = torch.log(beta * log_p.exp() + (1 - beta) * log_q.exp())
        loss = (beta * log_p.exp() * (log_p - log_m)).sum()
        loss = loss + ((1 - beta) * log_q.exp() * (log_q - log_m)).sum()
    loss.backward()
    assert s.grad is not None
    assert_tree_allclose(gs, s.grad.numpy(), **TOL)


def test_fused_matches_liger_reference():
    (hs, ws, _, ht, wt, _), opts = _fused_data(seed=5)
    labels = np.asarray(opts["labels"])
    for beta in [0.0, 0.4, 1.0]:
        got = jaxce.linear_distillation_loss(
            hs, ws, ht, wt, kind="jsd", beta=beta, temperature=1.5,
            labels=labels, ignore_index=-100,
        )  # fmt: skip
        zs, zt = np.asarray(hs @ ws.T), np.asarray(ht @ wt.T)
        want = torch_liger_jsd(zs, zt, beta, 1.5, labels)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
