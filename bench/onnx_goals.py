#!/usr/bin/env python
"""The ONNX deployment goals, measured in one run: a PyTorch teacher, its PyTorch student and that student's export.

    python run_export.py --model_dir EXP/even --output_dir EXP/even-onnx --quantize int8 --dataset_name DATA
    python bench/onnx_goals.py --teacher_dir EXP/teacher --student_dir EXP/even --export_dir EXP/even-onnx \
        --dataset_name DATA --output_dir OUT/onnx_goals

1. `run_eval.py` scores the three directories (four models: teacher, student, student on ONNX Runtime fp32 and int8)
   on the test split in one process: F1 and single-text latency for the first goals, the per-text predictions of
   fp32 and int8 for their agreement.
2. `app.py` serves the student and its export in one server on 127.0.0.1; `bench/load_test.py` sends --clients
   concurrent one-text requests for --duration seconds to the PyTorch student, then to the int8 student. Capacity is
   the requests answered (HTTP 200) per second; requests the server sheds with 503 do not count.

Writes OUTPUT_DIR/onnx_goals.csv (goal, measured, target, met), eval/ (run_eval's report) and load_<model>/ (the load
tests), and prints the goals table.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd

import run_eval
from bench import load_test
from bench.common import REPO, print_table, refuse_to_overwrite, write_csv
from distillkit.cli import UsageError, exit_on_usage_error, parse_args
from distillkit.runtime import INT8_FILE, is_onnx_dir

RESULTS_FILE = "onnx_goals.csv"


@dataclass
class GoalsArguments:
    teacher_dir: str = field(metadata={"help": "The PyTorch teacher."})
    student_dir: str = field(metadata={"help": "The PyTorch student."})
    export_dir: str = field(metadata={"help": "The student's export (run_export.py --quantize int8)."})
    dataset_name: str = field(metadata={"help": "Their data set: the test split is scored."})
    output_dir: str = field(metadata={"help": f"Where {RESULTS_FILE}, eval/ and the load tests go."})
    clients: int = field(default=50, metadata={"help": "Concurrent clients of the load tests."})
    duration: float = field(default=30.0, metadata={"help": "Seconds of each load test."})
    num_threads: int | None = field(default=None, metadata={"help": "torch and ONNX Runtime threads (eval, server)."})
    port: int = field(default=8771, metadata={"help": "Port of the server on 127.0.0.1."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run's results."})

    def __post_init__(self) -> None:
        if not is_onnx_dir(self.export_dir) or not os.path.isfile(os.path.join(self.export_dir, INT8_FILE)):
            raise UsageError(
                f"--export_dir {self.export_dir}: no {INT8_FILE}; export with run_export.py --quantize int8"
            )


def evaluate(args: GoalsArguments) -> tuple[pd.DataFrame, float]:
    """run_eval's rows of the four models, and int8-vs-fp32 agreement on the test split (from its predictions)."""
    out = os.path.join(args.output_dir, "eval")
    argv = ["--model_dirs", args.teacher_dir, args.student_dir, args.export_dir, "--dataset_name", args.dataset_name]
    argv += ["--output_dir", out, "--overwrite_output_dir", "--bootstrap_samples", "50"]
    argv += ["--num_threads", str(args.num_threads)] if args.num_threads else []
    rows = run_eval.main(argv)
    fp32_name = rows[rows.runtime == "onnxruntime-fp32"].model.iloc[0]
    int8_name = rows[rows.runtime == "onnxruntime-int8"].model.iloc[0]
    fp32 = pd.read_csv(os.path.join(out, "predictions", f"{fp32_name}.csv"))
    int8 = pd.read_csv(os.path.join(out, "predictions", f"{int8_name}.csv"))
    return rows, float((fp32.pred == int8.pred).mean())


def wait_for_server(url: str, server: subprocess.Popen, timeout_s: float = 600) -> list[str]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} before it was ready")
        try:
            return [m["name"] for m in httpx.get(f"{url}/api/models", timeout=5).json()["models"]]
        except (httpx.HTTPError, ValueError):
            time.sleep(1)
    raise RuntimeError(f"no answer from {url} after {timeout_s:.0f} s")


