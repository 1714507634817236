"""LLM losses, fused against unfused: token statistics, distillation, compaction.

Measures, in one run (float32):

1. forward + backward time and compiled temporary memory of
   `jaxce.linear_token_stats` (``jax.value_and_grad`` w.r.t. hidden and weight of
   ``sum(a * logprob + b * entropy)``, a PPO / GRPO-shaped objective) against the
   same statistics from ``jax.nn.log_softmax(hidden @ weight.T)``, at N=2048,
   D=1024, V=32768;
2. the same for `jaxce.linear_distillation_loss` (forward KL, gradients w.r.t.
   the student's hidden and weight) against
   ``jaxce.distillation_loss(hs @ ws.T, ht @ wt.T)`` (teacher D = student D);
3. fused temporary memory only (compile only, nothing runs) at N=8192, D=2048,
   V=131072 for both;
4. ``linear_softmax_cross_entropy(..., compact=True)`` against
   ``compact=False`` (value and gradients w.r.t. hidden and weight) with half
   the tokens absent, at random places.

Memory is ``jax.jit(f).lower(*args).compile().memory_analysis()
.temp_size_in_bytes`` (compile only). Timings: warm-up first,
``block_until_ready``, minimum of the repeats, the compared functions
interleaved round by round (a shared machine's bursts hit both alike); the
fused / unfused times of parts 1 and 2 are measured ``--comparisons`` times
(default 5) and the median ratio is the figure (one comparison on this 2-core
box varies by about +-8 %; its sorted ratios are printed too). Every
part checks first that its API exists (the options of issue 11 land one by
one) and prints a "not available" row if not; a part that fails prints its
error and the script goes on (exit status 1 at the end).

    python benchmarks/bench_llm.py            # full run
    python benchmarks/bench_llm.py --quick    # small shapes, a smoke run
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import traceback

import jax
import jax.numpy as jnp
from _timing import time_min  # benchmarks/_timing.py, beside this script

import jaxce

GiB = 2**30
MiB = 2**20
MEMORY_GOAL = 0.2  # fused / unfused compiled temp memory
TIME_GOAL = 1.0  # fused / unfused fwd+bwd time
BIG_GOAL = GiB  # fused temp memory at the large shape
COMPACT_GOAL = 0.6  # compact=True / compact=False time at 50 % absent tokens


def accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def missing(*names: str) -> str | None:
    """The first of ``names`` that ``jaxce`` lacks, or None."""
    return next((n for n in names if not hasattr(jaxce, n)), None)


def fmt_bytes(b: float) -> str:
    return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / MiB:.1f} MiB"


def shapes(*dims_dtypes):
    return [jax.ShapeDtypeStruct(s, d) for s, d in dims_dtypes]


def compiled_temp(fn, specs) -> int:
    """Compiled temporary memory of ``jax.jit(fn)`` on ``specs`` (compile only)."""
    return jax.jit(fn).lower(*specs).compile().memory_analysis().temp_size_in_bytes


def time_pair(fns, args, repeats, comparisons=1):
    """Min time of each jitted fn on ``args``, interleaved; and their outputs.

    With ``comparisons`` K > 1, the whole minimum-of-``repeats`` measurement is
    taken K times (one warm-up in all): the times are then K-lists, one entry
    per comparison.
    """
    jitted = [jax.jit(f) for f in fns]
    outs = [None] * len(fns)

    def thunk(i):
        def run():
            outs[i] = jax.block_until_ready(jitted[i](*args))

        return run

    thunks = [thunk(i) for i in range(len(fns))]
    if comparisons == 1:
        return time_min(thunks, repeats), outs
    rounds = [time_min(thunks, repeats, warmup=int(k == 0)) for k in range(comparisons)]
    return [list(col) for col in zip(*rounds)], outs


def max_rel_diff(a, b) -> float:
    """Largest ``|a - b| / max|b|`` over the leaves of two pytrees."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        scale = float(jnp.max(jnp.abs(y))) or 1.0
        worst = max(worst, float(jnp.max(jnp.abs(x - y))) / scale)
    return worst


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


# -- the losses ---------------------------------------------------------------------


