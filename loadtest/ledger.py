"""The ledger: one line per finished request, written by the Locust suite when ``--ledger`` is given.

Locust's own statistics aggregate; a drill needs to know *when* each request ran and what came back
(every response while the database was down must be a 503). A line is
``start_epoch_s latency_ms status ok kind``: ``ok`` is 1 only for the success the user class checks
(for a visit: status 200 *and* the page's visit line), ``kind`` is ``visit`` for ``GET /`` (the only
request that counts; told by method and URL path, not by the user classes' display names) or ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    start: float
    latency_ms: float
    status: int
    ok: bool
    visit: bool

    @property
    def end(self) -> float:
        return self.start + self.latency_ms / 1000


def line(method: str, url: str, start: float, latency_ms: float, status: int, ok: bool) -> str:
    kind = "visit" if method == "GET" and urlsplit(url).path in ("", "/") else "other"
    return f"{start:.3f} {latency_ms:.1f} {status} {int(ok)} {kind}\n"


def parse_ledger(text: str) -> list[Request]:
    requests = []
    for entry in text.splitlines():
        parts = entry.split()
        if len(parts) != 5:
            continue  # a line cut short by a killed generator
        start, latency, status, ok, kind = parts
        requests.append(Request(float(start), float(latency), int(status), ok == "1", kind == "visit"))
    return requests


@dataclass
class LoadResult:
    requests: list[Request] = field(default_factory=list)
    started_at: float = 0.0
    stopped_at: float = 0.0

    @property
    def visits(self) -> list[Request]:
        return [r for r in self.requests if r.visit]

    @property
    def visit_ok(self) -> int:
        return sum(1 for r in self.visits if r.ok)

    @property
    def visit_failed(self) -> int:
        return sum(1 for r in self.visits if not r.ok)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.requests if not r.ok)

    @property
    def rate(self) -> float:
        span = self.stopped_at - self.started_at
        return len(self.requests) / span if span > 0 else 0.0

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.requests:
            counts[r.status] = counts.get(r.status, 0) + 1
        return dict(sorted(counts.items()))
