"""A fixed-rate (open-loop) HTTP load generator, for "p99 at 80 % of capacity".

wrk is closed-loop: when the server stalls, wrk stops sending, and the stall shows up as one slow
request instead of hundreds (coordinated omission). wrk2 fixes that but is not packaged in Debian.
This generator schedules request i at ``start + i / rate`` whatever happened before, and measures
each latency from that scheduled time, so time spent queued behind a slow answer is counted.

Minimal HTTP/1.1 over keep-alive connections with asyncio: enough for GET requests to a server that
answers with Content-Length (gunicorn + Flask do), and cheap in CPU, which matters because it shares
the machine with the server under test.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class OpenLoopResult:
    rate_target: float
    rate_achieved: float
    requests: int
    errors: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    # Requests whose send was due but had to wait for a free connection: the generator's own limit.
    late_starts: int


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values))) - 1))
    return sorted_values[index]


def new_visitor_headers() -> dict[str, str]:
    octets = (random.randint(1, 223), random.randint(0, 255), random.randint(0, 255), random.randint(1, 254))
    return {"X-Forwarded-For": ".".join(str(octet) for octet in octets)}


def returning_visitor_headers(pool: int = 1000) -> Callable[[], dict[str, str]]:
    addresses = [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(1, pool + 1)]
    return lambda: {"X-Forwarded-For": random.choice(addresses)}


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def _run(
    host: str,
    port: int,
    path: str,
    rate: float,
    duration: float,
    connections: int,
    headers: Callable[[], dict[str, str]],
) -> OpenLoopResult:
    total = int(rate * duration)
    latencies: list[float] = []
    errors = non_2xx = late = 0
    next_index = 0
    start = time.perf_counter() + 0.2

    async def worker() -> None:
        nonlocal next_index, errors, non_2xx, late
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            index = next_index
            if index >= total:
                break
            next_index += 1
            due = start + index / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.001:
                late += 1
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers().items())
            request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(request)
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            latencies.append(time.perf_counter() - due)
            if not 200 <= status < 300:
                non_2xx += 1
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    ms = [value * 1000 for value in latencies]
    return OpenLoopResult(
        rate_target=rate,
        rate_achieved=round(len(latencies) / elapsed, 1),
        requests=len(latencies),
        errors=errors,
        non_2xx=non_2xx,
        p50_ms=round(percentile(ms, 0.50), 2),
        p90_ms=round(percentile(ms, 0.90), 2),
        p99_ms=round(percentile(ms, 0.99), 2),
        max_ms=round(ms[-1], 2) if ms else 0.0,
        late_starts=late,
    )


def run(
    host: str,
    port: int,
    rate: float,
    duration: float,
    *,
    path: str = "/",
    connections: int = 64,
    headers: Callable[[], dict[str, str]] = dict,
) -> OpenLoopResult:
    return asyncio.run(_run(host, port, path, rate, duration, connections, headers))
