"""`jaxce.linear_policy_loss` / `jaxce.policy_loss` against Liger-Kernel 0.8.5's
``LigerFusedLinearGRPOLoss`` (CPU, ``compiled=False``): loss, metrics and the
gradients with respect to hidden and weight (float32: loss 1e-5, gradients
1e-4 relative), for every loss type, token / sequence level, beta 0 and > 0,
a sequence with every token masked and a one-token sequence.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

torch = pytest.importorskip("torch")
grpo = pytest.importorskip("liger_kernel.chunked_loss.grpo_loss")

B, T, D, V = 4, 6, 8, 24
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
TOKEN_ONLY = ("cispo", "sapo", "vespo")


def _data(seed=0, loss_type="dapo"):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(B, T, D)).astype(np.float32)
    w = (rng.normal(size=(V, D)) * 0.5).astype(np.float32)
    ids = rng.integers(0, V, (B, T))
    mask = np.ones((B, T), bool)
    mask[1, 3:] = False  # partly present
    mask[2, :] = False  # every token masked
    mask[3, 1:] = False  # a one-token sequence
    if loss_type == "luspo":  # Liger also weights absent tokens of a partly
        mask[[1, 3], :] = True  # present sequence; jaxce doesn't (documented)
    adv = rng.normal(size=B).astype(np.float32)
    old = np.log(rng.uniform(0.02, 0.3, (B, T))).astype(np.float32)
    ref = np.log(rng.uniform(0.02, 0.3, (B, T))).astype(np.float32)
    return h, w, ids, mask, adv, old, ref


def _liger(h, w, ids, mask, adv, old, ref, bias=None, is_ratio=None, n_items=None,
           **kw):  # fmt: skip
    beta = kw.get("beta", 0.0)
    loss_fn = grpo.LigerFusedLinearGRPOLoss(
        compiled=False, use_ref_model=beta > 0, chunk_size=2, **kw
    )
    th = torch.tensor(h, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = None if bias is None else torch.tensor(bias, requires_grad=True)
    loss, met = loss_fn(
        th, tw, torch.tensor(ids), torch.tensor(mask.astype(np.int64)),
        torch.tensor(adv), bias=tb,
        ref_per_token_logps=torch.tensor(ref) if beta > 0 else None,
        old_per_token_logps=None if old is None else torch.tensor(old),
        vllm_is_ratio=None if is_ratio is None else torch.tensor(is_ratio),
        num_items_in_batch=n_items,
    )  # fmt: skip
    loss.backward()
    grads = [th.grad.numpy(), tw.grad.numpy()]
    if tb is not None:
        grads.append(tb.grad.numpy())
    return loss.item(), [m.item() for m in met], grads


def _jaxce(h, w, ids, mask, adv, old, ref, bias=None, is_ratio=None, n_items=None,
           **kw):  # fmt: skip
    import jax

    beta = kw.get("beta", 0.0)
    kw = dict(kw)
    kw.pop("use_ref_model", None)

    def f(h, w, b):
        return jaxce.linear_policy_loss(
            h, w, jnp.asarray(ids), jnp.asarray(adv), where=jnp.asarray(mask),
            old_logprob=old, ref_logprob=ref if beta > 0 else None, bias=b,
            is_ratio=is_ratio, normalizer=n_items, chunk_size=8, **kw,
        )  # fmt: skip

    b = None if bias is None else jnp.asarray(bias)
    argnums = (0, 1) if b is None else (0, 1, 2)
    (loss, met), g = jax.value_and_grad(f, argnums=argnums, has_aux=True)(
        jnp.asarray(h), jnp.asarray(w), b
    )
    return float(loss), met, [np.asarray(x) for x in g]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _check(seed=0, loss_type="dapo", data=None, **kw):
    h, w, ids, mask, adv, old, ref = _data(seed, loss_type) if data is None else data
    extra = {k: kw.pop(k) for k in ("bias", "is_ratio", "n_items") if k in kw}
    args = (h, w, ids, mask, adv, old, ref)
    kw = dict(loss_type=loss_type, max_completion_length=T, **kw)
    ll, lm, lg = _liger(*args, **extra, **kw)
    jl, jm, jg = _jaxce(*args, **extra, **kw)
    # 1e-5 relative, with a 1e-7 floor for a loss near 0 (terms of both signs)
    assert abs(jl - ll) <= 1e-5 * abs(ll) + 1e-7, (jl, ll)
    for a, b in zip(jg, lg):
        assert _rel(a, b) <= 1e-4
    # Liger's metrics: [kl (beta != 0)], clip_ratio
    if kw.get("beta", 0.0) != 0:
        assert abs(float(jm.kl) - lm[0]) <= 1e-5 * max(abs(lm[0]), 1e-6)
    assert abs(float(jm.clip_ratio) - lm[-1]) <= 1e-6


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_types_match_liger(loss_type, level, beta):
    if level == "sequence" and loss_type in TOKEN_ONLY:
        pytest.skip("Liger refuses sequence level here (as jaxce does)")
    eh = 5.0 if loss_type == "cispo" else 0.28
    _check(
        loss_type=loss_type, importance_sampling_level=level, beta=beta,
        epsilon_high=eh,
    )  # fmt: skip


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "cispo", "sapo", "vespo"])
@pytest.mark.parametrize("shape", ["b", "b1", "bt"])
def test_vllm_is_ratio_matches_liger(loss_type, shape):
    rng = np.random.default_rng(3)
    r = rng.uniform(0.5, 1.5, {"b": (B,), "b1": (B, 1), "bt": (B, T)}[shape])
    eh = 5.0 if loss_type == "cispo" else 0.2
    _check(1, loss_type, is_ratio=r.astype(np.float32), beta=0.04, epsilon_high=eh)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_delta_bias_kl_correction_temperature_match_liger(level):
    rng = np.random.default_rng(4)
    bias = rng.normal(size=V).astype(np.float32)
    _check(
        2, "grpo", importance_sampling_level=level, delta=1.5, beta=0.1,
        use_bias_correction_kl=True, temperature=0.7, bias=bias,
    )  # fmt: skip


def test_sapo_vespo_parameters_and_num_items_match_liger():
    _check(5, "sapo", sapo_temperature_pos=0.5, sapo_temperature_neg=2.0)
    _check(5, "vespo", vespo_k_pos=1.5, vespo_lambda_pos=2.0, vespo_k_neg=2.5,
           vespo_lambda_neg=1.0)  # fmt: skip
    _check(6, "dapo", n_items=40.0)
    _check(6, "cispo", n_items=40.0, epsilon_high=4.0)


def test_on_policy_without_old_logprob_matches_liger():
    h, w, ids, mask, adv, _, ref = _data(7)
    for lt in ("dapo", "grpo", "vespo"):
        _check(loss_type=lt, data=(h, w, ids, mask, adv, None, ref), beta=0.04)


def test_plain_loss_matches_liger_loss_fn():
    """`policy_loss` on log-probs against Liger's ``ppo_loss_fn`` on them."""
    rng = np.random.default_rng(8)
    lp = np.log(rng.uniform(0.02, 0.3, (B, T))).astype(np.float32)
    _, _, _, mask, adv, old, ref = _data(8)
    for lt in LOSS_TYPES:
        m = mask.copy()
        if lt == "luspo":
            m[[1, 3], :] = True
        tm_ = torch.tensor(m.astype(np.float32))
        tl, tm = grpo.LigerFusedLinearGRPOFunction.ppo_loss_fn(
            per_token_logps=torch.tensor(lp), attention_mask=tm_,
            advantages=torch.tensor(adv), full_attention_mask=tm_,
            ref_per_token_logps=torch.tensor(ref),
            old_per_token_logps=torch.tensor(old),
            beta=0.04, loss_type=lt, max_completion_length=T,
        )  # fmt: skip
        jl, jm = jaxce.policy_loss(
            jnp.asarray(lp), jnp.asarray(adv), where=jnp.asarray(m),
            old_logprob=old, ref_logprob=ref, beta=0.04, loss_type=lt,
            max_completion_length=T,
        )  # fmt: skip
        assert abs(float(jl) - tl.item()) <= 1e-5 * abs(tl.item()) + 1e-7, lt
        assert abs(float(jm.kl) - tm[0].item()) <= 1e-5 * abs(tm[0].item())
        assert abs(float(jm.clip_ratio) - tm[1].item()) <= 1e-6
