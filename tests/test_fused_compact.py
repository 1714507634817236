"""``compact=True`` on the fused linear -> cross-entropy (issue 11, item 5).

Packing the present tokens to the front and skipping the token blocks after
them changes the work, not the result: values and gradients (hidden, weight,
bias, class and sample weights) equal ``compact=False`` and the unfused loss
for every reduction and option, on the gradient-in-forward path, the recompute
path, the statistics pass and the closed form; the blocks skipped are counted
directly on `token_blocks`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxce
import jaxce._fused._engine._plan as fused_blocks
from jaxce._fused._engine import Head, Tokens
from jaxce._fused._engine._device import Static, local_view as _local
from jaxce._fused._engine._kernels import token_blocks
from jaxce._fused._engine._plan import block_sizes
from tests.helpers import assert_tree_allclose, jit_call
from tests.test_sharded import collectives

N, D, V = 61, 8, 70
TOL = dict(rtol=2e-5, atol=2e-6)
REDUCTIONS = ["none", "sum", "mean", "sum_over_batch_size"]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 8 tokens x 16 classes: every path walks several token blocks."""
    monkeypatch.setattr(fused_blocks, "BLOCK_ELEMENTS", 8 * V)
    monkeypatch.setattr(fused_blocks, "MIN_TOKEN_BLOCK", 8)


def _data(seed=0, absent=0.5):
    k = jax.random.split(jax.random.key(seed), 7)
    h = jax.random.normal(k[0], (N, D))
    w = jax.random.normal(k[1], (V, D)) * 0.5
    b = jax.random.normal(k[2], (V,))
    y = jax.random.randint(k[3], (N,), 0, V)
    y = jnp.where(jax.random.uniform(k[4], (N,)) < absent, -100, y)
    cw = jax.random.uniform(k[5], (V,)) + 0.5
    s = jax.random.uniform(k[6], (N,)) * 2.0
    return h, w, b, y, cw, s


def _vg(h, w, b, y, cw, s, *, reduction, **kw):
    def scalar(h, w, b, cw, s):
        out = jaxce.linear_softmax_cross_entropy(
            h, w, y, bias=b, class_weights=cw, weights=s, reduction=reduction,
            ignore_index=-100, chunk_size=16, **kw,
        )  # fmt: skip
        return jnp.sum(out * jnp.linspace(0.5, 1.5, N)) if reduction == "none" else out

    return jax.value_and_grad(scalar, argnums=(0, 1, 2, 3, 4))(h, w, b, cw, s)


def _value_and_grads(h, w, b, y, cw, s, reduction, **kw):
    """Value and gradients w.r.t. hidden, weight, bias, class and sample weights.

    On a mesh compiled once per configuration (every test here runs under the
    same block sizes: the autouse fixture); eager ``shard_map`` on 8 devices
    costs ~8x the compilation. On one device eager (its small programs are
    cached across the tests' configurations, cheaper than compiling each).
    """
    if kw.get("mesh") is None:
        return _vg(h, w, b, y, cw, s, reduction=reduction, **kw)
    return jit_call(_vg, h, w, b, y, cw, s, reduction=reduction, **kw)


