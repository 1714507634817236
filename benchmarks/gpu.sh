#!/usr/bin/env bash
# One-shot GPU run of the fused benchmarks and tests, for the day a GPU is lent.
#
#   bash benchmarks/gpu.sh             # on the GPU machine (about 8 minutes at most)
#   bash benchmarks/gpu.sh --dry-run   # the same steps on the CPU, tiny shapes
#
# Writes a markdown report to $OUT/gpu_results.md ($OUT: the device machine's
# folder that comes back; benchmarks/out/ when $OUT is unset) and each step's
# full stdout / stderr to gpu_logs/ beside it; the gpu_bench step also writes
# gpu_bench.json and gpu_bench.md there. The report is rewritten after every
# step, so a run cut short still leaves what it measured.
#
# Steps, in this order (most telling first), each under `timeout` (limits
# 30 / 240 / 180 / 100 / 100 s; a step's limit is exported as STEP_LIMIT_S) and
# all under a wall-clock budget of BUDGET_S seconds (default 480; a step gets
# at most what is left, so the last ones may be cut or skipped):
#   1. environment: nvidia-smi, Python, JAX devices, which packages are there;
#   2. benchmarks/gpu_bench.py: fwd+bwd of the fused cross-entropy, token
#      statistics and distillation at N=32768, D=4096, V=128256, bf16, with the
#      default plan and memory_budget_bytes in {256 MiB, 1 GiB, 4 GiB, 16 GiB},
#      against the unfused XLA loss; each configuration in a fresh process
#      (its own peak_bytes_in_use): time, % of the device's bf16 peak, peak and
#      compiled temp memory, checksums against the unfused loss; one table
#      (gpu_bench.md, and in this report) and one JSON (gpu_bench.json), both
#      written after every configuration; no new configuration starts near
#      the step's limit;
#   3. pytest on the fused test files (tests/test_fused*.py, token stats,
#      distillation, lowered modules, LLM examples) whose module-level imports,
#      and those of the local modules they import (tests/*.py), are all
#      installed: the GPU machine has no torch / keras / sklearn / flax /
#      hypothesis, so a file importing one of them at module level is listed
#      as skipped. `-o addopts=""` drops the project's `-n auto` and
#      `--jaxtyping-packages=jaxce,beartype.beartype` (pytest-xdist and
#      beartype may be missing); the latter is passed back where beartype is
#      installed. TEST_WORKERS (default 4) processes share the GPU
#      (XLA_PYTHON_CLIENT_PREALLOCATE=false): pytest-xdist workers where it is
#      installed, else the files split into that many pytest processes. The
#      tests run under JAX_DEFAULT_MATMUL_PRECISION=highest: XLA's default
#      float32 matmul on NVIDIA GPUs uses TF32 (~1e-3 relative) and the tests
#      compare fused and unfused results at ~1e-5. The benchmarks run at the
#      default precision, as a user's code would;
#   4. benchmarks/bench_fused.py (fused linear -> cross-entropy, float32,
#      N=2048; tables; the plot only where matplotlib is installed, the
#      tokamax row only where tokamax is);
#   5. benchmarks/bench_llm.py (token stats, distillation, compact; float32).
# --dry-run: JAX_PLATFORMS=cpu, gpu_bench.py --dry-run (N=512, D=128, V=2048,
# the budgets / 1024, so the blocks differ as they do on the GPU), the other
# benchmarks with --quick, the test files picked as if ASSUME_MISSING
# (default: the packages above) were missing, and only collected
# (`--collect-only`: running them takes many minutes on 2 CPU cores).
# tests/test_gpu_script.py runs STEPS="environment gpu_bench tests" of it.
# bench_distributed.py is not run: it is compile-only on 8 simulated host CPU
# devices (JAX_PLATFORMS=cpu), so a GPU machine would only repeat its CPU
# figures.
#
# STEPS (default "environment gpu_bench tests bench_fused bench_llm") runs a
# subset, e.g. STEPS="environment tests" to run the tests again.
#
# Nothing here needs the network. PYTHON (default: python) picks the
# interpreter; the repository root is put on PYTHONPATH, so jaxce need not be
# installed.

set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h | --help)
      awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (use --dry-run)" >&2
      exit 2
      ;;
  esac
done

PY="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET_S="${BUDGET_S:-480}"
STEPS="${STEPS:-environment gpu_bench tests bench_fused bench_llm}"
RESERVE_S=5 # kept back for writing the report
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 # a step cut short by `timeout` keeps what it printed

OUTDIR="${OUT:-$ROOT/benchmarks/out}"
LOGS="$OUTDIR/gpu_logs"
mkdir -p "$LOGS"
RESULTS="$OUTDIR/gpu_results.md"
HEADER="$LOGS/.header.md"
SUMMARY="$LOGS/.summary.md"
BODY="$LOGS/.body.md"
: >"$SUMMARY"
: >"$BODY"

