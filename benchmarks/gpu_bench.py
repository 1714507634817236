"""Fused heads against the unfused XLA loss on one accelerator: time, peak memory,
% of peak, over the plan's budget sweep (the driver of ``benchmarks/gpu.sh``).

For each head (``ce``: `jaxce.linear_softmax_cross_entropy`, mean;
``token_stats``: `jaxce.linear_token_stats` with ``sum(a * logprob + 0.01 *
entropy)``; ``distill``: `jaxce.linear_distillation_loss`, forward KL, teacher
D = D) it times ``jax.jit(jax.value_and_grad(f, argnums=(0, 1)))`` (gradients
w.r.t. the (student's) hidden states and weight) at N=32768, D=4096, V=128256,
bf16: the unfused loss on explicit logits (`benchmarks/plan.py`'s
``unfused_loss``: ``sparse_softmax_cross_entropy(h @ w.T, y)`` etc.), the fused
one with the default plan and with ``memory_budget_bytes`` in {256 MiB, 1 GiB,
4 GiB, 16 GiB}.

Each configuration runs in a fresh process (a ``forkserver`` child with JAX
imported but no backend started, so a new device client per configuration),
so ``device.memory_stats()["peak_bytes_in_use"]`` is that configuration's peak
(inputs, outputs and temporaries; ``XLA_PYTHON_CLIENT_PREALLOCATE=false``),
one at a time. The dry run (``--dry-run``: the CPU, N=512, D=128, V=2048, the
budgets / 1024 so that the blocks still differ) runs a head's configurations
in one process (``--fresh-process head``: a CPU reports no peak) with a
temporary compilation cache for the input and checksum programs, so it takes
~30 s on 2 cores; otherwise the code is the same.
Per configuration: compile (timed; ``memory_analysis()`` of the executable),
one warm-up call, ``--repeats`` (3) timed calls (``block_until_ready``; min and
median), the peak, then checksums of the outputs (the loss, and per gradient its
norm and its projection on a fixed random array) that the parent compares with
the unfused loss's ("max rel diff": the worst of the value's relative
difference, the norms' and the projections' divided by norm x norm).

"% of peak" is the model FLOPs (6NDV; 8NDV for distillation, whose teacher
logits are 2NDV) per second over the device's dense bf16 peak, looked up from
``device.device_kind`` (H100 / H200 SXM: 989 TF/s; unknown devices and the CPU:
n/a). The fused recompute path (token stats) does 8NDV, so it tops out at 75 %
by this measure.

Writes ``gpu_bench.json`` and ``gpu_bench.md`` under ``--out`` (default: $OUT,
else benchmarks/out/) after every configuration, so a run cut short keeps what
it measured, and prints the table at the end (or on SIGTERM).

    python benchmarks/gpu_bench.py              # on the GPU (~3-4 minutes)
    python benchmarks/gpu_bench.py --dry-run    # CPU, tiny shapes, same code
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GiB = 2**30
MiB = 2**20
HEADS = ("ce", "token_stats", "distill")
BUDGETS = [None, 256 * MiB, GiB, 4 * GiB, 16 * GiB]
SHAPE = (32768, 4096, 128256)
DRY_SHAPE = (512, 128, 2048)
DRY_SHIFT = 10  # dry run: budgets / 1024 (256 KiB ... 16 MiB), so blocks differ
PEAK_TFLOPS = {  # dense bf16, by a substring of device_kind (first match)
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
}
SCHEMA = 1


def peak_tflops(kind: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in kind.lower():
            return value
    return None


def model_flops(head: str, n: int, d: int, v: int) -> int:
    return (8 if head == "distill" else 6) * n * d * v


def budget_name(b) -> str:
    if b is None:
        return "default"
    if b >= GiB:
        return f"{b // GiB} GiB"
    return f"{b // MiB} MiB" if b >= MiB else f"{b // 1024} KiB"


def configs(budgets) -> list[dict]:
    """The runs, most telling first: each head's default plan and unfused loss,
    then the budget sweep."""
    first = []
    for head in HEADS:
        first.append(dict(head=head, impl="fused", budget=None))
        first.append(dict(head=head, impl="unfused", budget=None))
    sweep = [
        dict(head=head, impl="fused", budget=b)
        for head in HEADS
        for b in budgets
        if b is not None
    ]
    return first + sweep


# -- one configuration (in a fresh child process) --------------------------------


def make_inputs(head, n, d, v, dtype, seed=0):
    """The arguments of ``head``, drawn on the device (one compiled program)."""
    import jax
    import jax.numpy as jnp

    def draw(key):
        k = jax.random.split(key, 6)
        scale = jnp.asarray(d**-0.5, dtype)  # no float32 (V, D) temporary
        h = jax.random.normal(k[0], (n, d), dtype)
        w = jax.random.normal(k[1], (v, d), dtype) * scale
        if head == "distill":
            ht = jax.random.normal(k[2], (n, d), dtype)
            wt = jax.random.normal(k[3], (v, d), dtype) * scale
            return h, w, ht, wt
        y = jax.random.randint(k[4], (n,), 0, v, jnp.int32)
        if head == "token_stats":
            return h, w, y, jax.random.normal(k[5], (n,), jnp.float32)
        return h, w, y

    return jax.block_until_ready(jax.jit(draw)(jax.random.key(seed)))


def checksums(value, grads) -> dict:
    """The loss and, per gradient, its norm and its projection on a fixed
    random array (and that array's norm): one compiled program."""
    import jax
    import jax.numpy as jnp

    def sums(grads):
        out = []
        for i, g in enumerate(grads):
            g = g.astype(jnp.float32)
            r = jax.random.normal(jax.random.key(100 + i), g.shape, jnp.float32)
            out.append(
                jnp.stack([jnp.linalg.norm(g), jnp.vdot(g, r), jnp.linalg.norm(r)])
            )
        return jnp.stack(out)

    rows = [[float(x) for x in row] for row in jax.jit(sums)(grads)]
    return dict(
        value=float(value),
        grad_norms=[r[0] for r in rows],
        grad_proj=[r[1] for r in rows],
        r_norms=[r[2] for r in rows],
    )


def run_one(cfg: dict, shape, repeats: int) -> dict:
    """Compile, time and measure one configuration (in this process)."""
    import jax
    import jax.numpy as jnp
    import plan

    t0 = time.perf_counter()
    n, d, v = shape
    dtype = jnp.bfloat16
    dev = jax.devices()[0]
    head, impl, budget = cfg["head"], cfg["impl"], cfg["budget"]
    fn = plan.unfused_loss(head) if impl == "unfused" else plan.fused_loss(head, budget)
    out = dict(device_kind=dev.device_kind, platform=dev.platform)
    t1 = time.perf_counter()
    args = make_inputs(head, n, d, v, dtype)
    out["inputs_bytes_in_use"] = (dev.memory_stats() or {}).get("bytes_in_use")
    t2 = time.perf_counter()
    vg = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    compiled = vg.lower(*args).compile()
    t3 = time.perf_counter()
    mem = compiled.memory_analysis()
    if mem is not None:
        out["temp_bytes"] = int(mem.temp_size_in_bytes)
        out["argument_bytes"] = int(mem.argument_size_in_bytes)
        out["output_bytes"] = int(mem.output_size_in_bytes)
    result = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        del result
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    out["time_ms_min"] = 1e3 * min(times)
    out["time_ms_median"] = 1e3 * statistics.median(times)
    stats = dev.memory_stats() or {}
    out["peak_bytes"] = stats.get("peak_bytes_in_use")
    t4 = time.perf_counter()
    value, grads = result
    del args
    out.update(checksums(value, grads))
    t5 = time.perf_counter()
    out["phases_s"] = dict(
        init=t1 - t0, inputs=t2 - t1, compile=t3 - t2, run=t4 - t3, check=t5 - t4
    )
    out["compile_s"] = t3 - t2
    return out


def child(batch, shape, repeats, conn, cache_dir=None):
    """Run the configurations ``batch`` (``(index, cfg)`` pairs) here, sending
    ``(index, result)`` after each."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if cache_dir:  # the dry run: the input / checksum programs compile once
        import jax

        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    for i, cfg in batch:
        try:
            res = dict(status="ok", **run_one(cfg, shape, repeats))
        except BaseException as e:  # an OOM is an answer too
            tail = traceback.format_exc().strip().splitlines()[-3:]
            err = " | ".join(tail)[-600:]
            res = dict(status=f"error: {type(e).__name__}", error=err)
        conn.send((i, res))
    conn.close()


# -- the parent ----------------------------------------------------------------


class Run:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.shape = DRY_SHAPE if self.dry else SHAPE
        shift = DRY_SHIFT if self.dry else 0
        self.budgets = [None if b is None else b >> shift for b in BUDGETS]
        self.out = args.out
        self.rows: list[dict] = []
        self.meta = dict(
            schema=SCHEMA,
            mode="dry-run" if self.dry else "device",
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            shape=dict(zip("NDV", self.shape), dtype="bfloat16"),
            heads=list(HEADS),
            budgets=[budget_name(b) for b in self.budgets],
            repeats=args.repeats,
            device_kind=None,
            platform=None,
            peak_tflops=None,
        )
        self.start = time.perf_counter()
        self.proc = None

    def blocks(self, cfg, platform) -> dict | None:
        if cfg["impl"] == "unfused":
            return None
        from jaxce._fused._engine import _plan

        n, _, v = self.shape
        plat = {"gpu": "cuda"}.get(platform, platform or "cpu")
        heads = 2 if cfg["head"] == "distill" else 1
        elems = _plan.budget_elements(cfg["budget"], "float32")
        b = _plan.block_sizes(n, v, None, elems, False, heads, plat)
        if cfg["head"] == "token_stats":
            return dict(T=b.token_chunk, C=b.chunk_size, path="vocabulary blocks")
        return dict(T=b.row_chunk, C=v, path="token chunks")

    def start_child(self, batch):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["jax", "jax.numpy", "jaxce", "plan"])
        recv, send = ctx.Pipe(duplex=False)
        a = (batch, self.shape, self.args.repeats, send, self.args.cache_dir)
        p = ctx.Process(target=child, args=a)
        p.start()
        send.close()
        self.proc = p
        return recv, p

    def kill(self):
        p, self.proc = self.proc, None
        if p is not None:
            if p.is_alive():
                p.kill()
            p.join()

    def batches(self, cfgs) -> list:
        """``(index, cfg)`` lists, one child each: one configuration per child
        (``--fresh-process config``: its own peak memory), or a head's
        configurations together (``head``: the dry run, where a CPU has no
        peak to measure, and one child per head saves its start-up)."""
        pairs = list(enumerate(cfgs))
        if self.args.fresh_process == "config":
            return [[p] for p in pairs]
        return [[p for p in pairs if p[1]["head"] == h] for h in HEADS]

    def run_all(self, cfgs) -> list:
        """Every configuration, one child at a time (timings must not
        overlap); results in ``cfgs`` order, written after each."""
        results: list = [None] * len(cfgs)

        def done(i, res):
            results[i] = res
            log(
                f"{name_of(cfgs[i])}: {res['status']} "
                f"{res.get('time_ms_min', 0):.1f} ms"
            )
            self.rows = [self.finish_row(c, r) for c, r in zip(cfgs, results) if r]
            self.write()

        for batch in self.batches(cfgs):
            left = self.args.budget_s - (time.perf_counter() - self.start)
            if left < 15:
                for i, _ in batch:
                    done(i, dict(status="skipped: time budget spent"))
                continue
            log(f"{', '.join(name_of(c) for _, c in batch)} ...")
            recv, p = self.start_child(batch)
            todo = [i for i, _ in batch]
            timed_out = False
            while todo:  # each configuration gets its timeout from the last
                left = self.args.budget_s - (time.perf_counter() - self.start)
                timeout = min(self.args.config_timeout_s, max(left - 5, 1))
                try:
                    if not recv.poll(timeout):
                        timed_out = True
                        break
                    i, res = recv.recv()
                except EOFError:  # died without an answer (killed for memory?)
                    break
                todo.remove(i)
                done(i, res)
            if not todo:
                p.join(10)
            self.kill()
            for k, i in enumerate(todo):
                if k:
                    done(i, dict(status="not run (its process ended)"))
                elif timed_out:
                    done(i, dict(status=f"**timed out** ({timeout:.0f} s)"))
                else:
                    done(i, dict(status=f"**failed** (exit {p.exitcode})"))
        return results

    def compare(self):
        base = {
            r["head"]: r
            for r in self.rows
            if r["impl"] == "unfused" and r["status"] == "ok"
        }
        for r in self.rows:
            u = base.get(r["head"])
            if r["status"] != "ok" or u is None or r is u:
                continue
            diffs = [abs(r["value"] - u["value"]) / max(abs(u["value"]), 1e-30)]
            for nf, nu, pf, pu, rn in zip(
                r["grad_norms"],
                u["grad_norms"],
                r["grad_proj"],
                u["grad_proj"],
                u["r_norms"],
            ):
                diffs.append(abs(nf - nu) / max(nu, 1e-30))
                diffs.append(abs(pf - pu) / max(nu * rn, 1e-30))
            r["max_rel_diff_vs_unfused"] = max(diffs)
            r["time_vs_unfused"] = r["time_ms_min"] / u["time_ms_min"]
            for key in ("peak_bytes", "temp_bytes"):
                if r.get(key) is not None and u.get(key):
                    r[key.replace("_bytes", "_vs_unfused")] = r[key] / u[key]

    def finish_row(self, cfg, res) -> dict:
        row = dict(
            head=cfg["head"],
            impl=cfg["impl"],
            budget_bytes=cfg["budget"],
            budget=budget_name(cfg["budget"]) if cfg["impl"] == "fused" else "-",
        )
        row.update(res)
        if res.get("device_kind") and self.meta["device_kind"] is None:
            self.meta["device_kind"] = res["device_kind"]
            self.meta["platform"] = res["platform"]
            if res["platform"] != "cpu":
                self.meta["peak_tflops"] = peak_tflops(res["device_kind"])
        row["blocks"] = self.blocks(cfg, self.meta["platform"])
        if res["status"] == "ok":
            flops = model_flops(cfg["head"], *self.shape)
            row["model_flops"] = flops
            row["tflops"] = flops / (res["time_ms_min"] * 1e-3) / 1e12
            peak = self.meta["peak_tflops"]
            row["pct_peak"] = None if peak is None else 100 * row["tflops"] / peak
        return row

    def table(self) -> str:
        m = self.meta
        n, d, v = self.shape
        peak = m["peak_tflops"]
        lines = [
            f"device: {m['device_kind'] or '?'} ({m['platform'] or '?'}), "
            f"peak {'n/a' if peak is None else f'{peak:.0f} TF/s bf16'}; "
            f"N={n}, D={d}, V={v}, bf16; fwd+bwd = value_and_grad w.r.t. hidden "
            f"and weight; min of {m['repeats']} after a warm-up; {m['mode']}",
            "",
            "| head | impl | budget | T x C | status | fwd+bwd ms | vs unfused | "
            "TF/s | % of peak | peak GiB | vs unfused | temp GiB | compile s | "
            "max rel diff |",
            "|" + "---|" * 14,
        ]

        def f(x, spec, scale=1.0):
            return "-" if x is None else format(x / scale, spec)

        for r in self.rows:
            b = r.get("blocks")
            blk = "-" if b is None else f"{b['T']} x {b['C']}"
            pct = r.get("pct_peak")
            lines.append(
                f"| {r['head']} | {r['impl']} | {r['budget']} | {blk} | "
                f"{r['status']} | {f(r.get('time_ms_min'), '.1f')} | "
                f"{f(r.get('time_vs_unfused'), '.2f')} | "
                f"{f(r.get('tflops'), '.1f')} | "
                f"{'n/a' if pct is None else f'{pct:.0f} %'} | "
                f"{f(r.get('peak_bytes'), '.2f', GiB)} | "
                f"{f(r.get('peak_vs_unfused'), '.1%')} | "
                f"{f(r.get('temp_bytes'), '.2f', GiB)} | "
                f"{f(r.get('compile_s'), '.1f')} | "
                f"{f(r.get('max_rel_diff_vs_unfused'), '.1e')} |"
            )
        return "\n".join(lines) + "\n"

    def write(self):
        self.compare()
        os.makedirs(self.out, exist_ok=True)
        doc = dict(self.meta, wall_s=time.perf_counter() - self.start, rows=self.rows)
        tmp = os.path.join(self.out, "gpu_bench.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, os.path.join(self.out, "gpu_bench.json"))
        with open(os.path.join(self.out, "gpu_bench.md"), "w") as fh:
            fh.write(self.table())

    def main(self):
        cfgs = configs(self.budgets)
        results = self.run_all(cfgs)
        self.rows = [self.finish_row(c, r) for c, r in zip(cfgs, results) if r]
        return 0 if all(r["status"] == "ok" for r in self.rows) else 1


def name_of(cfg) -> str:
    return f"{cfg['head']} {cfg['impl']} {budget_name(cfg['budget'])}"


def log(msg: str):
    print(f"[gpu_bench] {msg}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny shapes (N=512, D=128, V=2048), budgets / 1024",
    )
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or os.path.join(HERE, "out")
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per configuration (default 3; dry run 2)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="launch nothing after this many seconds (default: "
        "$STEP_LIMIT_S - 10, else 230)",
    )
    parser.add_argument("--config-timeout-s", type=float, default=90.0)
    parser.add_argument(
        "--fresh-process",
        choices=("config", "head"),
        default=None,
        help="a fresh process per configuration (default: each its own peak "
        "memory) or per head (the dry run's default)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="a persistent compilation cache shared by the children (default: "
        "none; the dry run: a temporary one, so its input and checksum programs "
        "compile once)",
    )
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.dry_run else 3
    if args.fresh_process is None:
        args.fresh_process = "head" if args.dry_run else "config"
    tmp = None
    if args.dry_run and args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpu_bench_cache_")
        args.cache_dir = tmp.name
    if args.budget_s is None:
        limit = os.environ.get("STEP_LIMIT_S")
        args.budget_s = float(limit) - 10 if limit else 230.0
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"  # the forkserver inherits it
    run = Run(args)

    def on_term(signum, frame):  # `timeout` in gpu.sh: keep what was measured
        raise SystemExit(124)

    signal.signal(signal.SIGTERM, on_term)
    code = 1
    try:
        code = run.main()
    finally:
        run.kill()
        run.write()
        print(run.table())
        if tmp is not None:
            tmp.cleanup()
        print(
            f"json: {os.path.join(run.out, 'gpu_bench.json')}, "
            f"{time.perf_counter() - run.start:.0f} s"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
