"""Issue 27: a server and model loading that cannot be fooled. One test per defect found by trying the app and the
loaders as an attacker and a careless user would; docs/security.md maps each threat to its test here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO

# An unterminated string of \" pairs: the old regex that stripped strings was quadratic on it (32 KB took 9.8 s).
ADVERSARIAL_BODY_SCRIPT = textwrap.dedent(
    """
    import time
    from distillkit.serving import RequestError, parse_json_body
    body = b'{"texts": ["' + b'\\\\"' * (2**20 // 2)
    assert len(body) > 2**20
    start = time.process_time()
    try:
        parse_json_body(body, 8)
    except RequestError as err:
        print(err.status, time.process_time() - start)
    """
)


def test_a_1mb_adversarial_body_is_refused_in_well_under_a_second():
    """Defect: `json_depth` ran a backtracking regex over the raw body; 1 MB of `\\"` took hours, on the event loop.

    Run in a subprocess so that the old, quadratic code fails by timeout instead of freezing the test run.
    """
    done = subprocess.run(
        [sys.executable, "-c", ADVERSARIAL_BODY_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status, cpu_s = done.stdout.split()
    assert status == "400"
    # Linear: ~0.02 s here; the bound leaves room for a loaded machine and still fails the quadratic scan by hours.
    assert float(cpu_s) < 1.0, cpu_s
