"""What the benchmarks share: the real assets they default to, bench teachers, devices, medians, tables, CSVs, memory."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import resource
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_TEACHER = str(SHARED / "models" / "all-MiniLM-L6-v2")
DEFAULT_DATASET = str(SHARED / "data" / "wiki_toxic")
# Randomly initialised teachers (speed does not depend on trained weights): bert-base size (12 layers, hidden 768),
# the only way to time 12 → 6 offline; and a tiny one for --quick smoke runs. Both use the uncased BERT vocabulary,
# so the MiniLM tokenizer feeds them.
RANDOM_BERT_BASE = "random-bert-base"
RANDOM_TINY = "random-tiny"
RANDOM_TEACHERS = (RANDOM_BERT_BASE, RANDOM_TINY)

from distillkit.cli import UsageError


def load_bench_teacher(name_or_path: str, num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    """A sequence classifier to time: a local checkpoint (a missing head starts fresh) or one of RANDOM_TEACHERS."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    if name_or_path in RANDOM_TEACHERS:
        torch.manual_seed(seed)
        tiny = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64}
        sizes = {} if name_or_path == RANDOM_BERT_BASE else tiny
        return BertForSequenceClassification(BertConfig(num_labels=num_labels, **sizes)).eval()
    if not os.path.isdir(name_or_path):
        raise UsageError(
            f"--teacher {name_or_path}: not a local model directory; pass one, or {' / '.join(RANDOM_TEACHERS)}"
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialized": expected, the head is not timed apart
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval()


def default_tokenizer_for(teacher: str) -> str:
    """A checkpoint brings its tokenizer; the random teachers borrow the MiniLM one (same uncased BERT vocabulary)."""
    return DEFAULT_TEACHER if teacher in RANDOM_TEACHERS else teacher


def resolve_device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: no CUDA device is visible here; use --device cpu")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise UsageError(f"--device {spec}: expected auto, cpu or cuda[:N]")
    return spec


def median(values: Iterable[float]) -> float:
    """The median of the values that are not NaN; NaN for none."""
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), numpy's linear interpolation; NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def refuse_to_overwrite(output_dir: str, filenames: Sequence[str], overwrite: bool) -> None:
    """A finished benchmark's results are kept unless --overwrite_output_dir."""
    for name in filenames:
        if os.path.exists(os.path.join(output_dir, name)) and not overwrite:
            raise UsageError(f"--output_dir {output_dir} already holds {name}; pass --overwrite_output_dir")


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """One row per dict; the columns are every key in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """A plain-text table: text left-aligned, numbers right-aligned."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])
    cells = [[_cell(row.get(c), digits) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def print_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns), flush=True)


@contextlib.contextmanager
def bench_session(num_threads: int | None = None) -> Iterator[None]:
    """Threads as asked, and quiet libraries: the benchmark prints its own tables, which INFO chatter, progress bars
    and deprecation warnings would drown. Everything is put back on exit, so calling a bench's main() in-process
    (the tests do) changes nothing for what runs after it.
    """
    import datasets
    import transformers

    hf_logging = transformers.utils.logging
    saved = (
        torch.get_num_threads(),
        hf_logging.get_verbosity(),
        hf_logging.is_progress_bar_enabled(),
        datasets.utils.logging.get_verbosity(),
        datasets.utils.are_progress_bars_disabled(),
        {name: logging.getLogger(name).level for name in ("distillkit", "distillkit.trainer")},
    )
    if num_threads:
        torch.set_num_threads(num_threads)
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    logging.getLogger("distillkit").setLevel(logging.WARNING)
    logging.getLogger("distillkit.trainer").setLevel(logging.ERROR)  # its per-trainer notes repeat on every run
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside peft/transformers
            yield
    finally:
        threads, hf_verbosity, hf_bars, ds_verbosity, ds_bars_off, levels = saved
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(hf_verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        datasets.utils.logging.set_verbosity(ds_verbosity)
        if not ds_bars_off:
            datasets.enable_progress_bars()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class PeakMemory:
    """Peak memory while the block runs, in MiB, and what kind of figure it is.

    On a GPU: `torch.cuda.max_memory_allocated` (tensors on the device), reset on entry. On a CPU: the process's
    resident set sampled every 5 ms from /proc (getrusage's ru_maxrss only ever grows, so it cannot tell apart blocks
    run one after the other in one process); `process_max_rss_mb` is that getrusage figure, for the record. A CPU
    figure includes everything the process holds (libraries, data, models kept for later blocks): compare it with
    `start_mb`, the same measure on entry.
    """

    def __init__(self, device: str, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.peak_mb = math.nan
        self.start_mb = math.nan  # what was already held on entry: the peak's baseline
        self.kind = "cuda_max_allocated" if device.startswith("cuda") else "cpu_rss_sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_pages = 0

    def __enter__(self) -> Self:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        elif os.path.exists("/proc/self/statm"):
            self._peak_pages = self._rss_pages()
            self.start_mb = self._peak_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:  # no /proc (macOS): the process-wide high-water mark is all there is
            self.kind = "cpu_max_rss_process"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = self._peak_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        else:
            self.peak_mb = process_max_rss_mb()

    @staticmethod
    def _rss_pages() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1])

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak_pages = max(self._peak_pages, self._rss_pages())
            time.sleep(self.interval_s)


def process_max_rss_mb() -> float:
    """getrusage's peak resident set of this process so far (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def process_rss_mb(pid: int) -> float:
    """Another process's resident set now (VmRSS in /proc/PID/status), in MiB; Linux only."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**10  # kB
    raise OSError(f"/proc/{pid}/status has no VmRSS (a zombie process?)")
