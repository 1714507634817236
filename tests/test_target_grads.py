"""Gradients with respect to the targets (soft labels, label optimisation, dataset
distillation), exactly 0 and 1 included, against PyTorch (float64) and optax.

Issue 20: the ``0 log 0 = 0`` guard zeroed ``d/dy (y log p)`` at ``y = 0`` (it is
``log p``) and the same for ``1 - y`` at ``y = 1``. The conventions where no
derivative exists (a target of 0 on a class of probability 0) are checked last.
"""

from __future__ import annotations

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

import jaxce

TOL = dict(rtol=2e-5, atol=2e-6)
Z = np.array([[0.3, -1.2, 2.0], [4.0, -0.5, -3.0], [0.0, 1.5, -6.0], [7.5, 2.0, 0.1]],
             np.float32)  # fmt: skip
# binary labels at 0, 1 and in between, on every column
Y = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0], [0.25, 1.0, 1.0], [0.0, 0.0, 1.0]],
             np.float32)  # fmt: skip


def _torch(fn, *arrays):
    """Gradients of ``fn`` (float64 torch tensors in, a scalar out)."""
    ts = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy() for t in ts]


def _jax(fn, *arrays):
    return jax.grad(fn, argnums=tuple(range(len(arrays))))(*map(jnp.asarray, arrays))


def _close(got, want, **tol):
    h.assert_tree_allclose([np.asarray(g) for g in got], want, **(TOL | tol))


# -- sigmoid binary cross-entropy -------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("options", ["plain", "pos_weight", "weights"])
def test_sigmoid_bce_target_gradient_equals_torch(reduction, options):
    pw = np.array([1.0, 2.5, 0.5], np.float32)
    w = np.array([[0.5], [1.0], [2.0], [1.5]], np.float32) * np.ones((1, 3), np.float32)
    kw = {"pos_weight": dict(pos_weight=pw), "weights": dict(weights=w)}.get(
        options, {}
    )
    tkw = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in kw.items()}
    tkw = {("weight" if k == "weights" else k): v for k, v in tkw.items()}
    ours = _jax(
        lambda z, y: jaxce.sigmoid_binary_cross_entropy(
            z, y, reduction=reduction, **kw
        ),
        Z,
        Y,
    )
    # jaxce's "mean" is the weighted mean; torch's the plain one (equal without
    # weights, and "sum" is "sum")
    if options == "weights" and reduction == "mean":
        want = _torch(
            lambda z, y: (
                F.binary_cross_entropy_with_logits(z, y, reduction="sum", **tkw)
                / float(w.sum())
            ),
            Z,
            Y,
        )
    else:
        want = _torch(
            lambda z, y: F.binary_cross_entropy_with_logits(
                z, y, reduction=reduction, **tkw
            ),
            Z,
            Y,
        )
    _close(ours, want)


def test_sigmoid_bce_target_gradient_is_minus_logits():
    """The issue's example: ``d/dy`` is ``-z`` ([-0.854, 1.463, -2.0] before)."""
    z, y = jnp.array([0.3, -1.2, 2.0]), jnp.array([0.0, 1.0, 0.5])
    g = jax.grad(lambda y: jaxce.sigmoid_binary_cross_entropy(z, y, reduction="sum"))
    h.assert_tree_allclose(g(y), -z, rtol=1e-6, atol=0)
    want = jax.grad(lambda y: jnp.sum(optax.sigmoid_binary_cross_entropy(z, y)))(y)
    h.assert_tree_allclose(g(y), want, rtol=1e-6, atol=1e-7)


def test_sigmoid_bce_broadcast_labels_and_smoothing():
    """Labels of one row broadcast over the batch (the gradient sums over it), and
    label smoothing (the chain rule through ``(1 - e) y + e / 2``)."""
    row = Y[0]

    def ours(z, y):
        yb = jnp.broadcast_to(y, z.shape)
        return jaxce.sigmoid_binary_cross_entropy(
            z, yb, label_smoothing=0.2, reduction="sum"
        )

    def theirs(z, y):
        yb = y.expand(z.shape) * 0.8 + 0.1
        return F.binary_cross_entropy_with_logits(z, yb, reduction="sum")

    _close(_jax(ours, Z, row), _torch(theirs, Z, row))


def test_binary_cross_entropy_target_gradient():
    p = jax.nn.sigmoid(jnp.asarray(Z))

    def theirs(p, y):  # torch's BCELoss has no target gradient: the formula
        return -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum()

    ours = _jax(lambda p, y: jaxce.binary_cross_entropy(p, y, reduction="sum"), p, Y)
    _close(ours, _torch(theirs, p, Y), rtol=1e-4)


# -- softmax cross-entropy with probability targets -------------------------------


def _soft_targets(shape, axis=-1):
    r = h.rng(5)
    t = r.uniform(0.0, 1.0, shape).astype(np.float32)
    t[r.uniform(size=shape) < 0.4] = 0.0  # exact zeros
    t = np.moveaxis(t, axis, -1)
    t[..., 0] += 0.1
    t = t / t.sum(-1, keepdims=True)
    return np.moveaxis(t, -1, axis)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("class_weights", [False, True])
