"""Differential tests against PyTorch (``torch.nn.functional``).

Mappings (see the loss docstrings):

- class-index ``F.cross_entropy(weight, ignore_index, label_smoothing, reduction)``
  is `sparse_softmax_cross_entropy` with the same reduction name;
- probability-target ``F.cross_entropy`` divides ``"mean"`` by N:
  ``reduction="sum_over_batch_size"``;
- ``binary_cross_entropy_with_logits`` / ``BCELoss`` ``"mean"`` divide by the
  element count: ``reduction="sum_over_batch_size"``;
- ``(N, C, d1, ...)`` inputs: ``axis=1``.
"""

from __future__ import annotations

import itertools

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jaxce
from jaxce import closed_form

TORCH_TO_JAXCE_PROB = {"none": "none", "sum": "sum", "mean": "sum_over_batch_size"}


def _t(x):
    return None if x is None else torch.from_numpy(np.asarray(x))


@pytest.mark.parametrize(
    "reduction, use_weight, use_ignore, smoothing",
    list(
        itertools.product(
            ["none", "sum", "mean"], [False, True], [False, True], [0.0, 0.2]
        )
    ),
)
def test_cross_entropy_class_indices(reduction, use_weight, use_ignore, smoothing):
    r = h.rng(1)
    n, k = 6, 4
    x = h.logits(r, (n, k))
    y = h.labels(r, (n,), k)
    if use_ignore:
        y[[1, 4]] = -100
    w = h.uniform(r, (k,), 0.2, 3.0) if use_weight else None
    expected = F.cross_entropy(
        _t(x),
        _t(y).long(),
        weight=_t(w),
        ignore_index=-100,
        label_smoothing=smoothing,
        reduction=reduction,
    ).numpy()
    got = jaxce.sparse_softmax_cross_entropy(
        x,
        y,
        class_weights=w,
        ignore_index=-100 if use_ignore else None,
        label_smoothing=smoothing,
        reduction=reduction,
    )
    assert got.dtype == jnp.float32
    h.assert_tree_allclose(got, expected)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_k_dimensional(reduction):
    r = h.rng(2)
    k = 4
    x = h.logits(r, (3, k, 5, 2))
    y = h.labels(r, (3, 5, 2), k)
    y[0, 1, 1] = y[2, 4, 0] = 255
    w = h.uniform(r, (k,), 0.5, 2.0)
    expected = F.cross_entropy(
        _t(x),
        _t(y).long(),
        weight=_t(w),
        ignore_index=255,
        label_smoothing=0.1,
        reduction=reduction,
    ).numpy()
    got = jaxce.sparse_softmax_cross_entropy(
        x,
        y,
        axis=1,
        class_weights=w,
        ignore_index=255,
        label_smoothing=0.1,
        reduction=reduction,
    )
    h.assert_tree_allclose(got, expected)


@pytest.mark.parametrize(
    "reduction, use_weight, smoothing",
    list(itertools.product(["none", "sum", "mean"], [False, True], [0.0, 0.3])),
)
def test_cross_entropy_probability_targets(reduction, use_weight, smoothing):
    r = h.rng(3)
    n, k = 6, 4
    x = h.logits(r, (n, k))
    t = h.probs(r, n, k)
    w = h.uniform(r, (k,), 0.2, 3.0) if use_weight else None
    expected = F.cross_entropy(
        _t(x), _t(t), weight=_t(w), label_smoothing=smoothing, reduction=reduction
    ).numpy()
    got = jaxce.softmax_cross_entropy(
        x,
        t,
        class_weights=w,
        label_smoothing=smoothing,
        reduction=TORCH_TO_JAXCE_PROB[reduction],
    )
    h.assert_tree_allclose(got, expected)


def test_cross_entropy_probability_targets_k_dimensional():
    r = h.rng(4)
    x = h.logits(r, (2, 3, 4))
    t = np.moveaxis(h.probs(r, 8, 3).reshape(2, 4, 3), -1, 1)
    expected = F.cross_entropy(_t(x), _t(t), label_smoothing=0.1).numpy()
    got = jaxce.softmax_cross_entropy(
        x, t, axis=1, label_smoothing=0.1, reduction="sum_over_batch_size"
    )
    h.assert_tree_allclose(got, expected)


def test_cross_entropy_one_hot_equals_class_indices_with_weights():
    # Dense one-hot targets with reduction="mean" use PyTorch's weight[target]
    # denominator, so they agree with the class-index path, smoothing included.
    r = h.rng(5)
    x = h.logits(r, (6, 4))
    y = h.labels(r, (6,), 4)
    w = h.uniform(r, (4,), 0.2, 3.0)
    expected = F.cross_entropy(
        _t(x), _t(y).long(), weight=_t(w), label_smoothing=0.15
    ).numpy()
    got = jaxce.softmax_cross_entropy(
        x, h.one_hot(y, 4), class_weights=w, label_smoothing=0.15
    )
    h.assert_tree_allclose(got, expected)