if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
  # Pick the test files as on the GPU machine, which lacks these packages.
  export ASSUME_MISSING="${ASSUME_MISSING-torch keras sklearn flax hypothesis}"
  QUICK=(--quick)
  DRYFLAG=(--dry-run)
  MODE="dry run: CPU (JAX_PLATFORMS=cpu), --quick / --dry-run shapes, test files \
picked as if ${ASSUME_MISSING:-nothing} were missing"
else
  QUICK=()
  DRYFLAG=()
  MODE="GPU run"
fi

{
  echo "# jaxce GPU results"
  echo
  echo "- mode: $MODE"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "($(git status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed files)"
  echo "- host: $(uname -n), $(nproc 2>/dev/null || echo '?') CPU cores"
  echo "- budget: ${BUDGET_S} s wall clock; full logs in \`gpu_logs/\`"
} >"$HEADER"

render() {
  {
    cat "$HEADER"
    echo
    echo "| step | status | wall s | limit s |"
    echo "|---|---|---|---|"
    cat "$SUMMARY"
    echo
    cat "$BODY"
  } >"$RESULTS"
}

# step NAME LIMIT FORMAT CMD...: run CMD under `timeout`, log it, add a row to
# the summary and its output to the body (FORMAT: "md" stdout is markdown
# already; "text" goes in a code block, its first 8 and last 50 lines).
step() {
  local name="$1" limit="$2" format="$3"
  shift 3
  local now left t rc status begin wall
  now=$(date +%s)
  left=$((BUDGET_S - (now - START) - RESERVE_S))
  t=$((limit < left ? limit : left))
  if [ "$t" -lt 10 ]; then
    echo "| $name | skipped: budget spent | 0 | $t |" >>"$SUMMARY"
    render
    return
  fi
  echo "== $name (limit ${t} s)" >&2
  begin=$(date +%s.%N)
  STEP_LIMIT_S="$t" timeout -k 10 "$t" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"
  rc=$?
  wall=$(awk -v a="$begin" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status="ok" ;;
    124 | 137) status="**timed out**" ;;
    *) status="**failed (exit $rc)**" ;;
  esac
  echo "| $name | $status | $wall | $t |" >>"$SUMMARY"
  {
    echo "## $name"
    echo
    echo "\`$*\` ($status, ${wall} s)"
    echo
    if [ "$format" = md ]; then
      cat "$LOGS/$name.out"
    else
      local lines
      lines=$(wc -l <"$LOGS/$name.out")
      echo '```'
      if [ "$lines" -gt 70 ]; then
        head -n 8 "$LOGS/$name.out"
        echo "[... $((lines - 58)) lines: see gpu_logs/$name.out ...]"
        tail -n 50 "$LOGS/$name.out"
      else
        cat "$LOGS/$name.out"
      fi
      echo '```'
    fi
    if [ "$rc" != 0 ] && [ -s "$LOGS/$name.err" ]; then
      echo
      echo "stderr (last 25 lines):"
      echo
      echo '```'
      tail -n 25 "$LOGS/$name.err"
      echo '```'
    fi
    echo
  } >>"$BODY"
  render
}

environment() {
  echo '```'
  if [ "$DRY" = 1 ]; then
    echo "dry run: no GPU used"
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --format=csv --query-gpu=name,driver_version,memory.total,memory.used,temperature.gpu,power.draw,power.limit,clocks.sm,clocks.max.sm
  else
    echo "nvidia-smi not found"
  fi
  echo '```'
  echo
  echo '```'
  "$PY" - <<'EOF'
import importlib.util
import platform

import jax

print("python", platform.python_version(), "| jax", jax.__version__)
print("backend", jax.default_backend(), "| devices", jax.devices())
print("matmul precision", jax.config.jax_default_matmul_precision or "default")
names = ["jaxlib", "equinox", "optax", "chex", "jaxtyping", "numpy", "pytest",
         "xdist", "beartype", "matplotlib", "tokamax", "torch", "keras",
         "sklearn", "flax", "hypothesis"]  # fmt: skip
have = {n: importlib.util.find_spec(n) is not None for n in names}
print("installed:", ", ".join(n for n in names if have[n]))
print("missing:", ", ".join(n for n in names if not have[n]) or "-")
EOF
  local rc=$?
  echo '```'
  if [ "$DRY" = 0 ]; then
    "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' ||
      echo "**JAX does not see a GPU: the figures below are CPU figures.**"
  fi
  return $rc
}

# The candidate test files that exist and whose module-level imports are all
# installed (and not in $ASSUME_MISSING); the others are reported (stdout:
# "run PATH" / "skip PATH (why)").
select_tests() {
  "$PY" - "$@" <<'EOF'
import ast
import importlib.util
import os
import pathlib
import sys

# Local modules: tests/<name>.py, imported top-level (pytest puts tests/ on
# sys.path) or as tests.<name>; jaxce is the package under test.
local = {p.stem: p for p in pathlib.Path("tests").glob("*.py")}
assume_missing = set(os.environ.get("ASSUME_MISSING", "").split())


def missing_of(path, seen):
    """Missing packages imported at module level by ``path`` or by a local
    module it imports (recursively)."""
    if path in seen:
        return set()
    seen.add(path)
    missing = set()
    for node in ast.parse(path.read_text()).body:  # module level only
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "jaxce":
                continue
            if parts[0] == "tests" or parts[0] in local:
                sub = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
                if sub in local:
                    missing |= missing_of(local[sub], seen)
                continue
            if parts[0] in assume_missing or importlib.util.find_spec(parts[0]) is None:
                missing.add(parts[0])
    return missing


for path in map(pathlib.Path, sys.argv[1:]):
    if not path.exists():
        print(f"skip {path} (not there)")
        continue
    missing = missing_of(path, set())
    if missing:
        print(f"skip {path} (imports {', '.join(sorted(missing))})")
    else:
        print(f"run {path}")
EOF
}

