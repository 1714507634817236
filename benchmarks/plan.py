"""The fused engine's plan, readable: blocks, temporary memory and a roofline.

For each shape (N, D, V) (the QuACK / Liger anchor 4096 x 4096 x 128256, the
same head at N = 32768, Gemma-2 2B's 8192 x 2304 x 256000; bf16 input) and each
plan (the CUDA plan, default and ``memory_budget_bytes`` in {256 MiB, 1 GiB,
4 GiB, 16 GiB}; the CPU's default plan for contrast; TPU and ROCm get the CUDA
plan), it prints, per fused path:

- ``ce``: `jaxce.linear_softmax_cross_entropy` with a scalar reduction, the
  token (row) path: ``row_chunk`` tokens x all V classes per chunk, gradients
  formed in the forward (3 GEMMs);
- ``ce_none`` / ``token_stats``: ``reduction="none"`` and
  `jaxce.linear_token_stats`, the vocabulary-block path: ``token_chunk`` x
  ``chunk_size`` blocks, recomputed in the backward (4 GEMMs);
- ``distill``: `jaxce.linear_distillation_loss` (forward KL, teacher D = D):
  the row path with two heads sharing the budget (``heads=2``);

the blocks (``block_sizes(..., platform=)``, the planner the engine uses), the
modelled and the compiled temporary memory, the unfused loss's, and an H200
roofline.

Memory model (bytes of temporaries, the compute dtype is float32):

- logits blocks: four block-sized float32 arrays live at once per head
  (``LOGITS_ARRAYS``: ``z``, ``exp``, ``dz``, its cast), an upper bound;
- the float32 gradient accumulators: ``dW`` (V x D f32) and ``dH`` (N x D
  f32) on the row paths; ``dH`` (N x D f32), one vocabulary block's ``dW``
  (C x D f32) and the ``dW`` carry in the weight's dtype on the recompute path;
- unfused (a lower bound): the ``(N, V)`` logits and their cotangent in the
  input dtype (float32 for the token statistics, whose unfused reference
  takes float32 logits) and the teacher's logits for distillation: what XLA
  must hold at once; nothing else of size N x V is assumed to be
  materialised.

Compiled memory: ``jax.jit(jax.value_and_grad(f)).lower(...).compile()
.memory_analysis().temp_size_in_bytes`` on this CPU (compile only; nothing of
this size is computed), with the accelerator's plan forced by setting the
planner's CPU constants (``_plan.BLOCK_ELEMENTS`` / ``DEFAULT_CHUNK``) to the
accelerator's, so the CPU plan equals the CUDA one. XLA:CPU's buffer
assignment is not XLA:GPU's: the unfused loss in particular compiles to
float32 ``(N, V)`` temporaries on the CPU (4x the model), so the compiled
fused / unfused ratio flatters the fused loss; both ratios are printed. The GPU
figures come from ``benchmarks/gpu.sh``.

Roofline model (per fwd+bwd, H200: 989e12 bf16 FLOP/s dense, 4.8e12 B/s HBM;
modelled time = max(FLOPs / 989e12, bytes / 4.8e12), i.e. perfect overlap,
every GEMM at peak whatever its shape: a GEMM contracting over few rows, as the
token path's ``dW += dz^T H`` at small ``T``, runs well below peak, which the
model does not see; the "min GEMM dim" column shows it):

- FLOPs: 6NDV for the 3-GEMM row path (``z = H W^T``, ``dH = dz W``,
  ``dW = dz^T H``), 8NDV for the 4-GEMM recompute path (the logits again in
  the backward), 8NDV for distillation (the teacher's logits, 2NDV, and the
  student's 6NDV);
- HBM bytes, row path (``chunks = ceil(N / T)``): ``W`` read once per token
  chunk per GEMM that reads it (2: the logits and ``dH``; and the teacher's
  once), the f32 ``dW`` accumulator read and written once per chunk
  (8 V D per chunk), the hidden chunk read by each GEMM (``dW`` in
  ``chunk_size``-class slices: once per slice), ``dH`` f32 read and written
  once; logits traffic per element: the f32 ``z`` written by the GEMM and read
  twice (statistics, ``dz``), ``dz`` written in the input dtype and read by the
  two gradient GEMMs (12 + 3 s bytes, s the input itemsize; the teacher's
  ``z``: 12); the epilogue (f32 ``dW`` / ``dH`` cast to the input dtype and
  scaled by the cotangent);
- HBM bytes, recompute path (``nv = ceil(V / C)`` vocabulary blocks, ``nt =
  ceil(N / T)`` token blocks): forward ``W`` read once per token block, the
  hidden once per vocabulary block, ``z`` written and read once (8 bytes);
  backward ``W`` read twice per token block, the hidden twice per vocabulary
  block, the f32 ``dH`` read and written once per vocabulary block (8 N D per
  block: the ``(N, D)`` accumulator is rewritten per block), the block's f32
  ``dW`` read and written once per token block, ``z`` written, read, ``dz``
  written and read twice (8 + 3 s bytes);
- unfused (XLA, for contrast): 6NDV (8NDV with a teacher); ``W`` and the
  hidden read by two GEMMs each, the ``(N, V)`` logits written, read twice
  and their cotangent written and read twice, all in the input dtype (6 s per
  element; the teacher's logits 3 s; token statistics: float32, 24 bytes);
  the gradients written once;
- "% of floor": the floor is the unfused GEMM FLOPs at peak (6NDV / 989e12;
  8NDV with a teacher) over the modelled time.

Goals (issue 19, N = 32768, D = 4096, V = 128256, bf16, CUDA / TPU plan): the
token path >= 1024 tokens per chunk, distillation >= 512, compiled temporary
memory <= 25 % of the unfused loss's.

    python benchmarks/plan.py                   # compiles the default plans
    python benchmarks/plan.py --compile all     # and the budget sweep (~2 min)
    python benchmarks/plan.py --compile none    # the model only (< 1 s)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import time

import jax
import jax.numpy as jnp

import jaxce
from jaxce._fused._engine import _plan

GiB = 2**30
MiB = 2**20
PEAK_FLOPS = 989e12  # H200 / H100 SXM dense bf16
PEAK_BYTES = 4.8e12  # H200 HBM3e
SHAPES = {
    "QuACK / Liger anchor": (4096, 4096, 128256),
    "LLM head, N=32768": (32768, 4096, 128256),
    "Gemma-2 2B": (8192, 2304, 256000),
}
GOAL_SHAPE = (32768, 4096, 128256)
BUDGETS = [None, 256 * MiB, GiB, 4 * GiB, 16 * GiB]
PATHS = ("ce", "ce_none", "token_stats", "distill")
IN_DTYPE = jnp.bfloat16
S_IN = jnp.dtype(IN_DTYPE).itemsize  # input itemsize (bf16: 2)
F32 = 4


# -- the plan ------------------------------------------------------------------


def blocks(path: str, n: int, v: int, budget: int | None, plat: str):
    """``(T, C, heads, chunk_size)``: the logits block of ``path`` (``C = V``
    on the row paths, whose ``dW`` is formed in ``chunk_size``-class slices)."""
    elems = _plan.budget_elements(budget, jnp.float32)  # bf16 computes in f32
    heads = 2 if path == "distill" else 1
    b = _plan.block_sizes(n, v, None, elems, False, heads, plat)
    if path in ("ce", "distill"):
        return b.row_chunk, v, heads, b.chunk_size
    return b.token_chunk, b.chunk_size, heads, b.chunk_size


# -- the memory model --------------------------------------------------------------


def modelled_temp(path, n, d, v, t, c, heads) -> int:
    logits = heads * _plan.LOGITS_ARRAYS * t * c * F32
    if path in ("ce", "distill"):
        return logits + v * d * F32 + n * d * F32
    return logits + n * d * F32 + c * d * F32 + v * d * S_IN


def logits_itemsize(path) -> int:
    """Bytes per unfused logit: the input dtype's; float32 for the token
    statistics (see `unfused_loss`)."""
    return F32 if path == "token_stats" else S_IN


def unfused_temp_model(path, n, v) -> int:
    arrays = 3 if path == "distill" else 2  # logits, their cotangent (teacher)
    return arrays * n * v * logits_itemsize(path)


# -- the roofline --------------------------------------------------------------


def roofline(path, n, d, v, t, c):
    """``(flops, bytes, min_gemm_dim)`` of one fwd+bwd: ``T`` tokens per block,
    ``c`` classes per vocabulary block (row paths: per ``dW`` slice)."""
    s = S_IN
    if path in ("ce", "distill"):
        chunks = -(-n // t)
        slices = -(-v // c)
        teacher = path == "distill"
        w_reads = (2 + teacher) * chunks * v * d * s
        h_reads = (2 + slices + teacher) * n * d * s
        dw_acc = chunks * 8 * v * d
        dh_acc = 8 * n * d
        logit = n * v * (12 + 3 * s + (12 if teacher else 0))
        epilogue = (v * d + n * d) * (F32 + 3 * s)
        flops = (8 if teacher else 6) * n * d * v
        total = w_reads + h_reads + dw_acc + dh_acc + logit + epilogue
        return flops, total, min(t, d, v)
    nv, nt = -(-v // c), -(-n // t)
    fwd = nt * v * d * s + nv * n * d * s + 8 * n * v
    bwd = (
        2 * nt * v * d * s  # W blocks: recompute, dH
        + 2 * nv * n * d * s  # hidden blocks: recompute, dW
        + nv * 8 * n * d  # the f32 dH rewritten once per vocabulary block
        + nt * 8 * v * d  # each block's f32 dW, once per token block
        + v * d * (F32 + 2 * s)  # the block dW added into the dW carry
        + n * v * (8 + 3 * s)
    )
    return 8 * n * d * v, fwd + bwd, min(t, c, d)


def unfused_roofline(path, n, d, v):
    s, sl = S_IN, logits_itemsize(path)
    teacher = path == "distill"
    flops = (8 if teacher else 6) * n * d * v
    total = (
        (2 + teacher) * v * d * s
        + (2 + teacher) * n * d * s
        + n * v * (6 * sl + (3 * sl if teacher else 0))
        + (v * d + n * d) * s
    )
    return flops, total


def model_time(flops, total) -> tuple[float, str]:
    tc, tm = flops / PEAK_FLOPS, total / PEAK_BYTES
    return max(tc, tm), "compute" if tc >= tm else "memory"


def floor_time(path, n, d, v) -> float:
    return (8 if path == "distill" else 6) * n * d * v / PEAK_FLOPS


# -- compiled memory ---------------------------------------------------------------


def fused_loss(path: str, budget: int | None = None):
    """The scalar objective of a fused path (differentiate w.r.t. args 0, 1)."""
    kw = dict(memory_budget_bytes=budget)
    if path == "ce":
        return lambda h, w, y: jaxce.linear_softmax_cross_entropy(h, w, y, **kw)
    if path == "ce_none":
        return lambda h, w, y: jnp.sum(
            jaxce.linear_softmax_cross_entropy(h, w, y, reduction="none", **kw)
        )
    if path == "token_stats":  # a PPO / GRPO-shaped objective

        def stats(h, w, y, a):
            s = jaxce.linear_token_stats(h, w, y, **kw)
            return jnp.sum(a * s.logprob + 0.01 * s.entropy)

        return stats
    return lambda hs, ws, ht, wt: jaxce.linear_distillation_loss(hs, ws, ht, wt, **kw)


def unfused_loss(path: str):
    """The same objective on explicit ``(N, V)`` logits (XLA).

    Cross-entropy and distillation take ``h @ w.T`` in the input dtype (the
    losses compute in float32 inside); the token statistics take float32
    logits (``preferred_element_type``), as an RL objective's log-probabilities
    would be (bf16 logits move ``logprob`` by ~1e-2), and return them in the
    input dtype, as `jaxce.linear_token_stats` does.
    """
    if path in ("ce", "ce_none"):
        return lambda h, w, y: jaxce.sparse_softmax_cross_entropy(h @ w.T, y)
    if path == "token_stats":

        def stats(h, w, y, a):  # float32 logits, as the fused statistics
            logits = jnp.matmul(h, w.T, preferred_element_type=jnp.float32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            lp = jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
            ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
            lp, ent = lp.astype(h.dtype), ent.astype(h.dtype)  # as the fused
            return jnp.sum(a * lp + 0.01 * ent)

        return stats
    return lambda hs, ws, ht, wt: jaxce.distillation_loss(hs @ ws.T, ht @ wt.T)


def input_specs(path: str, n: int, d: int, v: int, dtype=IN_DTYPE) -> tuple:
    """`jax.ShapeDtypeStruct` s of a path's arguments (weight ``(V, D)``)."""
    st = jax.ShapeDtypeStruct
    h, w = st((n, d), dtype), st((v, d), dtype)
    y, a = st((n,), jnp.int32), st((n,), jnp.float32)
    if path == "token_stats":
        return h, w, y, a
    if path == "distill":
        return h, w, h, w
    return h, w, y