def test_softmax_cross_entropy_target_gradient_equals_torch(smoothing, class_weights):
    z = h.logits(h.rng(6), (5, 4))
    t = _soft_targets((5, 4))
    t[0] = [0.0, 1.0, 0.0, 0.0]  # one-hot: its zeros get log-softmax gradients
    cw = np.array([0.5, 1.0, 2.0, 1.5], np.float32) if class_weights else None
    kw = dict(label_smoothing=smoothing, class_weights=cw)

    def ours(z, t):  # torch's probability-target "mean" divides by N
        return jaxce.softmax_cross_entropy(z, t, reduction="sum_over_batch_size", **kw)

    weight = None if cw is None else torch.tensor(cw, dtype=torch.float64)

    def theirs(z, t):
        return F.cross_entropy(z, t, weight=weight, label_smoothing=smoothing)

    _close(_jax(ours, z, t), _torch(theirs, z, t))


def test_softmax_cross_entropy_target_gradient_n_d():
    """``(N, C, d1, d2)`` with ``axis=1`` (PyTorch's layout): ``-log_softmax / N``."""
    z = h.logits(h.rng(7), (2, 4, 3, 2))
    t = _soft_targets((2, 4, 3, 2), axis=1)

    def ours(z, t):
        return jaxce.softmax_cross_entropy(
            z, t, axis=1, reduction="sum_over_batch_size"
        )

    _close(_jax(ours, z, t), _torch(F.cross_entropy, z, t))
    g = jax.grad(ours, argnums=1)(z, t)
    h.assert_tree_allclose(g, -jax.nn.log_softmax(z, axis=1) / 12, rtol=1e-5)


def test_softmax_cross_entropy_target_gradient_equals_optax():
    z = h.logits(h.rng(8), (5, 4))
    t = _soft_targets((5, 4))
    ours = jax.grad(
        lambda t: jaxce.softmax_cross_entropy(z, t, reduction="sum")
    )(t)  # fmt: skip
    want = jax.grad(lambda t: jnp.sum(optax.softmax_cross_entropy(z, t)))(t)
    h.assert_tree_allclose(ours, want, rtol=1e-6, atol=1e-6)


def test_categorical_cross_entropy_target_gradient():
    p = np.asarray(jax.nn.softmax(h.logits(h.rng(9), (5, 4))))
    t = _soft_targets((5, 4))
    ours = _jax(
        lambda p, t: jaxce.categorical_cross_entropy(p, t, reduction="sum"), p, t
    )
    want = _torch(lambda p, t: -(t * torch.log(p)).sum(), p, t)
    _close(ours, want, rtol=1e-4)
    # N-D, class axis 1, with label smoothing
    p4 = np.moveaxis(np.asarray(jax.nn.softmax(h.logits(h.rng(9), (2, 3, 4)))), -1, 1)
    t4 = _soft_targets((2, 4, 3), axis=1)
    g = jax.grad(
        lambda t: jaxce.categorical_cross_entropy(
            p4, t, axis=1, label_smoothing=0.1, reduction="sum"
        )
    )(t4)  # fmt: skip
    h.assert_tree_allclose(g, -0.9 * np.log(p4), rtol=1e-5)


# -- focal losses ---------------------------------------------------------------