def token_stats_fused(h, w, y, a, b):
    s = jaxce.linear_token_stats(h, w, y)
    return jnp.sum(a * s.logprob + b * s.entropy)


def token_stats_unfused(h, w, y, a, b):
    logp = jax.nn.log_softmax(h @ w.T, axis=-1)
    logprob = jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.sum(a * logprob + b * entropy)


def distill_fused(hs, ws, ht, wt):
    return jaxce.linear_distillation_loss(hs, ws, ht, wt, kind="forward_kl")


def distill_unfused(hs, ws, ht, wt):
    return jaxce.distillation_loss(hs @ ws.T, ht @ wt.T, kind="forward_kl")


def grad01(fn):
    return jax.value_and_grad(fn, argnums=(0, 1))


def token_stats_inputs(n, d, v, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    h = jax.random.normal(k[0], (n, d), jnp.float32)
    w = jax.random.normal(k[1], (v, d), jnp.float32) / d**0.5
    y = jax.random.randint(k[2], (n,), 0, v)
    a = jax.random.normal(k[3], (n,), jnp.float32)  # advantages
    b = jnp.full((n,), 0.01, jnp.float32)  # entropy coefficient
    return h, w, y, a, b


def token_stats_specs(n, d, v):
    f32 = jnp.float32
    return shapes(((n, d), f32), ((v, d), f32), ((n,), jnp.int32), ((n,), f32),
                  ((n,), f32))  # fmt: skip


def distill_inputs(n, d, v, seed=1):
    k = jax.random.split(jax.random.key(seed), 4)
    hs = jax.random.normal(k[0], (n, d), jnp.float32)
    ws = jax.random.normal(k[1], (v, d), jnp.float32) / d**0.5
    ht = jax.random.normal(k[2], (n, d), jnp.float32)
    wt = jax.random.normal(k[3], (v, d), jnp.float32) / d**0.5
    return hs, ws, ht, wt


def distill_specs(n, d, v):
    f32 = jnp.float32
    return shapes(((n, d), f32), ((v, d), f32), ((n, d), f32), ((v, d), f32))


# -- the parts ----------------------------------------------------------------------


def fused_vs_unfused(
    title, need, fused, unfused, inputs, specs, n, d, v, repeats, comparisons
):
    print(f"\n## {title}: fused vs unfused, N={n}, D={d}, V={v}, float32")
    print("| quantity | fused | unfused | fused / unfused | goal | met? |")
    print("|---|---|---|---|---|---|")
    if (name := missing(*need)) is not None:
        print(f"| {title} | not available (`jaxce.{name}` missing) | | | | |")
        return
    f_b = compiled_temp(grad01(fused), specs(n, d, v))
    u_b = compiled_temp(grad01(unfused), specs(n, d, v))
    print(f"| compiled temp memory (value_and_grad) | {fmt_bytes(f_b)} | "
          f"{fmt_bytes(u_b)} | {f_b / u_b:.3f} | <= {MEMORY_GOAL} | "
          f"{met(f_b / u_b <= MEMORY_GOAL)} |")  # fmt: skip
    args = inputs(n, d, v)
    (t_f, t_u), (o_f, o_u) = time_pair(
        [grad01(fused), grad01(unfused)], args, repeats, comparisons
    )
    ratios = sorted(f / u for f, u in zip(t_f, t_u))
    ratio = statistics.median(ratios)
    print(f"| fwd+bwd time (min of {repeats}; median of {comparisons} "
          f"comparisons) | {statistics.median(t_f):.3f} s | "
          f"{statistics.median(t_u):.3f} s | {ratio:.2f} | <= {TIME_GOAL} | "
          f"{met(ratio <= TIME_GOAL)} |")  # fmt: skip
    if comparisons > 1:
        each = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"| the {comparisons} time ratios, sorted | | | {each} | | |")
    print(f"| value; max rel. diff of value and grads | {float(o_f[0]):.6g} | "
          f"{float(o_u[0]):.6g} | {max_rel_diff(o_f, o_u):.1e} | | |")  # fmt: skip


