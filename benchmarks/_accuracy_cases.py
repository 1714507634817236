"""The subjects of ``accuracy.py``: each loss and fused head, its comparison row
and its float64 reference (PyTorch on the CPU, autograd for the gradients).

A subject turns one case (dtype, logit scale, vocabulary size) into inputs, and
evaluates jaxce, the comparison and the reference on the same rounded inputs,
each as ``(values, [gradients])``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import jaxce

N_ROWS = 16  # tokens / examples per case
FEATURES = 64  # D of the fused heads
EPS = 1e-7  # probability clipping (Keras'), the same in the reference
LO, HI = float(np.float32(EPS)), float(np.float32(1 - EPS))  # jaxce's float32 bounds
KINDS = ("forward_kl", "reverse_kl", "jsd")

Result = tuple[np.ndarray, list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    head: bool  # a fused head (hidden, weight) or a loss on logits / probabilities
    ours: Callable[..., tuple]  # jitted: inputs -> (values, grads)
    reference: Callable[..., Result]  # float64 torch, same inputs
    comparison: str | None = None  # what the comparison row is
    other: Callable[..., tuple] | None = None  # jitted comparison


# -- inputs ---------------------------------------------------------------------


def make_inputs(subject: Subject, dtype, scale: float, v: int, seed: int) -> dict:
    """Arrays in ``dtype`` (labels int32) and their exact float64 values."""
    r = np.random.default_rng(seed)
    n = N_ROWS
    out = {"y": r.integers(0, v, n).astype(np.int32)}
    if subject.head:
        out["h"] = r.standard_normal((n, FEATURES))
        out["w"] = r.standard_normal((v, FEATURES)) * scale / np.sqrt(FEATURES)
        out["h2"] = r.standard_normal((n, FEATURES))  # a teacher
        out["w2"] = r.standard_normal((v, FEATURES)) * scale / np.sqrt(FEATURES)
    else:
        z = r.standard_normal((n, v)) * scale
        out["z"] = z
        out["z2"] = r.standard_normal((n, v)) * scale  # a teacher
        out["p"] = np.exp(z - z.max(-1, keepdims=True))
        out["p"] /= out["p"].sum(-1, keepdims=True)
        out["q"] = 0.5 + 0.5 * np.tanh(z / 2)  # binary probabilities, sigmoid(z)
        t = np.exp(r.standard_normal((n, v)))
        out["t"] = t / t.sum(-1, keepdims=True)
        b = r.uniform(0, 1, (n, v))
        out["b"] = np.where(r.uniform(size=(n, v)) < 0.5, np.round(b), b)  # 0/1, soft
    arrays, exact = {}, {}
    for k, a in out.items():
        x = jnp.asarray(a) if k == "y" else jnp.asarray(a, jnp.float32).astype(dtype)
        arrays[k] = x
        exact[k] = a if k == "y" else np.asarray(x.astype(jnp.float32), np.float64)
    return {"jax": arrays, "f64": exact}


# -- helpers --------------------------------------------------------------------


def _loss(fn, arg: str, *rest: str, **kw):
    """jaxce loss: per-element values and the gradient of their sum."""

    @jax.jit
    def run(x, *others):
        values = fn(x, *others, reduction="none", **kw)
        grad = jax.grad(lambda x: fn(x, *others, reduction="sum", **kw))(x)
        return values, [grad]

    return lambda d: run(d[arg], *(d[k] for k in rest))


def _plain(fn, arg: str, *rest: str):
    """A per-element function (optax): values and the gradient of their sum."""

    @jax.jit
    def run(x, *others):
        values = fn(x, *others)
        return values, [jax.grad(lambda x: jnp.sum(fn(x, *others)))(x)]

    return lambda d: run(d[arg], *(d[k] for k in rest))


def _torch(fn, arg: str, *rest: str, grad_of: str = "sum"):
    """A float64 torch reference: per-element values, gradient of their sum/mean."""

    def run(d) -> Result:
        x = torch.tensor(d[arg], requires_grad=True)
        others = [torch.tensor(d[k]) for k in rest]
        values = fn(x, *others)
        (values.sum() if grad_of == "sum" else values.mean()).backward()
        return values.detach().numpy(), [x.grad.numpy()]

    return run


def _t_clip(p):
    """``clip(p, LO, HI)`` with derivative 1/2 exactly on a bound: JAX's convention
    for ``jnp.clip`` (PyTorch's ``clamp`` passes 1), so the gradients compare."""
    on_bound = (p == LO) | (p == HI)
    return torch.where(on_bound, 0.5 * (p - p.detach()) + p.detach(), p.clamp(LO, HI))


def _t_focal_softmax(z, y):
    logp = torch.log_softmax(z, -1).gather(-1, y.long()[:, None])[:, 0]
    return -((-torch.expm1(logp)) ** 2) * logp


def _t_focal_sigmoid(z, b):
    q = b * torch.sigmoid(-z) + (1 - b) * torch.sigmoid(z)  # 1 - p_t, no cancellation
    return F.binary_cross_entropy_with_logits(z, b, reduction="none") * q**2


def _t_divergence(kind: str):
    def fn(zs, zt):
        ls, lt = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
        if kind == "forward_kl":
            return (lt.exp() * (lt - ls)).sum(-1)
        if kind == "reverse_kl":
            return (ls.exp() * (ls - lt)).sum(-1)
        lm = torch.logsumexp(torch.stack([lt, ls]) + np.log(0.5), 0)
        return 0.5 * (lt.exp() * (lt - lm)).sum(-1) + 0.5 * (ls.exp() * (ls - lm)).sum(
            -1
        )

    return fn


# -- the losses -----------------------------------------------------------------


def _losses() -> list[Subject]:
    j = jaxce
    out = [
        Subject("sparse_softmax_cross_entropy", False,
                _loss(j.sparse_softmax_cross_entropy, "z", "y"),
                _torch(lambda z, y: F.cross_entropy(z, y.long(), reduction="none"),
                       "z", "y"),
                "optax.softmax_cross_entropy_with_integer_labels",
                _plain(optax.softmax_cross_entropy_with_integer_labels, "z", "y")),
        Subject("softmax_cross_entropy", False,
                _loss(j.softmax_cross_entropy, "z", "t"),
                _torch(lambda z, t: -(t * torch.log_softmax(z, -1)).sum(-1), "z", "t"),
                "optax.softmax_cross_entropy",
                _plain(optax.softmax_cross_entropy, "z", "t")),
        Subject("softmax_focal_loss (gamma=2)", False,
                _loss(j.softmax_focal_loss, "z", "y"),
                _torch(_t_focal_softmax, "z", "y")),
        Subject("sigmoid_binary_cross_entropy", False,
                _loss(j.sigmoid_binary_cross_entropy, "z", "b"),
                _torch(lambda z, b: F.binary_cross_entropy_with_logits(
                    z, b, reduction="none"), "z", "b"),
                "optax.sigmoid_binary_cross_entropy",
                _plain(optax.sigmoid_binary_cross_entropy, "z", "b")),
        Subject("sigmoid_focal_loss (gamma=2)", False,
                _loss(j.sigmoid_focal_loss, "z", "b"),
                _torch(_t_focal_sigmoid, "z", "b"),
                "optax.sigmoid_focal_loss",
                _plain(optax.sigmoid_focal_loss, "z", "b")),
        Subject("binary_cross_entropy (eps=1e-7)", False,
                _loss(j.binary_cross_entropy, "q", "b", eps=EPS),
                _torch(lambda q, b: -(b * torch.log(_t_clip(q))
                                      + (1 - b) * torch.log1p(-_t_clip(q))),
                       "q", "b")),
        Subject("categorical_cross_entropy (eps=1e-7)", False,
                _loss(j.categorical_cross_entropy, "p", "t", eps=EPS),
                _torch(lambda p, t: -(t * torch.log(_t_clip(p))).sum(-1), "p", "t")),
        Subject("sparse_categorical_cross_entropy (eps=1e-7)", False,
                _loss(j.sparse_categorical_cross_entropy, "p", "y", eps=EPS),
                _torch(lambda p, y: -torch.log(_t_clip(p)).gather(
                    -1, y.long()[:, None])[:, 0], "p", "y")),
    ]  # fmt: skip
    for kind in KINDS:
        optax_kl = {
            "forward_kl": "optax.kl_divergence_with_log_targets(log p_s, log p_t)",
            "reverse_kl": "optax.kl_divergence_with_log_targets(log p_t, log p_s)",
        }.get(kind)
        out.append(
            Subject(f"distillation_loss (kind={kind!r})", False,
                    _loss(j.distillation_loss, "z", "z2", kind=kind),
                    _torch(_t_divergence(kind), "z", "z2"),
                    optax_kl, None if optax_kl is None else _plain(_optax_kl(kind),
                                                                 "z", "z2"))
        )  # fmt: skip
    return out


def _optax_kl(kind: str):
    def fn(zs, zt):
        ls, lt = jax.nn.log_softmax(zs), jax.nn.log_softmax(zt)
        if kind == "forward_kl":
            return optax.losses.kl_divergence_with_log_targets(ls, lt)
        return optax.losses.kl_divergence_with_log_targets(lt, ls)

    return fn


# -- the fused heads --------------------------------------------------------------


def _head(fn, *args: str, values_fn=None):
    """A fused head (or its unfused twin): ``fn(h, w, *rest) -> (values, scalar)``;
    the gradients of the scalar w.r.t. ``h`` and ``w``."""

    @jax.jit
    def run(h, w, *rest):
        def scalar(h, w):
            values, s = fn(h, w, *rest)
            return s, values

        (_, values), grads = jax.value_and_grad(scalar, (0, 1), has_aux=True)(h, w)
        return values, list(grads)

    return lambda d: run(d["h"], d["w"], *(d[k] for k in args))


def _t_head(fn, *args: str):
    def run(d) -> Result:
        h = torch.tensor(d["h"], requires_grad=True)
        w = torch.tensor(d["w"], requires_grad=True)
        values, s = fn(h, w, *(torch.tensor(d[k]) for k in args))
        s.backward()
        return values.detach().numpy(), [h.grad.numpy(), w.grad.numpy()]

    return run


def _ce_token(h, w, y):
    loss = jaxce.linear_softmax_cross_entropy(h, w, y)
    return loss, loss


def _ce_token_unfused(h, w, y):
    loss = jaxce.sparse_softmax_cross_entropy(h @ w.T, y)
    return loss, loss


def _ce_none(h, w, y):
    losses = jaxce.linear_softmax_cross_entropy(h, w, y, reduction="none")
    return losses, jnp.sum(losses)


def _ce_none_unfused(h, w, y):
    losses = jaxce.sparse_softmax_cross_entropy(h @ w.T, y, reduction="none")
    return losses, jnp.sum(losses)


def _stats(h, w, y):
    s = jaxce.linear_token_stats(h, w, y)
    return jnp.concatenate([s.logprob, s.entropy, s.logsumexp]), jnp.sum(
        s.logprob + s.entropy
    )


def _stats_unfused(h, w, y):
    z = (h @ w.T).astype(jnp.float32)
    logp = jax.nn.log_softmax(z)
    lp = jnp.take_along_axis(logp, y[:, None], -1)[:, 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, -1)
    out = jnp.concatenate([lp, ent, jax.nn.logsumexp(z, -1)]).astype(h.dtype)
    return out, jnp.sum(lp + ent).astype(h.dtype)


def _t_ce(reduction: str):
    def fn(h, w, y):
        losses = F.cross_entropy(h @ w.T, y.long(), reduction="none")
        if reduction == "mean":
            return losses.mean(), losses.mean()
        return losses, losses.sum()

    return fn


def _t_stats(h, w, y):
    z = h @ w.T
    logp = torch.log_softmax(z, -1)
    lp = logp.gather(-1, y.long()[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1)
    return torch.cat([lp, ent, torch.logsumexp(z, -1)]), (lp + ent).sum()


def _distill(kind: str, fused: bool):
    def fn(h, w, h2, w2):
        if fused:
            f = jaxce.linear_distillation_loss
            values = f(h, w, h2, w2, kind=kind, reduction="none")
            return values, f(h, w, h2, w2, kind=kind)
        values = jaxce.distillation_loss(
            h @ w.T, h2 @ w2.T, kind=kind, reduction="none"
        )
        return values, jnp.mean(values)

    return fn


def _t_distill(kind: str):
    def fn(h, w, h2, w2):
        values = _t_divergence(kind)(h @ w.T, h2 @ w2.T)
        return values, values.mean()

    return fn


def _heads() -> list[Subject]:
    unfused = "unfused: the jaxce loss on h @ w.T (same dtype)"
    out = [
        Subject("linear_softmax_cross_entropy, token path (mean, differentiated)",
                True, _head(_ce_token, "y"), _t_head(_t_ce("mean"), "y"),
                unfused, _head(_ce_token_unfused, "y")),
        Subject('linear_softmax_cross_entropy, recompute path (reduction="none")',
                True, _head(_ce_none, "y"), _t_head(_t_ce("sum"), "y"),
                unfused, _head(_ce_none_unfused, "y")),
        Subject("linear_token_stats (logprob, entropy, logsumexp)",
                True, _head(_stats, "y"), _t_head(_t_stats, "y"),
                "unfused: log_softmax of h @ w.T (same dtype) in float32",
                _head(_stats_unfused, "y")),
    ]  # fmt: skip
    for kind in KINDS:
        out.append(
            Subject(f"linear_distillation_loss (kind={kind!r})", True,
                    _head(_distill(kind, True), "h2", "w2"),
                    _t_head(_t_distill(kind), "h2", "w2"),
                    unfused, _head(_distill(kind, False), "h2", "w2"))
        )  # fmt: skip
    return out


def subjects() -> list[Subject]:
    return _losses() + _heads()