def _torch_sigmoid_focal(alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss, summed."""

    def loss(z, y):
        p = torch.sigmoid(z)
        ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        out = ce * (1 - p_t) ** gamma
        if alpha is not None:
            out = (alpha * y + (1 - alpha) * (1 - y)) * out
        return out.sum()

    return loss


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_sigmoid_focal_target_gradient_equals_torch(alpha, gamma):
    def ours(z, y):
        return jaxce.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma, reduction="sum")

    _close(_jax(ours, Z, Y), _torch(_torch_sigmoid_focal(alpha, gamma), Z, Y))


def test_sigmoid_focal_target_gradient_equals_optax_inside_0_1():
    """optax's log-space focal loss (``logsumexp(b=labels)``) agrees strictly
    inside (0, 1); at labels of exactly 0 or 1 its label gradient drops the
    vanishing term's ``log`` derivative (as jaxce's did), so PyTorch is the
    reference there (above)."""
    y = np.clip(Y, 0.1, 0.9)

    def ours(y):
        return jaxce.sigmoid_focal_loss(Z, y, alpha=0.3, gamma=2.0, reduction="sum")

    def theirs(y):
        return jnp.sum(optax.sigmoid_focal_loss(Z, y, alpha=0.3, gamma=2.0))

    h.assert_tree_allclose(jax.grad(ours)(y), jax.grad(theirs)(y), rtol=1e-5, atol=1e-6)
    torch_grad = _torch(_torch_sigmoid_focal(0.3, 2.0), Z, Y)[1]
    assert not np.allclose(np.asarray(jax.grad(theirs)(Y)), torch_grad, atol=1e-3)


def test_sigmoid_focal_target_gradient_at_saturated_logits_is_finite():
    """Where ``(1 - p_t)^gamma`` underflows: finite, and 0 where it should be."""
    z = jnp.array([-100.0, 100.0, -100.0, 100.0, 30.0])
    y = jnp.array([0.0, 1.0, 1.0, 0.0, 0.0])
    for gamma in (1.0, 2.0, 4.0):
        g = jax.grad(lambda y: jaxce.sigmoid_focal_loss(z, y, gamma=gamma))(y)
        h.assert_finite(g)
        # y = 0 at z = -100: d/dy = (-z) (1 - p_t)^gamma + ... ~ 0
        assert abs(float(g[0])) < 1e-30
    gz = jax.grad(lambda z: jaxce.sigmoid_focal_loss(z, y, gamma=0.5))(z)
    h.assert_finite(gz)  # the logit gradient is unaffected by a label tangent


# -- closed forms: their gradient in the targets (a mixed second derivative) -----


def _torch_mixed(loss, z, y):
    """``d/dy`` of ``d loss / dz``: the Jacobian, ``z``'s shape x ``y``'s shape."""
    zt = torch.tensor(np.asarray(z, np.float64))
    yt = torch.tensor(np.asarray(y, np.float64))

    def grad_z(y):
        zz = zt.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(zz, y), zz, create_graph=True)
        return g

    return torch.autograd.functional.jacobian(grad_z, yt).numpy()


@pytest.mark.parametrize(
    "closed, theirs",
    [
        (
            lambda z, y: jaxce.closed_form.sigmoid_binary_cross_entropy(
                z, y, reduction="sum"
            ),
            lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="sum"),
        ),
        (
            lambda z, y: jaxce.closed_form.sigmoid_focal_loss(
                z, y, alpha=0.25, gamma=2.0, reduction="sum"
            ),
            _torch_sigmoid_focal(0.25, 2.0),
        ),
        (
            lambda z, y: jaxce.closed_form.softmax_cross_entropy(
                z, y, label_smoothing=0.1, reduction="sum_over_batch_size"
            ),
            lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1),
        ),
    ],
    ids=["sigmoid_bce", "sigmoid_focal", "softmax_ce"],
)
def test_closed_form_target_jacobian_equals_torch(closed, theirs):
    z, y = (Z, Y) if "sigmoid" in repr(closed) else (Z, _soft_targets(Z.shape))
    ours = jax.jacrev(closed, argnums=1)(jnp.asarray(z), jnp.asarray(y))
    h.assert_tree_allclose(ours, _torch_mixed(theirs, z, y), rtol=1e-4, atol=1e-6)


# -- where no derivative exists: the documented conventions ---------------------


def test_target_gradient_where_a_probability_is_zero():
    """A target of 0 on a class of probability 0: the loss is 0 there and so is
    the target gradient (mathematically the loss jumps to +inf for any positive
    target: the one-sided derivative is +inf). Everywhere else it is exact."""
    z = jnp.array([-jnp.inf, jnp.inf, 2.0])
    y = jnp.array([0.0, 1.0, 0.0])
    value, g = jax.value_and_grad(
        lambda y: jaxce.sigmoid_binary_cross_entropy(z, y, reduction="sum")
    )(y)
    assert np.isfinite(float(value))
    np.testing.assert_array_equal(np.asarray(g), [0.0, 0.0, -2.0])
    logits = jnp.array([[1.0, -jnp.inf, 0.5, -2.0]])
    t = jnp.array([[0.7, 0.0, 0.3, 0.0]])
    value, g = jax.value_and_grad(
        lambda t: jaxce.softmax_cross_entropy(logits, t, reduction="sum")
    )(t)
    assert np.isfinite(float(value))
    expected = -np.asarray(jax.nn.log_softmax(logits))
    expected[0, 1] = 0.0
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-6)


def test_probability_closed_form_target_jacobian():
    """``d/dt`` of the categorical closed form ``-t / p`` is ``-1 / p``, also where
    ``t = 0`` (it was 0 there), and 0 on a class a per-class ``where`` removes."""
    p = jnp.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    t = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    jac = jax.jacrev(
        lambda t: jaxce.closed_form.categorical_cross_entropy(p, t, reduction="sum")
    )(t)  # fmt: skip
    diag = np.einsum("ijij->ij", np.asarray(jac))
    np.testing.assert_allclose(diag, -1 / np.asarray(p), rtol=1e-6)
    mask = jnp.array([[True, True, False], [True, True, True]])
    jac = jax.jacrev(
        lambda t: jaxce.closed_form.categorical_cross_entropy(
            p, t, where=mask, reduction="sum"
        )
    )(t)  # fmt: skip
    diag = np.einsum("ijij->ij", np.asarray(jac))
    np.testing.assert_allclose(diag, np.where(mask, -1 / np.asarray(p), 0), rtol=1e-6)