def big_memory(n, d, v):
    print(f"\n## fused compiled temp memory only (compile only), N={n}, D={d}, "
          f"V={v}, float32")  # fmt: skip
    print("| loss (value_and_grad w.r.t. hidden, weight) | fused temp | goal | met? |")
    print("|---|---|---|---|")
    parts = [
        ("linear_token_stats", "linear_token_stats", token_stats_fused,
         token_stats_specs),
        ("linear_distillation_loss (forward KL)", "linear_distillation_loss",
         distill_fused, distill_specs),
    ]  # fmt: skip
    failed = False
    for title, need, fn, specs in parts:
        if missing(need) is not None:
            print(f"| {title} | not available (`jaxce.{need}` missing) | | |")
            continue
        try:
            b = compiled_temp(grad01(fn), specs(n, d, v))
        except Exception as e:  # an API still being written: report, go on
            print(f"| {title} | failed: {type(e).__name__}: {first_line(e)} | | |")
            failed = True
            continue
        print(f"| {title} | {fmt_bytes(b)} | <= {fmt_bytes(BIG_GOAL)} | "
              f"{met(b <= BIG_GOAL)} |")  # fmt: skip
    return failed


def compact(n, d, v, repeats):
    print(f"\n## compact=True vs compact=False, 50 % of tokens absent, N={n}, "
          f"D={d}, V={v}, float32")  # fmt: skip
    print("| quantity | compact=True | compact=False | ratio | goal | met? |")
    print("|---|---|---|---|---|---|")
    fn = jaxce.linear_softmax_cross_entropy
    if not accepts(fn, "compact"):
        print("| fwd+bwd time | not available (`linear_softmax_cross_entropy` "
              "has no `compact=`) | | | | |")  # fmt: skip
        return
    h, w, y, _, _ = token_stats_inputs(n, d, v)
    # Exactly half the tokens present, at random places.
    order = jax.random.permutation(jax.random.key(3), n)
    where = jnp.zeros((n,), bool).at[order[: n // 2]].set(True)

    def loss(on):
        def f(h, w, y, where):
            return fn(h, w, y, where=where, compact=on)

        return grad01(f)

    (t_c, t_p), (o_c, o_p) = time_pair(
        [loss(True), loss(False)], (h, w, y, where), repeats
    )
    print(f"| fwd+bwd time (min of {repeats}) | {t_c:.3f} s | "
          f"{t_p:.3f} s | {t_c / t_p:.2f} | <= {COMPACT_GOAL} | "
          f"{met(t_c / t_p <= COMPACT_GOAL)} |")  # fmt: skip
    print(f"| value; max rel. diff of value and grads | {float(o_c[0]):.6g} | "
          f"{float(o_p[0]):.6g} | {max_rel_diff(o_c, o_p):.1e} | | |")  # fmt: skip


# -- the policy loss (GRPO family) ------------------------------------------------


def policy_inputs(n, d, v, seed=2, batch=4):
    k = jax.random.split(jax.random.key(seed), 5)
    t = n // batch
    h = jax.random.normal(k[0], (batch, t, d), jnp.float32)
    w = jax.random.normal(k[1], (v, d), jnp.float32) / d**0.5
    y = jax.random.randint(k[2], (batch, t), 0, v)
    adv = jax.random.normal(k[3], (batch,), jnp.float32)
    old = -jax.random.uniform(k[4], (batch, t), jnp.float32, 5.0, 15.0)
    mask = jnp.arange(t)[None, :] < jnp.array([[t], [t // 2], [3 * t // 4], [t]])
    return h, w, y, adv, old, mask


POLICY_KW = dict(loss_type="dapo", epsilon_high=0.28, entropy_coef=0.01)


def policy_fused(h, w, y, adv, old, mask):
    return jaxce.linear_policy_loss(h, w, y, adv, where=mask, old_logprob=old,
                                    **POLICY_KW)[0]  # fmt: skip


def policy_composed(h, w, y, adv, old, mask):
    """``jax.grad`` through `policy_loss(linear_token_stats(...))`: four GEMMs."""
    b, t, d = h.shape
    s = jaxce.linear_token_stats(h.reshape(b * t, d), w, y.reshape(b * t),
                                 where=mask.reshape(b * t))  # fmt: skip
    lp, ent = s.logprob.reshape(b, t), s.entropy.reshape(b, t)
    return jaxce.policy_loss(lp, adv, where=mask, old_logprob=old, entropy=ent,
                             **POLICY_KW)[0]  # fmt: skip


def policy_unfused(h, w, y, adv, old, mask):
    logp = jax.nn.log_softmax(h @ w.T, axis=-1)  # (B, T, V)
    lp = jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jaxce.policy_loss(lp, adv, where=mask, old_logprob=old, entropy=ent,
                             **POLICY_KW)[0]  # fmt: skip


def policy(n, d, v, repeats, comparisons):
    b = 4
    print(
        f"\n## linear_policy_loss (dapo, token level, entropy bonus), B={b}, "
        f"T={n // b} (N={n}), D={d}, V={v}, float32, 3/4 of the tokens present"
    )
    print(
        "| quantity | fused | composed (token stats) | unfused logits | "
        "fused / composed | fused / unfused | goal | met? |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if (name := missing("linear_policy_loss", "policy_loss")) is not None:
        print(f"| policy | not available (`jaxce.{name}` missing) | | | | | | |")
        return
    args = policy_inputs(n, d, v)
    fns = [grad01(f) for f in (policy_fused, policy_composed, policy_unfused)]
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in args]
    mem = [compiled_temp(f, specs) for f in fns]
    print(f"| compiled temp memory (value_and_grad) | {fmt_bytes(mem[0])} | "
          f"{fmt_bytes(mem[1])} | {fmt_bytes(mem[2])} | {mem[0] / mem[1]:.3f} | "
          f"{mem[0] / mem[2]:.3f} | <= {MEMORY_GOAL} vs unfused | "
          f"{met(mem[0] / mem[2] <= MEMORY_GOAL)} |")  # fmt: skip
    times, outs = time_pair(fns, args, repeats, comparisons)
    if comparisons == 1:
        times = [[x] for x in times]
    r_c = statistics.median(f / c for f, c in zip(times[0], times[1]))
    r_u = statistics.median(f / u for f, u in zip(times[0], times[2]))
    med = [statistics.median(x) for x in times]
    print(f"| fwd+bwd time (min of {repeats}; median of {comparisons}) | "
          f"{med[0]:.3f} s | {med[1]:.3f} s | {med[2]:.3f} s | {r_c:.2f} | "
          f"{r_u:.2f} | <= 0.8 both | {met(r_c <= 0.8 and r_u <= 0.8)} |")  # fmt: skip
    print(f"| value; max rel. diff of value and grads vs unfused | "
          f"{float(outs[0][0]):.6g} | {max_rel_diff(outs[1], outs[2]):.1e} | | "
          f"{max_rel_diff(outs[0], outs[2]):.1e} | | | |")  # fmt: skip


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:160].replace("|", "/")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--policy-only", action="store_true",
                        help="only the linear_policy_loss rows")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--comparisons",
        type=int,
        default=5,
        help="fused / unfused time comparisons (the median ratio is reported)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        shape, big = (256, 128, 4096), (1024, 256, 16384)
    else:
        shape, big = (2048, 1024, 32768), (8192, 2048, 131072)
    print(
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, backend {jax.default_backend()}, "
        f"device {jax.devices()[0].device_kind}"
    )
    parts = [
        lambda: fused_vs_unfused(
            "linear_token_stats, sum(a * logprob + b * entropy)",
            ["linear_token_stats"], token_stats_fused, token_stats_unfused,
            token_stats_inputs, token_stats_specs, *shape, args.repeats,
            args.comparisons,
        ),
        lambda: fused_vs_unfused(
            "linear_distillation_loss, forward KL",
            ["linear_distillation_loss", "distillation_loss"], distill_fused,
            distill_unfused, distill_inputs, distill_specs, *shape, args.repeats,
            args.comparisons,
        ),
        lambda: policy(*shape, args.repeats, args.comparisons),
        lambda: big_memory(*big),
        lambda: compact(*shape, args.repeats),
    ]  # fmt: skip
    if args.policy_only:
        parts = [lambda: policy(*shape, args.repeats, args.comparisons)]
    status = 0
    for part in parts:
        try:
            if part():
                status = 1
        except Exception as e:  # an API still being written: report, go on
            print(f"| failed: {type(e).__name__}: {first_line(e)} | | | | | |")
            traceback.print_exc()
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
