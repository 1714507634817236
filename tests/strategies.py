"""hypothesis strategies and settings shared by the property tests."""

from __future__ import annotations

import helpers as h
import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import settings, strategies as st

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
TOL = dict(rtol=1e-5, atol=2e-5)


def f32(lo, hi):
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    return st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw):
    """Logits, labels, targets, class weights, sample weights and a mask.

    Few distinct shapes: every new shape costs JAX compilations, and the laws
    do not depend on the sizes (``present`` varies the effective batch).
    """
    n = 3
    k = draw(st.sampled_from([2, 4]))
    z = draw(hnp.arrays(np.float32, (n, k), elements=f32(-8, 8)))
    y = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, k - 1)))
    cw = draw(hnp.arrays(np.float32, (k,), elements=f32(0.1, 3)))
    w = draw(hnp.arrays(np.float32, (n,), elements=f32(0.0, 2)))
    present = draw(hnp.arrays(np.bool_, (n,)))
    t = draw(hnp.arrays(np.float32, (n, k), elements=f32(0.01, 1)))
    t = t / t.sum(-1, keepdims=True)
    return dict(z=z, y=y, cw=cw, w=w, present=present, t=t, n=n, k=k)


@st.composite
def distributions(draw):
    k = draw(st.sampled_from([2, 4]))
    shape = (3, k)
    p = draw(hnp.arrays(np.float32, shape, elements=f32(0.0, 1.0)))
    p[:, 0] += 0.05  # at least one positive entry; zeros elsewhere are allowed
    q = draw(hnp.arrays(np.float32, shape, elements=f32(0.01, 1.0)))
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


def close(a, b, **tol):
    h.assert_tree_allclose(a, b, **(TOL | tol))
