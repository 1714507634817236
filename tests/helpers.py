"""Shared test helpers: tree comparison, small random inputs, NumPy references."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import pathlib
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

# float32 tolerances (see the test brief): ~1e-5 relative, 1e-6 absolute.
RTOL = 1e-5
ATOL = 1e-6
REDUCTIONS = ("none", "sum", "mean", "sum_over_batch_size")


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def tree_allclose(x, y, *, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """True when two pytrees have the same structure, shapes and close values."""
    if jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(y):
        return False
    for a, b in zip(_leaves(x), _leaves(y)):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol):
            return False
    return True


def assert_tree_allclose(actual, expected, *, rtol: float = RTOL, atol: float = ATOL):
    """Assert ``tree_allclose`` with a message showing the worst leaf."""
    sa = jax.tree_util.tree_structure(actual)
    se = jax.tree_util.tree_structure(expected)
    assert sa == se, f"tree structures differ: {sa} vs {se}"
    for i, (a, b) in enumerate(zip(_leaves(actual), _leaves(expected))):
        a64 = np.asarray(a, dtype=np.float64)
        b64 = np.asarray(b, dtype=np.float64)
        assert a64.shape == b64.shape, f"leaf {i}: shape {a64.shape} != {b64.shape}"
        np.testing.assert_allclose(
            a64, b64, rtol=rtol, atol=atol, err_msg=f"leaf {i} differs"
        )


def assert_finite(tree) -> None:
    """Every leaf is finite (no NaN, no inf)."""
    for i, leaf in enumerate(_leaves(tree)):
        arr = np.asarray(jnp.asarray(leaf, dtype=jnp.float32))
        assert np.all(np.isfinite(arr)), f"leaf {i} is not finite: {arr}"


# -- compiled once per configuration ----------------------------------------------
#
# Compilation dominates the run time of the suite, and `jax.jit` caches by the
# function object: ``jax.jit(lambda ...)`` built afresh per call compiles every
# time. `jit_call` keeps one compiled function per (function, hashable keyword
# values); array keywords are arguments, so calls that differ only in arrays of
# the same shapes share one compilation.


def _is_static(value) -> bool:
    """Hashable keyword values (numbers, strings, None, meshes) are compiled in;
    arrays (unhashable) are arguments."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


@functools.cache
def _compiled(fn, static: tuple, tag):
    del tag  # part of the cache key only
    return jax.jit(functools.partial(fn, **{k: v for k, _, v in static}))


def jit_call(fn, *args, jit_tag=None, **kwargs):
    """``fn(*args, **kwargs)``, compiled once per ``fn``, set of hashable keyword
    values (their types included: ``30.0`` and ``np.float32(30.0)`` compile
    apart) and ``jit_tag``. ``jit_tag`` only separates compilations, for tests
    that patch something read at trace time (block sizes); ``fn`` must be a
    module-level function (a fresh lambda is a fresh cache entry)."""
    static = tuple(sorted((k, type(v), v) for k, v in kwargs.items() if _is_static(v)))
    arrays = {k: v for k, v in kwargs.items() if not _is_static(v)}
    return _compiled(fn, static, jit_tag)(*args, **arrays)


def jitted(fn):
    """``fn`` compiled once per configuration (see `jit_call`): hashable keyword
    options are static, arrays (positional or keyword) are arguments."""
    return functools.partial(jit_call, fn)


# -- small random inputs ------------------------------------------------------------


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def logits(r: np.random.Generator, shape, scale: float = 2.0) -> np.ndarray:
    return (scale * r.standard_normal(shape)).astype(np.float32)


