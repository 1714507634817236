"""Generic checks over the fused heads (`fused_heads.HEADS`): every option means
the same on every head.

- Options against the unfused reference: for each head, rows of option levels
  that hold every pair of levels of every two of its options (a pairwise
  covering array, `helpers.pairwise`; the full cross-product is thousands of
  configurations), each one compilation of the fused and the reference value,
  outputs and gradients (w.r.t. every float array) together.
- The gradients w.r.t. data arrays (a teacher, RL advantages and log-probs):
  the reference's, zero where it holds them constant.
- Options that once meant different things on different heads (issue 18): a
  NumPy ``softcap``, an infinite one, ``weights`` of shape ``(1,)``, and
  ``ignore_index`` on the prompt tokens.
- Bad input, for every head that takes the argument: jaxce's own message (the
  functions unwrapped from the test session's type checker) and a
  ValueError / TypeError naming the argument from the public function, and from
  the closed form where a head has one with the same arguments.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fused_heads import BY_NAME, HEADS, IGNORE, NOT_SWEPT, N, V, allowed
from helpers import assert_tree_allclose, jit_call, missing_pairs, pairwise
from jax.sharding import Mesh

TOL = dict(rtol=2e-5, atol=2e-5)


def heads(*options: str):
    """The heads that take every one of ``options``, as parameters."""
    return [
        pytest.param(head, id=head.name)
        for head in HEADS
        if all(head.takes(o) for o in options)
    ]


@pytest.mark.parametrize("head", heads())
def test_every_option_is_swept(head):
    """Each keyword a head takes has levels in `LEVELS` (and its reference
    knows it), or is tested elsewhere (`NOT_SWEPT`)."""
    known = {*head.swept, *NOT_SWEPT, *head.required, *head.elsewhere}
    unknown = [o for o in head.options if o not in known | set(dict(head.fixed))]
    assert not unknown, (
        f"{head.name} takes {unknown}: add levels to fused_heads.LEVELS and the "
        "option to the head's reference"
    )


def test_every_fused_head_is_registered():
    """Each public ``jaxce.linear_*`` function has an entry."""
    import jaxce

    public = {n for n in dir(jaxce) if n.startswith("linear_")}
    assert public == set(BY_NAME), public ^ set(BY_NAME)


# -- options against the unfused reference --------------------------------------


def _every_option(head) -> dict:
    """Every option at its last level that goes with the others (per-token
    losses where there are any)."""
    row = {"reduction": "none"} if "reduction" in head.swept else {}
    for option, levels in head.swept.items():
        if option not in row:
            row[option] = [lv for lv in levels if allowed({**row, option: lv})][-1]
    return {option: row[option] for option in head.swept}


# The pairwise rows, then one with every option set at once.
ROWS = {head.name: [*pairwise(head.swept, allowed), _every_option(head)]
        for head in HEADS}  # fmt: skip


@pytest.mark.parametrize("head", heads())
def test_rows_hold_every_pair(head):
    rows = ROWS[head.name]
    assert not missing_pairs(rows, head.swept, allowed)
    assert all(allowed(row) for row in rows)


def _fused_and_reference(arrays, coef, *, head, data_gradients=False, **static):
    """``((scalar, output), gradients)`` of the fused head and of its reference,
    gradients w.r.t. every float array argument but the head's `constants` (with
    ``data_gradients``: w.r.t. those only); one compilation for both."""
    entry = BY_NAME[head]
    floats = {
        k: v
        for k, v in arrays.items()
        if jnp.issubdtype(v.dtype, jnp.floating)
        and (k in entry.constants) == data_gradients
    }
    rest = {k: v for k, v in arrays.items() if k not in floats}

    def value_and_grads(fn):
        def scalar(floats):
            out = entry.call(fn, {**rest, **floats}, **static)
            return entry.scalar(out, coef), out

        return jax.value_and_grad(scalar, has_aux=True)(floats)

    return value_and_grads(entry.fn), value_and_grads(entry.reference)


def _row_id(head, row) -> str:
    changed = [f"{k}={v}" for k, v in row.items() if v != head.swept[k][0]]
    return ",".join(changed) or "defaults"


CASES = [
    pytest.param(head, row, id=f"{head.name}-{i}-{_row_id(head, row)}")
    for head in HEADS
    for i, row in enumerate(ROWS[head.name])
]


@pytest.mark.parametrize("head, row", CASES)
def test_matches_reference(head, row):
    d = head.inputs(0)
    arrays, static = head.arguments(row, d)
    got, want = jit_call(_fused_and_reference, arrays, d["coef"], head=head.name,
                         **static)  # fmt: skip
    assert_tree_allclose(got, want, **TOL)
    assert [x.dtype for x in jax.tree.leaves(got)] == [
        x.dtype for x in jax.tree.leaves(want)
    ]
    assert np.isfinite(float(got[0][0]))


@pytest.mark.parametrize("head", [h for h in heads() if h.values[0].constants])
def test_gradients_of_data(head):
    """The gradients w.r.t. the data arrays (a teacher, advantages, the old and
    reference log-probs, importance ratios) are the reference's: zero where it
    treats them as constants, its own otherwise (a fused head may not drop a
    gradient that its composition has)."""
    d = head.inputs(0)
    row = {k: levels[-1] for k, levels in head.swept.items()
           if k in head.constants or k in {*head.biases}}  # fmt: skip
    arrays, static = head.arguments(row, d)
    assert set(head.constants) <= set(arrays)
    got, want = jit_call(_fused_and_reference, arrays, d["coef"], head=head.name,
                         data_gradients=True, **static)  # fmt: skip
    assert_tree_allclose(got[1], want[1], **TOL)


# -- the options that diverged between heads (issue 18) -------------------------


def _forward(head, **options):
    """The head's output on `data` with keyword ``options``."""
    arrays, static = head.arguments({}, head.inputs(0))
    return head.call(head.fn, arrays, **static, **options)