def test_cross_entropy_gradient_matches_autograd():
    r = h.rng(6)
    x = h.logits(r, (6, 4))
    y = h.labels(r, (6,), 4)
    y[3] = -100
    w = h.uniform(r, (4,), 0.2, 3.0)
    xt = _t(x).requires_grad_(True)
    F.cross_entropy(xt, _t(y).long(), weight=_t(w), label_smoothing=0.1).backward()
    assert xt.grad is not None
    got = jax.grad(
        lambda z: jaxce.sparse_softmax_cross_entropy(
            z, y, class_weights=w, ignore_index=-100, label_smoothing=0.1
        )
    )(jnp.asarray(x))
    h.assert_tree_allclose(got, xt.grad.numpy())


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weight_shape", [None, (4,), (6, 4), (6, 1)])
def test_bce_with_logits_pos_weight_and_weight(reduction, weight_shape):
    r = h.rng(7)
    z = h.logits(r, (6, 4))
    y = h.binary_labels(r, (6, 4))
    y[0] = [0.3, 0.7, 0.5, 1.0]  # soft labels too
    pw = h.uniform(r, (4,), 0.5, 3.0)
    w = None if weight_shape is None else h.uniform(r, weight_shape, 0.1, 2.0)
    expected = F.binary_cross_entropy_with_logits(
        _t(z), _t(y), weight=_t(w), pos_weight=_t(pw), reduction=reduction
    ).numpy()
    got = jaxce.sigmoid_binary_cross_entropy(
        z, y, weights=w, pos_weight=pw, reduction=TORCH_TO_JAXCE_PROB[reduction]
    )
    h.assert_tree_allclose(got, expected)


def test_bce_with_logits_docs_example():
    # torch.nn.BCEWithLogitsLoss docs: 64 classes, batch 10, all targets 1,
    # logits 1.5, pos_weight ones -> -log(sigmoid(1.5)) ~= 0.2014.
    target = np.ones((10, 64), np.float32)
    output = np.full((10, 64), 1.5, np.float32)
    pos_weight = np.ones(64, np.float32)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=_t(pos_weight))(
        _t(output), _t(target)
    ).numpy()
    got = jaxce.sigmoid_binary_cross_entropy(
        output, target, pos_weight=pos_weight, reduction="sum_over_batch_size"
    )
    h.assert_tree_allclose(got, expected)
    h.assert_tree_allclose(got, np.log1p(np.exp(-1.5)), rtol=1e-6)
    assert abs(float(got) - 0.2014) < 1e-4  # the figure printed in the docs


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("use_weight", [False, True])
def test_bce_loss_with_weight(reduction, use_weight):
    r = h.rng(8)
    p = h.uniform(r, (6, 4), 0.01, 0.99)
    y = h.binary_labels(r, (6, 4))
    w = h.uniform(r, (6, 4), 0.1, 2.0) if use_weight else None
    expected = torch.nn.BCELoss(weight=_t(w), reduction=reduction)(_t(p), _t(y)).numpy()
    got = jaxce.binary_cross_entropy(
        p, y, weights=w, reduction=TORCH_TO_JAXCE_PROB[reduction]
    )
    h.assert_tree_allclose(got, expected)


def test_cross_entropy_loss_docs_examples():
    # torch.nn.CrossEntropyLoss docs: (3, 5) input, class-index and probability
    # targets; the docs use random inputs, so seeded ones stand in for them.
    gen = torch.Generator().manual_seed(0)
    inp = torch.randn(3, 5, generator=gen)
    target = torch.randint(5, (3,), generator=gen)
    expected = torch.nn.CrossEntropyLoss()(inp, target).numpy()
    got = jaxce.sparse_softmax_cross_entropy(inp.numpy(), target.numpy())
    h.assert_tree_allclose(got, expected)
    soft = torch.randn(3, 5, generator=gen).softmax(dim=1)
    expected = torch.nn.CrossEntropyLoss()(inp, soft).numpy()
    got = jaxce.softmax_cross_entropy(
        inp.numpy(), soft.numpy(), reduction="sum_over_batch_size"
    )
    h.assert_tree_allclose(got, expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_closed_form_class_weights_match_backward(smoothing):
    """PyTorch's weighted mean (``sum w_y L / sum w_y``), ignore_index, smoothing:
    the closed-form gradient against autograd."""
    r = np.random.default_rng(3)
    z = r.standard_normal((7, 4))
    y = np.array([0, 1, 2, 3, -100, 1, 1])
    w = r.uniform(0.5, 2.0, 4)
    zt = torch.tensor(z, requires_grad=True)
    torch.nn.functional.cross_entropy(
        zt, torch.tensor(y), weight=torch.tensor(w), ignore_index=-100,
        label_smoothing=smoothing,
    ).backward()  # fmt: skip
    with jax.enable_x64(True):
        g = h.jitted(closed_form.sparse_softmax_cross_entropy)(
            jnp.asarray(z), jnp.asarray(y), class_weights=jnp.asarray(w),
            ignore_index=-100, label_smoothing=smoothing,
        )  # fmt: skip
        assert zt.grad is not None
        np.testing.assert_allclose(np.asarray(g), zt.grad.numpy(), rtol=1e-10)