OPTIONS = {
    "plain": {},
    "smoothing_zloss": {"label_smoothing": 0.1, "z_loss": 1e-3},
    "softcap_dv": {"softcap": 5.0, "weight_layout": "dv"},
    "where_normalizer": {"normalizer": 11.0},
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_compact_equals_uncompacted_and_unfused(reduction, opt):
    h, w, b, y, cw, s = _data()
    kw = dict(OPTIONS[opt])
    if "normalizer" in kw and reduction == "none":
        kw.pop("normalizer")
    if kw.get("weight_layout") == "dv":
        w = w.T
    if opt == "where_normalizer":  # a `where` mask on top of ignore_index
        kw["where"] = jnp.arange(N) % 7 != 3
    got = _value_and_grads(h, w, b, y, cw, s, reduction, compact=True, **kw)
    want = _value_and_grads(h, w, b, y, cw, s, reduction, compact=False, **kw)
    assert_tree_allclose(got, want, **TOL)
    # and the unfused loss on explicit logits
    z = h @ (w if kw.pop("weight_layout", "vd") == "dv" else w.T) + b[None, :]
    cap = kw.pop("softcap", None)
    z = z if cap is None else cap * jnp.tanh(z / cap)
    plain = jaxce.sparse_softmax_cross_entropy(
        z, y, class_weights=cw, weights=s, reduction=reduction, ignore_index=-100,
        **kw,
    )  # fmt: skip
    value = jnp.sum(plain * jnp.linspace(0.5, 1.5, N)) if reduction == "none" else plain
    np.testing.assert_allclose(got[0], value, **TOL)


@pytest.mark.parametrize("absent", [0.0, 0.9])
def test_compact_none_losses_in_caller_order(absent):
    h, w, b, y, _, _ = _data(1, absent)
    f = lambda c: jaxce.linear_softmax_cross_entropy(  # noqa: E731
        h, w, y, bias=b, ignore_index=-100, reduction="none", compact=c
    )
    got, want = f(True), f(False)
    assert got.shape == (N,)
    assert_tree_allclose(got, want, **TOL)
    assert not np.any(np.asarray(got)[np.asarray(y) == -100])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_compact_nothing_present_is_zero_with_zero_gradients(reduction):
    h, w, b, _, cw, s = _data(2)
    y = jnp.full((N,), -100)
    value, grads = _value_and_grads(h, w, b, y, cw, s, reduction, compact=True)
    assert value == 0.0
    for g in grads:
        assert np.all(np.isfinite(g)) and not np.any(np.asarray(g))


def test_compact_invalid_label_is_nan_like_uncompacted():
    h, w, _, y, _, _ = _data(3)
    y = y.at[4].set(V + 3)  # present, out of range
    for c in (True, False):
        loss = jaxce.linear_softmax_cross_entropy(h, w, y, ignore_index=-100, compact=c)
        assert np.isnan(loss)


def test_compact_closed_form_equals_autodiff():
    h, w, b, y, cw, _ = _data(4)
    kw = dict(bias=b, class_weights=cw, ignore_index=-100, label_smoothing=0.05)
    got = jaxce.closed_form.linear_softmax_cross_entropy(h, w, y, compact=True, **kw)
    f = lambda h, w, b: jaxce.linear_softmax_cross_entropy(  # noqa: E731
        h, w, y, **{**kw, "bias": b}
    )
    assert_tree_allclose(got, jax.grad(f, (0, 1, 2))(h, w, b), **TOL)


def test_compact_under_jit_and_vmap_one_compilation():
    h, w, _, y, _, _ = _data(5)
    f = jax.jit(
        lambda h, w, y: jax.value_and_grad(jaxce.linear_softmax_cross_entropy)(
            h, w, y, ignore_index=-100, compact=True
        )
    )
    for absent in (0.2, 0.7):  # another count, same shapes: no new compilation
        y2 = jnp.where(jax.random.uniform(jax.random.key(9), (N,)) < absent, -100, y)
        want = jax.value_and_grad(jaxce.linear_softmax_cross_entropy)(
            h, w, y2, ignore_index=-100
        )
        assert_tree_allclose(f(h, w, y2), want, **TOL)
    assert f._cache_size() == 1
    # counts differ per row: some, none, all present
    ys = jnp.stack([y, jnp.full((N,), -100), jnp.where(y < 0, 0, y)])

    def loss(h, y, compact):
        return jaxce.linear_softmax_cross_entropy(
            h, w, y, ignore_index=-100, compact=compact
        )

    vg = jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0, None))
    got, want = vg(h, ys, True), vg(h, ys, False)
    assert np.all(np.isfinite(got[0])) and np.all(np.asarray(got[0])[[0, 2]] > 0)
    assert_tree_allclose(got, want, **TOL)


def test_token_blocks_skips_the_blocks_after_count():
    count_blocks = lambda c, start, lo: c + 1  # noqa: E731
    for count, blocks in [(0, 0), (1, 1), (16, 1), (17, 2), (35, 3), (100, 7)]:
        ran = token_blocks(100, 16, count_blocks, jnp.int32(0), jnp.int32(count))
        assert int(ran) == blocks, (count, int(ran))
    assert int(token_blocks(100, 16, count_blocks, jnp.int32(0))) == 7  # no count
    # compact=True makes vocabulary blocks fine enough to skip (ceil(n / 8) tokens)
    assert block_sizes(4096, 1000, 100, 1 << 24, compact=True).token_chunk == 512
    assert block_sizes(4096, 1000, 100, 1 << 24).token_chunk == 4096


def test_compact_errors():
    h, w, _, y, _, _ = _data(6)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("vocab",))
    for kw in [{}, dict(mesh=mesh, vocab_axis="vocab")]:  # the type, mesh or not
        with pytest.raises(TypeError, match="compact"):
            jaxce.linear_softmax_cross_entropy(h, w, y, compact=1, **kw)  # type: ignore[arg-type]