def loss_and_specs(path, n, d, v, budget, unfused=False):
    fn = unfused_loss(path) if unfused else fused_loss(path, budget)
    return fn, input_specs(path, n, d, v)


@contextlib.contextmanager
def accelerator_plan_on_cpu():
    """The CPU plan set to the accelerator's (read at trace time)."""
    old = _plan.BLOCK_ELEMENTS, _plan.DEFAULT_CHUNK
    _plan.BLOCK_ELEMENTS = _plan.ACCELERATOR_ELEMENTS
    _plan.DEFAULT_CHUNK = _plan.ACCELERATOR_CHUNK
    try:
        yield
    finally:
        _plan.BLOCK_ELEMENTS, _plan.DEFAULT_CHUNK = old


UPCAST = re.compile(
    r"= f32\[([\d,]+)\]\{[\d,]*\} fusion\(%[\w.\-]+\), kind=kLoop, "
    r"calls=%wrapped_convert_computation"
)


def cpu_upcast_bytes(hlo: str) -> int:
    """Bytes of the float32 copies XLA:CPU makes of whole bf16 arrays.

    XLA:CPU runs a bf16 GEMM in float32 and hoists the operand's conversion
    out of the loop (the weight, the hidden states: a pure ``convert`` fusion
    in the entry computation); XLA:GPU feeds bf16 operands to the tensor cores
    (``tests/test_lowered.py`` checks the lowered GEMMs), so these are not
    part of what a GPU would allocate. Arrays under 1 MiB are ignored.
    """
    entry = hlo[hlo.index("ENTRY") :]
    sizes = (
        math.prod(map(int, dims.split(","))) * F32 for dims in UPCAST.findall(entry)
    )
    return sum(b for b in sizes if b >= MiB)