@pytest.mark.parametrize("head", heads("softcap"))
def test_numpy_softcap_is_accepted(head):
    """A NumPy float32 soft cap is the Python float it holds (the functions
    unwrapped: the test session's type checker reads the annotation, a Python
    number)."""
    arrays, _ = head.arguments({}, head.inputs(0))
    fn = inspect.unwrap(head.fn)
    got = head.call(fn, arrays, softcap=np.float32(30.0))
    assert_tree_allclose(got, head.call(fn, arrays, softcap=30.0), rtol=0, atol=0)


@pytest.mark.parametrize("head", heads("softcap"))
@pytest.mark.parametrize("softcap", [float("inf"), -float("inf"), float("nan")])
def test_non_finite_softcap_is_an_error(head, softcap):
    """Every head: a soft cap must be a finite number > 0 (inf is no cap: pass
    None), unwrapped and public, loss and closed form."""
    for fn in _unwrapped_and_public(head):
        with pytest.raises(ValueError, match="softcap"):
            _call_with(head, fn, softcap=softcap)


@pytest.mark.parametrize("head", heads("weights"))
def test_weights_of_shape_one_broadcast(head):
    """``weights`` broadcast against the tokens, as in the plain losses: shape
    ``(1,)`` is one weight for every token."""
    for reduction in ["none", "mean", "sum"]:
        one = _forward(head, weights=jnp.full((1,), 1.7), reduction=reduction)
        every = _forward(head, weights=jnp.full((N,), 1.7), reduction=reduction)
        assert_tree_allclose(one, every, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head", [h for h in heads() if h.values[0].has_labels])
def test_ignore_index_is_where(head):
    """Every head that takes labels takes ``ignore_index``; -100 on the prompt
    tokens is ``where=labels != -100``: those tokens give 0 (not NaN), the
    others what they give without ``ignore_index``."""
    assert head.takes("ignore_index")
    d = head.inputs(0)
    y = d["ignored"]  # -100 on 4 of the 13 tokens
    options = {"reduction": "none"} if head.takes("reduction") else {}
    arrays, static = head.arguments({"ignore_index": IGNORE}, d)
    got = head.call(head.fn, arrays, **static, **options)
    arrays, _ = head.arguments({}, {**d, "labels": y})  # no labels: distillation
    want = head.call(head.fn, arrays, where=y != IGNORE, **options)
    assert_tree_allclose(got, want, rtol=0, atol=0)
    ignored = np.asarray(y) == IGNORE
    for x in jax.tree.leaves(got):
        x = np.asarray(x)
        assert np.isfinite(x).all() and not x[ignored].any() and x[~ignored].any()


# -- bad input ----------------------------------------------------------------------

BAD_MESH = Mesh(np.array(jax.devices()[:1]), ("v",))
# (id, changes to the call, exception of jaxce's own check, its message)
# A change names an argument (role: "hidden", "weight", "labels", "bias" stand
# for a head's own names) or an option; a case runs on every head that takes it.
BAD = [
    ("features", {"hidden": 5}, ValueError, r"features"),
    ("dtype", {"weight": "bfloat16"}, TypeError, r"same dtype"),
    ("labels-shape", {"labels": (N + 1,)}, ValueError, r"`labels`.*shape"),
    ("labels-float", {"labels": "float32"}, TypeError, r"`labels`.*integer"),
    ("bias-shape", {"bias": (V + 1,)}, ValueError, r"bias.*shape"),
    ("where-shape", {"where": np.ones(N + 1, bool)}, ValueError, r"`where`"),
    ("weights-shape", {"weights": np.ones(N + 1, np.float32)}, ValueError,
     r"`weights`"),
    ("chunk-0", {"chunk_size": 0}, ValueError, r"`chunk_size`.*>= 1"),
    ("chunk-AUTO", {"chunk_size": "AUTO"}, ValueError, r"`chunk_size`"),
    ("chunk-float", {"chunk_size": 3.0}, TypeError, r"`chunk_size`"),
    ("chunk-bool", {"chunk_size": True}, TypeError, r"`chunk_size`"),
    ("budget-0", {"memory_budget_bytes": 0}, ValueError, r"`memory_budget_bytes`"),
    ("budget-float", {"memory_budget_bytes": 1.5}, TypeError,
     r"`memory_budget_bytes`"),
    ("layout", {"weight_layout": "VD"}, ValueError, r"`weight_layout`"),
    ("dv-shape", {"weight_layout": "dv"}, ValueError, r"features"),
    *[(f"temperature-{t}", {"temperature": t}, ValueError, r"`temperature`")
      for t in (0.0, -1.0, float("inf"), float("nan"))],
    *[(f"softcap-{c}", {"softcap": c}, ValueError, r"`softcap`")
      for c in (0.0, -1.0, float("inf"), float("nan"))],
    ("reduction", {"reduction": "avg"}, ValueError, r"`reduction`"),
    ("compact-int", {"compact": 1}, TypeError, r"`compact`"),
    ("ignore-float", {"ignore_index": 1.5}, TypeError, r"`ignore_index`"),
    ("normalizer-none", {"normalizer": 2.0, "reduction": "none"}, ValueError,
     r"`normalizer`"),
    *[(f"normalizer-{z}", {"normalizer": z}, ValueError, r"`normalizer`")
      for z in (0.0, -1.0, float("inf"))],
    ("axis-no-mesh", {"vocab_axis": "v"}, ValueError, r"need a `mesh`"),
    ("batch-axis-no-mesh", {"batch_axis": "v"}, ValueError, r"need a `mesh`"),
    ("axis-not-in-mesh", {"mesh": BAD_MESH, "vocab_axis": "nope"}, ValueError,
     r"not in the mesh"),
    ("axes-shared", {"mesh": BAD_MESH, "batch_axis": "v", "vocab_axis": "v"},
     ValueError, r"share the mesh axes"),
    ("mesh-type", {"mesh": "v", "vocab_axis": "v"}, TypeError, r"`mesh`"),
]  # fmt: skip
ROLES = {"hidden", "weight", "labels", "bias"}


def _applies(head, change) -> bool:
    roles = {"hidden", "weight"} | ({"labels"} if head.has_labels else set())
    roles |= {"bias"} if head.biases else set()
    return all(k in roles or (k not in ROLES and head.takes(k)) for k in change)


MESH_ARGS = {"mesh", "batch_axis", "vocab_axis"}


def _unwrapped_and_public(head, change=()):
    """jaxce's own function (no test-time type checker), the public one, and the
    closed form when it takes the same arguments (not for a ``change`` of the
    mesh: a closed form runs on one device)."""
    fns = [inspect.unwrap(head.fn), head.fn]
    closed = head.closed_form
    same = (
        closed is not None
        and not MESH_ARGS & set(change)
        and (
            list(inspect.signature(inspect.unwrap(closed)).parameters)
            == list(inspect.signature(inspect.unwrap(head.fn)).parameters)
        )
    )
    return fns + ([inspect.unwrap(closed), closed] if same else [])


def _call_with(head, fn, **change):
    """``fn`` on small valid inputs with ``change`` applied (see `BAD`)."""
    d = head.inputs(0)
    arrays, static = head.arguments({}, d)
    hidden, weight = head.positional[:2]
    labelled = head.labels_keyword and any(
        k in change for k in ("labels", "ignore_index")
    )
    if labelled:  # distillation's labels come with ignore_index
        arrays["labels"] = d["labels"]
        static["ignore_index"] = -1
    for key, value in change.items():
        if key == "hidden":  # another number of features
            arrays[hidden] = jnp.ones((*arrays[hidden].shape[:-1], value))
        elif key == "weight":
            arrays[weight] = arrays[weight].astype(value)
        elif key == "labels":
            if head.labels_keyword or "labels" in arrays:
                if isinstance(value, str):
                    arrays["labels"] = arrays["labels"].astype(value)
                else:
                    arrays["labels"] = jnp.zeros(value, jnp.int32)
        elif key == "bias":
            for name in head.biases:
                arrays[name] = jnp.ones(value)
        elif isinstance(value, np.ndarray):
            arrays[key] = jnp.asarray(value)
        else:
            static[key] = value
    return head.call(fn, arrays, **static)


BAD_CASES = [
    pytest.param(head, change, exc, match, id=f"{head.name}-{name}")
    for head in HEADS
    for name, change, exc, match in BAD
    if _applies(head, change)
]


@pytest.mark.parametrize("head, change, exc, match", BAD_CASES)
def test_bad_input_message(head, change, exc, match):
    """jaxce's own check: the exception and message, loss and closed form."""
    for fn in _unwrapped_and_public(head, change)[::2]:
        with pytest.raises(exc, match=match):
            _call_with(head, fn, **change)


@pytest.mark.parametrize("head, change, exc, match", BAD_CASES)
def test_bad_input_public(head, change, exc, match):
    """The public function (the test session wraps it in a type checker, which
    rejects some input first): a ValueError / TypeError naming the argument."""
    names = set(change) - ROLES - {"mesh"} if "mesh" not in change else set(change)
    if "bias" in change:
        names |= set(head.biases)
    if "labels" in change:
        names.add("labels")
    if "hidden" in change or "weight" in change or change.get("weight_layout") == "dv":
        names |= set(head.positional[:2])
    for fn in _unwrapped_and_public(head, change)[1::2]:
        with pytest.raises((ValueError, TypeError)) as info:
            _call_with(head, fn, **change)
        text = str(info.value)
        assert any(n in text for n in names), (names, text)
