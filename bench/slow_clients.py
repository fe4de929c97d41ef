#!/usr/bin/env python
"""Slow clients mixed with normal ones against `app.py`: how many requests are shed, and how fast /healthz answers.

    python bench/slow_clients.py --output_dir OUT/slow --clients 8 --slow_clients 32 --duration 15
    python bench/slow_clients.py --output_dir OUT/slow --model_dir EXP/even --body_timeout 3
    python bench/slow_clients.py --output_dir OUT/slow --url http://127.0.0.1:8000   # a server already running

Unless `--url` names a running server, it starts `app.py` on `--model_dir` (default: a tiny random BERT it writes
in OUTPUT_DIR/tiny_model; speed, not answers, is what counts here) with the guard options given. Then, for
`--duration` seconds:
- `--clients` normal clients POST /api/predict one request at a time (bench/load_test.py's client loop);
- `--slow_clients` slow clients each announce a `--slow_body_kib` body and send one byte every
  `--slow_byte_interval` seconds until the server answers (408 after --body_timeout, or 503 at once past
  --max_concurrent_requests or --max_body_mib_in_flight), then open a new connection and start again;
- a prober GETs /healthz every `--healthz_interval` seconds.
Prints one row per kind of client (requests, ok, shed with 503 or 408, still held when the run ended, errors, shed
rate) and the /healthz latency (p50, p95, max) with how often it said `saturated`; writes
OUTPUT_DIR/slow_clients.csv (those rows) and OUTPUT_DIR/healthz.csv (every probe). Timings are this machine's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx

from bench.common import REPO, percentile, refuse_to_overwrite, write_csv
from bench.load_test import LOOPBACK, SAMPLE_TEXTS, LoadTestArguments, RequestRecord, client_loop
from distillkit.cli import UsageError, exit_on_usage_error, parse_args

SUMMARY_FILE = "slow_clients.csv"
HEALTHZ_FILE = "healthz.csv"
MAX_CLIENTS = 1000
MAX_DURATION_S = 600
STARTUP_TIMEOUT_S = 120


@dataclass
class SlowClientArguments:
    output_dir: str = field(metadata={"help": "Where slow_clients.csv and healthz.csv are written."})
    url: str | None = field(default=None, metadata={"help": "A running server (loopback); else one is started."})
    model_dir: str | None = field(
        default=None, metadata={"help": "The model the started server serves (default: a tiny random BERT)."}
    )
    clients: int = field(default=8, metadata={"help": "Normal clients, each one request at a time."})
    slow_clients: int = field(default=32, metadata={"help": "Clients that send their bodies one byte at a time."})
    duration: float = field(default=15.0, metadata={"help": f"Seconds of load (<= {MAX_DURATION_S})."})
    slow_body_kib: int = field(default=1024, metadata={"help": "The body size each slow client announces (KiB)."})
    slow_byte_interval: float = field(default=0.5, metadata={"help": "Seconds between a slow client's bytes."})
    healthz_interval: float = field(default=0.1, metadata={"help": "Seconds between /healthz probes."})
    request_timeout: float = field(default=30.0, metadata={"help": "Seconds before a request counts as an error."})
    # Passed to the server this script starts (ignored with --url): app.py's guard options.
    body_timeout: float = field(default=10.0, metadata={"help": "app.py --body_timeout."})
    max_concurrent_requests: int = field(default=200, metadata={"help": "app.py --max_concurrent_requests."})
    max_body_mib_in_flight: float = field(default=64.0, metadata={"help": "app.py --max_body_mib_in_flight."})
    max_per_client: int | None = field(
        default=None, metadata={"help": "app.py --max_per_client (every client here is one address: 127.0.0.1)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run's results."})

    def __post_init__(self):
        if self.url is not None:
            parsed = urlparse(self.url)
            if parsed.scheme != "http" or parsed.hostname not in LOOPBACK or parsed.port is None:
                raise UsageError(f"--url {self.url}: expected http://127.0.0.1:PORT (a server on this machine)")
            if self.model_dir is not None:
                raise UsageError("--url and --model_dir: give one (a running server, or the model to start one on)")
        if self.model_dir is not None and not os.path.isdir(self.model_dir):
            raise UsageError(f"--model_dir {self.model_dir}: not a directory")
        for name in ("clients", "slow_clients"):
            if not 0 <= getattr(self, name) <= MAX_CLIENTS:
                raise UsageError(f"--{name} {getattr(self, name)}: must be 0..{MAX_CLIENTS}")
        if self.clients + self.slow_clients == 0:
            raise UsageError("--clients 0 and --slow_clients 0: nothing to run")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise UsageError(f"--duration {self.duration}: must be more than 0 and at most {MAX_DURATION_S} seconds")
        for name in ("slow_byte_interval", "healthz_interval", "request_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} {getattr(self, name)}: must be more than 0")
        if self.slow_body_kib < 1:
            raise UsageError(f"--slow_body_kib {self.slow_body_kib}: must be at least 1")


@dataclass
class SlowRecord:
    client: int
    start_s: float
    held_s: float  # from opening the connection to the server's answer (or the end of the run)
    status: int  # 0: no answer before the run ended (the slot was still held), or the connection failed
    bytes_sent: int
    error: str = ""


@dataclass
class HealthProbe:
    start_s: float
    latency_ms: float
    status: int
    saturated: bool | None
    requests_in_flight: int | None


def write_tiny_model(directory: str) -> str:
    """A tiny random 2-class BERT and a word-level tokenizer: enough for app.py to load, warm up and answer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += sorted({w.strip(".,;:!?'()").lower() for text in SAMPLE_TEXTS for w in text.split()} - {""})
    os.makedirs(directory, exist_ok=True)
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    BertTokenizer(vocab_file=vocab_file, do_lower_case=True, model_max_length=64).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "non-toxic", 1: "toxic"},
        label2id={"non-toxic": 0, "toxic": 1},
        initializer_range=1.0,  # large weights: logits that differ between texts (the warm-up refuses a constant)
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: Any, model_dir: str, log_path: str) -> tuple[subprocess.Popen, str]:
    """app.py on a free loopback port, with the guard options `args` asks for (SlowClientArguments, or
    burst_memory.BurstMemoryArguments); returns once /healthz answers."""
    port = free_port()
    command = [sys.executable, str(REPO / "app.py"), "--model_dirs", model_dir, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--body_timeout", str(args.body_timeout), "--log_level", "warning"]
    command += ["--max_concurrent_requests", str(args.max_concurrent_requests)]
    command += ["--max_body_mib_in_flight", str(args.max_body_mib_in_flight)]
    if args.max_per_client is not None:
        command += ["--max_per_client", str(args.max_per_client)]
    log = open(log_path, "w")
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UsageError(f"app.py exited with status {server.returncode} at start-up: see {log_path}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise UsageError(f"app.py did not answer /healthz within {STARTUP_TIMEOUT_S} s: see {log_path}")


async def slow_client(client_id: int, url: str, args: SlowClientArguments, t0: float, out: list) -> None:
    """Announce a big body, trickle it, read the answer; again on a new connection until the run ends."""
    parsed = urlparse(url)
    announced = args.slow_body_kib * 1024
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {announced}\r\n\r\n"
    ).encode()
    body = b'{"texts": ["' + b"a" * announced  # never finished in time: the point is to hold a slot
    deadline = t0 + args.duration
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        status, sent, error = 0, 0, ""
        writer = None
        try:
            reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
            writer.write(head)
            answer = asyncio.ensure_future(reader.readline())
            while not answer.done() and time.perf_counter() < deadline and sent < announced:
                writer.write(body[sent : sent + 1])
                sent += 1
                await writer.drain()
                await asyncio.wait([answer], timeout=args.slow_byte_interval)
            if not answer.done():  # the run ended while the server still waited for this body
                answer.cancel()
            else:
                line = answer.result().decode("latin-1").split()
                status = int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
                error = "" if status else "connection closed without an answer"
        except (OSError, asyncio.IncompleteReadError) as err:
            error = f"{type(err).__name__}: {err}"[:200]
        finally:
            if writer is not None:
                writer.close()
        out.append(SlowRecord(client_id, start - t0, time.perf_counter() - start, status, sent, error))


async def probe_healthz(url: str, args: SlowClientArguments, t0: float, out: list) -> None:
    # Its own connection: a probe must not wait behind the clients' connections in a shared pool.
    async with httpx.AsyncClient(base_url=url, timeout=args.request_timeout) as http:
        while time.perf_counter() < t0 + args.duration:
            start = time.perf_counter()
            status, saturated, in_flight = 0, None, None
            try:
                response = await http.get("/healthz")
                status = response.status_code
                if status == 200:
                    report = response.json()
                    saturated, in_flight = report.get("saturated"), report.get("requests_in_flight")
            except httpx.HTTPError:
                pass
            latency_ms = 1000 * (time.perf_counter() - start)
            out.append(HealthProbe(start - t0, latency_ms, status, saturated, in_flight))
            await asyncio.sleep(max(0.0, args.healthz_interval - latency_ms / 1000))


async def run_mix(args: SlowClientArguments, url: str) -> tuple[list[RequestRecord], list[SlowRecord], list, float]:
    load_args = LoadTestArguments(
        output_dir=args.output_dir,
        url=url,
        clients=max(args.clients, 1),
        duration=args.duration,
        request_timeout=args.request_timeout,
    )
    normal: list[RequestRecord] = []
    slow: list[SlowRecord] = []
    probes: list[HealthProbe] = []
    limits = httpx.Limits(max_connections=max(args.clients, 1), max_keepalive_connections=max(args.clients, 1))
    async with httpx.AsyncClient(base_url=url, timeout=args.request_timeout, limits=limits) as http:
        counter = [0]
        t0 = time.perf_counter()
        tasks = [slow_client(i, url, args, t0, slow) for i in range(args.slow_clients)]
        tasks += [client_loop(i, http, load_args, t0, counter, normal) for i in range(args.clients)]
        tasks.append(probe_healthz(url, args, t0, probes))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + args.request_timeout + 10)
        elapsed = time.perf_counter() - t0
    return normal, slow, probes, elapsed