class Compiler:
    """Compiled temp bytes (raw, and less `cpu_upcast_bytes`), compile only,
    within a wall-clock budget."""

    def __init__(self, limit_s: float):
        self.deadline = time.perf_counter() + limit_s
        self.count = 0
        self.slow: set = set()
        self.skipped = 0

    def temp(self, path, n, d, v, budget, plat, unfused=False):
        key = (path, n, unfused)
        if key in self.slow or time.perf_counter() > self.deadline:
            self.skipped += 1
            return None
        fn, specs = loss_and_specs(path, n, d, v, budget, unfused)
        vg = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        start = time.perf_counter()
        ctx = accelerator_plan_on_cpu() if plat != "cpu" else contextlib.nullcontext()
        with ctx:
            compiled = vg.lower(*specs).compile()
        if time.perf_counter() - start > 20:  # skip that shape's other budgets
            self.slow.add(key)
        self.count += 1
        raw = compiled.memory_analysis().temp_size_in_bytes
        return raw, raw - cpu_upcast_bytes(compiled.as_text())


# -- the table ---------------------------------------------------------------------


def gib(b) -> str:
    return "-" if b is None else f"{b / GiB:.2f}"


def pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def budget_name(b) -> str:
    if b is None:
        return "default"
    return f"{b // GiB} GiB" if b >= GiB else f"{b // MiB} MiB"


