"""`jaxce.policy_loss` and the fused `jaxce.linear_policy_loss` (no torch needed;
Liger-Kernel comparisons are in `tests/peers/test_policy_liger.py`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

B, T, D, V = 3, 5, 8, 40
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")


def _data(seed=0, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 6)
    h = jax.random.normal(k[0], (B, T, D), dtype)
    w = (0.5 * jax.random.normal(k[1], (V, D))).astype(dtype)
    ids = jax.random.randint(k[2], (B, T), 0, V)
    mask = jnp.array(
        [[True] * T, [True, True, False, False, False], [True] + [False] * (T - 1)]
    )
    adv = jax.random.normal(k[3], (B,))
    old = jnp.log(jax.random.uniform(k[4], (B, T), minval=0.02, maxval=0.2))
    ref = jnp.log(jax.random.uniform(k[5], (B, T), minval=0.02, maxval=0.2))
    return h, w, ids, mask, adv, old, ref


def _composed(h, w, ids, mask, adv, **kw):
    """`policy_loss` on `linear_token_stats` (the four-matmul reference)."""
    b, t, d = h.shape
    s = jaxce.linear_token_stats(
        h.reshape(b * t, d), w, ids.reshape(b * t), where=mask.reshape(b * t),
        temperature=kw.pop("temperature", 1.0), bias=kw.pop("bias", None),
    )  # fmt: skip
    return jaxce.policy_loss(
        s.logprob.reshape(b, t), adv, where=mask,
        entropy=s.entropy.reshape(b, t), **kw,
    )  # fmt: skip


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _both(kw, fused_kw=None, data=None):
    h, w, ids, mask, adv, old, ref = _data() if data is None else data
    kw = dict(old_logprob=old, ref_logprob=ref, max_completion_length=T, **kw)

    def fused(h, w):
        return jaxce.linear_policy_loss(h, w, ids, adv, where=mask, **kw,
                                        **(fused_kw or {}))  # fmt: skip

    def comp(h, w):
        return _composed(h, w, ids, mask, adv, **kw)

    vg = lambda f: jax.value_and_grad(f, (0, 1), has_aux=True)(h, w)  # noqa: E731
    return vg(fused), vg(comp)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_fused_equals_composition(loss_type, level):
    if level == "sequence" and loss_type in ("cispo", "sapo", "vespo"):
        pytest.skip("token level only")
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.04,
              entropy_coef=0.01, temperature=0.8)  # fmt: skip
    if loss_type == "cispo":
        kw["epsilon_high"] = 3.0
    fused, comp = _both(kw)
    _assert_close(fused, comp)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "vespo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_compact_equals_not_compact(loss_type, level):
    if level == "sequence" and loss_type == "vespo":
        pytest.skip("token level only")
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.1)
    a, _ = _both(kw, dict(compact=True, chunk_size=16))
    b, _ = _both(kw, dict(compact=False))
    _assert_close(a, b)


def test_options_on_the_fused_path():
    """``is_ratio``, ``delta``, bias, the ``"dv"`` layout and a normalizer."""
    h, w, ids, mask, adv, old, ref = data = _data(1)
    bias = jnp.linspace(-1.0, 1.0, V)
    kw = dict(is_ratio=jnp.linspace(0.5, 1.5, B), delta=1.3, bias=bias, beta=0.1,
              loss_type="bnpo", use_bias_correction_kl=True)  # fmt: skip
    fused, comp = _both(kw, data=data)
    _assert_close(fused, comp)
    dv = jaxce.linear_policy_loss(
        h, w.T, ids, adv, where=mask, old_logprob=old, weight_layout="dv",
        normalizer=20.0,
    )  # fmt: skip
    vd = jaxce.linear_policy_loss(
        h, w, ids, adv, where=mask, old_logprob=old, normalizer=20.0
    )
    _assert_close(dv, vd)


def test_entropy_bonus_normalisation():
    """``loss -= entropy_coef * (token mean of the entropy)``, every loss type."""
    h, w, ids, mask, adv, old, _ = _data(2)
    for lt in ("grpo", "dapo", "luspo"):
        kw = dict(old_logprob=old, loss_type=lt, max_completion_length=T)
        l0, m0 = jaxce.linear_policy_loss(h, w, ids, adv, where=mask, **kw)
        l1, m1 = jaxce.linear_policy_loss(
            h, w, ids, adv, where=mask, entropy_coef=0.1, **kw
        )
        np.testing.assert_allclose(l0 - l1, 0.1 * m0.entropy, rtol=1e-5)
        assert m0.entropy == m1.entropy and m0.entropy > 0


def test_bf16_within_1e2_of_float32():
    h, w, ids, mask, adv, old, ref = _data(3)
    for lt, level in (("dapo", "token"), ("grpo", "sequence")):
        kw = dict(old_logprob=old, ref_logprob=ref, beta=0.04, loss_type=lt,
                  importance_sampling_level=level)  # fmt: skip

        def f(h, w):
            return jaxce.linear_policy_loss(h, w, ids, adv, where=mask, **kw)[0]

        h16, w16 = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
        # float32 on the same (bf16-rounded) inputs: the kernel's precision
        up = lambda x: x.astype(jnp.float32)  # noqa: E731
        l32, g32 = jax.value_and_grad(f)(up(h16), up(w16))
        l16, g16 = jax.value_and_grad(f)(h16, w16)
        assert abs(float(l16) - float(l32)) <= 1e-2 * abs(float(l32))
        err = jnp.max(jnp.abs(g16.astype(jnp.float32) - g32)) / jnp.max(jnp.abs(g32))
        assert float(err) <= 1e-2


def test_all_masked_and_one_token():
    h, w, ids, _, adv, old, _ = _data(4)
    none = jnp.zeros((B, T), bool)
    for lt in LOSS_TYPES:
        loss, m = jaxce.linear_policy_loss(
            h, w, ids, adv, where=none, old_logprob=old, loss_type=lt,
            max_completion_length=T,
        )  # fmt: skip
        assert float(loss) == 0.0 and float(m.ratio) == 0.0
        g = jax.grad(
            lambda w: jaxce.linear_policy_loss(
                h, w, ids, adv, where=none, loss_type=lt, max_completion_length=T
            )[0]
        )(w)
        assert float(jnp.max(jnp.abs(g))) == 0.0


def test_plain_metrics():
    lp = jnp.log(jnp.array([[0.5, 0.1], [0.2, 0.4]]))
    old = jnp.log(jnp.array([[0.25, 0.1], [0.4, 0.4]]))  # ratios 2, 1 / 0.5, 1
    adv = jnp.array([1.0, -1.0])
    mask = jnp.ones((2, 2), bool)
    _, m = jaxce.policy_loss(lp, adv, where=mask, old_logprob=old, ref_logprob=old)
    assert float(m.clip_ratio_high) == 0.25 and float(m.clip_ratio_low) == 0.25
    assert float(m.clip_ratio) == 0.5
    np.testing.assert_allclose(m.ratio, 4.5 / 4, rtol=1e-6)
    k3 = lambda r: r - jnp.log(r) - 1  # noqa: E731  (r = pi_ref / pi)
    np.testing.assert_allclose(m.kl, (k3(0.5) + k3(2.0)) / 4, rtol=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(loss_type="ppo"), "loss_type"),
        (dict(importance_sampling_level="seq"), "importance_sampling_level"),
        (dict(loss_type="cispo", importance_sampling_level="sequence"), "sequence"),
        (dict(loss_type="dr_grpo"), "max_completion_length"),
        (dict(delta=0.0), "delta"),
        (dict(epsilon_low=-0.1), "epsilon_low"),
        (dict(beta=0.1), "ref_logprob"),
        (dict(entropy_coef=0.1), "entropy"),
        (dict(loss_type="grpo", normalizer=3.0), "normalizer"),
        (dict(is_ratio=jnp.ones((3,))), "is_ratio"),
        (dict(old_logprob=jnp.zeros((2, 3))), "old_logprob"),
        (dict(sapo_temperature_neg=0.0), "sapo_temperature_neg"),
    ],
)
def test_errors_name_the_argument(kw, match):
    lp = jnp.zeros((2, 2))
    with pytest.raises((ValueError, TypeError), match=match):
        jaxce.policy_loss(lp, jnp.zeros(2), where=jnp.ones((2, 2), bool), **kw)


def test_fused_errors():
    h, w, ids, mask, adv, *_ = _data()
    with pytest.raises(Exception, match="hidden"):
        jaxce.linear_policy_loss(h[0], w, ids, adv, where=mask)
    with pytest.raises(Exception, match="tokens"):
        jaxce.linear_policy_loss(h, w, ids[:, :2], adv, where=mask)
    with pytest.raises(Exception, match="where"):
        jaxce.linear_policy_loss(h, w, ids, adv, where=mask[:, :2])
    with pytest.raises(Exception, match="advantages"):
        jaxce.linear_policy_loss(h, w, ids, adv[:2], where=mask)


def test_grpo_example_reward_rises():
    from helpers import load_example

    first, last = load_example("grpo").main(steps=25, quiet=True)
    assert last > first + 0.1


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "vespo"])
def test_mesh_equals_one_device(loss_type):
    """Vocabulary- and data-parallel (the row's sums over the shards)."""
    from jax.sharding import Mesh

    devs = jax.devices()
    if len(devs) < 4:
        pytest.skip("needs 4 devices")
    mesh = Mesh(np.array(devs[:4]).reshape(2, 2), ("data", "vocab"))
    h, w, ids, mask, adv, old, ref = _data(5)
    kw = dict(old_logprob=old, ref_logprob=ref, beta=0.04, loss_type=loss_type,
              entropy_coef=0.01)  # fmt: skip

    def f(h, w, **m):
        return jaxce.linear_policy_loss(h, w, ids, adv, where=mask, **kw, **m)

    a = jax.value_and_grad(f, (0, 1), has_aux=True)(h, w)
    b = jax.value_and_grad(
        lambda h, w: f(h, w, mesh=mesh, batch_axis="data", vocab_axis="vocab"),
        (0, 1), has_aux=True,
    )(h, w)  # fmt: skip
    _assert_close(a, b)
