"""Waiting with a deadline, free ports, and processes that log to a file and are always stopped by PID."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
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


def wait_for(predicate: Callable[[], T], timeout: float, message: str, interval: float = 0.25) -> tuple[T, float]:
    """:func:`wait_until` that also says how long it waited, for reports (alert latency, recovery time)."""
    started = time.monotonic()
    result = wait_until(predicate, timeout=timeout, interval=interval, message=message)
    return result, time.monotonic() - started


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def start_logged(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    ready: Callable[[], object] | None,
    ready_message: str = "",
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (so :func:`stop_process` reaches its children), stdout and stderr
    appended to ``log_path``; unless ``ready`` is None, then :func:`wait_ready`."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if ready is not None:
        wait_ready(name, process, log_path, ready, message=ready_message, timeout=timeout)
    return process


def wait_ready(
    name: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    ready: Callable[[], object],
    *,
    message: str = "",
    timeout: float = 30,
) -> None:
    """Wait until ``ready()`` is truthy; if ``process`` exits first or the wait times out, kill it and fail
    with the end of its log."""
    try:
        wait_until(lambda: process.poll() is not None or ready(), timeout=timeout, message=message or f"{name} ready")
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{read_log(log_path)[-4000:]}")
    except BaseException:
        stop_process(process, timeout=5, sig=signal.SIGKILL)
        raise
