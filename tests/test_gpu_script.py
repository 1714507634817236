"""`benchmarks/gpu.sh --dry-run`: the GPU run's steps on the CPU, tiny shapes.

Runs the environment and gpu_bench steps in a subprocess (about 45 s on the
2-core box) and reads what a GPU run would bring back: the report, the table
(a row per head and budget, and the unfused loss per head) and the JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADS = ("ce", "token_stats", "distill")
BUDGETS = ("default", "256 KiB", "1 MiB", "4 MiB", "16 MiB")  # dry run: / 1024
ROW_KEYS = {
    "head", "impl", "budget", "budget_bytes", "status", "blocks", "time_ms_min",
    "time_ms_median", "compile_s", "temp_bytes", "peak_bytes", "tflops",
    "pct_peak", "model_flops", "value", "grad_norms",
}  # fmt: skip


def test_dry_run(tmp_path):
    # one test, so that pytest-xdist workers do not each run the script
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils timeout")
    out = tmp_path
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env["STEPS"] = "environment gpu_bench"
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_report_and_table(out)
    check_json(out)


def check_report_and_table(dry_run):
    report = (dry_run / "gpu_results.md").read_text()
    assert "| environment | ok |" in report
    assert "| gpu_bench | ok |" in report
    table = (dry_run / "gpu_bench.md").read_text()
    assert table in report  # the step's stdout is the table
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    found = {(c[0], c[1], c[2]) for c in cells}
    for head in HEADS:
        assert (head, "unfused", "-") in found
        for budget in BUDGETS:
            assert (head, "fused", budget) in found
    assert len(rows) == len(HEADS) * (len(BUDGETS) + 1)
    assert all(c[4] == "ok" for c in cells), table


def check_json(dry_run):
    doc = json.loads((dry_run / "gpu_bench.json").read_text())
    assert doc["schema"] == 1 and doc["mode"] == "dry-run"
    assert doc["shape"] == {"N": 512, "D": 128, "V": 2048, "dtype": "bfloat16"}
    assert doc["heads"] == list(HEADS) and doc["budgets"] == list(BUDGETS)
    assert doc["platform"] == "cpu" and doc["peak_tflops"] is None
    rows = doc["rows"]
    assert len(rows) == len(HEADS) * (len(BUDGETS) + 1)
    for row in rows:
        assert ROW_KEYS <= set(row), sorted(ROW_KEYS - set(row))
        assert row["status"] == "ok"
        assert row["time_ms_min"] > 0 and row["temp_bytes"] >= 0
        assert row["pct_peak"] is None  # no peak for a CPU
        if row["impl"] == "fused":
            assert row["blocks"]["T"] >= 1 and row["blocks"]["C"] >= 1
            # fused and unfused agree (bf16 outputs: to bf16 rounding)
            assert row["max_rel_diff_vs_unfused"] < 1e-2
    # the budget sweep reaches the planner: the smallest budget, the smallest block
    ce = {r["budget"]: r["blocks"]["T"] for r in rows if r["head"] == "ce"
          and r["impl"] == "fused"}  # fmt: skip
    assert ce["256 KiB"] < ce["16 MiB"]
