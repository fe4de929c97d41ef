#!/usr/bin/env python
"""The server's memory before, at the peak of, and after a burst of slow clients and large bodies.

    python bench/burst_memory.py --output_dir OUT/burst --large_clients 20 --large_body_mib 4 --slow_clients 50
    python bench/burst_memory.py --output_dir OUT/burst --model_dir EXP/even --max_body_mib_in_flight 64

It starts `app.py` (bench/slow_clients.py's start-up: `--model_dir`, default a tiny random BERT it writes in
OUTPUT_DIR/tiny_model) with the guard options given, and reads the server process's resident set (VmRSS in
/proc/PID/status) every `--sample_interval` seconds throughout:
- before: after start-up and `--warmup_requests` ordinary requests, once memory has settled;
- burst: `--large_clients` clients each announce a `--large_body_mib` body and send all of it but the last byte at
  once (the server holds what it accepted until --body_timeout), while `--slow_clients` clients announce
  `--slow_body_kib` and send a byte every `--slow_byte_interval` seconds; each is answered (408 at --body_timeout, or
  503 at once past --max_body_mib_in_flight, --max_concurrent_requests or --max_per_client) or the burst ends after
  `--duration` seconds; the peak is the largest sample;
- after: every burst connection closed, `--settle` seconds later, and a few ordinary requests answered.
Prints one row per phase (RSS in MiB, change from before, ratio to before) and the burst's answers by status; writes
OUTPUT_DIR/burst_memory.csv (those rows) and OUTPUT_DIR/rss.csv (every sample). Linux only (it reads /proc). The
figures are this machine's: the allocator decides what it gives back.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

from bench.common import print_table, process_rss_mb, refuse_to_overwrite, write_csv
from bench.slow_clients import start_server, write_tiny_model
from distillkit.cli import UsageError, exit_on_usage_error, parse_args

SUMMARY_FILE = "burst_memory.csv"
SAMPLES_FILE = "rss.csv"
MAX_CLIENTS = 1000
MAX_DURATION_S = 600


@dataclass
class BurstMemoryArguments:
    output_dir: str = field(metadata={"help": "Where burst_memory.csv and rss.csv are written."})
    model_dir: str | None = field(
        default=None, metadata={"help": "The model the server serves (default: a tiny random BERT)."}
    )
    large_clients: int = field(default=20, metadata={"help": "Clients that send a large body but its last byte."})
    large_body_mib: float = field(default=4.0, metadata={"help": "The body each large client announces (MiB)."})
    slow_clients: int = field(default=50, metadata={"help": "Clients that send their bodies one byte at a time."})
    slow_body_kib: int = field(default=1024, metadata={"help": "The body each slow client announces (KiB)."})
    slow_byte_interval: float = field(default=0.5, metadata={"help": "Seconds between a slow client's bytes."})
    duration: float = field(default=15.0, metadata={"help": f"Most seconds the burst lasts (<= {MAX_DURATION_S})."})
    settle: float = field(default=3.0, metadata={"help": "Seconds after the burst before 'after' is read."})
    warmup_requests: int = field(default=20, metadata={"help": "Ordinary requests before 'before' is read."})
    sample_interval: float = field(default=0.02, metadata={"help": "Seconds between RSS samples."})
    # Passed to app.py.
    body_timeout: float = field(default=10.0, metadata={"help": "app.py --body_timeout."})
    max_concurrent_requests: int = field(default=200, metadata={"help": "app.py --max_concurrent_requests."})
    max_body_mib_in_flight: float = field(default=64.0, metadata={"help": "app.py --max_body_mib_in_flight."})
    max_per_client: int | None = field(
        default=None, metadata={"help": "app.py --max_per_client (every client here is one address: 127.0.0.1)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run's results."})

    def __post_init__(self):
        if not os.path.exists("/proc/self/status"):
            raise UsageError("bench/burst_memory.py reads the server's memory from /proc: Linux only")
        if self.model_dir is not None and not os.path.isdir(self.model_dir):
            raise UsageError(f"--model_dir {self.model_dir}: not a directory")
        for name in ("large_clients", "slow_clients"):
            if not 0 <= getattr(self, name) <= MAX_CLIENTS:
                raise UsageError(f"--{name} {getattr(self, name)}: must be 0..{MAX_CLIENTS}")
        if self.large_clients + self.slow_clients == 0:
            raise UsageError("--large_clients 0 and --slow_clients 0: nothing to run")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise UsageError(f"--duration {self.duration}: must be more than 0 and at most {MAX_DURATION_S} seconds")
        for name in ("large_body_mib", "slow_byte_interval", "sample_interval", "body_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} {getattr(self, name)}: must be more than 0")
        if self.settle < 0 or self.warmup_requests < 0:
            raise UsageError("--settle and --warmup_requests: must be at least 0")
        if self.slow_body_kib < 1:
            raise UsageError(f"--slow_body_kib {self.slow_body_kib}: must be at least 1")


class RssSampler:
    """The server's RSS every `interval` seconds, in a background task; `peak_between(t0, t1)` from the samples."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, str, float]] = []  # (seconds since start, phase, MiB)
        self.phase = "start-up"
        self._t0 = time.perf_counter()

    def read(self) -> float:
        mib = process_rss_mb(self.pid)
        self.samples.append((round(time.perf_counter() - self._t0, 3), self.phase, mib))
        return mib

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.read()
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    def peak(self, phase: str) -> float:
        return max(mib for _, p, mib in self.samples if p == phase)