def probs(r: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``(n, k)`` rows on the simplex, bounded away from 0 (float32)."""
    p = r.dirichlet(np.full(k, 2.0), size=n) + 0.01
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def labels(r: np.random.Generator, shape, k: int) -> np.ndarray:
    return r.integers(0, k, size=shape).astype(np.int32)


def binary_labels(r: np.random.Generator, shape) -> np.ndarray:
    return (r.uniform(size=shape) < 0.5).astype(np.float32)


def uniform(r: np.random.Generator, shape, lo: float, hi: float) -> np.ndarray:
    return r.uniform(lo, hi, size=shape).astype(np.float32)


def one_hot(y: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[y]


# -- NumPy references ---------------------------------------------------------------


def log_softmax(z):
    """float64 log-softmax over the last axis."""
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def log_sigmoid(z):
    """float64 ``log(sigmoid(z))``."""
    z = np.asarray(z, np.float64)
    return -np.logaddexp(0.0, -z)


def softmax_np(z):
    """Softmax over the last axis, in the input's precision."""
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid_np(z):
    return 1 / (1 + np.exp(-z))


ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(
        f"jaxce_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- covering arrays ----------------------------------------------------------------


def covering(cases, *levels):
    """``cases`` (tuples, one entry per factor), checked to hold every pair of
    levels of every two factors: a pairwise covering array in place of the full
    cross-product, for factors independent by construction. Raises naming the
    pairs missing."""
    cases = [tuple(c) for c in cases]
    missing = []
    for i, j in itertools.combinations(range(len(levels)), 2):
        seen = {(c[i], c[j]) for c in cases}
        missing += [(i, a, j, b) for a in levels[i] for b in levels[j]
                    if (a, b) not in seen]  # fmt: skip
    assert not missing, f"pairs (factor, level, factor, level) not covered: {missing}"
    assert all(c[k] in levels[k] for c in cases for k in range(len(levels)))
    return cases


def missing_pairs(rows, levels, allowed=lambda row: True) -> list:
    """The pairs of levels (of two options) that no row of ``rows`` (dicts,
    option -> level) holds, among the pairs ``allowed`` admits."""
    names = list(levels)
    missing = []
    for a, b in itertools.combinations(names, 2):
        seen = {(row[a], row[b]) for row in rows}
        missing += [((a, x), (b, y)) for x in levels[a] for y in levels[b]
                    if (x, y) not in seen and allowed({a: x, b: y})]  # fmt: skip
    return missing


def pairwise(levels, allowed=lambda row: True, tries: int = 24) -> list[dict]:
    """Rows (option -> level) that hold every pair of levels of every two options
    (a pairwise covering array), built greedily and deterministically in the way
    of AETG: each row is the best of ``tries`` candidates, each started from a
    pair not yet held and completed option by option (in a shuffled order, seed
    fixed) with the level that holds most new pairs. ``allowed`` rejects (partial)
    rows whose options do not go together."""
    names = list(levels)
    rank = {name: i for i, name in enumerate(names)}

    def pairs(row):
        keys = sorted(row, key=rank.get)
        return {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(keys, 2)}

    todo = [
        ((a, x), (b, y))
        for a, b in itertools.combinations(names, 2)
        for x in levels[a]
        for y in levels[b]
        if allowed({a: x, b: y})
    ]
    # The two options with most levels: their product is a lower bound on the
    # rows; every candidate's seed is one of their pairs while some are left.
    big = set(sorted(names, key=lambda n: -len(levels[n]))[:2])
    shuffle = np.random.default_rng(0)
    rows = []
    while todo:
        left = set(todo)
        seeds = [p for p in todo if {p[0][0], p[1][0]} == big] or todo
        best, best_gain = None, -1
        for t in range(tries):
            (a, x), (b, y) = seeds[t * len(seeds) // tries]
            row = {a: x, b: y}
            order = list(names) if t == 0 else list(shuffle.permutation(names))
            for name in order:
                if name not in row:
                    fits = [lv for lv in levels[name] if allowed({**row, name: lv})]
                    row[name] = max(
                        fits, key=lambda lv: len(pairs({**row, name: lv}) & left)
                    )
            gain = len(pairs(row) & left)
            if gain > best_gain:
                best, best_gain = row, gain
        assert best is not None
        rows.append({name: best[name] for name in names})
        held = pairs(best)
        todo = [pair for pair in todo if pair not in held]
    assert not missing_pairs(rows, levels, allowed)
    return rows