def count_row(kind: str, clients: int, statuses: list[int], errors: list[str]) -> dict:
    """Requests by outcome; `held_at_end`: no answer when the run ended (a slow body the server still waited for)."""
    n = len(statuses)
    shed = sum(s in (503, 408) for s in statuses)
    return {
        "clients": f"{kind} x{clients}",
        "requests": n,
        "ok": sum(s == 200 for s in statuses),
        "shed_503": sum(s == 503 for s in statuses),
        "shed_408": sum(s == 408 for s in statuses),
        "held_at_end": sum(s == 0 and not e for s, e in zip(statuses, errors)),
        "errors": sum((s == 0 and bool(e)) or s not in (0, 200, 503, 408) for s, e in zip(statuses, errors)),
        "shed_pct": round(100 * shed / n, 1) if n else 0.0,
    }


def summarise(args, normal, slow, probes, elapsed) -> list[dict]:
    rows = []
    if args.clients:
        rows.append(count_row("normal", args.clients, [r.status for r in normal], [r.error for r in normal]))
    if args.slow_clients:
        rows.append(count_row("slow", args.slow_clients, [r.status for r in slow], [r.error for r in slow]))
    latencies = [p.latency_ms for p in probes if p.status == 200]
    healthz = {
        "healthz_probes": len(probes),
        "healthz_ok": len(latencies),
        "healthz_p50_ms": round(percentile(latencies, 50), 1),
        "healthz_p95_ms": round(percentile(latencies, 95), 1),
        "healthz_max_ms": round(max(latencies), 1) if latencies else float("nan"),
        "healthz_saturated_pct": round(100 * sum(bool(p.saturated) for p in probes) / len(probes), 1)
        if probes
        else 0.0,
        "elapsed_s": round(elapsed, 1),
    }
    return [{**row, **healthz} for row in rows]


