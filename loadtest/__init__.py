"""Everything that puts load on Tally. See docs/capacity.md.

- The Locust suite: visitor classes (users.py), load shapes (shapes.py), options, thresholds and the
  summary (locustfile.py). Operators run it with ``python -m loadtest``; the drills run it in the
  background (background.py) with a ledger of every request (ledger.py).
- openloop.py: the fixed-rate (open-loop) generator ``make bench`` measures latency with.
- wrk/: the visitor scripts ``make bench`` drives wrk with for its maximum throughput.

This module and ledger.py, openloop.py, background.py do not import Locust: importing it patches the
standard library (gevent), which the processes that start Locust must not have.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
WRK_SCRIPTS = HERE / "wrk"
# Upper bound for any run: a forgotten soak (or a drill that died before stopping its load) must not
# load a server for days.
MAX_DURATION_S = 24 * 3600


def locust_command(host: str, *options: str) -> list[str]:
    """Headless Locust running the suite against ``host``, printing only its summary."""
    command = [sys.executable, "-m", "locust", "--locustfile", str(LOCUSTFILE), "--host", host]
    return [*command, "--headless", "--only-summary", *options]