def plans(compile_mode: str):
    """``(plat, budget, compile?)`` rows in print order."""
    rows = [("cuda", b, compile_mode == "all" or b is None) for b in BUDGETS]
    rows.append(("cpu", None, True))
    return [(p, b, c and compile_mode != "none") for p, b, c in rows]


def unfused_table(comp, compile_mode, n, d, v) -> dict:
    print("\nunfused (XLA: `h @ w.T`, then the loss):\n")
    print(
        "| path | temp model GiB | compiled (CPU) GiB | compiled - CPU upcasts GiB "
        "| TFLOP | HBM GB | model ms | % of floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    out = {}
    for path in PATHS:
        um = unfused_temp_model(path, n, v)
        uc = None
        if compile_mode != "none":
            # reduction="none" then a sum is the same program as the sum
            src = "ce" if path == "ce_none" else path
            uc = (
                out[src][1]
                if src in out
                else comp.temp(src, n, d, v, None, "cpu", True)
            )
        out[path] = (um, uc)
        fl, by = unfused_roofline(path, n, d, v)
        ms, _ = model_time(fl, by)
        raw, adj = uc if uc is not None else (None, None)
        print(
            f"| {path} | {gib(um)} | {gib(raw)} | {gib(adj)} | {fl / 1e12:.0f} | "
            f"{by / 1e9:.0f} | {ms * 1e3:.1f} | "
            f"{floor_time(path, n, d, v) / ms:.0%} |"
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--compile",
        choices=("none", "default", "all"),
        default="default",
        help="which plans to compile on the CPU (default: the "
        "default plans; all: the budget sweep too)",
    )
    parser.add_argument(
        "--compile-budget-s",
        type=float,
        default=240.0,
        help="compile nothing more after this many seconds",
    )
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, compiled on backend {jax.default_backend()}; "
        f"roofline: H200, {PEAK_FLOPS / 1e12:.0f} TF/s bf16, "
        f"{PEAK_BYTES / 1e12:.1f} TB/s; input bf16"
    )
    comp = Compiler(args.compile_budget_s)
    start = time.perf_counter()
    goal = {}
    for title, (n, d, v) in SHAPES.items():
        print(f"\n## {title}: N={n}, D={d}, V={v}, bf16")
        unf = unfused_table(comp, args.compile, n, d, v)
        print(
            "\nfused (T x C: tokens x classes per logits block; chunks: token "
            "chunks (row paths) or vocabulary x token blocks; compiled*: the CPU "
            "compile less its float32 upcasts; / unfused: against the unfused "
            "model):\n"
        )
        print(
            "| plan | budget | path | T x C | chunks | min GEMM dim | temp model "
            "GiB | compiled GiB | compiled* GiB | model / unfused | compiled* / "
            "unfused | TFLOP | HBM GB | model ms | bound | % of floor |"
        )
        print("|" + "---|" * 16)
        for plat, budget, do_compile in plans(args.compile):
            for path in PATHS:
                t, c, heads, chunk = blocks(path, n, v, budget, plat)
                tm = modelled_temp(path, n, d, v, t, c, heads)
                tc = comp.temp(path, n, d, v, budget, plat) if do_compile else None
                raw, adj = tc if tc is not None else (None, None)
                um = unf[path][0]
                fl, by, mind = roofline(path, n, d, v, t, chunk)
                ms, bound = model_time(fl, by)
                if path in ("ce", "distill"):
                    chunks = f"{-(-n // t)}"
                else:
                    chunks = f"{-(-v // c)} x {-(-n // t)}"
                print(
                    f"| {plat} | {budget_name(budget)} | {path} | {t} x {c} | "
                    f"{chunks} | {mind} | {gib(tm)} | {gib(raw)} | {gib(adj)} | "
                    f"{pct(tm / um)} | {pct(None if adj is None else adj / um)} | "
                    f"{fl / 1e12:.0f} | {by / 1e9:.0f} | {ms * 1e3:.1f} | {bound} | "
                    f"{floor_time(path, n, d, v) / ms:.0%} |"
                )
                if (n, d, v) == GOAL_SHAPE and plat == "cuda" and budget is None:
                    goal[path] = (t, tm, raw, adj, um, unf[path][1])
    print(
        f"\n{comp.count} compiles ({comp.skipped} skipped), "
        f"{time.perf_counter() - start:.0f} s"
    )
    report_goals(goal)