def load_tests(args: GoalsArguments, student: str, int8: str) -> dict[str, dict[str, Any]]:
    """One server with the PyTorch student and its export; a load test of each model in turn."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", args.port)) == 0:
            raise UsageError(f"--port {args.port}: something already listens there; choose another --port")
    url = f"http://127.0.0.1:{args.port}"
    cmd = [sys.executable, str(REPO / "app.py"), "--model_dirs", args.student_dir, args.export_dir]
    cmd += ["--port", str(args.port), "--log_level", "warning"]
    cmd += ["--num_threads", str(args.num_threads)] if args.num_threads else []
    server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        served = wait_for_server(url, server)
        out = {}
        for name in (student, int8):
            if name not in served:
                raise RuntimeError(f"the server does not serve {name} (it serves {', '.join(served)})")
            out[name] = load_test.main(
                ["--url", url, "--clients", str(args.clients), "--duration", str(args.duration), "--models", name]
                + ["--output_dir", os.path.join(args.output_dir, f"load_{name}"), "--overwrite_output_dir"]
            )
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def goals(rows: pd.DataFrame, agreement: float, load: dict[str, dict[str, Any]], student: str, int8: str) -> list:
    by_model = rows.set_index("model")
    teacher = rows[(rows.runtime == "pytorch") & (rows.model != student)].model.iloc[0]
    speedup = by_model.loc[teacher, "latency_ms_b1"] / by_model.loc[int8, "latency_ms_b1"]
    # The same ratio in this process's CPU time: what it would be on an idle machine when others share this one.
    speedup_cpu = by_model.loc[teacher, "latency_ms_b1_cpu"] / by_model.loc[int8, "latency_ms_b1_cpu"]
    f1_gap = 100 * (by_model.loc[student, "f1"] - by_model.loc[int8, "f1"])
    capacity = load[int8]["texts_per_s"] / load[student]["texts_per_s"]
    return [
        {
            "goal": "one-text latency, PyTorch teacher ÷ ONNX int8 student",
            "measured": speedup,
            "target": ">= 8",
            "met": bool(speedup >= 8),
            "detail": f"{by_model.loc[teacher, 'latency_ms_b1']:.2f} ms vs {by_model.loc[int8, 'latency_ms_b1']:.2f} ms; "
            f"in CPU time {by_model.loc[teacher, 'latency_ms_b1_cpu']:.2f} vs {by_model.loc[int8, 'latency_ms_b1_cpu']:.2f} ms "
            f"({speedup_cpu:.2f}x)",
        },
        {
            "goal": "test F1, PyTorch student - ONNX int8 student (points)",
            "measured": f1_gap,
            "target": "<= 0.5",
            "met": bool(abs(f1_gap) <= 0.5),
            "detail": f"{by_model.loc[student, 'f1']:.4f} vs {by_model.loc[int8, 'f1']:.4f}",
        },
        {
            "goal": "int8 vs fp32 prediction agreement on test (%)",
            "measured": 100 * agreement,
            "target": ">= 99",
            "met": bool(agreement >= 0.99),
            "detail": f"{int(by_model.loc[int8, 'samples'])} texts",
        },
        {
            "goal": "server capacity (answered req/s), ONNX int8 student ÷ PyTorch student",
            "measured": capacity,
            "target": ">= 3",
            "met": bool(capacity >= 3),
            "detail": f"{load[int8]['texts_per_s']:.1f} vs {load[student]['texts_per_s']:.1f} req/s, "
            f"p50 {load[int8]['p50_ms']:.0f} vs {load[student]['p50_ms']:.0f} ms",
        },
    ]


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    (args,) = parse_args((GoalsArguments,), argv)
    refuse_to_overwrite(args.output_dir, (RESULTS_FILE,), args.overwrite_output_dir)
    rows, agreement = evaluate(args)
    student = rows[rows.path == os.path.abspath(args.student_dir)].model.iloc[0]
    int8 = rows[rows.runtime == "onnxruntime-int8"].model.iloc[0]
    load = load_tests(args, student, int8)
    table = goals(rows, agreement, load, student, int8)
    print_table(table, ["goal", "measured", "target", "met", "detail"], title="ONNX deployment goals")
    path = os.path.join(args.output_dir, RESULTS_FILE)
    write_csv(path, table)
    print(f"written: {path}")
    return table


if __name__ == "__main__":
    main()
