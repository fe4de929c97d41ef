"""Logging never writes to a closed stream: each script's main() configures logging (nothing does at import), and
its handler looks sys.stdout / sys.stderr up when it writes, so a stream closed after the script ran (pytest closes
each test's capture stream) cannot make later records fail with '--- Logging error --- I/O operation on closed
file'."""

from __future__ import annotations

import io
import logging
import socket
import sys

import pytest
from conftest import REPO, common_args

import app as app_module
import run_compare
import run_distill
import run_eval
import run_export
from distillkit.cli import CurrentStreamHandler, configure_logging


def all_handlers() -> list[tuple[str, logging.Handler]]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return [(lg.name, h) for lg in loggers for h in lg.handlers]


def closed_streams() -> list[str]:
    found = []
    for name, handler in all_handlers():
        stream = getattr(handler, "stream", None)
        if stream is not None and getattr(stream, "closed", False):
            found.append(f"{name}: {handler!r}")
    return found


def run_on_streams_closed_afterwards(call) -> tuple[str, str]:
    """Run `call` with sys.stdout/sys.stderr swapped for streams that are closed when it returns (as pytest does
    with a test's capture); returns what it wrote to each."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        with pytest.raises(SystemExit):
            call()
    finally:
        sys.stdout, sys.stderr = saved
    written = out.getvalue(), err.getvalue()
    out.close()
    err.close()
    return written


def busy_port_main():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        app_module.main(["--model_dirs", "nowhere", "--port", str(busy.getsockname()[1])])


SCRIPTS = {
    "app": lambda tmp_path: busy_port_main(),
    "run_eval": lambda tmp_path: run_eval.main(
        ["--model_dirs", str(tmp_path), "--dataset_name", str(tmp_path), "--output_dir", str(tmp_path / "report")]
    ),
    "run_export": lambda tmp_path: run_export.main(
        ["--model_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "onnx")]
    ),
    "run_compare": lambda tmp_path: run_compare.main(["--no_such_flag", "1"]),
    "run_distill": lambda tmp_path: run_distill.main(
        common_args(tmp_path / "no_data", tmp_path / "out", teacher_name_or_path=str(tmp_path))
    ),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_scripts_logging_leaves_no_handler_on_a_closed_stream(script, tmp_path, capsys):
    if script == "run_eval":  # a report already there: refused after logging is set up, before anything is read
        (tmp_path / "report").mkdir()
        (tmp_path / "report" / "results.csv").write_text("model\n")
    run_on_streams_closed_afterwards(lambda: SCRIPTS[script](tmp_path))
    assert not closed_streams(), f"{script}: handlers hold a closed stream"
    assert any(isinstance(h, CurrentStreamHandler) for h in logging.getLogger().handlers), "main() set up logging"

    # Later records (another test, another script in the same process) are written, not lost in a Logging error.
    capsys.readouterr()
    for name in ("distillkit", "transformers", "uvicorn.error", "some.library"):
        logging.getLogger(name).warning(f"after {script}: a record from {name}")
    out, err = capsys.readouterr()
    assert "Logging error" not in out + err and "closed file" not in out + err
    assert f"after {script}: a record from distillkit" in out + err


def test_the_handler_writes_to_the_stream_current_at_each_record(capsys):
    configure_logging(logging.INFO)
    configure_logging(logging.INFO)  # a second main() in one process replaces its handler: one line per record
    assert sum(isinstance(h, CurrentStreamHandler) for h in logging.getLogger().handlers) == 1
    first = io.StringIO()
    saved = sys.stdout
    sys.stdout = first
    try:
        logging.getLogger("distillkit.x").info("into the first stream")
    finally:
        sys.stdout = saved
    first.close()
    logging.getLogger("distillkit.x").info("into the current stream")
    out = capsys.readouterr().out
    assert "into the current stream" in out and out.count("into the current stream") == 1
    assert "into the first stream" not in out


def test_importing_the_scripts_configures_no_logging():
    """Logging is configured in main(), never at import: importing a script adds no handler anywhere."""
    import subprocess

    code = (
        "import logging\n"
        "import app, run_compare, run_distill, run_eval, run_export, run_finetune, run_lora\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0", "a script configured the root logger at import"