# -- on a mesh: each device packs its own rows ----------------------------------


def _axes(kind: str) -> dict:
    """Every device (the root conftest's 8 CPU devices; one on a one-GPU
    machine: benchmarks/gpu.sh runs this file there) as a vocabulary, batch or
    2 x k batch x vocabulary mesh."""
    devices = np.array(jax.devices())
    if kind in ("vocab", "batch"):
        axis = kind[0]
        return {"mesh": Mesh(devices, (axis,)), f"{kind}_axis": axis}
    rows = 2 if devices.size % 2 == 0 else 1
    mesh = Mesh(devices.reshape(rows, -1), ("b", "v"))
    return dict(mesh=mesh, batch_axis="b", vocab_axis="v")


@pytest.mark.parametrize("kind", ["vocab", "batch_vocab", "batch"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_compact_on_mesh_equals_single_device(kind, reduction):
    """N = 61 rows: padded to the batch axis, several 8-token blocks per device."""
    h, w, b, y, cw, s = _data(7)
    kw = dict(label_smoothing=0.1, z_loss=1e-3)
    got = _value_and_grads(
        h, w, b, y, cw, s, reduction, compact=True, **_axes(kind), **kw
    )
    assert_tree_allclose(got, _one_device_smoothing_zloss(reduction), **TOL)


@functools.cache
def _one_device_smoothing_zloss(reduction):
    """The one-device reference of `test_compact_on_mesh_equals_single_device`
    (shared by its three meshes)."""
    h, w, b, y, cw, s = _data(7)
    kw = dict(label_smoothing=0.1, z_loss=1e-3)
    return _value_and_grads(h, w, b, y, cw, s, reduction, **kw)


@pytest.mark.parametrize("case", ["device_all_absent", "invalid_label"])
def test_compact_on_mesh_edge_cases(case):
    """Device b=0 holds rows 0-30 (N = 61 padded to 62): all absent there; or a
    present label out of range: NaN, as without compact."""
    h, w, b, y, cw, s = _data(8)
    if case == "device_all_absent":
        y = y.at[:31].set(-100)
    else:
        y = y.at[40].set(V + 3)
    got = _value_and_grads(
        h, w, b, y, cw, s, "mean", compact=True, **_axes("batch_vocab")
    )
    want = _value_and_grads(h, w, b, y, cw, s, "mean")
    if case == "invalid_label":
        assert np.isnan(float(got[0])) and np.isnan(float(want[0]))
        got, want = got[1][0], want[1][0]  # d_hidden: NaN in that row only
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(got[40]).all() and not np.isnan(np.delete(got, 40, 0)).any()
        got, want = jnp.nan_to_num(got), jnp.nan_to_num(want)
    assert_tree_allclose(got, want, **TOL)


def test_pack_is_per_device_and_counts_present_rows():
    head = Head(jnp.arange(6.0)[:, None], jnp.ones((4, 1)), None)
    present = jnp.array([False, True, False, True, True, False])
    st = Static(block_sizes(6, 4), "vd", None, None, True)
    loc = _local(st, head, Tokens(jnp.arange(6), present))
    np.testing.assert_array_equal(loc.order, [1, 3, 4, 0, 2, 5])  # stable
    np.testing.assert_array_equal(loc.pack(head.hidden)[:, 0], [1, 3, 4, 0, 2, 5])
    np.testing.assert_array_equal(loc.pack(loc.labels), [1, 3, 4, 0, 2, 5])
    row = loc.pack(jnp.arange(6) * 10)
    np.testing.assert_array_equal(row, [10, 30, 40, 0, 20, 50])
    np.testing.assert_array_equal(loc.unpack(row), jnp.arange(6) * 10)
    assert int(loc.num_present) == 3


def test_compact_on_mesh_packs_without_moving_rows_between_devices():
    """Packing adds no collective: the compiled loss communicates as without it."""
    mesh_axes = _axes("batch_vocab")
    n, d = 256, 24
    h, w = jnp.ones((n, d)), jnp.ones((V, d))
    y = jnp.where(jnp.arange(n) % 3 == 0, -100, jnp.arange(n) % V)

    def comms(compact):
        def loss(h, w):
            return jaxce.linear_softmax_cross_entropy(
                h, w, y, ignore_index=-100, compact=compact, **mesh_axes
            )

        f = jax.jit(jax.value_and_grad(loss, (0, 1)))
        return sorted(collectives(f.lower(h, w).compile().as_text()))

    assert comms(True) == comms(False)
