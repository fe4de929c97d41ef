#!/usr/bin/env python
"""Load-test a running `app.py` server: N concurrent clients for T seconds of POST /api/predict.

    python app.py --model_dirs EXP/even --port 8000 &
    python bench/load_test.py --url http://127.0.0.1:8000 --clients 50 --duration 30 --output_dir OUT/load

Prints requests, how many the server shed (503: its queue was full or a request waited --max_queue_wait for a
turn), other errors, throughput and p50/p90/p99 latency of the answered ones, and writes OUTPUT_DIR/load_test.csv (the summary row)
and OUTPUT_DIR/requests.csv (one row per request). Bounded: the server must be on this machine (loopback), and
clients, duration and request count have ceilings.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from bench.common import percentile, refuse_to_overwrite, write_csv
from distillkit.cli import UsageError, exit_on_usage_error, parse_args

MAX_CLIENTS = 1000
MAX_DURATION_S = 600
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SUMMARY_FILE = "load_test.csv"
REQUESTS_FILE = "requests.csv"

# Short and long, toxic and not: requests cycle through them so every client sends a mix.
SAMPLE_TEXTS = [
    "Thanks for fixing the citation.",
    "I will find you and hurt you, idiot",
    "Please add a reliable source for this claim before restoring the paragraph.",
    "You are a pathetic moron and everyone here knows it.",
    "The infobox lists the wrong date of birth; the 1998 biography gives 12 March.",
    "Stop vandalising my talk page, you stupid troll.",
    (
        "I reverted the edit because it removed sourced content without explanation in the edit summary. "
        "If you disagree, let's discuss it here on the talk page rather than edit-warring over it."
    ),
    "What an ugly, worthless article. Delete it.",
]


@dataclass
class LoadTestArguments:
    output_dir: str = field(metadata={"help": "Where load_test.csv and requests.csv are written."})
    url: str = field(default="http://127.0.0.1:8000", metadata={"help": "The server (loopback only)."})
    clients: int = field(
        default=50, metadata={"help": f"Concurrent clients, each one request at a time (<= {MAX_CLIENTS})."}
    )
    duration: float = field(
        default=30.0, metadata={"help": f"Seconds during which requests start (<= {MAX_DURATION_S})."}
    )
    texts_per_request: int = field(default=1, metadata={"help": "Texts in each request."})
    models: list[str] = field(default_factory=list, metadata={"help": "Models to ask (default: every served model)."})
    max_requests: int = field(default=200_000, metadata={"help": "Stop after this many requests in all."})
    request_timeout: float = field(default=30.0, metadata={"help": "Seconds before a request counts as an error."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier load test's results."})

    def __post_init__(self):
        host = urlparse(self.url).hostname
        if urlparse(self.url).scheme not in ("http", "https") or host is None:
            raise UsageError(f"--url {self.url}: expected http://127.0.0.1:PORT")
        if host not in LOOPBACK:
            raise UsageError(f"--url {self.url}: only a server on this machine (127.0.0.1) may be load-tested")
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise UsageError(f"--clients {self.clients}: must be 1..{MAX_CLIENTS}")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise UsageError(f"--duration {self.duration}: must be more than 0 and at most {MAX_DURATION_S} seconds")
        if not 1 <= self.texts_per_request <= 256:
            raise UsageError(f"--texts_per_request {self.texts_per_request}: must be 1..256")
        if self.max_requests < 1 or self.request_timeout <= 0:
            raise UsageError("--max_requests and --request_timeout must be positive")


@dataclass
class RequestRecord:
    client: int
    start_s: float  # since the test began
    latency_ms: float
    status: int  # 0: no HTTP answer (timeout, refused connection)
    error: str
    batch_texts: float = float("nan")  # texts in the server's forward pass that carried this request (mean over models)
    queue_ms: float = float("nan")  # the server's own account: waiting for the models' turns (sum over models)
    forward_ms: float = float("nan")  # ... and their forward passes (sum over models)


async def client_loop(
    client_id: int, http: httpx.AsyncClient, args: LoadTestArguments, t0: float, counter: list[int], out: list
) -> None:
    deadline = t0 + args.duration
    while time.perf_counter() < deadline and counter[0] < args.max_requests:
        n = counter[0]
        counter[0] += 1
        texts = [SAMPLE_TEXTS[(n + i) % len(SAMPLE_TEXTS)] for i in range(args.texts_per_request)]
        body: dict[str, Any] = {"texts": texts}
        if args.models:
            body["models"] = args.models
        start = time.perf_counter()
        status, error, batch_texts = 0, "", float("nan")
        queue_ms = forward_ms = float("nan")
        try:
            response = await http.post("/api/predict", json=body)
            status = response.status_code
            if status != 200:
                error = response.text[:200]
            else:
                timing = response.json()["timing"].values()
                batch_texts = sum(t["batch_texts"] for t in timing) / len(timing)
                queue_ms = sum(t["queue_ms"] for t in timing)
                forward_ms = sum(t["forward_ms"] for t in timing)
        except httpx.HTTPError as err:
            error = f"{type(err).__name__}: {err}"[:200]
        latency_ms = 1000 * (time.perf_counter() - start)
        out.append(RequestRecord(client_id, start - t0, latency_ms, status, error, batch_texts, queue_ms, forward_ms))


async def run_load(args: LoadTestArguments) -> tuple[list[RequestRecord], float, list[str]]:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.request_timeout, limits=limits) as http:
        try:
            models = (await http.get("/api/models")).json()["models"]
        except (httpx.HTTPError, ValueError, KeyError) as err:
            raise UsageError(f"--url {args.url}: no app.py server answers there ({err}); start one first") from err
        served = [m["name"] for m in models]
        unknown = [m for m in args.models if m not in served]
        if unknown:
            raise UsageError(f"--models {' '.join(unknown)}: not served; the server has {', '.join(served)}")
        records: list[RequestRecord] = []
        counter = [0]
        t0 = time.perf_counter()
        tasks = [client_loop(i, http, args, t0, counter, records) for i in range(args.clients)]
        # In-flight requests may finish after the deadline, but never later than their own timeout.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + args.request_timeout + 10)
        elapsed = time.perf_counter() - t0
    return records, elapsed, args.models or served


def summarise(records: list[RequestRecord], elapsed: float, args: LoadTestArguments, models: list[str]) -> dict:
    ok = [r.latency_ms for r in records if r.status == 200 and not r.error]
    answered = [r for r in records if r.status == 200 and not r.error]
    batches = [r.batch_texts for r in answered]
    queued = [r.queue_ms for r in answered]
    shed = [r.latency_ms for r in records if r.status == 503]  # refused by the server's own bounds, by design
    errors = len(records) - len(ok) - len(shed)

    return {
        "url": args.url,
        "models": " ".join(models),
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 2),
        "texts_per_request": args.texts_per_request,
        "requests": len(records),
        "ok": len(ok),
        "shed": len(shed),
        "shed_pct": round(100 * len(shed) / len(records), 1) if records else 0.0,
        "shed_max_ms": round(max(shed), 1) if shed else float("nan"),
        "errors": errors,
        "requests_per_s": round(len(records) / elapsed, 2),
        "texts_per_s": round(len(ok) * args.texts_per_request / elapsed, 2),
        "p50_ms": round(percentile(ok, 50), 1),
        "p90_ms": round(percentile(ok, 90), 1),
        "p99_ms": round(percentile(ok, 99), 1),
        "max_ms": round(max(ok), 1) if ok else float("nan"),
        "mean_ms": round(float(np.mean(ok)), 1) if ok else float("nan"),
        "mean_batch_texts": round(float(np.mean(batches)), 1) if batches else float("nan"),
        # The server's view of the answered requests: how long they waited for the models (bounded by
        # --max_queue_wait per model); the rest of `latency` is the forward pass, the HTTP stack and the client.
        "server_queue_p50_ms": round(percentile(queued, 50), 1),
        "server_queue_max_ms": round(max(queued), 1) if queued else float("nan"),
    }


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((LoadTestArguments,), argv)
    summary_path = os.path.join(args.output_dir, SUMMARY_FILE)
    refuse_to_overwrite(args.output_dir, (SUMMARY_FILE,), args.overwrite_output_dir)
    print(f"{args.clients} clients for {args.duration:g} s against {args.url} ...", flush=True)
    records, elapsed, models = asyncio.run(run_load(args))
    summary = summarise(records, elapsed, args, models)
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv(summary_path, [summary])
    if records:
        write_csv(os.path.join(args.output_dir, REQUESTS_FILE), [vars(r) for r in records])
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    first_errors = sorted({r.error or f"HTTP {r.status}" for r in records if r.status != 200 or r.error})[:3]
    for error in first_errors:
        print(f"error: {error}")
    print(f"written: {summary_path}")
    return summary


if __name__ == "__main__":
    main()