def report_goals(goal):
    n, d, v = GOAL_SHAPE
    print(f"\n## goals at N={n}, D={d}, V={v}, bf16, CUDA / TPU default plan\n")
    print("| goal | value | met? |\n|---|---|---|")
    t = goal["ce"][0]
    print(
        f"| ce: token path >= 1024 tokens per chunk | {t} | "
        f"{'yes' if t >= 1024 else '**no**'} |"
    )
    t = goal["distill"][0]
    print(
        f"| distill: >= 512 tokens per chunk | {t} | "
        f"{'yes' if t >= 512 else '**no**'} |"
    )
    for path in PATHS:
        _, tm, raw, adj, um, uc = goal[path]
        parts, ok = [f"model / unfused model {tm / um:.1%}"], tm / um <= 0.25
        if adj is not None:
            ok = adj / um <= 0.25  # the compile decides where there is one
            parts.append(f"compiled* / unfused model {adj / um:.1%}")
            parts.append(f"compiled / unfused model {raw / um:.1%}")
            if uc is not None:
                parts.append(f"compiled / unfused compiled (CPU) {raw / uc[0]:.1%}")
        print(
            f"| {path}: temp <= 25 % of unfused | {'; '.join(parts)} | "
            f"{'yes' if ok else '**no**'} |"
        )


if __name__ == "__main__":
    main()