def print_table(rows: list[dict]) -> None:
    columns = ["clients", "requests", "ok", "shed_503", "shed_408", "held_at_end", "errors", "shed_pct"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
    h = rows[0]
    print(
        f"/healthz: {h['healthz_ok']}/{h['healthz_probes']} answered, p50 {h['healthz_p50_ms']} ms, "
        f"p95 {h['healthz_p95_ms']} ms, max {h['healthz_max_ms']} ms, saturated in {h['healthz_saturated_pct']}%"
    )


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = parse_args((SlowClientArguments,), argv)
    refuse_to_overwrite(args.output_dir, (SUMMARY_FILE,), args.overwrite_output_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    server = None
    url = args.url
    if url is None:
        model_dir = args.model_dir or write_tiny_model(os.path.join(args.output_dir, "tiny_model"))
        server, url = start_server(args, model_dir, os.path.join(args.output_dir, "server.log"))
    try:
        print(
            f"{args.clients} clients and {args.slow_clients} slow clients ({args.slow_body_kib} KiB announced, a byte "
            f"every {args.slow_byte_interval:g} s) for {args.duration:g} s against {url} ...",
            flush=True,
        )
        normal, slow, probes, elapsed = asyncio.run(run_mix(args, url))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    rows = summarise(args, normal, slow, probes, elapsed)
    write_csv(os.path.join(args.output_dir, SUMMARY_FILE), rows)
    if probes:
        write_csv(os.path.join(args.output_dir, HEALTHZ_FILE), [vars(p) for p in probes])
    print_table(rows)
    print(f"written: {os.path.join(args.output_dir, SUMMARY_FILE)}")
    return rows


if __name__ == "__main__":
    main()