async def ordinary_requests(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return [(await http.post("/api/predict", json={"texts": ["thanks, a fine edit"]})).status_code for _ in range(n)]


async def burst_client(url: str, announced: int, sent_at_once: int, interval: float, deadline: float) -> str:
    """Announce `announced` bytes, send `sent_at_once` of them, then one more every `interval` s; the answer's status
    (or why there was none). The connection stays open until the burst ends, as an attacker's would."""
    parsed = urlparse(url)
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {announced}\r\n\r\n"
    ).encode()
    body = b'{"texts": ["' + b"a" * max(0, announced - 12)
    writer = None
    try:
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        writer.write(head + body[:sent_at_once])
        sent = sent_at_once
        answer = asyncio.ensure_future(reader.readline())
        while not answer.done() and time.perf_counter() < deadline:
            await asyncio.wait([answer], timeout=interval)
            if not answer.done() and sent < announced - 1:  # never the last byte: the body stays unfinished
                writer.write(body[sent : sent + 1])
                sent += 1
        if not answer.done():
            answer.cancel()
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            return "held to the end"
        line = answer.result().decode("latin-1").split()
        status = line[1] if len(line) > 1 else "closed"
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))  # keep the connection as long as the burst
        return status
    except (OSError, asyncio.IncompleteReadError) as err:
        return type(err).__name__
    finally:
        if writer is not None:
            writer.close()


async def measure(args: BurstMemoryArguments, url: str, pid: int) -> tuple[list[dict], Counter, RssSampler]:
    sampler = RssSampler(pid, args.sample_interval)
    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sampler.run(stop))
    try:
        sampler.phase = "warm-up"
        await ordinary_requests(url, args.warmup_requests)
        await asyncio.sleep(1.0)
        sampler.phase = "before"
        before = sampler.read()

        sampler.phase = "burst"
        deadline = time.perf_counter() + args.duration
        large = int(args.large_body_mib * 2**20)
        slow = args.slow_body_kib * 1024
        clients = [burst_client(url, large, large - 1, 0.5, deadline) for _ in range(args.large_clients)]
        clients += [burst_client(url, slow, 13, args.slow_byte_interval, deadline) for _ in range(args.slow_clients)]
        answers = Counter(await asyncio.gather(*clients))
        peak = sampler.peak("burst")

        sampler.phase = "settle"
        await asyncio.sleep(args.settle)
        sampler.phase = "after"
        after_ok = sum(s == 200 for s in await ordinary_requests(url, 5))
        after = sampler.read()
    finally:
        stop.set()
        await sampling
    rows = []
    for phase, mib in (("before", before), ("burst peak", peak), ("after", after)):
        rows.append(
            {
                "phase": phase,
                "rss_mib": round(mib, 1),
                "change_mib": round(mib - before, 1),
                "ratio_to_before": round(mib / before, 2),
            }
        )
    rows[-1]["ordinary_requests_ok_after"] = after_ok
    return rows, answers, sampler


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = parse_args((BurstMemoryArguments,), argv)
    refuse_to_overwrite(args.output_dir, (SUMMARY_FILE,), args.overwrite_output_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    model_dir = args.model_dir or write_tiny_model(os.path.join(args.output_dir, "tiny_model"))
    server, url = start_server(args, model_dir, os.path.join(args.output_dir, "server.log"))
    try:
        print(
            f"{args.large_clients} clients sending {args.large_body_mib:g} MiB bodies but their last byte and "
            f"{args.slow_clients} slow clients ({args.slow_body_kib} KiB announced) against {url} (pid {server.pid}), "
            f"at most {args.duration:g} s ...",
            flush=True,
        )
        rows, answers, sampler = asyncio.run(measure(args, url, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)
    shown = ", ".join(f"{status}: {n}" for status, n in sorted(answers.items()))
    for row in rows:
        row["burst_answers"] = shown
        row["large_clients"], row["large_body_mib"] = args.large_clients, args.large_body_mib
        row["slow_clients"], row["slow_body_kib"] = args.slow_clients, args.slow_body_kib
        row["max_body_mib_in_flight"], row["body_timeout_s"] = args.max_body_mib_in_flight, args.body_timeout
    write_csv(os.path.join(args.output_dir, SUMMARY_FILE), rows)
    write_csv(
        os.path.join(args.output_dir, SAMPLES_FILE),
        [{"t_s": t, "phase": phase, "rss_mib": round(mib, 2)} for t, phase, mib in sampler.samples],
    )
    print_table(rows, ["phase", "rss_mib", "change_mib", "ratio_to_before"], title="Server RSS (MiB)")
    print(f"burst answers by status: {shown}")
    print(f"written: {os.path.join(args.output_dir, SUMMARY_FILE)}")
    return rows


if __name__ == "__main__":
    main()