run_tests() {
  if ! "$PY" -c 'import pytest' 2>/dev/null; then
    echo "pytest is not installed: no tests run"
    return 1
  fi
  local files=() line
  while read -r line; do
    case "$line" in
      run\ *) files+=("${line#run }") ;;
      *) echo "$line" ;;
    esac
  done < <(select_tests tests/test_fused*.py tests/test_token_stats.py \
    tests/test_distillation.py tests/test_lowered.py tests/test_llm_examples.py)
  if [ "${#files[@]}" = 0 ]; then
    echo "no test file to run"
    return 1
  fi
  local opts=(-o addopts="" -p no:cacheprovider --tb=short -rfE)
  if "$PY" -c 'import beartype' 2>/dev/null; then
    opts+=(--jaxtyping-packages=jaxce,beartype.beartype)
  fi
  export JAX_DEFAULT_MATMUL_PRECISION=highest
  if [ "$DRY" = 1 ]; then
    # On 2 loaded CPU cores these files take many minutes: collect them only
    # (every picked file imports without the missing packages).
    echo "$PY -m pytest ${opts[*]} --collect-only -q ${files[*]}"
    "$PY" -m pytest "${opts[@]}" --collect-only -q "${files[@]}"
    return
  fi
  opts+=(-v)
  local workers="${TEST_WORKERS:-4}"
  # Compiling dominates; processes compile in parallel and share the GPU (no
  # preallocation, so they fit side by side).
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  if [ "$workers" -le 1 ]; then
    echo "$PY -m pytest ${opts[*]} ${files[*]}"
    "$PY" -m pytest "${opts[@]}" "${files[@]}"
    return
  fi
  if "$PY" -c 'import xdist' 2>/dev/null; then
    echo "$PY -m pytest ${opts[*]} -n $workers ${files[*]}"
    "$PY" -m pytest "${opts[@]}" -n "$workers" "${files[@]}"
    return
  fi
  # No pytest-xdist: the files in $workers groups (largest first, each into
  # the smallest group so far), one pytest process per group.
  local groups
  mapfile -t groups < <("$PY" - "$workers" "${files[@]}" <<'EOF'
import os
import sys

k, files = int(sys.argv[1]), sys.argv[2:]
groups = [[] for _ in range(min(k, len(files)))]
sizes = [0] * len(groups)
for f in sorted(files, key=os.path.getsize, reverse=True):
    i = sizes.index(min(sizes))
    groups[i].append(f)
    sizes[i] += os.path.getsize(f)
for g in groups:
    print(" ".join(g))
EOF
  )
  local pids=() i rc=0
  for i in "${!groups[@]}"; do
    echo "group $i: $PY -m pytest ${opts[*]} ${groups[$i]}"
    # shellcheck disable=SC2086 # a group is a space-separated list of paths
    "$PY" -m pytest "${opts[@]}" ${groups[$i]} >"$LOGS/tests.group$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || rc=1
  done
  for i in "${!groups[@]}"; do
    echo "== group $i (${groups[$i]}): $(tail -n 1 "$LOGS/tests.group$i.log")"
    grep -E "^(FAILED|ERROR) " "$LOGS/tests.group$i.log" || true
  done
  for i in "${!groups[@]}"; do
    echo
    echo "== group $i log"
    cat "$LOGS/tests.group$i.log"
  done
  return $rc
}

# `timeout` runs programs, not shell functions: export them to a child bash.
export PY DRY LOGS
export -f environment select_tests run_tests

for name in $STEPS; do
  case "$name" in
    environment) step environment 30 md bash -c environment ;;
    gpu_bench)
      step gpu_bench 240 md "$PY" benchmarks/gpu_bench.py --out "$OUTDIR" \
        "${DRYFLAG[@]}"
      ;;
    tests) step tests 180 text bash -c run_tests ;;
    bench_fused) step bench_fused 100 md "$PY" benchmarks/bench_fused.py "${QUICK[@]}" ;;
    bench_llm) step bench_llm 100 md "$PY" benchmarks/bench_llm.py "${QUICK[@]}" ;;
    *) echo "| $name | unknown step | 0 | 0 |" >>"$SUMMARY" ;;
  esac
done

TOTAL=$(($(date +%s) - START))
echo "- total wall time: ${TOTAL} s" >>"$HEADER"
render
echo "results: $RESULTS (${TOTAL} s)" >&2
