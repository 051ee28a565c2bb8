"""Waiting with a deadline, free ports, and processes that are always stopped by PID."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05, message: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the predicate may fail until the subject is up
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise Timeout(f"timed out after {timeout}s waiting for {message or predicate}{detail}")
        time.sleep(interval)


# Picked below the kernel's ephemeral range: bind(0) and every outgoing connection on the machine take
# their ports from that range, so a port found free there can be taken before the server binds it
# ("Address already in use" under load, with many client connections open).
_FIRST_PORT = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = (int(part) for part in handle.read().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux default
    return low, high


def free_port() -> int:
    """A port on 127.0.0.1 that nothing is bound to, outside the ephemeral range when there is room."""
    low, high = _ephemeral_range()
    ranges = [(_FIRST_PORT, low), (high + 1, 65536)]
    ranges = [(a, b) for a, b in ranges if b - a >= 1000] or [(1024, 65536)]
    for _ in range(200):
        start, stop = random.choice(ranges)
        port = random.randrange(start, stop)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15, sig: int = signal.SIGTERM) -> None:
    """Signal the process (and its group when it leads one) and reap it; SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def child_pids(parent: int) -> set[int]:
    """Live children of ``parent`` (gunicorn workers of a master), read from /proc."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent PID; the command name (field 2) may contain spaces, so split after ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            children.add(int(entry))
    return children
